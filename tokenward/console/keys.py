"""Admin keys of the console: `twk_` and 48 hex digits from `secrets`.

A key is shown once, when it is made, and kept by the store as its SHA-256 digest. It is never
valid at the gateway: it is not token-shaped (the proxy refuses it as `malformed_token` before
asking the store), and its digest lives in a table of its own that the proxy's lookups never read.
"""

from __future__ import annotations

import re
import secrets

from tokenward.core.tokens import token_digest

KEY_PREFIX = "twk_"
_KEY_RANDOM_BYTES = 24
_KEY_SHAPE = re.compile(f"{KEY_PREFIX}[0-9a-f]{{{2 * _KEY_RANDOM_BYTES}}}")


def issue_console_key() -> str:
    return KEY_PREFIX + secrets.token_hex(_KEY_RANDOM_BYTES)


def is_console_key_shaped(value: str) -> bool:
    return _KEY_SHAPE.fullmatch(value) is not None


def console_key_digest(key: str) -> str:
    """The digest the store keeps: SHA-256, as for tokens (keys are as random)."""
    return token_digest(key)


def console_key_hint(key: str) -> str:
    """What may be shown of a key: its prefix and last four digits."""
    return f"{KEY_PREFIX}…{key[-4:]}" if is_console_key_shaped(key) else f"<{len(key)} characters>"
