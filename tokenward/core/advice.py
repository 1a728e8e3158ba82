"""What a verdict's answer says to a person: its message and its advice. Pure.

`explain_verdict` is called by `decide` once the verdict stands, so the addon's answer, its log
lines, observe mode and `tokenward explain` all say the same, and nothing here can change a
verdict. What is shown of the request never holds a full token: tokens as display hints,
names from the request redacted and cut short, malformed values by their length only.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tokenward.core.layouts import Layout
from tokenward.core.placement import (
    AUTH_HEADER,
    TOKEN_PARAMETER,
    Finding,
    Request,
    Spot,
    SpotKind,
    decode_unreserved,
    decoded_as_far_as_looked,
    percent_decode,
    redact_text,
    split_path,
    split_target,
)
from tokenward.core.tokens import (
    KINDS,
    MAX_BODY_LENGTH,
    MIN_BODY_LENGTH,
    first_token_shaped,
    token_hint,
)
from tokenward.core.verdicts import MESSAGES, ErrorCode, Placement

if TYPE_CHECKING:  # decision.py imports this module
    from tokenward.core.decision import Options, Route

_PREFIXES = tuple(f"sm_{kind}_" for kind in KINDS)
_PREFIXES_SHOWN = "sm_pat_, sm_aat_ or sm_sat_"
# A value that starts like a token: `sm_` in any case, or a kind's prefix with one letter off
# (`sn_pat_`) or a hyphen for an underscore.
_LIKE_A_TOKEN = re.compile(r"sm[_-]|[a-z]{2}[_-](?:pat|aat|sat)[_-]", re.IGNORECASE)
# In a name shown, a run that starts like a token may be most of a real one: shown by length.
_RUN_LIKE_A_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:sm[_-]|[a-z]{2}[_-](?:pat|aat|sat)[_-])[A-Za-z0-9_-]*", re.IGNORECASE
)
_BODY_CHARACTER = re.compile(r"[^A-Za-z0-9]")
# Names and hosts from a request are shown cut to this length; longer than the second, only
# their length (redacting a huge value would cost what the size limits spare).
_SHOWN_LENGTH = 60
_REDACTED_AT_MOST = 4096
_NAMED_CHARACTERS = {
    " ": "a space",
    "\t": "a tab",
    "_": "an underscore",
    "-": "a hyphen",
    ".": "a dot",
    "%": "a percent sign",
    "+": "a plus sign",
    "/": "a slash",
    "=": "an equals sign",
    '"': "a double quote",
    "'": "a single quote",
}
_PLACEMENT_NAMES = {
    Placement.HEADER: f"the {AUTH_HEADER} header",
    Placement.QUERY: f"the {TOKEN_PARAMETER} query parameter",
    Placement.PATH: "the path",
}


def explain_verdict(
    error: ErrorCode,
    request: Request,
    route: Route,
    options: Options,
    finding: Finding | None,
) -> tuple[str, str | None]:
    """The message and the advice (None: none) of the answer for `error`."""
    message = MESSAGES[error]
    layout = route.layout
    value = None if finding is None else finding.value
    hint = "The token" if value is None else f"The token {token_hint(value)}"
    match error:
        case ErrorCode.UNKNOWN_SERVICE:
            return unknown_service_message(route.host), (
                "Address the request to a host of one of this proxy's services"
                " (`tokenward services list` shows them), or register this host"
                " (`tokenward services add NAME --host HOST --upstream URL`)."
            )
        case ErrorCode.TOKEN_TO_UNKNOWN_HOST:
            # Observe mode forwards the request: the message says what happened to it.
            fate = (
                "observe mode sent it on"
                if options.mode == "observe"
                else "it was refused and not sent on"
            )
            return (
                f"This request carries an access token to {host_shown(route.host)}, which is no"
                f" service of this platform; {fate}.",
                f"A token-shaped string stands in {token_carrier(request)}: send platform"
                " tokens only to the hosts of the platform's services.",
            )
        case ErrorCode.MISPLACED_TOKEN if finding is not None and finding.misplaced_at:
            return misplaced_message(finding.misplaced_at, layout), misplaced_advice(
                finding.misplaced_at
            )
        case ErrorCode.AMBIGUOUS_TOKEN if finding is not None:
            return message, ambiguous_advice(finding)
        case ErrorCode.MISSING_TOKEN:
            return message, near_miss(request) or (
                f"Send the token in the {AUTH_HEADER} header, as ?{TOKEN_PARAMETER}=…, or in"
                f" the path {layout.rule} ({layout.example})."
            )
        case ErrorCode.MALFORMED_TOKEN if value is not None and finding is not None:
            placement = finding.placement
            where = "the placements" if placement is None else _PLACEMENT_NAMES[placement]
            return message, (
                f"The value of {where} ({token_hint(value)}) is not an access token:"
                f" {why_not_token_shaped(value)}."
            )
        case ErrorCode.UNKNOWN_TOKEN:
            return message, (
                f"{hint} was never issued by this proxy's store: check that the client sends"
                " the token it was given (`tokenward tokens list` shows each token's hint)."
            )
        case ErrorCode.REVOKED_TOKEN:
            return message, f"{hint} was deleted: create a new one (`tokenward tokens create`)."
        case ErrorCode.EXPIRED_TOKEN:
            return message, (
                f"{hint} has expired, and an expiry never changes: create a new"
                " token (`tokenward tokens create`)."
            )
        case ErrorCode.OUT_OF_SCOPE:
            service = "the default service" if route.service is None else route.service
            return message, (
                f"{hint} is not scoped to {service}: widen its scope"
                " (`tokenward tokens scope`) or send a token that has it."
            )
        case ErrorCode.UNPLACEABLE_TOKEN:
            return message, (
                f"This service's {layout.name} layout allows a token {layout.rule}"
                f" ({layout.example}): send the request to such a path, or have the gateway"
                " forward tokens another way (tokenward_forward)."
            )
        case ErrorCode.UNSUPPORTED_UPGRADE:
            return message, (
                "Send a WebSocket handshake (Upgrade: websocket, Sec-WebSocket-Version: 13) or"
                " no Upgrade header: no other protocol can be switched to through this gateway."
            )
        case ErrorCode.MALFORMED_REQUEST:
            return message, (
                f"{folded_field(request)} is folded over several lines (obs-fold): have the"
                " client or library send it on one line."
            )
        case ErrorCode.TARGET_TOO_LONG:
            return message, (
                f"The request target is {len(request.target)} bytes, and at most"
                f" {options.max_target} are accepted (tokenward_max_target): send large"
                " parameters in the request body."
            )
        case ErrorCode.HEADER_TOO_LARGE:
            return message, oversized_field_advice(request, options.max_header)
    return message, None


def unknown_service_message(host: str | None) -> str:
    return f"No service answers to the host {host_shown(host)}."


def host_shown(host: str | None) -> str:
    return "this request addresses" if host is None else shown(host)


def shown(text: str) -> str:
    """A name or host from a request, as an answer may quote it: tokens as hints, control
    characters as `?`, cut short, in quotes; a very long one by its length only."""
    if len(text) > _REDACTED_AT_MOST:
        return f"<{len(text)} characters>"
    # Decoded, so that an encoded run is seen for what it is; the request's strings are
    # Latin-1 views of its bytes, shown as the UTF-8 they may be.
    decoded = decoded_as_far_as_looked(text)
    readable = decoded.encode("latin-1", "replace").decode("utf-8", "replace")
    # A token as its hint, anything else that starts like one by its length; then tokens
    # encoded, as records show them.
    redacted = redact_text(_RUN_LIKE_A_TOKEN.sub(lambda run: token_hint(run.group(0)), readable))
    if len(redacted) > _SHOWN_LENGTH:
        # Cut after redacting: what remains of a cut hint is no token.
        redacted = redacted[: _SHOWN_LENGTH - 1] + "…"
    return "'" + "".join(c if c.isprintable() else "?" for c in redacted) + "'"


def misplaced_message(spot: Spot, layout: Layout) -> str:
    """Where the stray token-shaped string stands, and, for the path, where one may."""
    number = spot.position + 1
    match spot.kind:
        case SpotKind.QUERY_NAME:
            return (
                "A token-shaped string stands in the name of query parameter"
                f" {shown(spot.name)}: only the value of the parameter named"
                f" {TOKEN_PARAMETER} is read."
            )
        case SpotKind.QUERY_VALUE:
            case_note = ""
            decoded = percent_decode(spot.name)
            if decoded != TOKEN_PARAMETER and decoded.lower() == TOKEN_PARAMETER:
                case_note = " (parameter names are case-sensitive)"
            return (
                "A token-shaped string stands in the value of query parameter"
                f" {shown(spot.name)}: only the parameter named {TOKEN_PARAMETER} is"
                f" read{case_note}."
            )
        case SpotKind.SEGMENT:
            where = f"in path segment {number}"
        case SpotKind.INSIDE_SEGMENT:
            where = f"inside path segment {number}"
        case SpotKind.TARGET:
            where = "in a request target with no path segments"
    return (
        f"A token-shaped string stands {where}, where this service's {layout.name} layout"
        f" allows none: it allows a token {layout.rule} ({layout.example}), as a whole segment."
    )


def misplaced_advice(spot: Spot) -> str:
    if spot.kind in (SpotKind.QUERY_NAME, SpotKind.QUERY_VALUE):
        where = f"as the {TOKEN_PARAMETER} query parameter"
    else:
        where = "at a path position the layout allows"
    return (
        f"Send the token {where} or in the {AUTH_HEADER} header, and remove every other"
        " token-shaped string from the URL."
    )


def ambiguous_advice(finding: Finding) -> str:
    seen: dict[str, None] = {}  # in the order found, each value once
    for candidate in finding.candidates:
        seen.setdefault(f"{token_hint(candidate.value)} in {_PLACEMENT_NAMES[candidate.placement]}")
    values = len({candidate.value for candidate in finding.candidates})
    listed = list(seen)
    shown_list = ", ".join(listed[:4]) + (", …" if len(listed) > 4 else "")
    return f"Send one token in one place; this request carries {values} values: {shown_list}."


def near_miss(request: Request) -> str | None:
    """Advice for a request with no placement: what it holds that looks meant as its token
    (a token in another header, a value that starts like one but is not); None if nothing."""
    for name, value in request.headers:
        token = first_token_shaped(value)
        if token is not None:
            scheme = " (without Bearer)" if name.lower() == "authorization" else ""
            return (
                f"A token ({token_hint(token)}) was found in the {shown(name)} header, and only"
                f" {AUTH_HEADER} is read: send it as '{AUTH_HEADER}: {token_hint(token)}'"
                f"{scheme}."
            )
    path, query = split_target(request.target)
    segments = split_path(path)
    if segments is not None:
        for index, raw in enumerate(segments.raw):
            segment = decode_unreserved(raw)
            if starts_like_a_token(segment):
                return (
                    f"Path segment {index + 1} ({token_hint(segment)}) starts like an access"
                    f" token but is not one: {why_not_token_shaped(segment)}."
                )
    if query is not None:
        for item in query.split("&"):
            name, _, value = item.partition("=")
            decoded = percent_decode(value)
            if starts_like_a_token(decoded):
                return (
                    f"The value of query parameter {shown(name)} ({token_hint(decoded)}) starts"
                    f" like an access token but is not one: {why_not_token_shaped(decoded)};"
                    f" and only the parameter named {TOKEN_PARAMETER} is read."
                )
    for name, value in request.headers:
        word = value.strip().rpartition(" ")[2]  # after a scheme word such as Bearer
        if starts_like_a_token(word):
            return (
                f"The {shown(name)} header holds a value ({token_hint(word)}) that starts like"
                f" an access token but is not one: {why_not_token_shaped(word)}; and only"
                f" {AUTH_HEADER} is read."
            )
    return None


def starts_like_a_token(value: str) -> bool:
    return _LIKE_A_TOKEN.match(value) is not None


def why_not_token_shaped(value: str) -> str:
    """Why `value` (not token-shaped) is no token, without showing it: at most its prefix,
    when that is a kind's prefix written wrong, and one character that is not allowed."""
    if not value:
        return "the value is empty"
    held = first_token_shaped(value)
    if held is not None:
        return (
            f"it holds a token ({token_hint(held)}) with other characters around it;"
            " send the token alone (no scheme word such as Bearer, no quotes)"
        )
    prefix = value[:7]
    reasons: list[str] = []
    if prefix in _PREFIXES:
        body: str | None = value[7:]
    elif prefix.lower() in _PREFIXES:
        reasons.append(f"its prefix must be written in lower case ({prefix.lower()})")
        body = value[7:]
    elif value.startswith("sm_"):
        reasons.append(
            f"its kind is none of {', '.join(KINDS)} (a token starts with {_PREFIXES_SHOWN})"
        )
        body = None
    else:
        like = _LIKE_A_TOKEN.match(value)
        start = f" (it starts with {like.group(0)})" if like is not None else ""
        reasons.append(f"it does not start with {_PREFIXES_SHOWN}{start}")
        body = None
    if body is not None:
        if not MIN_BODY_LENGTH <= len(body) <= MAX_BODY_LENGTH:
            reasons.append(
                f"after the prefix it has {len(body)} characters, and {MIN_BODY_LENGTH} to"
                f" {MAX_BODY_LENGTH} are allowed"
            )
        stray = _BODY_CHARACTER.search(body)
        if stray is not None:
            reasons.append(
                f"character {stray.start() + 1} after the prefix is"
                f" {character_class(stray.group(0))}, and only the letters A to Z and a to z"
                " and the digits 0 to 9 are allowed"
            )
    return "; ".join(reasons)


def character_class(character: str) -> str:
    """A character that may not stand in a token, named by its class."""
    named = _NAMED_CHARACTERS.get(character)
    if named is not None:
        return named
    if ord(character) > 0x7E:
        return "a character outside ASCII"
    if not character.isprintable():
        return "a control character"
    return "a punctuation character"


def token_carrier(request: Request) -> str:
    """Where a request to a host that is no service carries its token-shaped string."""
    if first_token_shaped(request.target) is not None:
        return "the request target"
    for name, value in request.headers:
        if first_token_shaped(value) is not None:
            return f"the {shown(name)} header"
    return "the request"  # as `decide` found it: not reached


def folded_field(request: Request) -> str:
    for name, value in request.headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            return f"The {shown(name)} header field"
    return "A header field"  # as `holds_line_break` found it: not reached


def oversized_field_advice(request: Request, max_header: int) -> str:
    for name, value in request.headers:
        size = len(name) + len(value)
        if size > max_header:
            return (
                f"The {shown(name)} header field is {size} bytes (name and value), and at most"
                f" {max_header} are accepted (tokenward_max_header): send less in it, or large"
                " data in the request body."
            )
    return f"Keep each header field under {max_header} bytes (tokenward_max_header)."
