"""Coverage-guided fuzzing of the pure core with atheris (libFuzzer) and the properties it checks.

    .venv/bin/pip install atheris                  # optional: pyproject extra `fuzz`
    .venv/bin/python -m fuzz.core_fuzz -runs=200000 -seed=1
    .venv/bin/python -m fuzz.core_fuzz -max_total_time=300

Each input is split into a request target (the first line) and header fields ("name: value"
lines), every byte kept as Latin-1, as the addon hands requests to the core. `check_request`
holds the properties, and tests/test_hostile_input.py runs the same function on hypothesis'
examples:

- `find_token`, `rewrite_request` (every forward value, every layout) and `redact_request`
  never raise, except `UnplaceableTokenError` for `path`;
- whenever the addon may forward (anything but `misplaced_token`), the rewrite for `strip`
  leaves no token-shaped string in the URL, as sent or percent-decoded up to four times, and
  no `x-auth-token` field; `header`, `query` and `path` put back the one token and no other;
- the record (`redact_request`) holds no token in its URL or header values.

The oracle (`held_tokens`) is written here from the contract, apart from the core's own code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote_to_bytes

from tokenward.core.layouts import LAYOUTS
from tokenward.core.placement import (
    Identity,
    Request,
    UnplaceableTokenError,
    find_token,
    redact_request,
    rewrite_request,
)
from tokenward.core.verdicts import ErrorCode, Forward

# The contract's "holds a token-shaped string": no ASCII letter or digit right before or after.
_HELD = re.compile(rb"(?<![A-Za-z0-9])sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,64}(?![A-Za-z0-9])")
# As far as the core looks for tokens in other decodings (documented in docs/placements.md).
DECODING_ROUNDS = 4
AUTH_HEADER = "x-auth-token"
IDENTITY = Identity("fuzz", "pat")
DICTIONARY = Path(__file__).with_name("core.dict")


def held_tokens(text: str, rounds: int = DECODING_ROUNDS) -> set[str]:
    """Token-shaped strings `text` holds as sent or percent-decoded up to `rounds` times."""
    data = text.encode("latin-1")
    found: set[str] = set()
    for _ in range(rounds + 1):
        found.update(match.decode("ascii") for match in _HELD.findall(data))
        decoded = unquote_to_bytes(data)
        if decoded == data:
            break
        data = decoded
    return found


def auth_values(request: Request) -> list[str]:
    return [value for name, value in request.headers if name.lower() == AUTH_HEADER]


def check_request(request: Request) -> None:
    """Assert every property above for `request` under every layout; see the module docstring."""
    for layout in LAYOUTS.values():
        finding = find_token(request, layout)
        token = finding.token
        forwardable = finding.error is not ErrorCode.MISPLACED_TOKEN
        for forward in Forward:
            try:
                upstream = rewrite_request(request, finding, layout, forward, IDENTITY)
            except UnplaceableTokenError:
                assert forward is Forward.PATH, f"unplaceable for {forward}"
                continue
            if not forwardable or forward is Forward.KEEP:
                continue
            in_url = held_tokens(upstream.target)
            if token is not None and forward in (Forward.QUERY, Forward.PATH):
                # The token put back, maybe still in the client's encoding (`sm_pat_ab%63…`),
                # whose undecoded start is token-shaped too; no other token.
                placed = token in in_url and all(token.startswith(held) for held in in_url)
            else:
                placed = not in_url
            assert placed, (
                f"{layout.name}/{forward}: the upstream URL {upstream.target!r} holds"
                f" {sorted(in_url)}; the token is {token!r}"
            )
            if forward is Forward.QUERY and token is not None:
                assert upstream.target.endswith(f"token={token}"), upstream.target
            expected_auth = [token] if forward is Forward.HEADER and token is not None else []
            assert auth_values(upstream) == expected_auth, (
                f"{layout.name}/{forward}: x-auth-token {auth_values(upstream)!r}"
            )
    record = redact_request(request)
    assert not held_tokens(record.target), f"the record's URL holds a token: {record.target!r}"
    for name, value in record.headers:
        assert not held_tokens(value), f"the record's {name!r} holds a token: {value!r}"


def request_from_bytes(data: bytes) -> Request:
    """A request from arbitrary bytes: the target, then "name: value" lines."""
    lines = data.decode("latin-1").split("\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.append((name, value.strip(" \t")))
    return Request("GET", lines[0], tuple(headers))


def fuzz_one_input(data: bytes) -> None:
    check_request(request_from_bytes(data))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    arguments = list(sys.argv if argv is None else argv)
    if not any(argument.startswith("-dict=") for argument in arguments):
        arguments.append(f"-dict={DICTIONARY}")
    atheris.instrument_all()
    atheris.Setup(arguments, fuzz_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
