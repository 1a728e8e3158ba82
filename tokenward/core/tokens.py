"""Token shapes, kinds, issuance, digests and display hints. Pure: no I/O beyond `secrets`."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Callable

KINDS: tuple[str, ...] = ("pat", "aat", "sat")
KIND_NAMES: dict[str, str] = {
    "pat": "personal access token",
    "aat": "application access token",
    "sat": "service account token",
}
ISSUED_BODY_LENGTH = 32
# How many letters and digits may follow a kind's prefix (`sm_pat_`).
MIN_BODY_LENGTH = 16
MAX_BODY_LENGTH = 64
_BASE62 = string.ascii_letters + string.digits

_TOKEN_BODY = rf"sm_(?:pat|aat|sat)_[A-Za-z0-9]{{{MIN_BODY_LENGTH},{MAX_BODY_LENGTH}}}"
_TOKEN_SHAPE = re.compile(_TOKEN_BODY)
# "Holds" means the pattern matches with no ASCII letter or digit right before or after, so a
# 65-character run or `xsm_pat_…` holds nothing. Letters that are not ASCII count as boundaries:
# treating more strings as holding a token only ever makes the gateway stricter.
_HELD_TOKEN = re.compile(r"(?<![A-Za-z0-9])" + _TOKEN_BODY + r"(?![A-Za-z0-9])")
# Looser than "holds": what a record must not show. A token glued to letters or digits
# (`x-auth-tokensm_pat_…`, repr's `\tsm_pat_…`) or followed by more of them is still one.
_TOKEN_RUN = re.compile(rf"sm_(?:pat|aat|sat)_[A-Za-z0-9]{{{MIN_BODY_LENGTH},}}")


def is_token_shaped(value: str) -> bool:
    """True when the whole value is `sm_<kind>_` followed by 16 to 64 base62 characters."""
    # The prefix test first: most values a request carries are no token at all.
    return value.startswith("sm_") and _TOKEN_SHAPE.fullmatch(value) is not None


def holds_token_shaped(text: str) -> bool:
    """True when a token-shaped string stands inside `text`, bounded by no letter or digit."""
    return "sm_" in text and _HELD_TOKEN.search(text) is not None


def first_token_shaped(text: str) -> str | None:
    """The first token-shaped string standing inside `text` (see `holds_token_shaped`)."""
    if "sm_" not in text:
        return None
    match = _HELD_TOKEN.search(text)
    return None if match is None else match.group(0)


def kind_of(token: str) -> str:
    """The kind (`pat`, `aat`, `sat`) of a token-shaped value."""
    if not is_token_shaped(token):
        raise ValueError(f"not a token-shaped value: {token_hint(token)!r}")
    return token[3:6]


def issue_token(kind: str) -> str:
    """A new token of `kind`: its prefix and 32 base62 characters from `secrets`."""
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
    body = "".join(secrets.choice(_BASE62) for _ in range(ISSUED_BODY_LENGTH))
    return f"sm_{kind}_{body}"


def token_digest(token: str) -> str:
    """Hex SHA-256 of the token: tokens are high-entropy, so an unsalted digest suffices."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_hint(value: str) -> str:
    """What may be shown of a token or of any value that stood where a token goes.

    `sm_pat_…` plus the last four characters for a token-shaped value; for anything else only
    its length, since a malformed value may still be most of a real token.
    """
    if is_token_shaped(value):
        return f"{value[:7]}…{value[-4:]}"
    return f"<{len(value)} characters>"


def redact_tokens(text: str, render: Callable[[str], str] = token_hint) -> str:
    """`text` with every token-shaped string it holds replaced by `render(token)`, its hint."""
    if "sm_" not in text:
        return text
    return _HELD_TOKEN.sub(lambda match: render(match.group(0)), text)


def holds_token_run(text: str) -> bool:
    """True when `text` has a token's prefix and at least 16 letters or digits after it,
    whatever stands around them."""
    return "sm_" in text and _TOKEN_RUN.search(text) is not None


def redact_token_runs(text: str, render: Callable[[str], str] = token_hint) -> str:
    """`text` with every token run (see `holds_token_run`) replaced by `render(run)`."""
    if "sm_" not in text:
        return text
    return _TOKEN_RUN.sub(lambda match: render(match.group(0)), text)
