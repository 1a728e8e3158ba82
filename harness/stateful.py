"""Tokens over time: a state machine that changes the store and the clock between requests.

``TokenLifecycle`` creates tokens (through the store, as the CLI does), re-scopes and deletes
them, moves the addon's injected clock across expiries, and sends requests through the
in-process driver, checking every answer against the oracle's model of the store at that
moment. The store starts as ``self_test_plan``'s: one service per layout plus ``elsewhere``,
one token per state. Run it with pytest through ``TokenLifecycle.TestCase``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from tokenward.harness.inprocess import InProcessGateway
from tokenward.harness.oracle import (
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelToken,
    Preflight,
    Scenario,
    TokenKind,
    expect,
)
from tokenward.harness.run import OTHER_SERVICE, examine, self_test_plan
from tokenward.harness.strategies import requests_for, token_placements
from tokenward.store import StoreRefused

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
# Services forward here; in process nothing is ever sent.
UNREACHABLE_UPSTREAM = "http://127.0.0.1:9"
SERVICE_NAMES = (*(layout.value for layout in Layout), OTHER_SERVICE)
OWNER = "stateful-test"

lifetimes = st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=30))
scopes = st.none() | st.frozensets(st.sampled_from(SERVICE_NAMES), min_size=1)
clock_steps = st.sampled_from(
    [timedelta(seconds=1), timedelta(hours=1), timedelta(days=1), timedelta(days=8)]
) | st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=31))


class TokenLifecycle(RuleBasedStateMachine):
    """The store and the clock change; every answer must match the oracle's model."""

    tokens = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        plan = self_test_plan(UNREACHABLE_UPSTREAM, base_url="in-process", clock=lambda: START)
        self.hosts = plan.hosts
        self.model = plan.store
        self.gateway = InProcessGateway(plan.store).__enter__()
        self.created = 0

    def teardown(self) -> None:
        self.gateway.__exit__(None, None, None)

    def _set_token(self, plaintext: str, token: ModelToken) -> None:
        self.model = replace(self.model, tokens={**self.model.tokens, plaintext: token})

    @initialize(target=tokens)
    def stored_tokens(self) -> object:
        return multiple(*self.model.tokens)

    @rule(target=tokens, kind=st.sampled_from(TokenKind), lifetime=lifetimes, scope=scopes)
    def create_token(
        self, kind: TokenKind, lifetime: timedelta | None, scope: frozenset[str] | None
    ) -> str:
        self.created += 1
        name = f"created-{self.created}"
        expires_at = None if lifetime is None else self.now + lifetime
        plaintext, _ = self.gateway.store.create_token(
            name, kind.value, expires_at, scope, OWNER, self.now
        )
        self._set_token(plaintext, ModelToken(name, kind, expires_at, scope=scope))
        return plaintext

    @rule(token=tokens, scope=scopes)
    def rescope_token(self, token: str, scope: frozenset[str] | None) -> None:
        model = self.model.tokens[token]
        if model.revoked:
            try:
                self.gateway.store.set_scope(model.name, scope)
            except StoreRefused:
                return
            raise AssertionError(f"the store re-scoped the deleted token {model.name!r}")
        self.gateway.store.set_scope(model.name, scope)
        self._set_token(token, replace(model, scope=scope))

    @rule(token=tokens)
    def delete_token(self, token: str) -> None:
        model = self.model.tokens[token]
        if model.revoked:
            try:
                self.gateway.store.delete_token(model.name, self.now)
            except StoreRefused:
                return
            raise AssertionError(f"the store deleted the deleted token {model.name!r} again")
        self.gateway.store.delete_token(model.name, self.now)
        self._set_token(token, replace(model, revoked=True))

    @rule(step=clock_steps)
    def advance_clock(self, step: timedelta) -> None:
        self.now += step

    @precondition(lambda self: bool(self.model.tokens))
    @rule(
        token=tokens,
        layout=st.sampled_from(Layout),
        forward=st.sampled_from(Forward),
        mode=st.sampled_from(Mode),
        preflight=st.sampled_from(Preflight),
        data=st.data(),
    )
    def send_request(
        self,
        token: str,
        layout: Layout,
        forward: Forward,
        mode: Mode,
        preflight: Preflight,
        data: st.DataObject,
    ) -> None:
        placement = data.draw(token_placements(layout), label="placement")
        request = data.draw(requests_for(layout, token, placement), label="request")
        self.check(request, Scenario(self.now, layout, forward, mode, preflight))

    def check(self, request: HarnessRequest, scenario: Scenario) -> None:
        """Send ``request`` now, to the service of ``scenario.layout``; compare with the oracle."""
        scenario = replace(scenario, now=self.now, service=self.hosts[scenario.layout])
        observation = self.gateway.send(request, scenario)
        expectation = expect(request, self.model, scenario)
        examination = examine(request, expectation, observation, secrets=tuple(self.model.tokens))
        assert examination.passed, (
            f"at {self.now.isoformat()}, {scenario}: {examination.signature}\n"
            + "\n".join(examination.problems)
        )

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        """Every token the model holds is in the store, deleted exactly when the model says."""
        listed = {t.name: t for t in self.gateway.store.list_tokens(include_deleted=True)}
        for token in self.model.tokens.values():
            record = listed[token.name]
            assert (record.revoked_at is not None) == token.revoked, token.name
            assert record.scope == token.scope, token.name
            assert record.expires_at == token.expires_at, token.name
