"""The addon in process: every verdict row, every forward value, routing, observe mode.

Flows are mitmproxy's own test flows (`tflow`) run through the addon inside `taddons.context`;
the store is a real SQLite file.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mitmproxy import exceptions, http
from mitmproxy import flow as mitmflow
from mitmproxy.addons import view
from mitmproxy.net.http.http1 import read_request_head
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.websocket import WebSocketData

from tokenward.addons.early_rejection import RejectionResponder, _header_fields, _response_for
from tokenward.addons.gateway import (
    MAX_PENDING_UPGRADES,
    REPLAY_ADVICE,
    ClientHead,
    TokenWard,
    declare_chunked_framing,
    frame_buffered_body,
    masked_close_frame,
    request_of,
)
from tokenward.core.hygiene import Upgrade, holds_line_break, upgrade_asked
from tokenward.core.placement import Request
from tokenward.core.verdicts import ErrorCode, Placement, Rejection
from tokenward.store import TokenStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
UNKNOWN = "sm_pat_" + "Z" * 32


class Gateway:
    """An addon on a real store, with a fixed clock and helpers to send requests through it."""

    def __init__(self, context: taddons.context, addon: TokenWard, store: TokenStore) -> None:
        self.context = context
        self.addon = addon
        self.store = store
        self.tokens: dict[str, str] = {}

    def token(
        self,
        name: str,
        *,
        kind: str = "pat",
        expires_at: datetime | None = None,
        scope: frozenset[str] | None = None,
    ) -> str:
        created_at = NOW - timedelta(days=1)
        token, _ = self.store.create_token(name, kind, expires_at, scope, "tests", created_at)
        self.tokens[name] = token
        return token

    def send(
        self,
        target: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        method: str = "GET",
        host: str = "node.example",
        mode: str = "regular",
        http_version: str = "HTTP/1.1",
    ) -> http.HTTPFlow:
        request = tutils.treq(
            method=method.encode(),
            http_version=http_version.encode(),
            host=host,
            port=80,
            path=target.encode("latin-1"),
            headers=http.Headers(
                [(b"host", host.encode())]
                + [(name.encode(), value.encode("latin-1")) for name, value in headers]
            ),
            content=b"",
        )
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = ProxyMode.parse(mode)
        self.addon.requestheaders(flow)
        return flow


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "tokenward.db"
    store = TokenStore.open(path, create=True)
    # Every reading of this monotonic clock is a second later, so the addon looks at the store
    # file (which it otherwise does every 50 ms) on every request.
    addon = TokenWard(clock=lambda: NOW, monotonic=itertools.count().__next__)
    with taddons.context(addon) as context:
        context.configure(addon, tokenward_db=str(path))
        yield Gateway(context, addon, store)
    store.close()


def error_of(flow: http.HTTPFlow) -> tuple[int, str, str | None]:
    assert flow.response is not None, "the request was forwarded, not rejected"
    body = json.loads(flow.response.content or b"")
    assert isinstance(body["message"], str) and body["message"]
    return flow.response.status_code, body["error"], body["placement"]


def forwarded(flow: http.HTTPFlow) -> str:
    assert flow.response is None, f"rejected: {flow.response and flow.response.content!r}"
    return flow.request.data.path.decode("latin-1")


# Options


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("tokenward_mode", "strict"),
        ("tokenward_forward", "cookie"),
        ("tokenward_layout", "cosmos"),
        ("tokenward_preflight", "skip"),
    ],
)
def test_bad_option_values_are_refused_naming_the_value(
    gateway: Gateway, option: str, value: str
) -> None:
    with pytest.raises(exceptions.OptionsError, match=re.escape(repr(value))):
        gateway.context.configure(gateway.addon, **{option: value})


@pytest.mark.parametrize("option", ["tokenward_max_target", "tokenward_max_header"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_size_limit_must_be_positive(gateway: Gateway, option: str, value: int) -> None:
    with pytest.raises(exceptions.OptionsError, match=f"{option}.*{value!r}"):
        gateway.context.configure(gateway.addon, **{option: value})


def test_setting_the_same_store_again_keeps_it_and_another_replaces_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    kept = gateway.addon.store
    gateway.context.configure(gateway.addon, tokenward_db=str(tmp_path / "." / "tokenward.db"))
    assert gateway.addon.store is kept
    other = tmp_path / "other.db"
    TokenStore.open(other, create=True).close()
    gateway.context.configure(gateway.addon, tokenward_db=str(other))
    assert gateway.addon.store is not kept and gateway.addon.store is not None
    assert gateway.addon.store.holds(other) and not gateway.addon.store.holds(tmp_path / "x")


def test_a_missing_store_is_refused_with_its_path(gateway: Gateway, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(exceptions.OptionsError, match=r"typo\.db"):
        gateway.context.configure(gateway.addon, tokenward_db=str(missing))
    assert not missing.exists()


def test_a_corrupt_store_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(exceptions.OptionsError, match="tokenward_db"):
        gateway.context.configure(gateway.addon, tokenward_db=str(corrupt))


# Verdict rows


def test_row_0_unknown_host_in_reverse_mode_with_services(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    token = gateway.token("alice")
    flow = gateway.send(f"/{token}/api/v0/version", host="other.example", mode="reverse:http://x")
    assert error_of(flow) == (404, "unknown_service", None)


def test_row_0_does_not_apply_in_regular_mode(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    flow = gateway.send("/no/token/here?x=1", host="elsewhere.example")
    assert forwarded(flow) == "/no/token/here?x=1"
    assert "tokenward" not in flow.metadata
    assert flow.request.host == "elsewhere.example"


@pytest.mark.parametrize(
    "target",
    [
        "/graphql?q={TOKEN}",
        "/graphql?{TOKEN}=1",
        "/a/{TOKEN}/b",
        "/a/x.{TOKEN}.json",
        "/a%2F{TOKEN}",
    ],
)
def test_row_1_misplaced(gateway: Gateway, target: str) -> None:
    token = gateway.token("alice")
    flow = gateway.send(target.replace("{TOKEN}", token))
    assert error_of(flow) == (400, "misplaced_token", None)


def test_row_2_ambiguous_across_placements(gateway: Gateway) -> None:
    first, second = gateway.token("alice"), gateway.token("bob")
    flow = gateway.send(f"/{first}", (("x-auth-token", second),))
    assert error_of(flow) == (400, "ambiguous_token", None)


def test_row_2_an_empty_header_value_counts(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send(f"/p?token={token}", (("X-Auth-Token", ""),))
    assert error_of(flow) == (400, "ambiguous_token", None)


def test_the_same_value_repeated_is_one_token(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send(f"/{token}?token={token}", (("x-auth-token", f"{token}, {token}"),))
    assert forwarded(flow) == "/"


def test_row_3_missing(gateway: Gateway) -> None:
    flow = gateway.send("/graphql")
    assert error_of(flow) == (401, "missing_token", None)
    assert flow.response is not None
    assert flow.response.headers["www-authenticate"] == 'Token realm="tokenward"'


def test_row_4_malformed(gateway: Gateway) -> None:
    flow = gateway.send("/p?token=sm_pat_short")
    assert error_of(flow) == (401, "malformed_token", "query")


def test_row_5_unknown(gateway: Gateway) -> None:
    flow = gateway.send("/p", (("x-auth-token", UNKNOWN),))
    assert error_of(flow) == (401, "unknown_token", "header")


def test_row_6_revoked_from_the_very_next_request(gateway: Gateway, tmp_path: Path) -> None:
    token = gateway.token("alice")
    assert forwarded(gateway.send(f"/{token}")) == "/"
    # Another connection, as the CLI in another process would.
    with TokenStore.open(tmp_path / "tokenward.db", create=False) as other:
        other.delete_token("alice", NOW)
    assert error_of(gateway.send(f"/{token}")) == (401, "revoked_token", "path")


def test_row_7_expired_at_the_expiry_instant(gateway: Gateway) -> None:
    token = gateway.token("alice", expires_at=NOW)
    assert error_of(gateway.send(f"/{token}")) == (401, "expired_token", "path")
    later = gateway.token("bob", expires_at=NOW + timedelta(seconds=1))
    assert forwarded(gateway.send(f"/{later}")) == "/"


def test_row_8_out_of_scope(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    gateway.store.add_service("avax", "avalanche", ("avax.example",), "http://127.0.0.1:9650")
    token = gateway.token("alice", scope=frozenset({"avax"}))
    flow = gateway.send(f"/{token}/api/v0/version", host="ipfs.example")
    assert error_of(flow) == (403, "out_of_scope", "path")
    flow = gateway.send(f"/ext/bc/C/rpc/{token}", host="avax.example")
    assert forwarded(flow) == "/ext/bc/C/rpc"


def test_store_removed_while_running_fails_closed_and_recovers(
    gateway: Gateway, tmp_path: Path
) -> None:
    token = gateway.token("alice")
    path = tmp_path / "tokenward.db"
    moved = tmp_path / "moved.db"
    os.replace(path, moved)
    assert error_of(gateway.send(f"/{token}")) == (503, "store_unavailable", "path")
    # Rows before the store's still answer as usual.
    assert error_of(gateway.send("/")) == (401, "missing_token", None)
    os.replace(moved, path)
    assert forwarded(gateway.send(f"/{token}")) == "/"


def test_rejection_of_a_browser_request_allows_its_origin(gateway: Gateway) -> None:
    flow = gateway.send("/", (("Origin", "https://app.example"),))
    assert flow.response is not None
    assert flow.response.headers["access-control-allow-origin"] == "https://app.example"


def test_a_rejected_flow_holds_no_full_token(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send(f"/a/{token}/b?x={token}", (("x-auth-token", token),))
    assert error_of(flow)[1] == "misplaced_token"
    record = flow.request.data.path + b"".join(v for _, v in flow.request.headers.fields)
    assert token.encode() not in record
    assert token[-4:].encode() in record


# Size limits: before anything else, from lengths alone

KIB = 1024
# "GET " and the target stand on the request line; a field's size is its name and its value.
LIMITS = {"tokenward_max_target": 64 * KIB, "tokenward_max_header": 64 * KIB}


def test_the_size_limits_default_to_64_kib(gateway: Gateway) -> None:
    assert {option: getattr(gateway.context.options, option) for option in LIMITS} == LIMITS


@pytest.mark.parametrize(
    ("target", "field", "expected"),
    [
        ("/?a=" + "%25" * 21_844, ("x-a", "%" * (64 * KIB - 3)), 401),  # at the limits: decoded
        ("/?a=" + "%25" * 21_845, ("x-a", "b"), 414),
        ("/", ("x-a", "%" * (64 * KIB - 2)), 431),
        ("/", ("x-" + "a" * 64 * KIB, ""), 431),
    ],
)
def test_a_target_or_a_header_field_over_its_limit_is_refused(
    gateway: Gateway, target: str, field: tuple[str, str], expected: int
) -> None:
    flow = gateway.send(target, (field,))
    status, error, placement = error_of(flow)
    assert status == expected
    assert error == {401: "missing_token", 414: "target_too_long", 431: "header_too_large"}[status]
    assert placement is None


def test_smaller_limits_apply_at_once(gateway: Gateway) -> None:
    token = gateway.token("alice")  # 39 characters
    gateway.context.configure(gateway.addon, tokenward_max_target=50, tokenward_max_header=40)
    assert forwarded(gateway.send(f"/{token}")) == "/"
    assert error_of(gateway.send("/" + "a" * 50))[:2] == (414, "target_too_long")
    assert error_of(gateway.send("/", (("x-auth-token", token),)))[:2] == (431, "header_too_large")


def test_the_size_limits_come_before_every_row(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    token = gateway.token("alice")
    # An unknown host (row 0) and a misplaced token (row 1) lose to the size of the request.
    flow = gateway.send(
        f"/a/{token}/b", (("x-pad", "x" * 64 * KIB),), host="other.example", mode="reverse:http://x"
    )
    assert error_of(flow) == (431, "header_too_large", None)


def test_the_record_of_a_refused_oversized_request_withholds_what_is_over(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    padding = "%" * (64 * KIB) + token
    flow = gateway.send(f"/?token={token}", (("x-pad", padding), ("x-note", token)))
    assert error_of(flow)[:2] == (431, "header_too_large")
    fields = dict(flow.request.data.headers.fields)
    withheld = f"<{len(padding)} characters withheld: over tokenward's size limit>"
    assert fields[b"x-pad"] == withheld.encode()
    # The parts under the limits are redacted as for any refusal.
    assert fields[b"x-note"] == f"{token[:7]}…{token[-4:]}".encode()
    assert flow.request.data.path == f"/?token={token[:7]}…{token[-4:]}".encode()
    # Redacted once: the answer leaves the record as the refusal made it.
    recorded = (flow.request.data.path, flow.request.data.headers.fields)
    gateway.addon.response(flow)
    assert (flow.request.data.path, flow.request.data.headers.fields) == recorded


def test_observe_forwards_an_oversized_request_and_tells_what_enforce_would_answer(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_mode="observe", tokenward_max_target=10)
    flow = gateway.send(f"/{token}")
    assert forwarded(flow) == "/"
    state = flow.metadata["tokenward"]
    assert (state["verdict"], state["status"]) == ("target_too_long", 414)
    assert "x-tokenward-token" not in flow.request.headers


# The request's own token in other headers


def test_other_headers_are_forwarded_with_the_requests_own_token_as_its_hint(
    gateway: Gateway,
) -> None:
    token, other = gateway.token("alice"), gateway.token("bob")
    hint = f"{token[:7]}…{token[-4:]}".encode()
    sent = (
        ("x-auth-token", token),
        ("Referer", f"https://app.example/?token={token}"),
        ("Cookie", f"a=1; tw={token.replace('s', '%73', 1)}"),
        ("x_auth_token", token.replace("_", "%255F")),
        ("Authorization", f"Bearer {other}"),
    )
    flow = gateway.send("/graphql", sent)
    assert forwarded(flow) == "/graphql"
    fields = dict(flow.request.data.headers.fields)
    assert fields[b"Referer"] == b"https://app.example/?token=" + hint
    assert fields[b"Cookie"] == b"a=1; tw=" + hint
    assert fields[b"x_auth_token"] == hint
    assert fields[b"Authorization"] == f"Bearer {other}".encode()  # not this request's token


# Forward values


@pytest.mark.parametrize(
    ("forward", "expected_target", "expected_header"),
    [
        ("strip", "/p?arg=/ipfs/Qm%2Fx&flag&b=a+b", None),
        ("header", "/p?arg=/ipfs/Qm%2Fx&flag&b=a+b", "TOKEN"),
        ("query", "/p?arg=/ipfs/Qm%2Fx&flag&b=a+b&token=TOKEN", None),
        ("path", "/p/TOKEN?arg=/ipfs/Qm%2Fx&flag&b=a+b", None),
        ("keep", "/p?arg=/ipfs/Qm%2Fx&flag&token=TOKEN&b=a+b", None),
    ],
)
def test_each_forward_value_byte_for_byte(
    gateway: Gateway, forward: str, expected_target: str, expected_header: str | None
) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_forward=forward)
    flow = gateway.send(
        f"/p?arg=/ipfs/Qm%2Fx&flag&token={token}&b=a+b", (("X-Tokenward-Token", "forged"),)
    )
    expected = expected_target.replace("TOKEN", token)
    if forward == "keep":
        expected = f"/p?arg=/ipfs/Qm%2Fx&flag&token={token}&b=a+b"
    assert forwarded(flow) == expected
    auth = flow.request.headers.get_all("x-auth-token")
    assert auth == ([] if expected_header is None else [token])
    identity = flow.request.headers.get_all("x-tokenward-token")
    assert identity == (["forged"] if forward == "keep" else ["alice"])


def test_forward_path_keeps_a_token_where_the_layout_allows_it(gateway: Gateway) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_forward="path")
    assert forwarded(gateway.send(f"/{token}/graphql")) == f"/{token}/graphql"


def test_forward_path_with_no_canonical_position_is_unplaceable(gateway: Gateway) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_forward="path", tokenward_layout="avalanche")
    flow = gateway.send("/ext/bc/X/other", (("x-auth-token", token),))
    assert error_of(flow) == (400, "unplaceable_token", "header")
    assert forwarded(gateway.send("/ext/bc/C/rpc", (("x-auth-token", token),))) == (
        f"/ext/bc/C/rpc/{token}"
    )


@pytest.mark.parametrize(
    ("layout", "target", "expected"),
    [
        ("generic", "/TOKEN", "/"),
        ("generic", "/TOKEN/graphql", "/graphql"),
        ("generic", "/graphql/TOKEN", "/graphql"),
        ("ipfs", "/TOKEN/api/v0/version", "/api/v0/version"),
        ("avalanche", "/ext/bc/C/rpc/TOKEN", "/ext/bc/C/rpc"),
        ("fuji", "/ext/bc/C/rpc/TOKEN/", "/ext/bc/C/rpc/"),
        ("avalanche", "/ext/bc/C/ws/TOKEN", "/ext/bc/C/ws"),
    ],
)
def test_each_layout_strips_its_path_token(
    gateway: Gateway, layout: str, target: str, expected: str
) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_layout=layout)
    assert forwarded(gateway.send(target.replace("TOKEN", token))) == expected


# Routing


def test_a_service_request_goes_to_its_upstream_with_its_host(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "https://10.1.2.3:5001/base")
    token = gateway.token("alice")
    flow = gateway.send(f"/{token}/api/v0/add?pin=true", host="IPFS.example:8080")
    assert forwarded(flow) == "/base/api/v0/add?pin=true"
    assert (flow.request.scheme, flow.request.host, flow.request.port) == (
        "https",
        "10.1.2.3",
        5001,
    )
    assert flow.request.host_header == "10.1.2.3:5001"
    assert flow.metadata["tokenward"]["service"] == "ipfs"


def reverse_flow(gateway: Gateway, target: str, fields: list[tuple[bytes, bytes]]) -> http.HTTPFlow:
    """A request as reverse mode to http://10.0.0.9:8545 hands it over, Host as the client sent."""
    request = tutils.treq(
        host="10.0.0.9", port=8545, path=target.encode(), headers=http.Headers(fields)
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://10.0.0.9:8545")
    return flow


def test_reverse_mode_sends_the_upstreams_host_in_the_clients_first_host_field(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    fields = [(b"HOST", b"gw.example"), (b"accept", b"*/*"), (b"host", b"again.example")]
    flow = reverse_flow(gateway, f"/{token}", fields)
    gateway.addon.requestheaders(flow)
    assert forwarded(flow) == "/"
    names_and_values = [(n, v) for n, v in flow.request.headers.fields if n != b"x-tokenward-kind"]
    assert names_and_values == [
        (b"HOST", b"10.0.0.9:8545"),
        (b"accept", b"*/*"),
        (b"x-tokenward-token", b"alice"),
    ]


def test_reverse_mode_adds_a_host_field_to_http1_but_not_to_http2(gateway: Gateway) -> None:
    token = gateway.token("alice")
    http1 = reverse_flow(gateway, "/", [(b"x-auth-token", token.encode())])
    gateway.addon.requestheaders(http1)
    assert http1.request.headers.get_all("host") == ["10.0.0.9:8545"]
    http2 = reverse_flow(gateway, "/", [(b"x-auth-token", token.encode())])
    http2.request.http_version = "HTTP/2.0"
    http2.request.authority = "gw.example"
    gateway.addon.requestheaders(http2)
    assert http2.request.authority == "10.0.0.9:8545"
    assert http2.request.headers.get_all("host") == []


def test_a_host_header_kept_by_the_user_stays_as_sent(gateway: Gateway) -> None:
    # mitmproxy's proxyserver addon defines the option; the user sets it
    gateway.context.options.add_option("keep_host_header", bool, False, "")
    gateway.context.configure(gateway.addon, keep_host_header=True)
    token = gateway.token("alice")
    flow = reverse_flow(gateway, f"/{token}", [(b"Host", b"gw.example")])
    gateway.addon.requestheaders(flow)
    assert flow.request.headers.get_all("host") == ["gw.example"]


def test_a_service_registered_while_running_counts_at_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    token = gateway.token("alice")
    assert forwarded(gateway.send(f"/graphql/{token}", host="fresh.example")) == "/graphql"
    with TokenStore.open(tmp_path / "tokenward.db", create=False) as other:
        other.add_service("fresh", "ipfs", ("fresh.example",), "http://127.0.0.1:5001")
    flow = gateway.send(f"/graphql/{token}", host="fresh.example")
    assert error_of(flow) == (400, "misplaced_token", None)


def test_a_service_removed_while_running_counts_at_once(gateway: Gateway, tmp_path: Path) -> None:
    token = gateway.token("alice")
    with TokenStore.open(tmp_path / "tokenward.db", create=False) as other:
        other.add_service("fresh", "ipfs", ("fresh.example",), "http://127.0.0.1:5001")
        flow = gateway.send(f"/graphql/{token}", host="fresh.example")
        assert error_of(flow) == (400, "misplaced_token", None)
        other.remove_service("fresh")
    assert forwarded(gateway.send(f"/graphql/{token}", host="fresh.example")) == "/graphql"


# Preflights


def preflight_headers() -> tuple[tuple[str, str], ...]:
    return (("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"))


def test_a_preflight_passes_without_a_token(gateway: Gateway) -> None:
    flow = gateway.send("/graphql", preflight_headers(), method="OPTIONS")
    assert forwarded(flow) == "/graphql"
    assert "x-tokenward-token" not in flow.request.headers


def test_a_preflight_still_gets_row_1(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send(f"/graphql?q={token}", preflight_headers(), method="OPTIONS")
    assert error_of(flow) == (400, "misplaced_token", None)


def test_an_enforced_preflight_needs_a_token(gateway: Gateway) -> None:
    gateway.context.configure(gateway.addon, tokenward_preflight="enforce")
    flow = gateway.send("/graphql", preflight_headers(), method="OPTIONS")
    assert error_of(flow) == (401, "missing_token", None)


def test_an_h2_preflight_passes_once_its_stream_ended_without_data(gateway: Gateway) -> None:
    flow = gateway.send("/graphql", preflight_headers(), method="OPTIONS", http_version="HTTP/2.0")
    assert error_of(flow) == (401, "missing_token", None)  # held: DATA may follow
    flow.response = None  # the answer goes out only after the body (in mitmproxy, not here)
    gateway.addon.request(flow)
    assert forwarded(flow) == "/graphql"
    assert flow.metadata["tokenward"]["verdict"] == "accepted"
    assert "transfer-encoding" not in flow.request.headers
    assert "content-length" not in flow.request.headers


def test_an_h2_options_that_sent_data_stays_refused(gateway: Gateway) -> None:
    flow = gateway.send("/graphql", preflight_headers(), method="OPTIONS", http_version="HTTP/2.0")
    flow.request.data.content = b'{"method": "eth_sendRawTransaction"}'
    gateway.addon.request(flow)
    assert error_of(flow) == (401, "missing_token", None)
    assert gateway.addon._held_preflights == {}


def test_an_h2_request_is_framed_chunked_then_by_its_buffered_length(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token),), method="POST", http_version="HTTP/2.0")
    assert flow.request.headers["transfer-encoding"] == "chunked"
    body = b"POST /smuggled HTTP/1.1\r\n\r\n"
    flow.request.data.content = body
    gateway.addon.request(flow)
    assert "transfer-encoding" not in flow.request.headers
    assert flow.request.headers["content-length"] == str(len(body))


@pytest.mark.parametrize(
    ("fields", "body", "framed"),
    [
        pytest.param((), b"", (), id="no-body"),
        pytest.param((), b"abc", ((b"content-length", b"3"),), id="body"),
        pytest.param(((b"content-length", b"0"),), b"", ((b"content-length", b"0"),), id="zero"),
        pytest.param(((b"content-length", b"9"),), b"ab", ((b"content-length", b"2"),), id="wrong"),
    ],
)
def test_a_buffered_h2_body_is_framed_by_its_length(
    fields: tuple[tuple[bytes, bytes], ...], body: bytes, framed: tuple[tuple[bytes, bytes], ...]
) -> None:
    request = tutils.treq(http_version=b"HTTP/2.0", headers=http.Headers(list(fields)))
    declare_chunked_framing(request.data)
    request.data.content = body
    frame_buffered_body(request.data)
    assert request.data.headers.fields == framed


def test_an_http1_request_is_left_framed_as_it_came(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token),), method="POST")
    before = request_of(flow)
    gateway.addon.request(flow)
    assert request_of(flow) == before
    assert "transfer-encoding" not in flow.request.headers


