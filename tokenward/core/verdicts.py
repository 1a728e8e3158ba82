"""Verdicts: the error codes, their statuses, and the JSON answer the proxy gives for each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum


class Placement(StrEnum):
    HEADER = "header"
    QUERY = "query"
    PATH = "path"


class Forward(StrEnum):
    """What the upstream receives: the `tokenward_forward` option."""

    STRIP = "strip"
    HEADER = "header"
    QUERY = "query"
    PATH = "path"
    KEEP = "keep"


class ErrorCode(StrEnum):
    UNKNOWN_SERVICE = "unknown_service"
    TOKEN_TO_UNKNOWN_HOST = "token_to_unknown_host"
    MISPLACED_TOKEN = "misplaced_token"
    AMBIGUOUS_TOKEN = "ambiguous_token"
    MISSING_TOKEN = "missing_token"
    MALFORMED_TOKEN = "malformed_token"
    UNKNOWN_TOKEN = "unknown_token"
    REVOKED_TOKEN = "revoked_token"
    EXPIRED_TOKEN = "expired_token"
    OUT_OF_SCOPE = "out_of_scope"
    STORE_UNAVAILABLE = "store_unavailable"
    UNPLACEABLE_TOKEN = "unplaceable_token"
    UNSUPPORTED_UPGRADE = "unsupported_upgrade"
    MALFORMED_REQUEST = "malformed_request"
    TARGET_TOO_LONG = "target_too_long"
    HEADER_TOO_LARGE = "header_too_large"


class StoreOutcome(StrEnum):
    """The store's part of the verdict, in order of precedence."""

    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    OUT_OF_SCOPE = "out_of_scope"
    OK = "ok"


STORE_OUTCOME_ERRORS: dict[StoreOutcome, ErrorCode] = {
    StoreOutcome.UNKNOWN: ErrorCode.UNKNOWN_TOKEN,
    StoreOutcome.REVOKED: ErrorCode.REVOKED_TOKEN,
    StoreOutcome.EXPIRED: ErrorCode.EXPIRED_TOKEN,
    StoreOutcome.OUT_OF_SCOPE: ErrorCode.OUT_OF_SCOPE,
}

STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNKNOWN_SERVICE: 404,
    ErrorCode.TOKEN_TO_UNKNOWN_HOST: 403,
    ErrorCode.MISPLACED_TOKEN: 400,
    ErrorCode.AMBIGUOUS_TOKEN: 400,
    ErrorCode.MISSING_TOKEN: 401,
    ErrorCode.MALFORMED_TOKEN: 401,
    ErrorCode.UNKNOWN_TOKEN: 401,
    ErrorCode.REVOKED_TOKEN: 401,
    ErrorCode.EXPIRED_TOKEN: 401,
    ErrorCode.OUT_OF_SCOPE: 403,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.UNPLACEABLE_TOKEN: 400,
    ErrorCode.UNSUPPORTED_UPGRADE: 400,
    ErrorCode.MALFORMED_REQUEST: 400,
    ErrorCode.TARGET_TOO_LONG: 414,
    ErrorCode.HEADER_TOO_LARGE: 431,
}

MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UNKNOWN_SERVICE: "No service answers to this host name.",
    ErrorCode.TOKEN_TO_UNKNOWN_HOST: (
        "This request carries an access token to a host that is no service of this platform;"
        " it was not sent."
    ),
    ErrorCode.MISPLACED_TOKEN: (
        "A token stands where tokens may not: send it in the x-auth-token header, the token "
        "query parameter, or a path position the service allows."
    ),
    ErrorCode.AMBIGUOUS_TOKEN: "The request carries more than one token value; send exactly one.",
    ErrorCode.MISSING_TOKEN: (
        "An access token is required: send it in the x-auth-token header, the token query "
        "parameter or the path."
    ),
    ErrorCode.MALFORMED_TOKEN: (
        "The value given as a token is not an access token (sm_pat_, sm_aat_ or sm_sat_ "
        "followed by 16 to 64 letters and digits)."
    ),
    ErrorCode.UNKNOWN_TOKEN: "This access token is not known.",
    ErrorCode.REVOKED_TOKEN: "This access token has been deleted.",
    ErrorCode.EXPIRED_TOKEN: "This access token has expired.",
    ErrorCode.OUT_OF_SCOPE: "This access token is not valid for this service.",
    ErrorCode.STORE_UNAVAILABLE: "The token store cannot be read; try again shortly.",
    ErrorCode.UNPLACEABLE_TOKEN: (
        "The gateway forwards tokens in the path, and this path has no place for one."
    ),
    ErrorCode.UNSUPPORTED_UPGRADE: (
        "The only upgrade this gateway allows is a WebSocket handshake: one Upgrade header "
        "field with the value websocket and Sec-WebSocket-Version 13."
    ),
    ErrorCode.MALFORMED_REQUEST: (
        "A header field holds a line break (a field folded over several lines); send each "
        "field on one line."
    ),
    ErrorCode.TARGET_TOO_LONG: "The request target is longer than this gateway accepts.",
    ErrorCode.HEADER_TOO_LARGE: "A header field is larger than this gateway accepts.",
}

WWW_AUTHENTICATE = 'Token realm="tokenward"'


@dataclass(frozen=True, slots=True)
class Rejection:
    """An answer the proxy gives itself, without contacting the upstream.

    `message` and `advice` are the decision's (`tokenward.core.advice`); the message
    defaults to the code's fixed sentence.
    """

    error: ErrorCode
    placement: Placement | None
    message: str = ""
    advice: str | None = None

    def __post_init__(self) -> None:
        if not self.message:
            object.__setattr__(self, "message", MESSAGES[self.error])

    @property
    def status(self) -> int:
        return STATUS[self.error]

    def document(self) -> dict[str, str | None]:
        """The JSON answer's keys: always all four."""
        return {
            "error": self.error.value,
            "message": self.message,
            "placement": None if self.placement is None else self.placement.value,
            "advice": self.advice,
        }

    def body(self) -> bytes:
        return json.dumps(self.document()).encode()

    @classmethod
    def from_document(cls, document: object) -> Rejection | None:
        """The rejection a `document()` describes; None when it describes none."""
        if not isinstance(document, dict):
            return None
        try:
            error = ErrorCode(str(document.get("error")))
            placement = document.get("placement")
            message, advice = document.get("message"), document.get("advice")
            if not isinstance(message, str) or not (advice is None or isinstance(advice, str)):
                return None
            return cls(error, None if placement is None else Placement(placement), message, advice)
        except ValueError:
            return None

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Answer headers; a browser app can read the rejection when it sent an `Origin`."""
        fields = [("content-type", "application/json"), ("cache-control", "no-store")]
        if self.status == 401:
            fields.append(("www-authenticate", WWW_AUTHENTICATE))
        if origin is not None:
            fields.append(("access-control-allow-origin", origin))
            fields.append(("vary", "Origin"))
        return fields
