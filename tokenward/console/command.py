"""`tokenward console`: serve the console; `tokenward console keys ...`: its admin keys.

Registered by `tokenward.cli` (import the CLI, not this module, first: this one uses the
CLI's shared options). The web application is imported only when it is served.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from tokenward.cli import (
    CONFIRM_WORD,
    _print_json,
    _table,
    db_option,
    json_option,
    open_store,
    user_errors,
)
from tokenward.console.keys import console_key_digest, console_key_hint, issue_console_key
from tokenward.store import shown_location

DEFAULT_PORT = 8090


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group("console", invoke_without_command=True)
@db_option
@click.option("--listen-host", default="127.0.0.1", show_default=True)
@click.option(
    "--listen-port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True
)
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve HTTPS with this certificate (PEM); needed on an address other than loopback.",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The certificate's private key (PEM), when it is not in --certfile.",
)
@click.option(
    "--insecure-plain-http",
    is_flag=True,
    help="Serve plain HTTP on an address other than loopback (e.g. behind a TLS proxy).",
)
@click.pass_context
def console_command(
    context: click.Context,
    db: str,
    listen_host: str,
    listen_port: int,
    certfile: Path | None,
    keyfile: Path | None,
    insecure_plain_http: bool,
) -> None:
    """Serve a web page and a JSON API for tokens and services on the token store.

    Everything but the sign-in page needs an admin key (tokenward console keys create).
    """
    if context.invoked_subcommand is not None:
        return
    if keyfile is not None and certfile is None:
        raise click.UsageError("--keyfile needs --certfile")
    if certfile is None and not insecure_plain_http and not _is_loopback(listen_host):
        raise click.UsageError(
            f"{listen_host!r} is not a loopback address: give --certfile (and --keyfile) to"
            " serve HTTPS, or --insecure-plain-http to send admin keys and tokens in the clear"
        )
    store = open_store(db, create=False)
    # Bound here, so that the address printed is the one served (port 0 picks a free one).
    family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((listen_host, listen_port))
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {listen_host}:{listen_port}: {error.strerror}"
        ) from error
    from tokenward.console.serve import serve

    sys.exit(serve(store, listener, certfile, keyfile))


@console_command.group()
def keys() -> None:
    """Admin keys: each signs in to the page and authorizes the API. Never valid at a proxy."""


@keys.command("create")
@click.option("--name", required=True, help="A unique label for the key.")
@db_option
def keys_create(name: str, db: str) -> None:
    """Make an admin key. It is printed once, alone on stdout, and stored only as a digest."""
    key = issue_console_key()
    with user_errors(), open_store(db, create=True) as store:
        record = store.create_console_key(
            name, console_key_digest(key), console_key_hint(key), datetime.now(UTC)
        )
    click.echo(key)
    click.echo(f"Shown once: store it now. From here on it shows as {record.hint}.", err=True)


@keys.command("list")
@db_option
@json_option
def keys_list(db: str, as_json: bool) -> None:
    """List the admin keys by name and hint."""
    with user_errors(), open_store(db, create=False) as store:
        records = store.list_console_keys()
    if as_json:
        _print_json(
            [
                {"name": key.name, "hint": key.hint, "created_at": key.created_at.isoformat()}
                for key in records
            ]
        )
        return
    if not records:
        click.echo(f"no console keys in {shown_location(db)!r}", err=True)
        return
    rows = [(key.name, key.hint, key.created_at.strftime("%Y-%m-%d %H:%M")) for key in records]
    click.echo(_table(("NAME", "HINT", "CREATED"), rows))


@keys.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help=f"Do not ask to type {CONFIRM_WORD}.")
@db_option
def keys_delete(name: str, yes: bool, db: str) -> None:
    """Delete an admin key: its API calls and page sessions are refused from the next request."""
    with user_errors(), open_store(db, create=False) as store:
        if not yes:
            answer = click.prompt(
                f"Type {CONFIRM_WORD} to delete console key {name!r}",
                default="",
                show_default=False,
                err=True,
            )
            if answer != CONFIRM_WORD:
                raise click.ClickException(
                    f"not deleted: the confirmation must be exactly {CONFIRM_WORD}"
                )
        record = store.delete_console_key(name)
    click.echo(f"deleted console key {record.name!r} ({record.hint})")


# Declared, not inferred: the CLI imports this while mypy is still inferring the decorators above
# (the two modules import each other).
console_group: click.Group = console_command
