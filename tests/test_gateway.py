"""The addon in process: every verdict row, every forward value, routing, observe mode.

Flows are mitmproxy's own test flows (`tflow`) run through the addon inside `taddons.context`;
the store is a real SQLite file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons.gateway import TokenWard, masked_close_frame
from tokenward_lib.store import TokenStore

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
    ) -> http.HTTPFlow:
        request = tutils.treq(
            method=method.encode(),
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


def test_a_record_without_a_token_is_left_as_it_was(gateway: Gateway) -> None:
    token = gateway.token("alice")
    flow = gateway.send("/", (("x-auth-token", token), ("x-note", "...sm"), ("x-more", "_pat_")))
    sent = (flow.request.data.path, flow.request.data.headers.fields)
    flow.response = tutils.tresp()
    gateway.addon.response(flow)
    assert (flow.request.data.path, flow.request.data.headers.fields) == sent


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
