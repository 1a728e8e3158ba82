"""A mitmproxy script for `bench.inproxy`: the gateway with its two per-request hooks doing
nothing.

Everything else is the gateway's: it opens the store, takes its options (`keep_host_header`
among them), installs log redaction and runs its background tasks. What it costs over bare
mitmdump is what the gateway costs before any per-request work; what the gateway costs over it
is that work.
"""

from __future__ import annotations

from mitmproxy import http

from tokenward.addons.gateway import TokenWard


class IdleTokenWard(TokenWard):
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> None:
        pass


addons = [IdleTokenWard()]
