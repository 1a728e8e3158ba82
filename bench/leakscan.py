"""`python -m bench.leakscan [PYTEST ARGS]`: the whole test suite and the demo, output scanned.

Runs `pytest -p no:cacheprovider -rA --log-level=DEBUG` (every test's captured output and log
records are printed, passed tests included) and `python -m tokenward.fixtures.demo`, each with
its output captured to a file, then scans both for tokens. A token the store issued is 32 random
base62 characters after its prefix; every such string found is a leak unless it stands alone on its
line (what `tokens create` prints) or is written in the repository's own sources (a value a
test passes in). Token-shaped strings of other shapes (test constants such as `sm_pat_ZZZ…`)
are counted and shown, not failed. Exit status 1 when a leak was found.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Also glued to a letter: repr writes a tab before a token as `\tsm_pat_…`.
TOKEN_RUN = re.compile(r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,}")
ISSUED_BODY_LENGTH = 32
# 32 random base62 characters have about 25 distinct ones; fewer than 12 is never random.
ISSUED_MIN_DISTINCT = 12
SOURCE_SUFFIXES = (".py", ".md", ".toml", ".dict")


@dataclass(frozen=True, slots=True)
class Finding:
    source: str
    line: int
    token_hint: str
    text: str  # the line, every token in it shown as a hint


def hint(run: str) -> str:
    return f"{run[:7]}…{run[-4:]}"


def issued_part(run: str) -> str:
    """The prefix and the first 32 characters: what an issued token is."""
    return run[: 7 + ISSUED_BODY_LENGTH]


def looks_issued(run: str) -> bool:
    body = run[7 : 7 + ISSUED_BODY_LENGTH]
    return len(body) == ISSUED_BODY_LENGTH and len(set(body)) >= ISSUED_MIN_DISTINCT


def source_values(root: Path = REPO_ROOT) -> frozenset[str]:
    """Token-shaped strings written in the repository's sources: values tests pass in."""
    values: set[str] = set()
    for folder in ("tests", "fixtures", "harness", "bench", "fuzz", "docs"):
        for path in (root / folder).rglob("*"):
            if path.suffix in SOURCE_SUFFIXES and path.is_file():
                values.update(TOKEN_RUN.findall(path.read_text(errors="replace")))
    return frozenset(values)


def scan_text(text: str, source: str, allowed: frozenset[str] = frozenset()) -> list[Finding]:
    """Every issued-looking token in `text` that is neither alone on its line nor allowed.

    A run is matched on its first 32 characters after the prefix, so a value glued to more
    letters (`x.{T}json` in a test id) is still the value the sources wrote.
    """
    allowed_starts = {issued_part(value) for value in allowed}
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if "sm_" not in line:
            continue
        for run in TOKEN_RUN.findall(line):
            if not looks_issued(run) or issued_part(run) in allowed_starts or line.strip() == run:
                continue
            shown = TOKEN_RUN.sub(lambda match: hint(match.group(0)), line)
            findings.append(Finding(source, number, hint(run), shown[:300]))
    return findings


def shapes(text: str) -> Counter[str]:
    """How many token-shaped strings `text` holds, by kind: issued-looking or other."""
    counted: Counter[str] = Counter()
    for run in TOKEN_RUN.findall(text):
        counted["issued-looking" if looks_issued(run) else "other"] += 1
    return counted


def run_captured(command: Sequence[str], output: Path) -> int:
    with output.open("wb") as file:
        done = subprocess.run(
            list(command), cwd=REPO_ROOT, stdout=file, stderr=subprocess.STDOUT, check=False
        )
    return done.returncode


def parse_arguments(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench.leakscan", description=__doc__)
    parser.add_argument("--skip-demo", action="store_true", help="scan the test suite only")
    parser.add_argument("--keep", type=Path, help="keep the captured output in this folder")
    return parser.parse_known_args(argv)


def scan_files(
    files: Iterable[Path], allowed: frozenset[str]
) -> tuple[list[Finding], Counter[str]]:
    findings: list[Finding] = []
    counted: Counter[str] = Counter()
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        findings += scan_text(text, path.name, allowed)
        counted += shapes(text)
        counted["lines"] += text.count("\n")
    return findings, counted


def main(argv: Sequence[str] | None = None) -> int:
    arguments, pytest_arguments = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="tokenward-leakscan-") as scratch:
        folder: Path = arguments.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        captured = [folder / "pytest.log"]
        pytest_command = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--log-level=DEBUG",
            *pytest_arguments,
        ]
        print(f"running: {' '.join(pytest_command[1:])}", flush=True)
        statuses = {"pytest": run_captured(pytest_command, captured[0])}
        if not arguments.skip_demo:
            captured.append(folder / "demo.log")
            print("running: python -m tokenward.fixtures.demo", flush=True)
            statuses["demo"] = run_captured(
                [sys.executable, "-m", "tokenward.fixtures.demo"], captured[1]
            )
        findings, counted = scan_files(captured, source_values())
        last = captured[0].read_text(errors="replace").strip().splitlines()[-1:]
        print(f"pytest exit status {statuses['pytest']}: {last[0] if last else '(no output)'}")
        if "demo" in statuses:
            print(f"demo exit status {statuses['demo']}")
        print(
            f"scanned {counted['lines']:,} lines: {counted['issued-looking']} issued-looking"
            f" token-shaped strings (allowed: alone on a line or written in the sources),"
            f" {counted['other']} other token-shaped strings (test constants)"
        )
        for finding in findings:
            print(f"LEAK {finding.source}:{finding.line}: {finding.text}")
        print(f"{len(findings)} leaks")
        if arguments.keep:
            print(f"captured output kept in {folder}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