# Observe mode


def test_observe_rejects_nothing_and_annotates(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    caplog.set_level(logging.INFO)
    flow = gateway.send(f"/graphql?token={UNKNOWN}")
    assert forwarded(flow) == "/graphql"
    state = flow.metadata["tokenward"]
    assert (state["verdict"], state["placement"], state["status"]) == (
        "unknown_token",
        "query",
        401,
    )
    assert "unknown_token" in flow.comment
    assert "x-tokenward-token" not in flow.request.headers
    assert any("travels in the URL" in record.message for record in caplog.records)
    assert UNKNOWN not in caplog.text
    assert UNKNOWN[-4:] in caplog.text


def test_observe_adds_identity_only_for_what_enforce_accepts(gateway: Gateway) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    flow = gateway.send("/graphql", (("x-auth-token", token),))
    assert flow.request.headers["x-tokenward-token"] == "alice"
    assert flow.metadata["tokenward"]["verdict"] == "accepted"


def test_observe_survives_an_unreadable_store(gateway: Gateway, tmp_path: Path) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    (tmp_path / "tokenward.db").unlink()
    flow = gateway.send(f"/{token}")
    assert forwarded(flow) == "/"
    assert flow.metadata["tokenward"]["verdict"] == "store_unavailable"


# Records


def test_a_forwarded_flow_is_redacted_once_answered(gateway: Gateway) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_forward="query")
    flow = gateway.send(f"/graphql/{token}")
    assert forwarded(flow) == f"/graphql?token={token}"
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    assert token.encode() not in flow.request.data.path
    assert flow.request.data.path.decode() == f"/graphql?token={token[:7]}…{token[-4:]}"


