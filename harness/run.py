"""Running the conformance suite: the matrix and hypothesis examples through a driver.

A ``Plan`` says what the harness knows about the gateway under test: its declared options, the
layouts it serves (and the host naming each one's service), the store as the oracle models it
and one token per state. ``run_conformance`` sends the exhaustive matrix (every placement
combination x layout x token state, enumerated) and then ``examples`` hypothesis examples per
layout through a driver, asks the oracle what each should have done and compares.

Besides the placement grid, the matrix holds request-hygiene cases and one case per strict
check a single request can show (``extra_cases``). Each case is judged at two levels: a
difference the oracle's careful reading explains away once a strict check is relaxed is a
strict finding (``Outcome.STRICT``, named by the check), anything else a failure. A request
without an answer is a failure of its kind (timeout, reset, not HTTP); after ``GIVE_UP_AFTER``
in a row the harness sends no more and reports the rest "not sent".

For the hypothesis examples, a first pass only counts. When something failed, a second pass
with the same seed finds the failures again and lets hypothesis shrink each kind of failure
(its expected and actual outcome) to a minimal example, which the report prints as a curl
command. States with no token given are never sent: their cases are "not tested".
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from random import SystemRandom

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st

from tokenward.fixtures.processes import start_proxy, start_upstream
from tokenward.harness.drivers import (
    REQUEST_TIMEOUT_SECONDS,
    Answer,
    Driver,
    HttpGateway,
    Observation,
    TransportFailure,
    UpstreamSeen,
    populate_store,
)
from tokenward.harness.oracle import (
    AUTH_HEADER,
    IDENTITY_KIND_HEADER,
    IDENTITY_PREFIX,
    IDENTITY_TOKEN_HEADER,
    NOTHING_RELAXED,
    TOKEN_ENV_VARS,
    TRANSPORT_HEADERS,
    ErrorCode,
    Expectation,
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelService,
    ModelToken,
    PathShape,
    Placement,
    Preflight,
    Scenario,
    StoreModel,
    StrictCheck,
    TokenKind,
    Upstream,
    addressed_service,
    expect,
    is_token_shaped,
    redact,
    rejection_body_problems,
)
from tokenward.harness.strategies import (
    MATRIX_METHOD_AND_BASE,
    MatrixCase,
    PathPosition,
    StoreTokens,
    TokenState,
    double_encoded,
    exhaustive_matrix,
    header_wire,
    path_positions,
    percent_encoded,
    placement_subsets,
    scenario_requests,
)
from tokenward.proxy import ProxySettings
from tokenward.store import open_store, shown_location

EXAMPLES_ROW = "examples"
# Requests hypothesis may send per layout to find failures again and shrink them.
SHRINK_CALLS_PER_LAYOUT = 400
# States the harness makes up itself; every other state's token is given to it.
MADE_UP_STATES = frozenset({TokenState.UNKNOWN, TokenState.MALFORMED})
_ERROR_CODES = frozenset(code.value for code in ErrorCode)
# Requests in a row without an answer after which the harness stops sending to a gateway: the
# rest of the run is reported "not sent" rather than waiting out a timeout for each.
GIVE_UP_AFTER = 20
NOT_SENT = "not sent"
# Verdicts about the request rather than its token: the answer's placement is null, and the
# placement a flow records for them is the gateway's own affair.
REQUEST_VERDICTS = frozenset(
    {ErrorCode.UNKNOWN_SERVICE, ErrorCode.UNSUPPORTED_UPGRADE, ErrorCode.MALFORMED_REQUEST}
)

Progress = Callable[[int], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _no_progress(done: int) -> None:
    """Progress is not shown."""


class Outcome(StrEnum):
    """A case's result: ``STRICT`` is a strict finding (only a strict check differs)."""

    PASSED = "passed"
    FAILED = "failed"
    STRICT = "strict"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Options:
    """The gateway's options as declared to the harness."""

    forward: Forward = Forward.STRIP
    mode: Mode = Mode.ENFORCE
    preflight: Preflight = Preflight.PASS
    reverse: bool = True

    @property
    def label(self) -> str:
        return f"forward={self.forward} mode={self.mode} preflight={self.preflight}"


