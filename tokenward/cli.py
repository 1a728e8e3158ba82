"""The `tokenward` command: thin click wrappers over the token store.

User errors (bad values, refusals, an unusable store file) end as one line on stderr and exit
status 1 (click's usage errors: 2); never a traceback. Commands that add things (`tokens create`,
`tokens import`, `services add`) create the store when missing; every other command refuses a
missing store, since there is nothing in it to list, change or delete.

Other modules add their commands to `main` and reuse `db_option`, `json_option`, `open_store`
and `user_errors`.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

import click
from click.core import ParameterSource

from tokenward.core.decision import (
    Mode,
    Options,
    Preflight,
    ProxyMode,
    TokenLookup,
    Unavailable,
    UnknownHosts,
)
from tokenward.core.layouts import LAYOUTS, LayoutName, layout_named
from tokenward.core.lifetimes import (
    ALL_SERVICES,
    check_service_name,
    format_scope,
    parse_expiry,
    parse_scope,
)
from tokenward.core.records import ServiceRecord, TokenRecord, check_owner, check_token_name
from tokenward.core.tokens import KINDS, is_token_shaped, token_hint
from tokenward.core.verdicts import Forward
from tokenward.explain import explain, parse_header, parse_url
from tokenward.proxy import (
    ADDON_SCRIPT,
    ProxySettings,
    parse_mitmproxy_option,
    run_proxy,
    start_summary,
)
from tokenward.store import (
    PostgresStore,
    Store,
    StoreError,
    StoreMissing,
    check_upstream,
    is_postgresql_url,
    normalize_host,
    shown_location,
)
from tokenward.store import open_store as open_any_store

DB_ENVVAR = "TOKENWARD_DB"
# Where the group keeps the `--db` given before the command (`tokenward --db x tokens list`).
_GROUP_DB = "tokenward.db"
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


def word_choice(words: type[StrEnum]) -> click.Choice[str]:
    """A choice of the words of one of the core's option enums, as typed."""
    return click.Choice([str(word) for word in words])


def db_option[F: Callable[..., Any]](command: F) -> F:
    """`--db PATH|URL` (parameter `db`): $TOKENWARD_DB, else tokenward.db in the current folder.

    `tokenward --db PATH|URL COMMAND` gives it too; the command's own `--db` wins over it."""
    command = click.option(
        "--db",
        # Text, not click.Path: a postgresql:// URL is no path (Path would fold its //).
        type=str,
        envvar=DB_ENVVAR,
        default=DEFAULT_DB,
        show_default=True,
        show_envvar=True,
        help="The token store: an SQLite file, or a postgresql://user@host:port/dbname URL.",
    )(command)
    return _db_given_before_the_command(command)


