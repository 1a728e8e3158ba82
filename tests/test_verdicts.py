"""Verdicts: the status of each error code, the JSON answer, and the answer's headers."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.verdicts import ErrorCode, Forward, Placement, Rejection

# The contract's table, written out.
STATUSES: dict[str, int] = {
    "unknown_service": 404,
    "misplaced_token": 400,
    "ambiguous_token": 400,
    "missing_token": 401,
    "malformed_token": 401,
    "unknown_token": 401,
    "revoked_token": 401,
    "expired_token": 401,
    "out_of_scope": 403,
    "store_unavailable": 503,
    "unplaceable_token": 400,
    "unsupported_upgrade": 400,
    "malformed_request": 400,
    "target_too_long": 414,
    "token_to_unknown_host": 403,
    "header_too_large": 431,
}
WWW_AUTHENTICATE = 'Token realm="tokenward"'

codes = st.sampled_from(list(ErrorCode))
placements = st.one_of(st.none(), st.sampled_from(list(Placement)))
origins = st.one_of(
    st.sampled_from(["https://app.example", "http://localhost:3000", "null"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
)


def field_values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field.lower() == name]


def test_the_codes_are_the_contracts() -> None:
    assert {code.value for code in ErrorCode} == set(STATUSES)


def test_forward_and_placement_values() -> None:
    assert {f.value for f in Forward} == {"strip", "header", "query", "path", "keep"}
    assert {p.value for p in Placement} == {"header", "query", "path"}


@pytest.mark.parametrize(("code", "status"), sorted(STATUSES.items()))
def test_status_per_code(code: str, status: int) -> None:
    assert Rejection(ErrorCode(code), None).status == status
    for placement in Placement:
        assert Rejection(ErrorCode(code), placement).status == status


@given(codes, placements)
@example(ErrorCode.MISSING_TOKEN, None)
@example(ErrorCode.MISPLACED_TOKEN, Placement.QUERY)
def test_body_is_json_with_error_message_placement_and_advice(
    code: ErrorCode, placement: Placement | None
) -> None:
    document = json.loads(Rejection(code, placement).body())
    assert isinstance(document, dict)
    assert set(document) == {"error", "message", "placement", "advice"}
    assert document["error"] == code.value
    assert isinstance(document["message"], str)
    assert len(document["message"].split()) >= 3  # a sentence for a person
    expected_placement = None if placement is None else placement.value
    assert document["placement"] == expected_placement
    assert document["advice"] is None  # none given


@given(codes, placements, st.text(min_size=1), st.one_of(st.none(), st.text()))
@example(ErrorCode.MISSING_TOKEN, None, "Sent nothing …", 'Send "x-auth-token"\r\n')
def test_a_given_message_and_advice_are_the_answers(
    code: ErrorCode, placement: Placement | None, message: str, advice: str | None
) -> None:
    rejection = Rejection(code, placement, message, advice)
    document = json.loads(rejection.body())
    assert (document["message"], document["advice"]) == (message, advice)
    assert Rejection.from_document(document) == rejection


def test_the_message_defaults_to_the_codes_sentence() -> None:
    assert Rejection(ErrorCode.MISSING_TOKEN, None).message.startswith("An access token")
    assert Rejection(ErrorCode.MISSING_TOKEN, None, "").message.startswith("An access token")


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"error": "nope", "message": "m", "placement": None, "advice": None},
        {"error": "missing_token", "message": 3, "placement": None, "advice": None},
        {"error": "missing_token", "message": "m", "placement": "cookie", "advice": None},
        {"error": "missing_token", "message": "m", "placement": None, "advice": 1},
    ],
)
def test_a_document_that_describes_no_rejection_gives_none(document: object) -> None:
    assert Rejection.from_document(document) is None


def test_body_of_a_missing_token_exactly() -> None:
    document = json.loads(Rejection(ErrorCode.MISSING_TOKEN, None).body())
    assert document["error"] == "missing_token"
    assert document["placement"] is None
    document = json.loads(Rejection(ErrorCode.AMBIGUOUS_TOKEN, Placement.HEADER).body())
    assert document["error"] == "ambiguous_token"
    assert document["placement"] == "header"


def test_messages_differ_between_codes() -> None:
    messages = {json.loads(Rejection(code, None).body())["message"] for code in ErrorCode}
    assert len(messages) == len(ErrorCode)


@given(codes, placements, st.one_of(st.none(), origins))
@example(ErrorCode.MISSING_TOKEN, None, None)
@example(ErrorCode.OUT_OF_SCOPE, None, "https://app.example")
@example(ErrorCode.UNKNOWN_TOKEN, Placement.PATH, "https://app.example")
def test_www_authenticate_only_on_401(
    code: ErrorCode, placement: Placement | None, origin: str | None
) -> None:
    fields = Rejection(code, placement).headers(origin)
    challenge = field_values(fields, "www-authenticate")
    if STATUSES[code.value] == 401:
        assert challenge == [WWW_AUTHENTICATE]
    else:
        assert challenge == []


@given(codes, placements, origins)
@example(ErrorCode.MISPLACED_TOKEN, Placement.QUERY, "https://app.example")
def test_allow_origin_echoes_the_origin(
    code: ErrorCode, placement: Placement | None, origin: str
) -> None:
    fields = Rejection(code, placement).headers(origin)
    assert field_values(fields, "access-control-allow-origin") == [origin]


@given(codes, placements)
def test_no_allow_origin_without_an_origin(code: ErrorCode, placement: Placement | None) -> None:
    fields = Rejection(code, placement).headers(None)
    assert field_values(fields, "access-control-allow-origin") == []


@given(codes, placements, st.one_of(st.none(), origins))
def test_answers_are_json(code: ErrorCode, placement: Placement | None, origin: str | None) -> None:
    fields = Rejection(code, placement).headers(origin)
    content_types = field_values(fields, "content-type")
    assert len(content_types) == 1
    assert content_types[0].split(";")[0].strip().lower() == "application/json"
