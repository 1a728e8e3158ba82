"""The drivers: what they send and what they report, against the recording upstream and the addon.

The network driver is pointed straight at a recording upstream (run in a thread), so every
request reaches it: what it recorded must be byte for byte what the request says.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.fixtures.processes import free_port
from tokenward.fixtures.upstream import RecordingUpstream
from tokenward.harness.drivers import HttpGateway, UpstreamLog, request_head
from tokenward.harness.inprocess import InProcessGateway
from tokenward.harness.oracle import (
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelToken,
    Scenario,
    StoreModel,
    TokenKind,
)
from tokenward.harness.run import new_token, self_test_host, self_test_plan
from tokenward.harness.strategies import EXTRA_PARAMS, EXTRA_SEGMENTS

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SCENARIO = Scenario(NOW)
WEBSOCKET_HEADERS = (
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
    ("Sec-WebSocket-Version", "13"),
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


@pytest.fixture(scope="module")
def straight(upstream: RecordingUpstream) -> Iterator[HttpGateway]:
    """The network driver aimed at the upstream itself, reading its log."""
    with HttpGateway(upstream.url, control_url=upstream.control_url) as driver:
        yield driver


# --- the network driver -------------------------------------------------------------------------


def test_the_request_head_is_written_as_given() -> None:
    request = HarnessRequest(
        "POST", "/a%2Fb/./x?b=a+b&flag&&t%6Fken=%73", (("X-Odd", "in  side\xe9"),), b"{}"
    )
    assert request_head(request, "node.example") == (
        b"POST /a%2Fb/./x?b=a+b&flag&&t%6Fken=%73 HTTP/1.1\r\n"
        b"Host: node.example\r\nX-Odd: in  side\xe9\r\nContent-Length: 2\r\n\r\n"
    )


targets = st.builds(
    lambda segments, params: "/" + "/".join(segments) + ("?" + "&".join(params) if params else ""),
    st.lists(st.sampled_from([*EXTRA_SEGMENTS, "", ".", "..", "%2e", "%7E", "A~b"]), max_size=4),
    st.lists(st.sampled_from([*EXTRA_PARAMS, "", "=", "a=%zz", "x=%E9"]), max_size=4),
)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=12)


@given(target=targets, value=header_values)
@example(target="/p?arg=/ipfs/Qm%2Fx&flag&b=a+b", value="caf\u00e9")
@example(target="//double//slash/?", value="")
def test_targets_and_fields_reach_the_upstream_byte_for_byte(
    straight: HttpGateway, target: str, value: str
) -> None:
    request = HarnessRequest("GET", target, (("X-Value", value), ("x-value", "2")))
    observation = straight.send(request, SCENARIO)
    assert observation.upstream is not None and len(observation.upstream) == 1
    seen = observation.upstream[0]
    assert seen.target == target
    assert seen.headers[1:] == request.headers
    assert observation.added_headers == {"host"}


def test_a_body_arrives_whole(straight: HttpGateway) -> None:
    body = bytes(range(256)) * 4
    observation = straight.send(HarnessRequest("POST", "/upload", body=body), SCENARIO)
    assert observation.upstream is not None
    (seen,) = observation.upstream
    assert seen.body_length == len(body)
    assert observation.added_headers == {"host", "content-length"}


def test_a_websocket_opens_and_echoes(straight: HttpGateway) -> None:
    request = HarnessRequest("GET", "/ws?x=1", WEBSOCKET_HEADERS, websocket=True)
    observation = straight.send(request, SCENARIO)
    assert observation.answer is not None and observation.answer.status == 101
    assert observation.websocket_echo is True
    assert observation.upstream is not None
    assert observation.upstream[0].headers[1:] == WEBSOCKET_HEADERS


def test_the_host_is_the_scenario_service(straight: HttpGateway) -> None:
    scenario = Scenario(NOW, service="ipfs.tokenward.test")
    observation = straight.send(HarnessRequest("GET", "/"), scenario)
    assert observation.upstream is not None
    assert observation.upstream[0].headers[0] == ("Host", "ipfs.tokenward.test")


def test_without_a_control_url_the_upstream_is_unseen(upstream: RecordingUpstream) -> None:
    with HttpGateway(upstream.url) as driver:
        observation = driver.send(HarnessRequest("GET", "/"), SCENARIO)
    assert observation.upstream is None
    assert observation.answer is not None and observation.answer.status == 200


def test_the_log_reader_reports_each_record_once(upstream: RecordingUpstream) -> None:
    log = UpstreamLog(upstream.control_url)
    try:
        assert log.new_records() == []
        with HttpGateway(upstream.url) as driver:
            driver.send(HarnessRequest("GET", "/one"), SCENARIO)
            driver.send(HarnessRequest("GET", "/two"), SCENARIO)
        assert [record.target for record in log.new_records()] == ["/one", "/two"]
        assert log.new_records() == []
    finally:
        log.close()


def test_no_answer_is_a_failure_not_an_exception() -> None:
    with HttpGateway(f"http://127.0.0.1:{free_port()}") as driver:
        observation = driver.send(HarnessRequest("GET", "/"), SCENARIO)
    assert observation.failure is not None
    assert "Connection" in observation.failure


def test_gateway_urls_are_checked() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpGateway("ftp://example.com")


# --- the in-process driver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def addon() -> Iterator[tuple[InProcessGateway, dict[str, str]]]:
    plan = self_test_plan("http://127.0.0.1:9", base_url="http://in-process", clock=lambda: NOW)
    with InProcessGateway(plan.store) as gateway:
        yield gateway, {"valid": plan.tokens.valid, "revoked": plan.tokens.revoked}


def test_in_process_rejections_are_answers(addon: tuple[InProcessGateway, dict[str, str]]) -> None:
    gateway, tokens = addon
    scenario = Scenario(NOW, Layout.IPFS, service=self_test_host(Layout.IPFS))
    request = HarnessRequest("POST", f"/{tokens['revoked']}/api/v0/version")
    observation = gateway.send(request, scenario)
    assert observation.upstream == ()
    assert observation.answer is not None and observation.answer.status == 401
    assert observation.recorded is not None and observation.recorded["verdict"] == "revoked_token"


def test_in_process_forwards_show_the_rewritten_request(
    addon: tuple[InProcessGateway, dict[str, str]],
) -> None:
    gateway, tokens = addon
    scenario = Scenario(NOW, Layout.GENERIC, Forward.QUERY, service=self_test_host(Layout.GENERIC))
    request = HarnessRequest("GET", f"/graphql?b=a+b&token={tokens['valid']}&flag")
    observation = gateway.send(request, scenario)
    assert observation.answer is None
    assert observation.upstream is not None
    (seen,) = observation.upstream
    assert seen.target == f"/graphql?b=a+b&flag&token={tokens['valid']}"
    assert ("x-tokenward-token", "a-valid") in seen.headers


def test_in_process_options_follow_the_scenario(
    addon: tuple[InProcessGateway, dict[str, str]],
) -> None:
    gateway, _ = addon
    scenario = Scenario(NOW, Layout.GENERIC, mode=Mode.OBSERVE, service="nowhere.example")
    observation = gateway.send(HarnessRequest("GET", "/graphql"), scenario)
    assert observation.answer is None  # observe mode rejects nothing, not even row 0
    assert observation.recorded is not None
    assert observation.recorded["verdict"] == "unknown_service"


def test_in_process_flows_carry_nothing_over(
    addon: tuple[InProcessGateway, dict[str, str]],
) -> None:
    """The flows share their connections: nothing one request leaves may reach the next."""
    gateway, tokens = addon
    reverse = Scenario(NOW, Layout.GENERIC, service=self_test_host(Layout.GENERIC))
    regular = Scenario(NOW, Layout.GENERIC, service="nowhere.example", reverse=False)
    upgrade = (("connection", "Upgrade"), ("upgrade", "websocket"))
    requests = [
        (HarnessRequest("GET", f"/{tokens['valid']}", upgrade, websocket=True), reverse),
        (HarnessRequest("POST", f"/{tokens['revoked']}", body=b"{}"), reverse),
        (HarnessRequest("GET", f"/{tokens['valid']}"), regular),
    ]
    in_order = [gateway.send(request, scenario) for request, scenario in requests]
    backwards = [gateway.send(request, scenario) for request, scenario in reversed(requests)]
    assert backwards == in_order[::-1]


def test_in_process_stores_are_made_from_the_model() -> None:
    token = new_token(TokenKind.SAT)
    model = StoreModel({token: ModelToken("robot", TokenKind.SAT, revoked=True)})
    with InProcessGateway(model) as gateway:
        (record,) = gateway.store.list_tokens(include_deleted=True)
    assert (record.name, record.kind, record.revoked_at is not None) == ("robot", "sat", True)
