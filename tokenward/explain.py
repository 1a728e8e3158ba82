"""`tokenward explain`: what the proxy would do with a request, from the very same decision.

The request is built from a URL and header lines, routed by the store's services with the
core's host rule, and judged by `tokenward.core.decision.decide` with the store's facts, as
the addon judges it. What is printed shows tokens as hints only, errors included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from tokenward.core.decision import (
    Decision,
    Options,
    ProxyMode,
    Reach,
    Route,
    TokenLookup,
    decide,
)
from tokenward.core.hosts import addressed_host
from tokenward.core.layouts import Layout, layout_named
from tokenward.core.placement import Request, redact_request, redact_text
from tokenward.core.records import ServiceRecord
from tokenward.core.verdicts import MESSAGES

URL_SCHEMES = ("http", "https", "ws", "wss")


@dataclass(frozen=True, slots=True)
class Explanation:
    request: Request  # as the client sends it
    host: str
    route: Route
    decision: Decision
    store_note: str

    def to_json(self) -> dict[str, object]:
        """The answer `--json` prints: the verdict and what the upstream receives, as hints."""
        decision = self.decision
        upstream = None
        if decision.upstream is not None:
            shown = redact_request(decision.upstream)
            upstream = {
                "target": shown_text(shown.target),
                "headers": [[shown_text(name), shown_text(value)] for name, value in shown.headers],
            }
        return {
            "status": decision.status,
            "error": None if decision.error is None else str(decision.error),
            "placement": None if decision.placement is None else str(decision.placement),
            "advice": decision.advice,
            "upstream": upstream,
        }

    def lines(self) -> list[str]:
        """The same for a person."""
        decision, request = self.decision, self.request
        shown = redact_request(request)
        service = self.route.service or "default service"
        if self.route.reach is Reach.UNKNOWN:
            service = "no service answers to this host"
        elif self.route.reach is Reach.FOREIGN:
            service = "no service (regular mode: a host of its own)"
        if decision.error is None:
            verdict = "forwarded" + (", untouched" if decision.passed_through else "")
        else:
            message = decision.message or MESSAGES[decision.error]
            verdict = f"{decision.status} {decision.error}: {message}"
            if decision.placement is not None:
                verdict += f" (placement {decision.placement})"
            if not decision.refused:
                verdict += " (observe mode: forwarded all the same)"
        lines = [
            f"request   {shown_method(request.method)}"
            f" {printable(redact_text(self.host)) or '-'} {shown_text(shown.target)}",
            f"service   {service} (layout {self.route.layout.name})",
            f"verdict   {verdict}",
        ]
        if decision.advice is not None:
            lines.append(f"advice    {decision.advice}")
        lines.extend(f"warning   {warning}" for warning in decision.warnings)
        if decision.upstream is not None:
            upstream = redact_request(decision.upstream)
            lines.append(f"upstream  {shown_method(upstream.method)} {shown_text(upstream.target)}")
            lines.extend(
                f"          {shown_text(name)}: {shown_text(value)}"
                for name, value in upstream.headers
            )
        lines.append(f"store     {self.store_note}")
        return lines


def parse_url(url: str) -> tuple[str, str]:
    """The authority and the raw request target of `url` (`http://host/p?q`, or a bare `/p?q`);
    ValueError quoting it, with tokens as hints, when it is neither."""
    if url.startswith("/"):
        return "", url.partition("#")[0]
    expected = f"expected an http(s) or ws(s) URL or a path starting with '/': {redact_text(url)!r}"
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit's own messages quote the URL's parts as they are (its NFKC check quotes
        # the whole authority), tokens and all: only the redacted URL is quoted.
        raise ValueError(expected) from None
    if parts.scheme not in URL_SCHEMES or not parts.netloc:
        raise ValueError(expected)
    authority = parts.netloc.rpartition("@")[2]
    after_authority = url.split("//", 1)[1][len(parts.netloc) :]
    target = after_authority.partition("#")[0] or "/"
    if target.startswith("?"):
        target = "/" + target
    return authority, target


def parse_header(text: str) -> tuple[str, str]:
    """A header line `name: value`; ValueError quoting it, with tokens as hints, otherwise."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"expected a header as 'name: value': {redact_text(text)!r}")
    return name.strip(), value.strip()


def route_for(
    authority: str,
    services: tuple[ServiceRecord, ...],
    default_layout: Layout,
    proxy_mode: ProxyMode,
) -> Route:
    """The route the addon gives a request to `authority`, with the same host rule."""
    if not services:
        return Route(None, default_layout)
    host = addressed_host(authority)
    for service in services:
        if host is not None and host in {addressed_host(name) for name in service.hosts}:
            return Route(service.name, layout_named(service.layout))
    reach = Reach.UNKNOWN if proxy_mode is ProxyMode.REVERSE else Reach.FOREIGN
    # The host as the addon's answer names it: normalized, else as the URL wrote it.
    return Route(None, default_layout, reach, host or authority)


def explain(
    url: str,
    headers: tuple[tuple[str, str], ...],
    *,
    method: str,
    services: tuple[ServiceRecord, ...],
    options: Options,
    default_layout: Layout,
    proxy_mode: ProxyMode,
    lookup: TokenLookup,
    store_note: str,
    now: datetime,
) -> Explanation:
    authority, target = parse_url(url)
    if not authority and proxy_mode is ProxyMode.REVERSE:
        # A bare path is what a client sends a reverse proxy, with the host in its Host field:
        # the addon routes by that (as mitmproxy reads it: several fields joined, and then no
        # host at all). A URL's host counts before any Host line, as an absolute-form
        # target's does for the addon.
        authority = ", ".join(value for name, value in headers if name.lower() == "host")
    request = Request(
        raw_text(method),
        raw_text(target),
        tuple((raw_text(name), raw_text(value)) for name, value in headers),
    )
    route = route_for(authority, services, default_layout, proxy_mode)
    decision = decide(request, route, options, lookup, now)
    return Explanation(request, authority, route, decision, store_note)


def raw_text(text: str) -> str:
    """The core's view of what a person typed: its bytes (UTF-8, and the bytes of a command
    line that are no UTF-8 as they came, which Python holds as surrogates) as Latin-1 text, as
    the addon holds what a client sent."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def printable(text: str) -> str:
    """What a person typed, printable: bytes that are no UTF-8 shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def shown_method(latin1_method: str) -> str:
    """A method for a person, a token in it (a method may be any run of tchars) as its hint."""
    return redact_text(shown_text(latin1_method))


def shown_text(latin1_text: str) -> str:
    """A Latin-1 view of bytes as the text a person reads (the bytes as UTF-8)."""
    return latin1_text.encode("latin-1").decode("utf-8", "replace")
