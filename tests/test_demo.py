"""`python -m tokenward.fixtures.demo` (what `just demo` runs) as a fresh clone would run it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tokenward.fixtures.processes import REPO_ROOT

pytestmark = pytest.mark.e2e

VERDICTS = (
    "accepted",
    "missing_token",
    "malformed_token",
    "unknown_token",
    "misplaced_token",
    "ambiguous_token",
    "revoked_token",
    "out_of_scope",
    "unknown_service",
)
# A whole token; a hint (`sm_pat_…abcd`) has "…" where this needs 16 letters or digits.
FULL_TOKEN = re.compile(r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,64}")


def test_the_demo_gets_every_verdict_and_prints_no_token() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "tokenward.fixtures.demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    printed = demo.stdout + demo.stderr
    assert demo.returncode == 0, printed
    rows = [line for line in demo.stdout.splitlines() if line.startswith("ok ")]
    for verdict in VERDICTS:
        assert any(f" {verdict} " in row for row in rows), f"no row with {verdict}:\n{printed}"
    assert not any(line.startswith("FAIL") for line in printed.splitlines())
    assert FULL_TOKEN.search(printed) is None, printed
    assert "sm_pat_…" in printed