@dataclass(frozen=True)
class Plan:
    """What the harness knows about the gateway under test.

    ``hosts`` maps a layout to the host that names its service; a layout without one is the
    default service's (no services registered). ``untested`` are the states no token was
    given for. ``token_names_known`` is False when the harness cannot know the names the
    gateway gives the tokens (an external store), so ``x-tokenward-token`` is only checked to
    be there. ``clock`` is the time the oracle judges at.
    """

    layouts: tuple[Layout, ...]
    store: StoreModel
    tokens: StoreTokens
    base_url: str
    options: Options = Options()
    hosts: Mapping[Layout, str] = field(default_factory=dict)
    untested: frozenset[TokenState] = frozenset()
    token_names_known: bool = True
    clock: Callable[[], datetime] = utc_now

    def __post_init__(self) -> None:
        if self.untested & MADE_UP_STATES:
            raise ValueError("unknown and malformed tokens are made up, never missing")

    def scenario(self, layout: Layout) -> Scenario:
        options = self.options
        return Scenario(
            now=self.clock(),
            layout=layout,
            forward=options.forward,
            mode=options.mode,
            preflight=options.preflight,
            service=self.hosts.get(layout),
            reverse=options.reverse,
        )

    def service_name(self, layout: Layout) -> str | None:
        """The name of the service requests for ``layout`` address (None: the default)."""
        addressed = addressed_service(self.store, self.scenario(layout))
        if addressed is None:
            raise ValueError(f"the host for {layout}, {self.hosts.get(layout)!r}, is no service")
        return addressed[0]

    def env_vars(self) -> dict[str, str]:
        """The tokens given to the harness and the variables reports name them by."""
        return {
            self.tokens.value(state): TOKEN_ENV_VARS[state]
            for state in TokenState
            if state not in MADE_UP_STATES | self.untested
        }

    def secrets(self) -> tuple[str, ...]:
        """Every token the gateway may hold, given or made up: no answer may contain one."""
        return tuple(
            value
            for state in TokenState
            if state not in self.untested and is_token_shaped(value := self.tokens.value(state))
        )


@dataclass(frozen=True)
class Examination:
    """The oracle's outcome, the observed one, and every difference (tokens redacted)."""

    expected: str
    actual: str
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def signature(self) -> str:
        """The kind of failure: how the outcomes differ, else the first aspect that does."""
        if self.expected != self.actual:
            return f"expected {self.expected}, got {self.actual}"
        aspect = self.problems[0].partition(":")[0] if self.problems else "nothing"
        return f"{self.expected}: {aspect} differs"


@dataclass(frozen=True)
class CaseResult:
    """One request's result. ``row`` is the matrix row (placements) or ``EXAMPLES_ROW``."""

    name: str
    layout: Layout
    row: str
    outcome: Outcome
    request: HarnessRequest
    host: str | None
    expected: str
    actual: str
    problems: tuple[str, ...] = ()
    why: str = ""
    minimal: bool = False
    strict_checks: tuple[StrictCheck, ...] = ()
    no_answer: TransportFailure | None = None

    @property
    def signature(self) -> str:
        if self.outcome is Outcome.STRICT:
            return "strict: " + ", ".join(self.strict_checks)
        return Examination(self.expected, self.actual, self.problems).signature


@dataclass(frozen=True)
class RunResult:
    """Everything one run found; ``minimal`` are the shrunk hypothesis failures."""

    title: str
    plan: Plan
    results: tuple[CaseResult, ...]
    minimal: tuple[CaseResult, ...]
    seed: int
    seconds: float
    sent: int
    checking_seconds: float

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.FAILED)

    @property
    def strict_findings(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.STRICT)

    @property
    def passed(self) -> bool:
        """No required check failed."""
        return not self.failures

    @property
    def passed_strict(self) -> bool:
        """No check failed, strict ones included."""
        return not self.failures and not self.strict_findings

    def counts(self) -> dict[Outcome, int]:
        counted = dict.fromkeys(Outcome, 0)
        for result in self.results:
            counted[result.outcome] += 1
        return counted

    def no_answer_counts(self) -> dict[TransportFailure, int]:
        """Cases that got no answer, by what went wrong."""
        counted = dict.fromkeys(TransportFailure, 0)
        for result in self.results:
            if result.no_answer is not None:
                counted[result.no_answer] += 1
        return counted

    def strict_checks_found(self) -> tuple[StrictCheck, ...]:
        """The strict checks this gateway does otherwise, in their order."""
        found = {check for result in self.strict_findings for check in result.strict_checks}
        return tuple(check for check in StrictCheck if check in found)

    @property
    def requests_per_second(self) -> float:
        """Requests sent, judged and compared per second (not counting generating examples)."""
        return self.sent / self.checking_seconds if self.checking_seconds > 0 else 0.0


# --- comparing ----------------------------------------------------------------------------------


def expected_label(expectation: Expectation) -> str:
    if expectation.error is None:
        return "forwarded"
    return f"{expectation.status} {expectation.error}"


def rejection_error(answer: Answer) -> str | None:
    """The tokenward error code an answer's JSON body carries, if it is a tokenward rejection."""
    try:
        document = json.loads(answer.body)
    except ValueError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, str) and error in _ERROR_CODES else None


def actual_label(observation: Observation) -> str:
    if observation.failure is not None:
        kind = observation.no_answer
        return "no answer" if kind is None else f"no answer ({kind})"
    if observation.upstream:
        return "forwarded"
    answer = observation.answer
    assert answer is not None, "a request that reached no upstream was answered"
    error = rejection_error(answer)
    if observation.upstream is None and error is None:
        return "forwarded"  # the driver cannot see the upstream: any other answer is its
    return f"{answer.status} {error or '(no tokenward error)'}"


