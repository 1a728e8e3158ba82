"""`tokenward proxy`: mitmproxy with the tokenward addon, set up for a gateway."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenward.core.records import ServiceRecord

# The mitmproxy script, found by path: the library does not import its own addons.
ADDON_SCRIPT = Path(__file__).resolve().parent / "addons" / "tokenward.py"
# mitmproxy's defaults for the options the start summary reports.
DEFAULT_CONFDIR = "~/.mitmproxy"
DEFAULT_WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8081
WEB_COLUMNS = ("tls", "icon", "path", "method", "status", "size", "time", "comment")
# The CA certificate mitmproxy writes into its confdir on first start, in PEM.
CA_CERT_FILE = "mitmproxy-ca-cert.pem"


def parse_mitmproxy_option(assignment: str) -> tuple[str, str]:
    """`NAME=VALUE` of a `--set` as (NAME, VALUE); ValueError quoting it when it is not one."""
    name, equals, value = assignment.partition("=")
    if not equals or not name.strip() or name != name.strip():
        raise ValueError(f"{assignment!r} is not NAME=VALUE")
    return name, value


@dataclass(frozen=True, slots=True)
class ProxySettings:
    db: str | Path  # an SQLite file or a postgresql:// URL
    upstream: str | None
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    layout: str = "generic"
    mode: str = "enforce"
    forward: str = "strip"
    preflight: str = "pass"
    proxy_mode: str = "reverse"
    body_size_limit: str | None = None
    save_flows: Path | None = None
    web: bool = False
    web_host: str | None = None
    web_port: int | None = None
    # `--set NAME=VALUE` for any mitmproxy option, last, so they win over the settings above.
    mitmproxy_options: tuple[str, ...] = ()

    def option(self, name: str) -> str | None:
        """The value `--set` gave option `name` (the last one), or None."""
        values = [
            value
            for option_name, value in map(parse_mitmproxy_option, self.mitmproxy_options)
            if option_name == name
        ]
        return values[-1] if values else None


def mitmproxy_arguments(settings: ProxySettings) -> list[str]:
    """The command-line arguments for mitmdump (or mitmweb) that run the gateway."""
    if settings.proxy_mode == "reverse":
        if settings.upstream is None:
            raise ValueError("reverse mode needs an upstream URL (--upstream) or a service")
        mode = f"reverse:{settings.upstream}"
    else:
        mode = "regular"
    arguments = [
        "--mode",
        mode,
        "--listen-host",
        settings.listen_host,
        "--listen-port",
        str(settings.listen_port),
        "--scripts",
        str(ADDON_SCRIPT),
    ]
    options = [
        ("tokenward_db", str(settings.db)),
        ("tokenward_mode", settings.mode),
        ("tokenward_forward", settings.forward),
        ("tokenward_layout", settings.layout),
        ("tokenward_preflight", settings.preflight),
        # Connect upstream per request, not when a client connects: a rejected request then
        # opens no upstream connection, and an unreachable upstream gets a 502, not a hang-up.
        ("connection_strategy", "lazy"),
        # Accepted uploads stream through instead of being held whole in memory.
        ("stream_large_bodies", "1m"),
    ]
    if settings.body_size_limit is not None:
        options.append(("body_size_limit", settings.body_size_limit))
    if settings.web:
        # A proxy started from a terminal or a test opens no browser of its own.
        options.append(("web_open_browser", "false"))
        # mitmweb's own columns and the comment, where tokenward writes each verdict.
        options += [("web_columns", column) for column in WEB_COLUMNS]
        if settings.web_host is not None:
            options.append(("web_host", settings.web_host))
        if settings.web_port is not None:
            options.append(("web_port", str(settings.web_port)))
    # mitmproxy refuses two values for one option: one given with --set replaces ours.
    given = [parse_mitmproxy_option(assignment) for assignment in settings.mitmproxy_options]
    given_names = {name for name, _ in given}
    for name, value in [*(o for o in options if o[0] not in given_names), *given]:
        arguments += ["--set", f"{name}={value}"]
    if settings.save_flows is not None:
        arguments += ["--save-stream-file", str(settings.save_flows)]
    return arguments


def start_summary(settings: ProxySettings, services: Sequence[ServiceRecord]) -> str:
    """What the proxy about to start does, for the person who started it: mode, store,
    services, where it listens and, in regular mode, the CA a client must trust."""
    unknown_hosts = settings.option("tokenward_unknown_hosts") or "guard"
    mode = settings.option("tokenward_mode") or settings.mode
    forward = settings.option("tokenward_forward") or settings.forward
    preflight = settings.option("tokenward_preflight") or settings.preflight
    layout = settings.option("tokenward_layout") or settings.layout
    lines = [
        f"tokenward proxy: {mode} mode, tokens forwarded as {forward!r},"
        f" CORS preflights {preflight}",
        f"  store     {settings.db}",
        f"  listen    {settings.listen_host}:{settings.listen_port}"
        f" ({settings.proxy_mode} proxy"
        + ("" if settings.listen_port else ", port 0: mitmproxy picks one and prints it")
        + ")",
    ]
    if settings.web:
        web_host = settings.web_host or settings.option("web_host") or DEFAULT_WEB_HOST
        web_port = settings.web_port or settings.option("web_port") or DEFAULT_WEB_PORT
        lines.append(f"  web       mitmweb at http://{web_host}:{web_port}/")
    for service in services:
        lines.append(
            f"  service   {service.name}: hosts {', '.join(service.hosts)};"
            f" layout {service.layout}; upstream {service.upstream}"
        )
    if not services:
        forwards_to = settings.upstream or "the host each client asks for"
        lines.append(
            f"  service   (none registered) every request: layout {layout}; upstream {forwards_to}"
        )
    if settings.proxy_mode == "regular":
        confdir = Path(settings.option("confdir") or DEFAULT_CONFDIR).expanduser()
        ca_cert = confdir / CA_CERT_FILE
        host = services[0].hosts[0] if services else "SERVICE-HOST"
        listen = f"{settings.listen_host}:{settings.listen_port or 'PORT'}"
        lines += [
            f"  others    other hosts pass untouched; a token sent to one: {unknown_hosts}",
            f"  trust     {ca_cert} (mitmproxy's CA, made on first start) to send HTTPS",
            f"  try       curl -x http://{listen} --cacert {ca_cert} https://{host}/",
        ]
    return "\n".join(lines)


def run_proxy(settings: ProxySettings) -> int:
    """Run mitmdump (or mitmweb) in this process until it is stopped; its exit status."""
    from mitmproxy.tools import main

    run = main.mitmweb if settings.web else main.mitmdump
    status = run(mitmproxy_arguments(settings))
    return status or 0
