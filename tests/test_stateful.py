"""The token lifecycle state machine: the addon in process against the oracle's model."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import settings

from tokenward.harness.oracle import HarnessRequest, Layout, Scenario, TokenKind, expect
from tokenward.harness.stateful import START, TokenLifecycle

TokenLifecycle.TestCase.settings = settings(settings(), stateful_step_count=25)
TestTokenLifecycle = TokenLifecycle.TestCase


@pytest.fixture
def machine() -> Iterator[TokenLifecycle]:
    lifecycle = TokenLifecycle()
    try:
        yield lifecycle
    finally:
        lifecycle.teardown()


def in_header(token: str) -> HarnessRequest:
    return HarnessRequest("GET", "/graphql", (("x-auth-token", token),))


def created(machine: TokenLifecycle, kind: TokenKind, *arguments: object) -> str:
    """A token made by the machine's own rule (typed as what rules may return)."""
    token = machine.create_token(kind, *arguments)
    assert isinstance(token, str)
    return token


def error_now(machine: TokenLifecycle, token: str) -> str | None:
    scenario = Scenario(machine.now, Layout.GENERIC, service=machine.hosts[Layout.GENERIC])
    machine.check(in_header(token), scenario)  # the addon agrees with the oracle
    error = expect(in_header(token), machine.model, scenario).error
    return None if error is None else str(error)


def test_a_token_is_refused_from_the_request_after_its_deletion(machine: TokenLifecycle) -> None:
    token = created(machine, TokenKind.AAT, None, None)
    assert error_now(machine, token) is None
    machine.delete_token(token)
    assert error_now(machine, token) == "revoked_token"


def test_a_token_expires_at_its_expiry_instant(machine: TokenLifecycle) -> None:
    token = created(machine, TokenKind.PAT, timedelta(days=7), None)
    machine.advance_clock(timedelta(days=7) - timedelta(seconds=1))
    assert error_now(machine, token) is None
    machine.advance_clock(timedelta(seconds=1))
    assert machine.now == START + timedelta(days=7)
    assert error_now(machine, token) == "expired_token"


def test_re_scoping_takes_effect_at_once(machine: TokenLifecycle) -> None:
    token = created(machine, TokenKind.SAT, None, frozenset({"ipfs"}))
    assert error_now(machine, token) == "out_of_scope"
    machine.rescope_token(token, frozenset({"generic", "ipfs"}))
    assert error_now(machine, token) is None
    machine.rescope_token(token, None)
    assert error_now(machine, token) is None