def examine(
    request: HarnessRequest,
    expectation: Expectation,
    observation: Observation,
    *,
    secrets: Sequence[str] = (),
    env_vars: Mapping[str, str] | None = None,
    token_names_known: bool = True,
) -> Examination:
    """Compare what happened with what the oracle expects.

    ``secrets`` are tokens no answer may hold; ``env_vars`` name tokens in the problems
    (see ``redact``); ``token_names_known`` as in ``Plan``.
    """
    expected, actual = expected_label(expectation), actual_label(observation)
    problems: list[str] = []
    if observation.failure is not None:
        problems.append(f"outcome: no answer ({observation.failure})")
    elif expected != actual:
        problems.append(f"outcome: expected {expected}, got {actual}")
    elif expectation.error is not None:
        assert observation.answer is not None
        problems += _rejection_problems(expectation, observation.answer, secrets)
    elif observation.upstream is not None:
        assert expectation.upstream is not None
        kind_known = StrictCheck.IDENTITY_KIND_CODE not in expectation.relaxed
        problems += _upstream_problems(
            request, expectation.upstream, observation, token_names_known, kind_known
        )
    problems += _recorded_problems(expectation, observation, secrets)
    shown = tuple(redact(problem, env_vars or {}) for problem in problems)
    return Examination(expected, actual, shown)


def _rejection_problems(
    expectation: Expectation, answer: Answer, secrets: Sequence[str]
) -> list[str]:
    problems = [f"body: {problem}" for problem in rejection_body_problems(expectation, answer.body)]
    if expectation.www_authenticate is not None:
        found = answer.header("www-authenticate")
        if found != expectation.www_authenticate:
            problems.append(
                f"www-authenticate: expected {expectation.www_authenticate!r}, got {found!r}"
            )
    elif StrictCheck.WWW_AUTHENTICATE_ONLY_ON_401 not in expectation.relaxed:
        found = answer.header("www-authenticate")
        if found is not None:
            problems.append(
                f"www-authenticate: expected none on {expectation.status}, got {found!r}"
            )
    if expectation.allow_origin is not None:
        found = answer.header("access-control-allow-origin")
        if found != expectation.allow_origin:
            problems.append(
                f"access-control-allow-origin: expected {expectation.allow_origin!r}, got {found!r}"
            )
    shown = answer.body.decode("latin-1") + "".join(value for _, value in answer.headers)
    if any(secret in shown for secret in secrets):
        problems.append("leak: the answer holds a full token")
    return problems


def _upstream_problems(
    request: HarnessRequest,
    upstream: Upstream,
    observation: Observation,
    token_names_known: bool,
    kind_known: bool,
) -> list[str]:
    assert observation.upstream is not None
    if len(observation.upstream) != 1:
        return [f"upstream: {len(observation.upstream)} requests reached it, expected 1"]
    seen = observation.upstream[0]
    problems: list[str] = []
    if seen.target != upstream.target:
        problems.append(f"upstream target: expected {upstream.target!r}, got {seen.target!r}")
    auth = tuple(value for name, value in seen.headers if name.lower() == AUTH_HEADER)
    if auth != upstream.auth_tokens:
        problems.append(f"upstream x-auth-token: expected {upstream.auth_tokens}, got {auth}")
    problems += _identity_problems(upstream, seen, token_names_known, kind_known)
    ignored = TRANSPORT_HEADERS | {AUTH_HEADER} | observation.added_headers
    kept = tuple(
        (name, value)
        for name, value in seen.headers
        if name.lower() not in ignored
        and not (upstream.client_identity_removed and name.lower().startswith(IDENTITY_PREFIX))
    )
    if kept != upstream.preserved_headers:
        problems.append(f"upstream headers: expected {upstream.preserved_headers}, got {kept}")
    body = UpstreamSeen.of_parts(seen.target, seen.headers, upstream.body)
    if (seen.body_length, seen.body_sha256) != (body.body_length, body.body_sha256):
        problems.append(
            f"upstream body: expected {body.body_length} bytes, got {seen.body_length} "
            "bytes or other bytes"
        )
    answer = observation.answer
    if request.websocket and answer is not None:
        if answer.status != 101:
            problems.append(f"websocket: the handshake got {answer.status}, not 101")
        elif not observation.websocket_echo:
            problems.append("websocket: the opened WebSocket did not echo the probe message")
    return problems


def _identity_problems(
    upstream: Upstream, seen: UpstreamSeen, token_names_known: bool, kind_known: bool
) -> list[str]:
    if not upstream.client_identity_removed:
        return []  # keep: client-sent x-tokenward-* are compared with the other headers
    found = sorted(
        (name.lower(), value)
        for name, value in seen.headers
        if name.lower().startswith(IDENTITY_PREFIX)
    )
    wanted = sorted(upstream.identity_headers())
    # Values that cannot be compared are checked to be there: the name is an external store's,
    # the kind's spelling a strict check.
    unknown = {IDENTITY_TOKEN_HEADER} if not token_names_known else set()
    unknown |= set() if kind_known else {IDENTITY_KIND_HEADER}
    if unknown:
        found = [(n, "?" if n in unknown else v) for n, v in found]
        wanted = [(n, "?" if n in unknown else v) for n, v in wanted]
    if found != wanted:
        return [f"upstream identity headers: expected {wanted}, got {found}"]
    return []