def _db_given_before_the_command[F: Callable[..., Any]](command: F) -> F:
    """`command` taking the group's `--db` when its own `--db` was not on the command line."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context()
        group_db = context.meta.get(_GROUP_DB)
        if group_db is not None and (
            context.get_parameter_source("db") is not ParameterSource.COMMANDLINE
        ):
            db_parameter = next(p for p in context.command.params if p.name == "db")
            kwargs["db"] = db_parameter.type_cast_value(context, group_db)
        return command(*args, **kwargs)

    return run  # type: ignore[return-value]


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


def open_store(db: str | os.PathLike[str], create: bool) -> Store:
    """The store at `db` for a command; `create` makes it when missing (for commands that add)."""
    with user_errors():
        return open_any_store(db, create=create)


def resolved_location(db: str) -> str:
    """`db` for another process: a URL as it is, a path made absolute."""
    return db if is_postgresql_url(db) else str(Path(db).resolve())


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


class Commands(click.Group):
    """The `tokenward` group; commands of the rooms above this one (the harness, the console)
    are named here and imported only when called, so the library imports downwards only."""

    LAZY: ClassVar[dict[str, str]] = {
        "conformance": "tokenward.harness.command:conformance_command",
        "console": "tokenward.console.command:console_group",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.LAZY:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = self.LAZY[cmd_name].partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenward", prog_name="tokenward")
@click.option(
    "--db",
    metavar="PATH",
    help="The token store for the command (as the command's own --db, which wins).",
)
@click.pass_context
def main(context: click.Context, db: str | None) -> None:
    """tokenward: access tokens for blockchain nodes, checked by a mitmproxy addon."""
    context.meta[_GROUP_DB] = db


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
    name: str, expires: str, scope: str, owner: str, db: str, as_json: bool, kind: str
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
    name: str, expires: str, scope: str, owner: str, db: str, as_json: bool, kind: str | None
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
def tokens_list(db: str, as_json: bool) -> None:
    """List tokens, deleted ones included, by hint: a token itself is never shown again."""
    now = _now()
    with user_errors(), open_store(db, create=False) as store:
        records = store.list_tokens(include_deleted=True)
    if as_json:
        _print_json([_token_json(record, now) for record in records])
        return
    if not records:
        click.echo(f"no tokens in {shown_location(db)!r}", err=True)
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
def tokens_delete(name: str, yes: bool, db: str) -> None:
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
def tokens_scope(name: str, scope: str, db: str) -> None:
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
    name: str, layout: str, hosts: tuple[str, ...], upstream: str | None, db: str
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
def services_list(db: str, as_json: bool) -> None:
    """List the registered services."""
    with user_errors(), open_store(db, create=False) as store:
        records = store.list_services()
    if as_json:
        _print_json([_service_json(service) for service in records])
        return
    if not records:
        click.echo(f"no services in {shown_location(db)!r}: one default service applies", err=True)
        return
    rows = [
        (service.name, service.layout, ",".join(service.hosts), service.upstream)
        for service in records
    ]
    click.echo(_table(("NAME", "LAYOUT", "HOSTS", "UPSTREAM"), rows))


@services.command("remove")
@click.argument("name")
@db_option
def services_remove(name: str, db: str) -> None:
    """Unregister a service; refused while a token not deleted has it in its scope."""
    with user_errors(), open_store(db, create=False) as store:
        service = store.remove_service(name)
    click.echo(f"removed service {service.name!r}")


@main.group("store")
def store_group() -> None:
    """The store itself: copy it to another, grant a proxy's PostgreSQL role."""


@store_group.command("copy")
@click.option("--from", "source", required=True, metavar="PATH|URL", help="The store to copy.")
@click.option(
    "--to", "destination", required=True, metavar="PATH|URL", help="An empty (or new) store."
)
def store_copy(source: str, destination: str) -> None:
    """Copy a store (SQLite and PostgreSQL either way): tokens as digests, never plaintext,
    deleted ones and last use included; refused when the destination is not empty."""
    with user_errors(), open_store(source, create=False) as origin:
        rows = origin.export_rows()
        with open_store(destination, create=True) as target:
            target.import_rows(rows)
    click.echo(
        f"copied {len(rows.tokens)} token(s), {len(rows.services)} service(s) and"
        f" {len(rows.console_keys)} console key(s) from {shown_location(source)!r}"
        f" to {shown_location(destination)!r}"
    )


@store_group.command("grant-proxy")
@click.argument("role")
@db_option
def store_grant_proxy(role: str, db: str) -> None:
    """Let an existing PostgreSQL ROLE do what a proxy does, nothing more: read tokens and
    services, record last use (docs/fleet.md)."""
    with user_errors(), open_store(db, create=False) as store:
        if not isinstance(store, PostgresStore):
            raise click.ClickException("roles are PostgreSQL's: give --db postgresql://...")
        store.grant_proxy(role)
    click.echo(f"role {role!r} may read tokens and services and record last use")