@pytest.mark.parametrize(
    ("forward", "extra_header"),
    [
        ("header", None),  # the token put back in x-auth-token
        ("strip", ("authorization", "Bearer {token}")),  # a header that is no placement
        ("strip", ("x-debug", "{escaped}")),  # percent-encoded
    ],
)
def test_every_header_of_the_record_is_redacted_once_answered(
    gateway: Gateway, forward: str, extra_header: tuple[str, str] | None
) -> None:
    token = gateway.token("alice")
    escaped = token.replace("_", "%5F")
    gateway.context.configure(gateway.addon, tokenward_forward=forward)
    extra = [] if extra_header is None else [(extra_header[0], extra_header[1])]
    headers = [(name, value.format(token=token, escaped=escaped)) for name, value in extra]
    flow = gateway.send("/", (("x-auth-token", token), *headers))
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    recorded = b"\n".join(value for _, value in flow.request.data.headers.fields)
    assert token.encode() not in recorded
    assert escaped.encode() not in recorded
    assert f"{token[:7]}…{token[-4:]}".encode() in recorded


@pytest.mark.parametrize("with_token", [True, False], ids=["accepted", "refused"])
def test_a_method_that_holds_a_token_is_recorded_as_its_hint(
    gateway: Gateway, with_token: bool
) -> None:
    token = gateway.token("alice")
    headers = (("x-auth-token", token),) if with_token else ()
    flow = gateway.send("/", headers, method=token)
    if flow.response is None:
        flow.response = tutils.tresp()
    gateway.addon.response(flow)
    assert flow.request.data.method == f"{token[:7]}…{token[-4:]}".encode()