def _recorded_problems(
    expectation: Expectation, observation: Observation, secrets: Sequence[str]
) -> list[str]:
    """The flow's own record (in-process only) of a request the gateway checked: its verdict,
    placement and token hint, and never a full token."""
    recorded = observation.recorded
    if recorded is None:
        return []
    shown = json.dumps(recorded, default=str)
    problems = (
        ["leak: the flow record holds a full token"] if any(s in shown for s in secrets) else []
    )
    if not expectation.checked:
        return problems  # a passed preflight records "accepted" though it was never checked
    if expectation.hint is not None and recorded.get("token") != expectation.hint:
        problems.append(f"recorded token: expected {expectation.hint}, got {recorded.get('token')}")
    verdict = "accepted" if expectation.verdict is None else str(expectation.verdict)
    if recorded.get("verdict") != verdict:
        problems.append(f"recorded verdict: expected {verdict}, got {recorded.get('verdict')}")
    placement = None if expectation.placement is None else str(expectation.placement)
    if expectation.verdict in REQUEST_VERDICTS:
        return problems  # where the token stood is no part of these verdicts: not compared
    if recorded.get("placement") != placement:
        problems.append(
            f"recorded placement: expected {placement}, got {recorded.get('placement')}"
        )
    return problems


# --- running ------------------------------------------------------------------------------------


class _ShrinkingBudgetSpent(BaseException):
    """Ends a hypothesis run at once: hypothesis lets only ``BaseException`` through."""


class Mismatch(AssertionError):
    """A request the gateway handled otherwise than the oracle says (one subclass per kind)."""


_MISMATCH_KINDS: dict[str, type[Mismatch]] = {}


def _mismatch_kind(signature: str) -> type[Mismatch]:
    """One exception class per kind of failure, so hypothesis shrinks each kind apart."""
    if signature not in _MISMATCH_KINDS:
        _MISMATCH_KINDS[signature] = type(f"Mismatch{len(_MISMATCH_KINDS)}", (Mismatch,), {})
    return _MISMATCH_KINDS[signature]


@dataclass
class _Runner:
    driver: Driver
    plan: Plan
    progress: Progress
    sent: int = 0
    seconds: float = 0.0
    unanswered: int = 0
    given_up: str | None = None
    # The plan's derived values, made once rather than for every request.
    secrets: tuple[str, ...] = field(init=False)
    env_vars: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = self.plan.secrets()
        self.env_vars = self.plan.env_vars()

    def check(
        self,
        name: str,
        layout: Layout,
        row: str,
        request: HarnessRequest,
        *,
        host: str | None = None,
    ) -> CaseResult:
        """One request, judged at both levels; ``host`` overrides the layout's service host."""
        started = time.perf_counter()
        scenario = self.plan.scenario(layout)
        if host is not None:
            scenario = replace(scenario, service=host)
        if self.given_up is not None:
            return self._not_sent(name, layout, row, request, scenario)
        observation = self.driver.send(request, scenario)
        self._note_answer(observation)

        expectation = expect(request, self.plan.store, scenario)

        def examined(relaxed: frozenset[StrictCheck]) -> Examination:
            judged = expectation
            if relaxed:
                judged = expect(request, self.plan.store, scenario, relaxed)
            return examine(
                request,
                judged,
                observation,
                secrets=self.secrets,
                env_vars=self.env_vars,
                token_names_known=self.plan.token_names_known,
            )

        examination = examined(NOTHING_RELAXED)
        outcome = Outcome.PASSED
        checks: tuple[StrictCheck, ...] = ()
        if not examination.passed:
            outcome, checks = Outcome.FAILED, strict_checks_explaining(examined)
            if checks:
                outcome = Outcome.STRICT
        self.sent += 1
        self.seconds += time.perf_counter() - started
        return CaseResult(
            name=name,
            layout=layout,
            row=row,
            outcome=outcome,
            request=request,
            host=scenario.service,
            expected=examination.expected,
            actual=examination.actual,
            problems=examination.problems,
            why=expectation.why,
            strict_checks=checks,
            no_answer=observation.no_answer,
        )

    def _note_answer(self, observation: Observation) -> None:
        """Count requests in a row that got no answer; give up on a gateway that stopped."""
        if observation.no_answer is None:
            self.unanswered = 0
            return
        self.unanswered += 1
        if self.unanswered >= GIVE_UP_AFTER:
            self.given_up = f"{GIVE_UP_AFTER} requests in a row got no answer"

    def _not_sent(
        self, name: str, layout: Layout, row: str, request: HarnessRequest, scenario: Scenario
    ) -> CaseResult:
        return CaseResult(
            name=name,
            layout=layout,
            row=row,
            outcome=Outcome.FAILED,
            request=request,
            host=scenario.service,
            expected=expected_label(expect(request, self.plan.store, scenario)),
            actual=NOT_SENT,
            problems=(f"outcome: not sent ({self.given_up})",),
            why="the harness gave up on this gateway",
        )

    def matrix(self, layout: Layout) -> list[CaseResult]:
        results = []
        for case in exhaustive_matrix(self.plan.tokens, [layout]):
            if case.state in self.plan.untested:
                results.append(_not_tested(case, self.plan))
            else:
                results.append(self.check(case.id, layout, _row_of(case), case.request))
            self.progress(1)
        for name, row, request in ambiguity_matrix(self.plan.tokens, layout):
            results.append(self.check(name, layout, row, request))
            self.progress(1)
        for extra in extra_cases(self.plan, layout):
            results.append(
                self.check(extra.name, layout, extra.row, extra.request, host=extra.host)
            )
            self.progress(1)
        return results

    def examples(
        self, layout: Layout, count: int, run_seed: int, shrink_calls: int
    ) -> tuple[list[CaseResult], list[CaseResult]]:
        """``count`` examples for ``layout``; then, if any failed, the minimal failures."""
        requests = example_requests(self.plan, layout)
        counted: list[CaseResult] = []
        counting = counting_settings(count)

        @seed(run_seed)
        @counting
        @given(requests)
        def count_examples(request: HarnessRequest) -> None:
            number = len(counted) + 1
            counted.append(self.check(f"{layout}#{number}", layout, EXAMPLES_ROW, request))
            self.progress(1)

        count_examples()
        if all(result.outcome is Outcome.PASSED for result in counted):
            return counted, []  # nothing to shrink

        minimal: dict[str, CaseResult] = {}
        calls = iter(range(shrink_calls))

        @seed(run_seed)
        @settings(counting, phases=(Phase.generate, Phase.shrink), report_multiple_bugs=True)
        @given(requests)
        def shrink_failures(request: HarnessRequest) -> None:
            if next(calls, None) is None:
                raise _ShrinkingBudgetSpent  # the best examples so far are in `minimal`
            result = self.check(f"{layout} minimal", layout, EXAMPLES_ROW, request)
            if result.outcome in (Outcome.FAILED, Outcome.STRICT):
                kept = minimal.get(result.signature)
                if kept is None or _size(result.request) <= _size(kept.request):
                    minimal[result.signature] = result
                raise _mismatch_kind(result.signature)(result.signature)

        # hypothesis raises what it found (several kinds in a group); `minimal` holds them
        with contextlib.suppress(Exception, _ShrinkingBudgetSpent):
            shrink_failures()
        return counted, [replace(result, minimal=True) for result in minimal.values()]


