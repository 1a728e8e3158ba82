"""The `tokenward` command: thin click wrappers over the token store.

User errors (bad values, refusals, an unusable store file) end as one line on stderr and exit
status 1 (click's usage errors: 2); never a traceback. Commands that add things (`tokens create`,
`tokens import`, `services add`) create the store when missing; every other command refuses a
missing store, since there is nothing in it to list, change or delete.

Other modules add their commands to `main` and reuse `db_option`, `json_option`, `open_store`
and `user_errors`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from harness.oracle import TOKEN_ENV_VARS
from tokenward_lib.core.layouts import LAYOUTS
from tokenward_lib.core.lifetimes import (
    ALL_SERVICES,
    check_service_name,
    format_scope,
    parse_expiry,
    parse_scope,
)
from tokenward_lib.core.tokens import KINDS, is_token_shaped, token_hint
from tokenward_lib.core.verdicts import Forward
from tokenward_lib.explain import explain, parse_header
from tokenward_lib.proxy import ProxySettings, run_proxy
from tokenward_lib.store import (
    ServiceRecord,
    StoreError,
    StoreMissing,
    TokenRecord,
    TokenStore,
    check_owner,
    check_token_name,
    check_upstream,
    normalize_host,
)

DB_ENVVAR = "TOKENWARD_DB"
DEFAULT_DB = "tokenward.db"
CONFIRM_WORD = "DELETE"
EXPIRES_METAVAR = "7d|30d|60d|90d|YYYY-MM-DD|never"
SCOPE_METAVAR = "all|SVC[,SVC...]"
_TOKEN_HEADERS = (
    "NAME",
    "KIND",
    "OWNER",
    "HINT",
    "CREATED",
    "EXPIRES",
    "SCOPE",
    "LAST USED",
    "STATE",
)


def db_option[F: Callable[..., Any]](command: F) -> F:
    """`--db PATH` (parameter `db`): $TOKENWARD_DB, else tokenward.db in the current folder."""
    return click.option(
        "--db",
        type=click.Path(path_type=Path),
        envvar=DB_ENVVAR,
        default=DEFAULT_DB,
        show_default=True,
        show_envvar=True,
        help="The token store, an SQLite file.",
    )(command)


def json_option[F: Callable[..., Any]](command: F) -> F:
    """`--json` (parameter `as_json`): print JSON instead of text for people."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the store's errors and invalid values into one clear line and a non-zero exit."""
    try:
        yield
    except StoreMissing as error:
        raise click.ClickException(f"{error} (choose one with --db or ${DB_ENVVAR})") from error
    except (StoreError, ValueError) as error:
        raise click.ClickException(str(error)) from error


def open_store(db: str | os.PathLike[str], create: bool) -> TokenStore:
    """The store at `db` for a command; `create` makes it when missing (for commands that add)."""
    with user_errors():
        return TokenStore.open(db, create=create)


def _now() -> datetime:
    return datetime.now(UTC)


def _json_time(moment: datetime | None) -> str | None:
    # Stored times are UTC: ISO 8601 ending in Z, with microseconds when there are any.
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _text_time(moment: datetime | None, missing: str) -> str:
    return missing if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _json_scope(scope: frozenset[str] | None) -> str | list[str]:
    return ALL_SERVICES if scope is None else sorted(scope)


def _token_json(record: TokenRecord, now: datetime) -> dict[str, object]:
    return {
        "name": record.name,
        "kind": record.kind,
        "owner": record.owner,
        "hint": record.hint,
        "created_at": _json_time(record.created_at),
        "expires_at": _json_time(record.expires_at),
        "scope": _json_scope(record.scope),
        "last_used_at": _json_time(record.last_used_at),
        "revoked_at": _json_time(record.revoked_at),
        "state": record.state(now).value,
    }