def test_a_record_without_a_token_is_left_as_it_was(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/", (("x-auth-token", token), ("x-note", "...sm"), ("x-more", "_pat_")))
    sent = (flow.request.data.path, flow.request.data.headers.fields)
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    assert (flow.request.data.path, flow.request.data.headers.fields) == sent


def test_the_recorded_request_body_shows_tokens_as_hints_once_answered(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/", (("x-auth-token", token),), method="POST")
    sent = json.dumps({"params": [token, token.replace("s", "%73", 1)]}).encode()
    flow.request.data.content = sent
    flow.request.headers["content-length"] = str(len(sent))
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    hint = f"{token[:7]}…{token[-4:]}"
    assert (
        flow.request.get_content()
        == json.dumps({"params": [hint, hint]}, ensure_ascii=False).encode()
    )
    assert flow.request.headers["content-length"] == str(len(sent)), "as it was sent"


def echoing_answer(gateway: Gateway, answer: http.Response) -> tuple[bytes, bytes, bytes]:
    """What Save and Dumper record of `answer`, what the client is sent, and what the flow
    keeps afterwards, with the addon's and its answer keeper's hooks run as mitmproxy runs
    them."""
    flow = gateway.send("/", (("x-auth-token", gateway.token("alice")),))
    flow.response = answer
    flow.live = True

    async def answered() -> tuple[bytes, bytes, bytes]:
        gateway.addon.response(flow)
        assert flow.response is not None
        recorded = flow.response.raw_content or b""
        gateway.addon.answer_keeper.response(flow)
        sent = flow.response.raw_content or b""
        flow.live = False  # mitmproxy, once it has sent the answer
        for _ in range(200):
            await asyncio.sleep(0.01)
            if flow.response.raw_content != sent:
                break
        return recorded, sent, flow.response.raw_content or b""

    return asyncio.run(answered())


def test_an_echoed_token_is_redacted_in_the_record_while_the_client_gets_the_answer_as_it_came(
    gateway: Gateway,
) -> None:
    token = "sm_pat_" + "Echo" * 8
    echo = json.dumps({"headers": [["x-auth-token", token]]}).encode()
    answer = tutils.tresp(content=echo)
    answer.headers[f"x-echo-{token}"] = token
    recorded, sent, kept = echoing_answer(gateway, answer)
    hinted = json.dumps(
        {"headers": [["x-auth-token", "sm_pat_…Echo"]]}, ensure_ascii=False
    ).encode()
    assert recorded == kept == hinted
    assert sent == echo
    assert answer.headers[f"x-echo-{token}"] == token, "the client's answer is not touched"


def test_an_echoed_token_in_a_compressed_answer_is_redacted_in_the_record(
    gateway: Gateway,
) -> None:
    token = "sm_pat_" + "Gzip" * 8
    answer = tutils.tresp()
    answer.headers["content-encoding"] = "gzip"
    answer.content = f"token: {token}".encode()
    raw = answer.raw_content
    recorded, sent, _ = echoing_answer(gateway, answer)
    assert sent == raw
    assert gzip.decompress(recorded) == "token: sm_pat_…Gzip".encode()


def test_an_answer_without_a_token_is_recorded_as_it_came(gateway: Gateway) -> None:
    answer = tutils.tresp(content=b'{"result": "0x10", "link": "/a%20b"}')
    recorded, sent, kept = echoing_answer(gateway, answer)
    assert recorded == sent == kept == b'{"result": "0x10", "link": "/a%20b"}'
    assert not gateway.addon.answer_keeper.kept


def test_an_error_quoting_a_refused_framing_value_is_redacted(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/", (("content-length", token),))
    flow.error = mitmflow.Error(f"invalid content-length header: {token!r}")
    gateway.addon.error(flow)
    hint = f"{token[:7]}…{token[-4:]}"
    assert flow.error.msg == f"invalid content-length header: '{hint}'"
    assert flow.request.headers["content-length"] == hint


def test_explain_command_logs_the_decision(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    flow = gateway.send("/")
    gateway.addon.explain([flow])
    assert "missing_token" in caplog.text


def test_close_frame_is_a_masked_client_close() -> None:
    frame = masked_close_frame(1008, "token revoked")
    assert frame[0] == 0x88 and frame[1] & 0x80
    length = frame[1] & 0x7F
    mask, payload = frame[2:6], frame[6:]
    assert len(payload) == length
    unmasked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    assert unmasked == b"\x03\xf0token revoked"


# Upgrades and folded header fields (issue 12, findings 3, 8 and 9)

WEBSOCKET = (
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
)
VERSION_13 = (("Sec-WebSocket-Version", "13"),)
REFUSED_UPGRADES = {
    "foo": (("Connection", "upgrade"), ("Upgrade", "foo")),
    "h2c": (("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c")),
    "empty": (("Upgrade", ""),),
    "websocket-version-8": (*WEBSOCKET, ("Sec-WebSocket-Version", "8")),
    "websocket-no-version": WEBSOCKET,
    "websocket-version-13-twice": (*WEBSOCKET, *VERSION_13, *VERSION_13),
    "websocket-and-foo-in-one": (("Upgrade", "websocket, foo"), *VERSION_13),
    "websocket-and-foo-in-two": (*WEBSOCKET, ("upgrade", "foo"), *VERSION_13),
    "websocket-twice": (*WEBSOCKET, ("Upgrade", "websocket"), *VERSION_13),
}


@pytest.mark.parametrize("fields", REFUSED_UPGRADES.values(), ids=REFUSED_UPGRADES)
def test_an_upgrade_other_than_a_websocket_handshake_is_refused(
    gateway: Gateway, fields: tuple[tuple[str, str], ...]
) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token), *fields))
    assert error_of(flow) == (400, "unsupported_upgrade", None)
    assert gateway.addon._upgrade_tokens == {}


@pytest.mark.parametrize("value", ["websocket", "WebSocket", "WEBSOCKET"])
def test_a_websocket_handshake_in_any_case_is_forwarded(gateway: Gateway, value: str) -> None:
    token = gateway.token("alice")
    fields = (("Connection", "Upgrade"), ("Upgrade", value), *VERSION_13)
    flow = gateway.send("/rpc", (("x-auth-token", token), *fields))
    assert forwarded(flow) == "/rpc"
    assert flow.request.headers["x-tokenward-token"] == "alice"


def test_unsupported_upgrade_comes_after_rows_0_and_1_and_before_the_rest(
    gateway: Gateway,
) -> None:
    foo = (("Connection", "upgrade"), ("Upgrade", "foo"))
    token = gateway.token("alice")
    assert error_of(gateway.send(f"/a/{token}/b", foo))[1] == "misplaced_token"
    assert error_of(gateway.send("/rpc", foo))[1] == "unsupported_upgrade"  # before row 3
    preflight = gateway.send("/rpc", (*preflight_headers(), *foo), method="OPTIONS")
    assert error_of(preflight)[1] == "unsupported_upgrade"
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    elsewhere = gateway.send("/rpc", foo, host="other.example", mode="reverse:http://x")
    assert error_of(elsewhere)[1] == "unknown_service"


FOLDED = {
    "space": ("X-Foo", "a\r\n x-tokenward-token: admin"),
    "tab": ("X-Foo", "a\r\n\tx-tokenward-token: admin"),
    "bare-cr": ("X-Foo", "a\rb"),
    "bare-lf": ("X-Foo", "a\nb"),
    "in-a-name": ("X-Foo\r\nx-tokenward-token", "admin"),
}


@pytest.mark.parametrize("field", FOLDED.values(), ids=FOLDED)
@pytest.mark.parametrize("http_version", ["HTTP/1.1", "HTTP/2.0"])
def test_a_field_holding_a_line_break_is_refused(
    gateway: Gateway, field: tuple[str, str], http_version: str
) -> None:
    """HTTP/2 forbids CR and LF in fields, and mitmproxy's HTTP/2 layer ends such a connection
    unless `validate_inbound_headers` is off; then the addon refuses them as for HTTP/1."""
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token), field), http_version=http_version)
    assert error_of(flow) == (400, "malformed_request", None)
    assert flow.response is not None and token.encode() not in (flow.response.content or b"")