def strict_checks_explaining(
    examined: Callable[[frozenset[StrictCheck]], Examination],
) -> tuple[StrictCheck, ...]:
    """The strict checks whose permissive side explains a failed case; empty when none does
    (a required failure). One check alone first; else every check relaxed, each named that the
    case needs."""
    alone = tuple(check for check in StrictCheck if examined(frozenset({check})).passed)
    if alone:
        return alone
    every = frozenset(StrictCheck)
    if not examined(every).passed:
        return ()
    return tuple(check for check in StrictCheck if not examined(every - {check}).passed)


def example_requests(plan: Plan, layout: Layout) -> st.SearchStrategy[HarnessRequest]:
    """The requests hypothesis draws for ``layout``'s examples."""
    return scenario_requests(
        plan.store, layout, now=plan.clock(), service_name=plan.service_name(layout)
    )


def counting_settings(count: int) -> settings:
    """The settings of the pass that only counts: ``count`` examples, generated only."""
    return settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate,),
        verbosity=Verbosity.quiet,
    )


def _size(request: HarnessRequest) -> int:
    """How big a request is, to keep the smallest failing example of each kind."""
    fields = sum(len(name) + len(value) for name, value in request.headers)
    return len(request.method) + len(request.target) + fields + len(request.body)


def two_tokens_row(placements: Sequence[Placement]) -> str:
    """The matrix row of requests whose ``placements`` carry two distinct values."""
    return "+".join(placements) + " (2 tokens)"


