"""A mitmproxy script for `bench.inproxy`: an addon with the gateway's two per-request hooks,
doing nothing. What it costs over bare mitmdump is what any script addon with these hooks
costs: mitmproxy's dispatch, not tokenward's work."""

from __future__ import annotations

from mitmproxy import http


class NoopHooks:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> None:
        pass


addons = [NoopHooks()]