@main.command("explain")
@click.argument("url")
@click.option("-H", "--header", "header_lines", multiple=True, help="A header, 'name: value'.")
@click.option("-X", "--method", default="GET", show_default=True, help="As sent: case counts.")
@click.option(
    "--layout",
    type=word_choice(LayoutName),
    default=LayoutName.GENERIC.value,
    show_default=True,
    help="Layout of the default service (used when no services are registered).",
)
@click.option(
    "--proxy-mode",
    type=word_choice(ProxyMode),
    default=ProxyMode.REVERSE.value,
    show_default=True,
    help="How clients reach the proxy.",
)
@click.option("--mode", type=word_choice(Mode), default=Mode.ENFORCE.value, show_default=True)
@click.option(
    "--forward", type=word_choice(Forward), default=Forward.STRIP.value, show_default=True
)
@click.option(
    "--preflight", type=word_choice(Preflight), default=Preflight.PASS.value, show_default=True
)
@click.option(
    "--unknown-hosts",
    type=word_choice(UnknownHosts),
    default=UnknownHosts.GUARD.value,
    show_default=True,
    help="Regular mode: a request carrying a token to a host that is no service.",
)
@db_option
@json_option
def explain_command(
    url: str,
    header_lines: tuple[str, ...],
    method: str,
    layout: str,
    proxy_mode: str,
    mode: str,
    forward: str,
    preflight: str,
    unknown_hosts: str,
    db: str,
    as_json: bool,
) -> None:
    """What the proxy would do with a request to URL: the verdict, and what the upstream
    receives. Exit status 0 when it would be forwarded, 1 when refused, 2 on a usage error."""
    try:
        headers = tuple(parse_header(line) for line in header_lines)
        parse_url(url)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    options = Options(
        mode=Mode(mode),
        forward=Forward(forward),
        preflight=Preflight(preflight),
        unknown_hosts=UnknownHosts(unknown_hosts),
    )
    with ExitStack() as stack:
        store: Store | None = None
        try:
            store = stack.enter_context(open_any_store(db, create=False))
            services = store.list_services()
            note = f"store {shown_location(db)!r}"
        except StoreError as error:
            services, note = (), str(error)
        lookup = store_lookup(store, note)
        explanation = explain(
            url,
            headers,
            method=method,
            services=services,
            options=options,
            default_layout=layout_named(layout),
            proxy_mode=ProxyMode(proxy_mode),
            lookup=lookup,
            store_note=note,
            now=_now(),
        )
    if as_json:
        _print_json(explanation.to_json())
    else:
        click.echo("\n".join(explanation.lines()))
    if explanation.decision.refused:
        sys.exit(1)


def store_lookup(store: Store | None, unavailable: str) -> TokenLookup:
    """The decision's view of `store`: a record, None, or why it cannot be read."""

    def lookup(token: str) -> TokenRecord | Unavailable | None:
        if store is None:
            return Unavailable(unavailable)
        try:
            return store.lookup(token)
        except StoreError as error:
            return Unavailable(str(error))

    return lookup


def _checked_mitmproxy_options(
    context: click.Context, parameter: click.Parameter, assignments: tuple[str, ...]
) -> tuple[str, ...]:
    """The `--set` values when each is NAME=VALUE; a usage error quoting the first that is not."""
    for assignment in assignments:
        try:
            parse_mitmproxy_option(assignment)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--set") from None
    return assignments


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
@click.option("--web-host", help="Where mitmweb serves its page (with --web; default 127.0.0.1).")
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    help="The port of mitmweb's page (with --web; default 8081).",
)
@click.option(
    "--set",
    "mitmproxy_options",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_checked_mitmproxy_options,
    help="Any mitmproxy option, e.g. --set ssl_insecure=true (repeatable; wins over the above).",
)
def proxy_command(
    db: str,
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
    web_host: str | None,
    web_port: int | None,
    mitmproxy_options: tuple[str, ...],
) -> None:
    """Run mitmproxy with the tokenward addon on the token store.

    It prints what it is about to do (mode, store, services, listen address and, in regular
    mode, the CA certificate a client must trust) on stderr, then mitmproxy's own lines."""
    if not web and (web_host is not None or web_port is not None):
        raise click.UsageError("--web-host and --web-port need --web")
    if upstream is not None:
        with user_errors():
            check_upstream(upstream)
    with user_errors(), open_store(db, create=False) as store:
        services = store.list_services()
    if upstream is None and proxy_mode == "reverse":
        if not services:
            raise click.ClickException(
                "give --upstream URL, or register a service: tokenward services add ..."
            )
        upstream = services[0].upstream
    settings = ProxySettings(
        db=resolved_location(db),
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
        web_host=web_host,
        web_port=web_port,
        mitmproxy_options=mitmproxy_options,
    )
    click.echo(start_summary(settings, services), err=True)
    sys.exit(run_proxy(settings))


@main.command("addon-path")
def addon_path_command() -> None:
    """The path of the mitmproxy script, for a mitmproxy of your own:
    mitmdump -s "$(tokenward addon-path)"."""
    click.echo(str(ADDON_SCRIPT))
