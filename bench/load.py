"""Keep-alive HTTP load with `wrk` on loopback, its figures read from a Lua `done` hook."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

THREADS = 1
CONNECTIONS = 16

# wrk calls `done` once at the end; printing JSON spares parsing its human-readable report.
_REPORT_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "failed_status": %d, "connect_errors": %d,'
    .. ' "read_errors": %d, "write_errors": %d, "timeouts": %d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    # wrk counts answers with a status of 400 or more ("Non-2xx or 3xx responses").
    failed_status: int
    socket_errors: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def wrk_program() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    url: str, headers: dict[str, str], seconds: int, request_script: str = ""
) -> LoadResult:
    """`wrk -t1 -c16` against `url` for `seconds` (wrk takes whole seconds only), sending
    `headers` with every request; `request_script` is Lua run by wrk, e.g. a `request` hook."""
    program = wrk_program()
    if program is None:
        raise RuntimeError("wrk is not installed (Debian package wrk)")
    with tempfile.TemporaryDirectory(prefix="tokenward-wrk-") as workdir:
        script = Path(workdir) / "report.lua"
        script.write_text(request_script + _REPORT_SCRIPT)
        header_arguments = [part for n, v in headers.items() for part in ("-H", f"{n}: {v}")]
        command = [
            program,
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "-s",
            str(script),
            *header_arguments,
            url,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise RuntimeError(f"wrk failed (status {done.returncode}): {output}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        failed_status=report["failed_status"],
        socket_errors=sum(
            report[key] for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by process `pid` (Linux only)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rpartition(")")[2].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def load_on_own_cpu() -> Iterator[frozenset[int] | None]:
    """Run what this process starts from here on (wrk, the upstream) on one CPU of those it
    may use, and give the others for the proxies under test (see `pin_process`).

    The load then never takes CPU time from the proxy it measures, nor lands on its CPU by
    chance in one run and not in the next, which made runs vary. Yields None, and pins
    nothing, where there is one CPU or no affinity to set (not Linux).
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    available = os.sched_getaffinity(0)
    if len(available) < 2:
        yield None
        return
    load_cpu = min(available)
    os.sched_setaffinity(0, {load_cpu})
    try:
        yield frozenset(available - {load_cpu})
    finally:
        os.sched_setaffinity(0, available)


def pin_process(pid: int, cpus: frozenset[int] | None) -> None:
    """Every thread of process `pid` onto `cpus` (None: leave it where it is). Threads it
    starts later inherit the affinity of the thread starting them."""
    if cpus is None:
        return
    for thread in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(thread.name), cpus)