def _service_json(service: ServiceRecord) -> dict[str, object]:
    return {
        "name": service.name,
        "hosts": list(service.hosts),
        "layout": service.layout,
        "upstream": service.upstream,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, for people (use --json for programs)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in (headers, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenward", prog_name="tokenward")
def main() -> None:
    """tokenward: access tokens for blockchain nodes, checked by a mitmproxy addon."""


@main.group()
def tokens() -> None:
    """Create, import, list, re-scope and delete access tokens."""


@main.group()
def services() -> None:
    """Register the services (nodes) that tokens are scoped to and the proxy forwards to."""


def _token_options[F: Callable[..., Any]](command: F) -> F:
    """The options `tokens create` and `tokens import` share, `--kind` aside (bottom-up)."""
    command = json_option(command)
    command = db_option(command)
    command = click.option("--owner", default="", help="Who holds it, as a label.")(command)
    command = click.option(
        "--scope",
        default=ALL_SERVICES,
        show_default=True,
        metavar=SCOPE_METAVAR,
        help="The registered services it may reach.",
    )(command)
    command = click.option(
        "--expires",
        required=True,
        metavar=EXPIRES_METAVAR,
        help="When it stops working (a date: through that day, UTC). Never changeable.",
    )(command)
    return click.option("--name", required=True, help="A unique label for the token.")(command)


def _parse_token_options(
    name: str, expires: str, scope: str, owner: str, now: datetime
) -> tuple[datetime | None, frozenset[str] | None]:
    """Check what needs no store before opening (and maybe creating) one."""
    with user_errors():
        check_token_name(name)
        check_owner(owner)
        return parse_expiry(expires, now), parse_scope(scope)


@tokens.command("create")
@_token_options
@click.option(
    "--kind", type=click.Choice(KINDS), default="pat", show_default=True, help="pat, aat or sat."
)
def tokens_create(
    name: str, expires: str, scope: str, owner: str, db: Path, as_json: bool, kind: str
) -> None:
    """Issue a new token. It is printed once, alone on stdout, and stored only as a digest."""
    now = _now()
    expires_at, token_scope = _parse_token_options(name, expires, scope, owner, now)
    with user_errors(), open_store(db, create=True) as store:
        token, record = store.create_token(name, kind, expires_at, token_scope, owner, now)
    if as_json:
        _print_json({"token": token, **_token_json(record, now)})
    else:
        click.echo(token)
    click.echo(
        f"Shown once: store it now. From here on tokenward shows it as {record.hint}.", err=True
    )


def _read_token() -> str:
    if sys.stdin.isatty():
        value: str = click.prompt("Token", hide_input=True, err=True)
    else:
        value = sys.stdin.read()
    value = value.strip()
    if not value:
        raise click.ClickException("no token on stdin: pipe it in, e.g. from a secrets manager")
    if not is_token_shaped(value):
        raise click.ClickException(
            f"the value on stdin is not a token ({token_hint(value)}): expected sm_pat_, sm_aat_"
            " or sm_sat_ followed by 16 to 64 letters or digits"
        )
    return value


@tokens.command("import")
@_token_options
@click.option(
    "--kind", type=click.Choice(KINDS), default=None, help="Must agree with the token's prefix."
)
def tokens_import(
    name: str, expires: str, scope: str, owner: str, db: Path, as_json: bool, kind: str | None
) -> None:
    """Store a token issued elsewhere, read from stdin (never from the command line)."""
    now = _now()
    expires_at, token_scope = _parse_token_options(name, expires, scope, owner, now)
    token = _read_token()
    with user_errors(), open_store(db, create=True) as store:
        record = store.import_token(token, name, expires_at, token_scope, owner, now, kind=kind)
    if as_json:
        _print_json(_token_json(record, now))
    else:
        click.echo(f"imported {record.name!r} ({record.kind}, {record.hint})")


@tokens.command("list")
@db_option
@json_option
def tokens_list(db: Path, as_json: bool) -> None:
    """List tokens, deleted ones included, by hint: a token itself is never shown again."""
    now = _now()
    with user_errors(), open_store(db, create=False) as store:
        records = store.list_tokens(include_deleted=True)
    if as_json:
        _print_json([_token_json(record, now) for record in records])
        return
    if not records:
        click.echo(f"no tokens in {str(db)!r}", err=True)
        return
    rows = [
        (
            record.name,
            record.kind,
            record.owner or "-",
            record.hint,
            _text_time(record.created_at, "-"),
            _text_time(record.expires_at, "never"),
            format_scope(record.scope),
            _text_time(record.last_used_at, "never"),
            record.state(now).value,
        )
        for record in records
    ]
    click.echo(_table(_TOKEN_HEADERS, rows))


@tokens.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help=f"Do not ask to type {CONFIRM_WORD}.")
@db_option
def tokens_delete(name: str, yes: bool, db: Path) -> None:
    """Delete (revoke) a token: refused from the very next request, by any running proxy."""
    with user_errors(), open_store(db, create=False) as store:
        record = store.get_token(name, include_deleted=True)
        if record is None:
            raise click.ClickException(f"no token named {name!r}")
        if record.revoked_at is not None:
            raise click.ClickException(f"token {name!r} is already deleted")
        if not yes:
            click.echo(f"Deleting token {name!r} ({record.hint}).", err=True)
            answer = click.prompt(
                f"Type {CONFIRM_WORD} to confirm", default="", show_default=False, err=True
            )
            if answer != CONFIRM_WORD:
                # The answer is not echoed: it might be something pasted by mistake.
                raise click.ClickException(
                    f"not deleted: the confirmation must be exactly {CONFIRM_WORD}"
                )
        revoked = store.delete_token(name, _now())
    click.echo(f"deleted token {name!r} ({revoked.hint})")


@tokens.command("scope")
@click.argument("name")
@click.option("--scope", required=True, metavar=SCOPE_METAVAR, help="all, or service names.")
@db_option
def tokens_scope(name: str, scope: str, db: Path) -> None:
    """Change which registered services a token may reach; counts from the next request."""
    with user_errors():
        token_scope = parse_scope(scope)
    with user_errors(), open_store(db, create=False) as store:
        record = store.set_scope(name, token_scope)
    click.echo(f"token {name!r} ({record.hint}) scope: {format_scope(record.scope)}")


@services.command("add")
@click.argument("name")
@click.option("--layout", type=click.Choice(list(LAYOUTS)), required=True, help="Path layout.")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="A host name it answers to; repeatable. Default: NAME. Case and port are ignored.",
)
@click.option("--upstream", metavar="URL", help="Required: the node's http(s):// or ws(s):// URL.")
@db_option
def services_add(
    name: str, layout: str, hosts: tuple[str, ...], upstream: str | None, db: Path
) -> None:
    """Register a service: its host names, path layout and upstream node."""
    if upstream is None:
        raise click.UsageError(
            "missing option '--upstream': a service needs the URL of the node it forwards to,"
            " e.g. --upstream http://127.0.0.1:9650"
        )
    with user_errors():
        check_service_name(name)
        for host in hosts:
            normalize_host(host)
        check_upstream(upstream)
    with user_errors(), open_store(db, create=True) as store:
        service = store.add_service(name, layout, hosts or None, upstream)
    click.echo(
        f"added service {service.name!r} ({service.layout}) for {', '.join(service.hosts)}"
        f" -> {service.upstream}"
    )