def test_malformed_request_comes_first(gateway: Gateway) -> None:
    fold = (("X-Foo", "a\r\n b"),)
    token = gateway.token("alice")
    assert error_of(gateway.send(f"/a/{token}/b", fold))[1] == "malformed_request"
    assert error_of(gateway.send("/rpc", (*fold, ("Upgrade", "foo"))))[1] == "malformed_request"
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    elsewhere = gateway.send("/rpc", fold, host="other.example", mode="reverse:http://x")
    assert error_of(elsewhere)[1] == "malformed_request"


def answer(flow: http.HTTPFlow, addon: TokenWard, status: int) -> None:
    """The upstream's answer, as mitmproxy hands it to the `response` hook."""
    flow.response = tutils.tresp(status_code=status)
    if status == 101 and upgrade_asked(request_of(flow)) is Upgrade.WEBSOCKET:
        flow.websocket = WebSocketData()  # set by mitmproxy before the hook
    addon.response(flow)


@pytest.mark.parametrize("status", [101, 200, 400, 502])
def test_every_answer_ends_the_wait_for_a_switch(gateway: Gateway, status: int) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token), *WEBSOCKET, *VERSION_13))
    assert list(gateway.addon._upgrade_tokens) == [flow.id]
    answer(flow, gateway.addon, status)
    assert gateway.addon._upgrade_tokens == {}
    tied = [upgraded.token for upgraded in gateway.addon.open_upgrades.values()]
    assert tied == ([token] if status == 101 else [])


