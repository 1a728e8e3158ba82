"""`tokenward proxy`: mitmproxy with the tokenward addon, set up for a gateway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The mitmproxy script, found by path: the library does not import its own addons.
ADDON_SCRIPT = Path(__file__).resolve().parent / "addons" / "tokenward.py"


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
        "--set",
        f"tokenward_db={settings.db}",
        "--set",
        f"tokenward_mode={settings.mode}",
        "--set",
        f"tokenward_forward={settings.forward}",
        "--set",
        f"tokenward_layout={settings.layout}",
        "--set",
        f"tokenward_preflight={settings.preflight}",
        # Connect upstream per request, not when a client connects: a rejected request then
        # opens no upstream connection, and an unreachable upstream gets a 502, not a hang-up.
        "--set",
        "connection_strategy=lazy",
        # Accepted uploads stream through instead of being held whole in memory.
        "--set",
        "stream_large_bodies=1m",
    ]
    if settings.body_size_limit is not None:
        arguments += ["--set", f"body_size_limit={settings.body_size_limit}"]
    if settings.save_flows is not None:
        arguments += ["--save-stream-file", str(settings.save_flows)]
    return arguments


def run_proxy(settings: ProxySettings) -> int:
    """Run mitmdump (or mitmweb) in this process until it is stopped; its exit status."""
    from mitmproxy.tools import main

    run = main.mitmweb if settings.web else main.mitmdump
    status = run(mitmproxy_arguments(settings))
    return status or 0