@services.command("list")
@db_option
@json_option
def services_list(db: Path, as_json: bool) -> None:
    """List the registered services."""
    with user_errors(), open_store(db, create=False) as store:
        records = store.list_services()
    if as_json:
        _print_json([_service_json(service) for service in records])
        return
    if not records:
        click.echo(f"no services in {str(db)!r}: one default service applies", err=True)
        return
    rows = [
        (service.name, service.layout, ",".join(service.hosts), service.upstream)
        for service in records
    ]
    click.echo(_table(("NAME", "LAYOUT", "HOSTS", "UPSTREAM"), rows))


@services.command("remove")
@click.argument("name")
@db_option
def services_remove(name: str, db: Path) -> None:
    """Unregister a service; refused while a token not deleted has it in its scope."""
    with user_errors(), open_store(db, create=False) as store:
        service = store.remove_service(name)
    click.echo(f"removed service {service.name!r}")


@main.command("explain")
@click.argument("url")
@click.option("-H", "--header", "header_lines", multiple=True, help="A header, 'name: value'.")
@click.option("-X", "--method", default="GET", show_default=True)
@click.option(
    "--layout",
    type=click.Choice(tuple(LAYOUTS)),
    default="generic",
    show_default=True,
    help="Layout of the default service (used when no services are registered).",
)
@db_option
@json_option
def explain_command(
    url: str, header_lines: tuple[str, ...], method: str, layout: str, db: Path, as_json: bool
) -> None:
    """Where URL's token stands, the verdict, and what the upstream would receive."""
    with user_errors():
        headers = tuple(parse_header(line) for line in header_lines)
        store: TokenStore | None = None
        if db.exists():
            store = open_store(db, create=False)
            note = f"store {str(db)!r}"
        else:
            note = f"no store at {str(db)!r}"
        try:
            explanation = explain(
                url,
                headers,
                method=method,
                default_layout=layout,
                store=store,
                store_note=note,
                now=_now(),
            )
        finally:
            if store is not None:
                store.close()
    if as_json:
        _print_json(explanation.to_json())
        return
    verdict = (
        "forwarded"
        if explanation.error is None
        else f"{explanation.status} {explanation.error}: {explanation.message}"
    )
    service = explanation.service or "default service"
    lines = [
        f"request   {explanation.method} {explanation.host or '-'} {explanation.target}",
        f"service   {service} (layout {explanation.layout})",
        f"found     {', '.join(explanation.found) or 'no token in any placement'}",
        f"verdict   {verdict}",
        f"store     {explanation.store_note}",
    ]
    if explanation.upstream:
        lines.append("upstream receives, for each tokenward_forward value:")
        for view in explanation.upstream:
            if view.refusal is not None:
                lines.append(f"  {view.forward.value:<7} refused: 400 unplaceable_token")
                continue
            header = "" if view.auth_header is None else f"   x-auth-token: {view.auth_header}"
            lines.append(f"  {view.forward.value:<7} {explanation.method} {view.target}{header}")
    click.echo("\n".join(lines))


