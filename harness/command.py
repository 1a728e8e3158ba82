"""`tokenward conformance`: the harness's command, registered on the `tokenward` group.

It lives with the harness, which it drives; the CLI names it and imports it only when called.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from tokenward.cli import user_errors
from tokenward.core.layouts import LAYOUTS
from tokenward.fixtures.processes import ProcessError
from tokenward.harness.drivers import HttpGateway
from tokenward.harness.html_report import write_html
from tokenward.harness.oracle import TOKEN_ENV_VARS, Layout
from tokenward.harness.oracle import Forward as Declared
from tokenward.harness.report import render, write_json, write_junit
from tokenward.harness.run import (
    Options,
    external_plan,
    planned_checks,
    run_conformance,
    self_test_target,
)
from tokenward.harness.strategies import TokenState
from tokenward.store import StoreError


def _token_option[F: Callable[..., Any]](flag: str, state: str, what: str) -> Callable[[F], F]:
    return click.option(
        flag,
        envvar=TOKEN_ENV_VARS[state],
        show_envvar=True,
        metavar="TOKEN",
        help=f"{what} token (better given in the variable, out of shell history).",
    )


@click.command("conformance")
@click.option("--target", metavar="URL", help="The gateway to check, e.g. http://127.0.0.1:8080.")
@click.option(
    "--self",
    "self_test",
    is_flag=True,
    help="Start the recording upstream and the proxy on a fresh store of its own and check"
    " them (token options are not used).",
)
@click.option(
    "--db",
    metavar="PATH|URL",
    help="With --self: run the proxy on this empty store (e.g. a postgresql:// URL) instead of"
    " a fresh SQLite file.",
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
    type=click.Choice([forward.value for forward in Declared]),
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
    db: str | None,
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
    options = Options(forward=Declared(forward))
    if self_test == (target is not None):
        raise click.UsageError("give either --target URL or --self")
    with ExitStack() as stack:
        if self_test:
            if upstream_log is not None:
                raise click.UsageError("--upstream-log is for --target; --self has its own")
        elif db is not None:
            raise click.UsageError("--db is for --self; a --target has its own store")
        if self_test:
            layouts = tuple(Layout) if layout is None else (Layout(layout),)
            try:
                driver, plan = stack.enter_context(
                    self_test_target(options, layouts=layouts, timeout=timeout, db=db)
                )
            except (ProcessError, StoreError, ValueError) as error:
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