def ambiguity_matrix(tokens: StoreTokens, layout: Layout) -> list[tuple[str, str, HarnessRequest]]:
    """(name, row, request) with two distinct values: the valid token in the first placement,
    the made-up unknown one in the others; a placement alone carries both where it can (two
    header fields, two parameters, generic's first and last segment). Ambiguity is judged
    before the store, so these need no other token.
    """
    method, base = MATRIX_METHOD_AND_BASE[layout]
    first, second = tokens.valid, tokens.unknown
    position = path_positions(layout)[-1]
    cases = []
    for placements in placement_subsets():
        if len(placements) == 1:
            if placements == (Placement.PATH,) and layout is not Layout.GENERIC:
                continue  # one allowed position: a second path token would be misplaced
            carried = [(placements[0], first), (placements[0], second)]
        else:
            carried = [(placements[0], first), *((p, second) for p in placements[1:])]
        headers = [("accept", "application/json")]
        headers += [("x-auth-token", header_wire(v)) for p, v in carried if p is Placement.HEADER]
        params = [f"token={percent_encoded(v)}" for p, v in carried if p is Placement.QUERY]
        in_path = [percent_encoded(v) for p, v in carried if p is Placement.PATH]
        if len(in_path) == 2:  # generic: the first and the last segment
            segments = (in_path[0], *base, in_path[1])
        elif in_path and position is PathPosition.FIRST:
            segments = (*in_path, *base)
        else:
            segments = (*base, *in_path)
        target = PathShape(segments, trailing_slash=False).render()
        if params:
            target += "?" + "&".join(params)
        label = "+".join(placements)
        request = HarnessRequest(method, target, tuple(headers))
        cases.append((f"{label}@{layout}:two_tokens", two_tokens_row(placements), request))
    return cases


HYGIENE_ROW = "request hygiene"
SILENT_ROW = "contract silent"


@dataclass(frozen=True)
class ExtraCase:
    """A matrix case outside the placement grid; ``host`` None is the layout's own."""

    name: str
    row: str
    request: HarnessRequest
    host: str | None = None


def extra_cases(plan: Plan, layout: Layout) -> list[ExtraCase]:
    """Request hygiene (required) and one case per strict check a request can tell apart.

    Each carries the valid token in x-auth-token where it needs one, so that what the case is
    about is the only thing wrong with it.
    """
    tokens = plan.tokens
    method, base = MATRIX_METHOD_AND_BASE[layout]
    path = PathShape(base, trailing_slash=False).render()
    valid = (AUTH_HEADER, tokens.valid)
    preflight = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"))
    hygiene = {
        "folded_field": HarnessRequest(method, path, (valid, ("x-note", "a\r\n b"))),
        "other_upgrade": HarnessRequest(
            method, path, (valid, ("Connection", "Upgrade"), ("Upgrade", "h2c"))
        ),
        "websocket_version_12": HarnessRequest(
            "GET",
            path,
            (
                valid,
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "12"),
            ),
        ),
        "preflight": HarnessRequest("OPTIONS", path, preflight),
        "preflight_with_body": HarnessRequest("OPTIONS", path, preflight, b"{}"),
    }
    unknown = tokens.unknown
    silent = {
        StrictCheck.DEEP_PERCENT_ENCODING: HarnessRequest(
            method, f"{path}?x={double_encoded(unknown)}", (valid,)
        ),
        StrictCheck.NON_ASCII_BOUNDARY: HarnessRequest(
            method, f"{path}?x=%C3%A9{unknown}", (valid,)
        ),
        StrictCheck.EMPTY_LIST_ELEMENT: HarnessRequest(
            method, path, ((AUTH_HEADER, f"{tokens.valid},"),)
        ),
        StrictCheck.BARE_TOKEN_PARAMETER: HarnessRequest(method, f"{path}?token"),
    }
    if layout is Layout.GENERIC:
        silent[StrictCheck.CANONICAL_OF_TWO] = HarnessRequest(
            method, f"/{tokens.valid}{path}/{tokens.valid}"
        )
    if layout in (Layout.AVALANCHE, Layout.FUJI):
        # no endpoint in the path: forward=path has nowhere to put the token (unplaceable)
        hygiene["no_endpoint"] = HarnessRequest("GET", "/ext/health", (valid,))
        silent[StrictCheck.ENDPOINT_CASE] = HarnessRequest(method, f"/ext/bc/c/rpc/{tokens.valid}")
    cases = [
        ExtraCase(f"hygiene@{layout}:{name}", HYGIENE_ROW, request)
        for name, request in hygiene.items()
    ]
    own_host = plan.hosts.get(layout)
    if plan.store.services and own_host is not None:
        # the service's host as clients may spell it: another case, a port, a trailing dot
        spellings = {
            "unknown_service": UNKNOWN_SERVICE_HOST,
            "host_with_port": f"{own_host.upper()}:{MAX_PORT}",
            "host_with_trailing_dot": f"{own_host}.",
        }
        service = plan.store.services.get(str(layout))
        if service is not None and SELF_TEST_IPV6_HOST in service.hosts:
            spellings["host_ipv6_literal"] = f"{SELF_TEST_IPV6_HOST}:8080"
        cases += [
            ExtraCase(
                f"hygiene@{layout}:{name}",
                HYGIENE_ROW,
                HarnessRequest(method, path, (valid,)),
                host,
            )
            for name, host in spellings.items()
        ]
    if layout is Layout.GENERIC:
        deep_in_path = HarnessRequest(method, f"{path}/a%2F{unknown}/x", (valid,))
        cases.append(
            ExtraCase(f"silent@{layout}:deep_percent_encoding_path", SILENT_ROW, deep_in_path)
        )
    cases += [
        ExtraCase(f"silent@{layout}:{check}", SILENT_ROW, request)
        for check, request in silent.items()
    ]
    return cases