def test_an_error_ends_the_wait_for_a_switch(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token), *WEBSOCKET, *VERSION_13))
    flow.error = tflow.terr()
    gateway.addon.error(flow)
    assert gateway.addon._upgrade_tokens == {}


def test_the_wait_for_switches_is_bounded_and_a_dropped_one_cannot_switch(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    handshake = (("x-auth-token", token), *WEBSOCKET, *VERSION_13)
    flows = [gateway.send("/rpc", handshake) for _ in range(MAX_PENDING_UPGRADES + 2)]
    assert len(gateway.addon._upgrade_tokens) == MAX_PENDING_UPGRADES
    oldest, newest = flows[0], flows[-1]
    answer(oldest, gateway.addon, 101)
    assert oldest.error is not None and not oldest.killable  # killed: nothing to tie it to
    answer(newest, gateway.addon, 101)
    assert newest.error is None and newest.id in gateway.addon.open_upgrades


def test_a_switch_for_a_request_that_asked_none_is_closed(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/rpc", (("x-auth-token", token),))
    answer(flow, gateway.addon, 101)
    assert flow.error is not None and not flow.killable
    assert gateway.addon.open_upgrades == {}


def test_observe_flags_an_unsupported_upgrade_and_ties_its_tunnel_to_a_valid_token(
    gateway: Gateway,
) -> None:
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    token = gateway.token("alice")
    foo = (("Connection", "upgrade"), ("Upgrade", "foo"))
    flow = gateway.send("/rpc", (("x-auth-token", token), *foo))
    assert forwarded(flow) == "/rpc"
    assert flow.metadata["tokenward"]["verdict"] == "unsupported_upgrade"
    assert "x-tokenward-token" not in flow.request.headers  # enforce would refuse it
    answer(flow, gateway.addon, 101)
    assert flow.error is None
    assert [upgraded.token for upgraded in gateway.addon.open_upgrades.values()] == [token]

    unknown = gateway.send("/rpc", (("x-auth-token", UNKNOWN), *foo))
    answer(unknown, gateway.addon, 101)  # observe rejects nothing; no valid token to tie
    assert unknown.error is None and unknown.id not in gateway.addon.open_upgrades


NAMES = ["Upgrade", "upgrade", "UPGRADE", "Sec-WebSocket-Version", "sec-websocket-version", "X"]
VALUES = ["websocket", "WebSocket", "foo", "websocket, foo", "h2c", "", "13", "8", "13, 13"]


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=5))
@example([("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
@example([("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("X", "13")])
@example([("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")] * 2)
@example([("Upgrade", "websocket, foo"), ("Sec-WebSocket-Version", "13")])
def test_what_the_addon_takes_for_a_websocket_mitmproxy_carries_as_one(
    fields: list[tuple[str, str]],
) -> None:
    """mitmproxy carries a 101 as a WebSocket when the answer's Upgrade is `websocket` and the
    request's `Sec-WebSocket-Version` is exactly 13 (`HttpStream.send_response`), else as a raw
    tunnel: an upstream that switches to what was asked must never get a raw tunnel."""
    asked = upgrade_asked(Request("GET", "/", tuple(fields)))
    headers = http.Headers([(name.encode(), value.encode()) for name, value in fields])
    assert (asked is Upgrade.NONE) == ("upgrade" not in headers)
    if asked is Upgrade.WEBSOCKET:
        assert headers.get("upgrade", "").lower() == "websocket"
        assert headers.get("Sec-WebSocket-Version", "").encode() == b"13"


FIELD_TEXT = st.text(st.sampled_from("ab: ,;=\t"), max_size=6)


@given(
    st.lists(
        st.tuples(st.sampled_from(["X-Foo", "x-auth-token", "Upgrade"]), FIELD_TEXT, FIELD_TEXT),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
@example([("X-Foo", "a", "x-tokenward-token: admin")], [True] * 4)
@example([("X-Foo", "a", "")], [True] * 4)
@example([("X-Foo", "a", "x")], [False] * 4)
def test_every_fold_that_mitmproxys_reader_takes_is_seen(
    fields: list[tuple[str, str, str]], folded: list[bool]
) -> None:
    """Heads read by mitmproxy's own HTTP/1 reader: a field folded onto the next line (a line
    starting with a space or a tab) is seen as holding a line break, and no other is."""
    lines = [b"GET / HTTP/1.1"]
    for (name, value, continued), fold in zip(fields, folded, strict=False):
        lines.append(f"{name}: {value}".encode())
        if fold:
            lines.append(f" {continued}".encode())
    request = read_request_head(lines)
    seen = holds_line_break(request_of(tflow.tflow(req=request)))
    assert seen == any(folded[: len(fields)])


# Advice in the answers, marks and comments in both modes, the verdict for the client


def answer_of(flow: http.HTTPFlow) -> dict[str, object]:
    assert flow.response is not None, "the request was forwarded, not rejected"
    document = json.loads(flow.response.content or b"")
    assert isinstance(document, dict)
    assert set(document) == {"error", "message", "placement", "advice"}
    return document


def test_a_misplaced_path_token_is_answered_with_where_and_the_layouts_rule(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    token = gateway.token("alice")
    caplog.set_level(logging.INFO)
    flow = gateway.send(f"/api/v0/{token}", host="ipfs.example")
    document = answer_of(flow)
    assert document["error"] == "misplaced_token"
    message, advice = str(document["message"]), str(document["advice"])
    assert "in path segment 3" in message and "ipfs layout" in message
    assert "/TOKEN/api/v0/version" in message and "x-auth-token" in advice
    # The log line says the same, the record too, and none holds the token.
    assert "in path segment 3" in caplog.text and advice in caplog.text
    assert flow.comment.startswith("tokenward: 400 misplaced_token") and advice in flow.comment
    assert token not in caplog.text + flow.comment


def test_a_token_in_the_authorization_header_gets_advice_to_send_it_as_x_auth_token(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    document = answer_of(gateway.send("/graphql", (("Authorization", f"Bearer {token}"),)))
    assert document["error"] == "missing_token"
    hint = f"{token[:7]}…{token[-4:]}"
    assert f"'x-auth-token: {hint}'" in str(document["advice"])
    assert token not in json.dumps(document, ensure_ascii=False)


def test_unknown_service_names_the_host_in_the_answer_and_the_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    caplog.set_level(logging.INFO)
    flow = gateway.send("/", host="IPFS.exampel.com", mode="reverse:http://x")
    message = "No service answers to the host 'ipfs.exampel.com'."
    assert answer_of(flow)["message"] == message
    assert message in caplog.text


def test_a_token_to_a_host_that_is_no_service_names_the_host(gateway: Gateway) -> None:
    gateway.store.add_service("ipfs", "ipfs", ("ipfs.example",), "http://127.0.0.1:5001")
    token = gateway.token("alice")
    flow = gateway.send("/", (("x-api-key", token),), host="api.third.example")
    document = answer_of(flow)
    assert document["error"] == "token_to_unknown_host"
    assert "'api.third.example'" in str(document["message"])
    assert "the 'x-api-key' header" in str(document["advice"])


def test_enforce_marks_and_comments_a_refused_flow_and_leaves_an_accepted_one_alone(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    refused = gateway.send("/graphql")
    assert refused.marked == ":no_entry:"
    assert refused.comment.startswith("tokenward: 401 missing_token")
    accepted = gateway.send(f"/graphql?token={token}")
    assert (accepted.marked, accepted.comment) == ("", "")
    accepted.response = tutils.tresp()
    gateway.addon.responseheaders(accepted)
    assert "x-tokenward-verdict" not in accepted.response.headers  # observe mode's only


@pytest.mark.parametrize(
    ("target", "headers", "verdict", "mark"),
    [
        ("/graphql", (("x-auth-token", "{TOKEN}"),), "accepted", ""),
        ("/graphql?token={TOKEN}", (), "accepted", ":warning:"),  # the token in the URL
        ("/graphql", (), "missing_token", ":no_entry:"),
        ("/a/{TOKEN}/b", (), "misplaced_token", ":no_entry:"),
        (f"/graphql?token={UNKNOWN}", (), "unknown_token", ":no_entry:"),
    ],
)
def test_observe_tells_the_client_the_verdict_and_marks_what_enforce_would_refuse(
    gateway: Gateway,
    target: str,
    headers: tuple[tuple[str, str], ...],
    verdict: str,
    mark: str,
) -> None:
    token = gateway.token("alice")
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    sent = tuple((name, value.replace("{TOKEN}", token)) for name, value in headers)
    flow = gateway.send(target.replace("{TOKEN}", token), sent)
    assert flow.response is None  # forwarded
    assert flow.marked == mark
    assert flow.comment.startswith(f"tokenward: {'' if verdict == 'accepted' else '4'}")
    assert verdict in flow.comment
    flow.response = tutils.tresp()
    gateway.addon.responseheaders(flow)
    gateway.addon.response(flow)
    assert flow.response.headers["x-tokenward-verdict"] == verdict


def test_observe_logs_one_summary_per_flow_and_no_none_without_a_single_token(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.context.configure(gateway.addon, tokenward_mode="observe")
    caplog.set_level(logging.INFO)
    flow = gateway.send(f"/p?token={UNKNOWN}&token=sm_pat_other")
    assert flow.metadata["tokenward"]["verdict"] == "ambiguous_token"
    summaries = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(summaries) == 1
    assert summaries[0].getMessage().startswith("tokenward observe: GET 400 ambiguous_token")
    assert "Advice: Send one token in one place" in summaries[0].getMessage()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["tokenward observe: the token travels in the URL, where logs keep it"]
    assert "(None)" not in caplog.text and UNKNOWN not in caplog.text


def test_a_diverted_rejection_is_answered_with_its_message_and_advice(gateway: Gateway) -> None:
    rejection = Rejection(
        ErrorCode.MALFORMED_TOKEN, Placement.QUERY, "Not a token: “x”.", "Its length is 5 …"
    )
    flow = tflow.tflow()
    RejectionResponder().divert(flow, rejection)
    head = b"POST / HTTP/1.1\r\n" + bytes(flow.request.headers) + b"\r\n"
    answer = _response_for(_header_fields(head))
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == rejection.document()


host_field_values = st.binary(max_size=12).filter(lambda value: b"\r" not in value)


@given(
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/2.0", b"HTTP/3"]),
    authority=st.sampled_from([b"", b"rpc.example:8080", b"xn--bcher-kva.example", b"\xff.x"]),
    fields=st.lists(
        st.tuples(
            st.sampled_from([b"Host", b"host", b"HOST", b"accept", b"x-auth-token"]),
            host_field_values,
        ),
        max_size=4,
    ),
)
@example(version=b"HTTP/1.1", authority=b"", fields=[(b"Host", b"a"), (b"host", b"b")])
@example(version=b"HTTP/2.0", authority=b"", fields=[(b"host", b"\xe9.example")])
def test_a_held_head_tells_the_host_header_as_mitmproxy_does(
    version: bytes, authority: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    request = tutils.treq(http_version=version, authority=authority, headers=http.Headers(fields))
    assert ClientHead.of(request.data).host_header() == (request.host_header or "")


@pytest.mark.parametrize("verdict", ["accepted", "unknown_token"])
def test_a_repeating_request_records_the_state_afresh_for_each_flow(
    gateway: Gateway, verdict: str
) -> None:
    token = gateway.token("ci") if verdict == "accepted" else UNKNOWN
    first, second = (gateway.send("/", (("x-auth-token", token),)) for _ in range(2))
    state = first.metadata["tokenward"]
    assert state["verdict"] == verdict
    assert second.metadata["tokenward"] == state
    state["warnings"].append("changed by one flow")
    state["verdict"] = "changed"
    third = gateway.send("/", (("x-auth-token", token),))
    assert third.metadata["tokenward"] == second.metadata["tokenward"]
    assert third.metadata["tokenward"]["verdict"] == verdict
    assert third.metadata["tokenward"]["warnings"] == []


def test_states_are_recorded_again_under_new_options(gateway: Gateway) -> None:
    token = gateway.token("ci")
    assert gateway.send("/", (("x-auth-token", token),)).metadata["tokenward"]["forward"] == "strip"
    gateway.context.configure(gateway.addon, tokenward_forward="keep")
    state = gateway.send("/", (("x-auth-token", token),)).metadata["tokenward"]
    assert state["forward"] == "keep"


def replayed(gateway: Gateway, flow: http.HTTPFlow) -> http.HTTPFlow:
    """`flow` answered (its record redacted), then replayed as mitmproxy's client replay does."""
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    flow.is_replay = "request"
    flow.response = None
    gateway.addon.requestheaders(flow)
    return flow


def test_with_a_flow_view_a_replay_sends_the_clients_token_again(tmp_path: Path) -> None:
    path = tmp_path / "tokenward.db"
    store = TokenStore.open(path, create=True)
    addon = TokenWard(clock=lambda: NOW)
    with taddons.context(view.View(), addon) as context:  # as in mitmweb
        context.configure(addon, tokenward_db=str(path))
        gateway = Gateway(context, addon, store)
        flow = gateway.send("/", (("x-auth-token", gateway.token("ci")),))
        assert flow.id in addon._client_requests
        again = replayed(gateway, flow)
        assert again.response is None
        assert again.metadata["tokenward"]["verdict"] == "accepted"
    store.close()


def test_without_a_flow_view_nothing_is_held_and_a_replay_is_a_saved_ones(
    gateway: Gateway,
) -> None:
    token = gateway.token("ci")
    flow = gateway.send("/", (("x-auth-token", token),))
    assert gateway.addon._client_requests == {}
    assert flow.metadata["tokenward_replay"]["flow"] == flow.id
    again = replayed(gateway, flow)
    assert error_of(again)[:2] == (401, "missing_token")  # the record's token was stripped
    assert answer_of(again)["advice"] == REPLAY_ADVICE
