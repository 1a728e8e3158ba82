"""A mitmproxy script for `bench.inproxy`: the gateway addon with each call of its two
per-request hooks timed, as it runs inside a loaded mitmdump.

Loaded in place of `addons/tokenward.py`. When mitmdump stops, the times (seconds, one per
call) are written as JSON to the file named by the environment variable TOKENWARD_HOOK_TIMES.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from time import perf_counter

from mitmproxy import http

from tokenward.addons.gateway import TokenWard


class TimedTokenWard(TokenWard):
    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, list[float]] = {"requestheaders": [], "response": []}

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        start = perf_counter()
        super().requestheaders(flow)
        self.times["requestheaders"].append(perf_counter() - start)

    def response(self, flow: http.HTTPFlow) -> None:
        start = perf_counter()
        super().response(flow)
        self.times["response"].append(perf_counter() - start)

    async def done(self) -> None:
        Path(os.environ["TOKENWARD_HOOK_TIMES"]).write_text(json.dumps(self.times))
        await super().done()


addons = [TimedTokenWard()]