def _row_of(case: MatrixCase) -> str:
    return "+".join(case.placements) or "none"


def _not_tested(case: MatrixCase, plan: Plan) -> CaseResult:
    assert case.state is not None
    return CaseResult(
        name=case.id,
        layout=case.layout,
        row=_row_of(case),
        outcome=Outcome.NOT_TESTED,
        request=case.request,
        host=plan.hosts.get(case.layout),
        expected="-",
        actual="-",
        why=f"no {case.state} token was given (${TOKEN_ENV_VARS[case.state]})",
    )


def planned_checks(plan: Plan, examples: int) -> int:
    """How many progress steps ``run_conformance`` reports (shrinking not counted)."""
    two_tokens = sum(len(ambiguity_matrix(plan.tokens, layout)) for layout in plan.layouts)
    extra = sum(len(extra_cases(plan, layout)) for layout in plan.layouts)
    matrix = len(exhaustive_matrix(plan.tokens, plan.layouts))
    return matrix + two_tokens + extra + examples * len(plan.layouts)


def run_conformance(
    driver: Driver,
    plan: Plan,
    *,
    title: str,
    examples: int,
    run_seed: int | None = None,
    shrink_calls: int = SHRINK_CALLS_PER_LAYOUT,
    progress: Progress = _no_progress,
) -> RunResult:
    """The matrix and ``examples`` hypothesis examples per layout through ``driver``.

    ``shrink_calls`` bounds the requests sent per layout to shrink failing examples.
    """
    chosen_seed = SystemRandom().randrange(2**32) if run_seed is None else run_seed
    runner = _Runner(driver, plan, progress)
    results: list[CaseResult] = []
    minimal: list[CaseResult] = []
    started = time.perf_counter()
    for layout in plan.layouts:
        results += runner.matrix(layout)
        if examples > 0:
            counted, shrunk = runner.examples(layout, examples, chosen_seed, shrink_calls)
            results += counted
            minimal += shrunk
    seconds = time.perf_counter() - started
    return RunResult(
        title=title,
        plan=plan,
        results=tuple(results),
        minimal=tuple(minimal),
        seed=chosen_seed,
        seconds=seconds,
        sent=runner.sent,
        checking_seconds=runner.seconds,
    )


# --- plans --------------------------------------------------------------------------------------

UNKNOWN_TOKEN = "sm_pat_UnknownUnknownUnknownUnknown0000"
MALFORMED_TOKEN = "sm_pat_Malformed000000"  # a 15-character body: one short
SELF_TEST_DOMAIN = "tokenward.test"
UNKNOWN_SERVICE_HOST = f"no-such-service.{SELF_TEST_DOMAIN}"
MAX_PORT = 65535
SELF_TEST_IPV6_HOST = "[::1]"
OTHER_SERVICE = "elsewhere"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def self_test_host(layout: Layout) -> str:
    return f"{layout}.{SELF_TEST_DOMAIN}"


def new_token(kind: TokenKind) -> str:
    """A fresh random token of ``kind`` for a store the harness makes itself."""
    body = "".join(SystemRandom().choice(_BASE62) for _ in range(32))
    return f"sm_{kind}_{body}"


def self_test_plan(
    upstream_url: str,
    *,
    base_url: str,
    options: Options = Options(),
    layouts: Sequence[Layout] = tuple(Layout),
    clock: Callable[[], datetime] = utc_now,
) -> Plan:
    """A store the harness sets up itself: one service per layout (host ``LAYOUT.tokenward.test``)
    and one more, ``elsewhere``, all forwarding to ``upstream_url``; one token per stored state.
    """
    services = {
        layout.value: ModelService(layout.value, (self_test_host(layout),), layout, upstream_url)
        for layout in Layout
    }
    # the generic service answers to an IPv6 literal as well
    generic = services[Layout.GENERIC.value]
    services[generic.name] = replace(generic, hosts=(*generic.hosts, SELF_TEST_IPV6_HOST))
    other_host = f"{OTHER_SERVICE}.{SELF_TEST_DOMAIN}"
    services[OTHER_SERVICE] = ModelService(
        OTHER_SERVICE, (other_host,), Layout.GENERIC, upstream_url
    )
    now = clock()
    values = {
        TokenState.VALID: new_token(TokenKind.PAT),
        TokenState.SECOND_VALID: new_token(TokenKind.AAT),
        TokenState.REVOKED: new_token(TokenKind.SAT),
        TokenState.EXPIRED: new_token(TokenKind.PAT),
        TokenState.OUT_OF_SCOPE: new_token(TokenKind.PAT),
    }
    # Named so that the store's first valid token by name is the VALID one.
    models = {
        TokenState.VALID: ModelToken("a-valid", TokenKind.PAT),
        TokenState.SECOND_VALID: ModelToken(
            "b-second",
            TokenKind.AAT,
            expires_at=now + timedelta(days=30),
            scope=frozenset(layout.value for layout in Layout),
        ),
        TokenState.REVOKED: ModelToken("c-revoked", TokenKind.SAT, revoked=True),
        TokenState.EXPIRED: ModelToken(
            "d-expired", TokenKind.PAT, expires_at=now - timedelta(days=1)
        ),
        TokenState.OUT_OF_SCOPE: ModelToken(
            "e-out-of-scope", TokenKind.PAT, scope=frozenset({OTHER_SERVICE})
        ),
    }
    store = StoreModel({values[state]: models[state] for state in values}, services)
    return Plan(
        layouts=tuple(layouts),
        store=store,
        tokens=_store_tokens(values),
        base_url=base_url,
        options=options,
        hosts={layout: self_test_host(layout) for layout in Layout},
        clock=clock,
    )