@main.command("proxy")
@db_option
@click.option("--upstream", help="Where requests go (reverse mode); default: the first service's.")
@click.option("--listen-host", default="127.0.0.1", show_default=True)
@click.option("--listen-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--layout", type=click.Choice(tuple(LAYOUTS)), default="generic", show_default=True)
@click.option(
    "--mode", type=click.Choice(("enforce", "observe")), default="enforce", show_default=True
)
@click.option(
    "--forward",
    type=click.Choice(tuple(forward.value for forward in Forward)),
    default="strip",
    show_default=True,
)
@click.option(
    "--preflight", type=click.Choice(("pass", "enforce")), default="pass", show_default=True
)
@click.option(
    "--proxy-mode",
    type=click.Choice(("reverse", "regular")),
    default="reverse",
    show_default=True,
    help="reverse: a gateway in front of nodes; regular: an HTTP proxy clients are pointed at.",
)
@click.option("--body-size-limit", help="Refuse request bodies larger than this (e.g. 100m).")
@click.option(
    "--save", "save_flows", type=click.Path(path_type=Path), help="Save flows (redacted)."
)
@click.option("--web", is_flag=True, help="Run mitmweb instead of mitmdump.")
def proxy_command(
    db: Path,
    upstream: str | None,
    listen_host: str,
    listen_port: int,
    layout: str,
    mode: str,
    forward: str,
    preflight: str,
    proxy_mode: str,
    body_size_limit: str | None,
    save_flows: Path | None,
    web: bool,
) -> None:
    """Run mitmproxy with the tokenward addon on the token store."""
    with user_errors(), open_store(db, create=False) as store:
        services = store.list_services()
    if upstream is None and proxy_mode == "reverse":
        if not services:
            raise click.ClickException(
                "give --upstream URL, or register a service: tokenward services add ..."
            )
        upstream = services[0].upstream
    settings = ProxySettings(
        db=db.resolve(),
        upstream=upstream,
        listen_host=listen_host,
        listen_port=listen_port,
        layout=layout,
        mode=mode,
        forward=forward,
        preflight=preflight,
        proxy_mode=proxy_mode,
        body_size_limit=body_size_limit,
        save_flows=save_flows,
        web=web,
    )
    sys.exit(run_proxy(settings))


def _token_option[F: Callable[..., Any]](flag: str, state: str, what: str) -> Callable[[F], F]:
    return click.option(
        flag,
        envvar=TOKEN_ENV_VARS[state],
        show_envvar=True,
        metavar="TOKEN",
        help=f"{what} token (better given in the variable, out of shell history).",
    )


