"""Host names as services are matched: one rule for the store, the addon and explain. Pure.

A host is matched case-insensitively, without its port, with a trailing dot ignored
(`ipfs.example.com.` is `ipfs.example.com`), and IPv6 literals by their address (`[::1]:8080`,
`[0:0::1]` and `::1` are one host). The rule is strict where a host is registered and for a
request alike: a value that is no host name or IP address matches nothing.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

# RFC 1123 labels; `_` is accepted as well, since names such as `_node.internal` are in use.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_NAME_LENGTH = 253
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_PORT = 65535
# Dots and digits alone are an IPv4 address, or nothing: `999.1.1.1` is no host name.
_IPV4_LIKE = re.compile(r"[0-9.]+")


class InvalidHost(ValueError):
    """A value that is no host name or IP address (optionally with a port)."""


def normalize_host(text: str) -> str:
    """`text` as services are matched: lower case, without port, brackets or trailing dot;
    an IPv6 address in its compressed form. Raises InvalidHost saying why not."""
    host = text.strip().lower()
    if host.startswith("["):
        address, closed, rest = host[1:].partition("]")
        if closed and _is_port_suffix(rest):
            return _ipv6(address, text)
    elif host.count(":") > 1:  # a bare IPv6 address, as people write it on a command line
        return _ipv6(host, text)
    else:
        name, colon, port = host.partition(":")
        if not colon or _is_port(port):
            return _host_name(name.removesuffix("."), text)
    raise InvalidHost(f"invalid host {text!r}: expected a host name or IP address")


@lru_cache(maxsize=1024)
def addressed_host(authority: str) -> str | None:
    """The host a request addresses, normalized; None when the authority holds none.

    Cached: a proxy sees the same few authorities on every request.
    """
    try:
        return normalize_host(authority)
    except InvalidHost:
        return None


def _is_port(text: str) -> bool:
    return _PORT.fullmatch(text) is not None and int(text) <= _MAX_PORT


def _is_port_suffix(text: str) -> bool:
    return text == "" or (text.startswith(":") and _is_port(text[1:]))


def _ipv6(address: str, original: str) -> str:
    try:
        return ipaddress.IPv6Address(address).compressed
    except ValueError:
        raise InvalidHost(f"invalid host {original!r}: not an IPv6 address") from None


def _host_name(name: str, original: str) -> str:
    if _IPV4_LIKE.fullmatch(name):
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise InvalidHost(f"invalid host {original!r}: not an IPv4 address") from None
    if (
        not name
        or len(name) > _MAX_NAME_LENGTH
        or not all(_LABEL.fullmatch(label) for label in name.split("."))
    ):
        raise InvalidHost(f"invalid host {original!r}: expected a host name or IP address")
    return name