def external_plan(
    base_url: str,
    layout: Layout,
    given: Mapping[TokenState, str],
    *,
    options: Options = Options(),
    clock: Callable[[], datetime] = utc_now,
) -> Plan:
    """A gateway whose store the harness cannot see, with the tokens the user gave.

    ``given`` needs a VALID token; a stored state left out is not tested. The store is modelled
    from the states alone: the gateway's default service (no services), the out-of-scope token
    scoped to some other service, the expired one expired a day ago.
    """
    if TokenState.VALID not in given:
        raise ValueError(f"a valid token is needed (${TOKEN_ENV_VARS[TokenState.VALID]})")
    for state, value in given.items():
        if state in MADE_UP_STATES:
            raise ValueError(f"{state} tokens are made up by the harness, not given")
        if not is_token_shaped(value):
            raise ValueError(f"${TOKEN_ENV_VARS[state]} does not hold a token")
    if len(set(given.values())) != len(given):
        raise ValueError("each token state needs a token of its own")
    now = clock()
    made = {
        TokenState.VALID: ModelToken("valid", TokenKind.PAT),
        TokenState.SECOND_VALID: ModelToken("second", TokenKind.PAT),
        TokenState.REVOKED: ModelToken("revoked", TokenKind.PAT, revoked=True),
        TokenState.EXPIRED: ModelToken(
            "expired", TokenKind.PAT, expires_at=now - timedelta(days=1)
        ),
        TokenState.OUT_OF_SCOPE: ModelToken(
            "out-of-scope", TokenKind.PAT, scope=frozenset({"another-service"})
        ),
    }
    tokens = {
        value: replace(made[state], kind=TokenKind(value[3:6])) for state, value in given.items()
    }
    untested = frozenset(made) - frozenset(given)
    # Stand-ins for the states not given: never sent, they only fill the matrix's slots.
    values = {state: f"sm_pat_NotGiven{state.title().replace('_', '')}0000000000" for state in made}
    values.update(given)
    return Plan(
        layouts=(layout,),
        store=StoreModel(tokens),
        tokens=_store_tokens(values),
        base_url=base_url,
        options=options,
        untested=untested,
        token_names_known=False,
        clock=clock,
    )


def _store_tokens(values: Mapping[TokenState, str]) -> StoreTokens:
    return StoreTokens(
        valid=values[TokenState.VALID],
        second_valid=values[TokenState.SECOND_VALID],
        unknown=UNKNOWN_TOKEN,
        malformed=MALFORMED_TOKEN,
        revoked=values[TokenState.REVOKED],
        expired=values[TokenState.EXPIRED],
        out_of_scope=values[TokenState.OUT_OF_SCOPE],
    )


@contextmanager
def self_test_target(
    options: Options = Options(),
    *,
    layouts: Sequence[Layout] = tuple(Layout),
    running: Options | None = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    db: str | None = None,
) -> Iterator[tuple[HttpGateway, Plan]]:
    """The recording upstream and the proxy on a fresh store, with the live driver and its plan.

    The store (in a temporary folder, or `db`: an empty store's location, e.g. a PostgreSQL
    URL) holds one service per layout and one token per state.
    ``timeout`` bounds each request, in seconds.
    The proxy runs with ``running`` (default: the declared ``options``); everything started
    is stopped when the block ends, also on failure.
    """
    actual = running or options
    with (
        tempfile.TemporaryDirectory(prefix="tokenward-conformance-") as folder,
        start_upstream() as upstream,
    ):
        plan = self_test_plan(upstream.url, base_url="", options=options, layouts=layouts)
        location = db if db is not None else str(Path(folder) / "tokenward.db")
        with open_store(location, create=True) as store:
            if not store.export_rows().is_empty():
                raise ValueError(
                    f"--self needs an empty store; {shown_location(location)!r} is not"
                )
            populate_store(store, plan.store)
        settings = ProxySettings(
            db=location,
            upstream=upstream.url,
            listen_port=0,
            mode=actual.mode.value,
            forward=actual.forward.value,
            preflight=actual.preflight.value,
            proxy_mode="reverse" if actual.reverse else "regular",
        )
        with (
            start_proxy(settings) as proxy,
            HttpGateway(proxy.url, control_url=upstream.control_url, timeout=timeout) as gateway,
        ):
            yield gateway, replace(plan, base_url=proxy.url)