@main.command("conformance")
@click.option("--target", metavar="URL", help="The gateway to check, e.g. http://127.0.0.1:8080.")
@click.option(
    "--self",
    "self_test",
    is_flag=True,
    help="Start the recording upstream and the proxy on a fresh store of its own and check"
    " them (token options are not used).",
)
@click.option(
    "--layout",
    type=click.Choice(tuple(LAYOUTS)),
    help="The target's layout (with --self: check only this one; default all).",
)
@_token_option("--valid-token", "valid", "A valid")
@_token_option("--second-token", "second_valid", "Another valid")
@_token_option("--expired-token", "expired", "An expired")
@_token_option("--revoked-token", "revoked", "A deleted")
@_token_option("--out-of-scope-token", "out_of_scope", "An out-of-scope")
@click.option(
    "--forward",
    type=click.Choice(tuple(forward.value for forward in Forward)),
    default="strip",
    show_default=True,
    help="The target's tokenward_forward.",
)
@click.option(
    "--upstream-log",
    metavar="URL",
    help="The recording upstream's control URL: also check what reached the upstream.",
)
@click.option(
    "--examples",
    type=click.IntRange(0),
    default=200,
    show_default=True,
    help="Hypothesis examples per layout, after the exhaustive matrix.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write JSON here.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Write JUnit XML.")
@click.option(
    "--html", "html_path", type=click.Path(path_type=Path), help="Write a self-contained HTML page."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 1 on a strict finding too (a choice where the contract is silent).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds a request may take, from connecting to the answer's last byte.",
)
def conformance_command(
    target: str | None,
    self_test: bool,
    layout: str | None,
    valid_token: str | None,
    second_token: str | None,
    expired_token: str | None,
    revoked_token: str | None,
    out_of_scope_token: str | None,
    forward: str,
    upstream_log: str | None,
    examples: int,
    json_path: Path | None,
    junit_path: Path | None,
    html_path: Path | None,
    strict: bool,
    timeout: float,
) -> None:
    """Check a gateway against the tokenward contract; exit status 1 on any required failure
    (with --strict, on a strict finding too).

    Sends every placement combination for every token state, then hypothesis examples, and
    compares each answer with the harness's own oracle. States with no token given are
    reported as not tested. Reports name tokens by their variables, never print them.
    """
    # The harness is imported when used: hypothesis alone takes a quarter of a second to load.
    from fixtures.processes import ProcessError
    from harness.drivers import HttpGateway
    from harness.html_report import write_html
    from harness.oracle import Forward as Declared
    from harness.oracle import Layout
    from harness.report import render, write_json, write_junit
    from harness.run import (
        Options,
        external_plan,
        planned_checks,
        run_conformance,
        self_test_target,
    )
    from harness.strategies import TokenState

    options = Options(forward=Declared(forward))
    if self_test == (target is not None):
        raise click.UsageError("give either --target URL or --self")
    with ExitStack() as stack:
        if self_test:
            if upstream_log is not None:
                raise click.UsageError("--upstream-log is for --target; --self has its own")
            layouts = tuple(Layout) if layout is None else (Layout(layout),)
            try:
                driver, plan = stack.enter_context(
                    self_test_target(options, layouts=layouts, timeout=timeout)
                )
            except ProcessError as error:
                raise click.ClickException(str(error)) from error
            title = f"tokenward conformance --self: the proxy at {plan.base_url}"
        else:
            assert target is not None
            if layout is None or valid_token is None:
                raise click.UsageError("--target needs --layout and --valid-token")
            given = {
                state: token
                for state, token in (
                    (TokenState.VALID, valid_token),
                    (TokenState.SECOND_VALID, second_token),
                    (TokenState.EXPIRED, expired_token),
                    (TokenState.REVOKED, revoked_token),
                    (TokenState.OUT_OF_SCOPE, out_of_scope_token),
                )
                if token
            }
            with user_errors():
                plan = external_plan(target, Layout(layout), given, options=options)
            try:
                driver = stack.enter_context(
                    HttpGateway(target, control_url=upstream_log, timeout=timeout)
                )
            except OSError as error:
                raise click.ClickException(f"cannot read {upstream_log}: {error}") from error
            title = f"tokenward conformance: {target}"
        with click.progressbar(
            length=planned_checks(plan, examples), label="checking", file=sys.stderr
        ) as bar:
            result = run_conformance(
                driver, plan, title=title, examples=examples, progress=bar.update
            )
    click.echo(render(result))
    if json_path is not None:
        write_json([result], json_path)
    if junit_path is not None:
        write_junit([result], junit_path, strict=strict)
    if html_path is not None:
        write_html(result, html_path)
    if not (result.passed_strict if strict else result.passed):
        sys.exit(1)
