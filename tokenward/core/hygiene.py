"""Request hygiene: what a request must be before any token rule is asked. Pure.

Folded header fields, upgrades other than a WebSocket handshake, and what makes a request a
CORS preflight (which may pass without a token). The size limits, which must be checked before
anything is decoded, are `placement.oversized`.
"""

from __future__ import annotations

from enum import Enum
from itertools import chain

from tokenward.core.placement import Request


class Upgrade(Enum):
    """What a request asks its connection to switch to."""

    NONE = "none"
    WEBSOCKET = "websocket"  # a handshake that mitmproxy carries as a WebSocket
    OTHER = "other"  # anything else, which mitmproxy would carry as a raw TCP tunnel


def upgrade_asked(request: Request) -> Upgrade:
    """What the request asks to switch to. A WebSocket handshake is one `Upgrade` field of
    `websocket` (in any case) and one `Sec-WebSocket-Version` of exactly `13`, as mitmproxy
    checks before it carries a 101 as a WebSocket; several protocols, several fields or another
    version would get a raw tunnel."""
    upgrades: list[str] = []
    versions: list[str] = []
    for name, value in request.headers:
        # The length first: lower() costs more, and keeps a Latin-1 name's length.
        length = len(name)
        if length == 7 and name.lower() == "upgrade":
            upgrades.append(value)
        elif length == 21 and name.lower() == "sec-websocket-version":
            versions.append(value)
    if not upgrades:
        return Upgrade.NONE
    if len(upgrades) == 1 and upgrades[0].strip().lower() == "websocket" and versions == ["13"]:
        return Upgrade.WEBSOCKET
    return Upgrade.OTHER


def holds_line_break(request: Request) -> bool:
    """A header field holding CR or LF: mitmproxy's HTTP/1 reader keeps a line folded onto the
    one before (obs-fold) in that field's value, as CR LF and a space, and would forward it so
    (`mitmproxy/net/http/http1/read.py`, `_read_headers`)."""
    fields = "".join(chain.from_iterable(request.headers))
    return "\r" in fields or "\n" in fields


def is_preflight(request: Request) -> bool:
    """A CORS preflight: the method exactly `OPTIONS` as sent (methods are case-sensitive),
    `Origin` and `Access-Control-Request-Method`, no `Upgrade`, and no body: no
    `Transfer-Encoding`, a `Content-Length` absent or 0, and no DATA frames on HTTP/2 or 3
    (`request.body_follows`)."""
    if request.method != "OPTIONS" or request.body_follows:
        return False
    names = set()
    for name, value in request.headers:
        lowered = name.lower()
        if lowered in ("transfer-encoding", "upgrade") or (
            lowered == "content-length" and value.strip() != "0"
        ):
            return False
        names.add(lowered)
    return "origin" in names and "access-control-request-method" in names
