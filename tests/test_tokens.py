"""Token shapes, `holds`, issuance, digests, hints and redaction, checked against the contract.

Contract: a token is `sm_` + kind (`pat`, `aat`, `sat`) + `_` + 16 to 64 characters of
`[A-Za-z0-9]`; a string holds one when the pattern matches inside it with no letter or digit
right before or after. Issued tokens carry 32 base62 characters; the store keeps a SHA-256
digest and a hint (`sm_pat_…` + last 4).
"""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.tokens import (
    holds_token_shaped,
    is_token_shaped,
    issue_token,
    kind_of,
    redact_tokens,
    token_digest,
    token_hint,
)

BASE62 = string.ascii_letters + string.digits
KINDS = ("pat", "aat", "sat")
# Characters that are neither ASCII letters/digits nor `_` (so they can never start, extend or
# end a token in a way the tests do not control) and are unambiguous boundaries.
BOUNDARY = " .,;:/?&=#-~!$'()*+@\"<>[]{}|\\^`\t\n"
# Filler text that can never hold a token: no `_`, so no `sm_` can be formed.
FILLER = BASE62 + BOUNDARY


def token_of(kind: str, body: str) -> str:
    return f"sm_{kind}_{body}"


def kinds() -> st.SearchStrategy[str]:
    return st.sampled_from(KINDS)


def bodies(min_size: int = 16, max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(alphabet=BASE62, min_size=min_size, max_size=max_size)


def tokens() -> st.SearchStrategy[str]:
    return st.builds(token_of, kinds(), bodies())


def fillers(max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(alphabet=FILLER, max_size=max_size)


def boundaries() -> st.SearchStrategy[str]:
    return st.sampled_from(BOUNDARY)


def alnums() -> st.SearchStrategy[str]:
    return st.sampled_from(BASE62)


# --- shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [16, 17, 32, 63, 64])
def test_bodies_of_16_to_64_characters_are_token_shaped(kind: str, length: int) -> None:
    body = ("aZ09" * 20)[:length]
    assert is_token_shaped(f"sm_{kind}_{body}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [0, 1, 15, 65, 100])
def test_bodies_outside_16_to_64_characters_are_not_token_shaped(kind: str, length: int) -> None:
    body = ("aZ09" * 30)[:length]
    assert not is_token_shaped(f"sm_{kind}_{body}")


@pytest.mark.parametrize(
    "value",
    [
        "SM_PAT_" + "a" * 20,
        "sm_PAT_" + "a" * 20,
        "Sm_pat_" + "a" * 20,
        "sM_aat_" + "a" * 20,
        "sm_Sat_" + "a" * 20,
        "sm_xat_" + "a" * 20,
        "sm_pa_" + "a" * 20,
        "sm_patt_" + "a" * 20,
        "sm-pat-" + "a" * 20,
        "sm_pat" + "a" * 20,
        "smpat_" + "a" * 20,
        "sm__pat_" + "a" * 20,
        "xsm_pat_" + "a" * 20,
        " sm_pat_" + "a" * 20,
        "sm_pat_" + "a" * 20 + " ",
        "sm_pat_" + "a" * 20 + "\n",
        "sm_pat_" + "a" * 20 + ".",
        "sm_pat_" + "a" * 10 + "_" + "a" * 10,
        "sm_pat_" + "a" * 10 + "-" + "a" * 10,
        "",
        "sm_pat_",
    ],
)
def test_wrong_case_wrong_kind_and_extra_characters_are_not_token_shaped(value: str) -> None:
    assert not is_token_shaped(value)


@pytest.mark.parametrize(
    "value",
    [
        "\u0455m_pat_" + "a" * 20,  # Cyrillic dze looks like `s`
        "sm_p\u0430t_" + "a" * 20,  # Cyrillic a
        "sm_pat_" + "a" * 15 + "\uff41",  # fullwidth a
        "sm_pat_" + "a" * 15 + "\uff11",  # fullwidth 1
        "sm_pat_" + "a" * 15 + "\u0663",  # Arabic-Indic three
        "sm_pat_" + "a" * 15 + "\u00b2",  # superscript two (Latin-1, isdigit)
        "sm_pat_" + "a" * 15 + "\u00b5",  # micro sign (Latin-1, isalpha)
        "sm_pat_" + "a" * 15 + "\u00e9",  # é
        "sm_pat_" + "a" * 15 + "\u0131",  # dotless i
        "sm_pat_" + "a" * 15 + "\u212a",  # Kelvin sign, folds to k
        "sm\uff3fpat_" + "a" * 20,  # fullwidth low line
    ],
)
def test_non_ascii_look_alikes_are_not_token_shaped(value: str) -> None:
    assert not is_token_shaped(value)
    # With only 15 ASCII body characters nothing token-shaped stands inside either.
    assert not holds_token_shaped(value)


@given(kinds(), bodies())
@example("pat", "a" * 16)
@example("sat", "Z" * 64)
@example("aat", "0123456789abcdef")
def test_every_kind_and_body_of_16_to_64_base62_characters_is_token_shaped(
    kind: str, body: str
) -> None:
    token = f"sm_{kind}_{body}"
    assert is_token_shaped(token)
    assert kind_of(token) == kind


@given(kinds(), st.one_of(bodies(0, 15), bodies(65, 120)))
@example("pat", "a" * 15)
@example("pat", "a" * 65)
def test_bodies_of_the_wrong_length_are_neither_shaped_nor_held(kind: str, body: str) -> None:
    value = f"sm_{kind}_{body}"
    assert not is_token_shaped(value)
    assert not holds_token_shaped(value)
    assert not holds_token_shaped(f"x.{value}.json")


@given(tokens(), st.sampled_from(BASE62 + BOUNDARY + "_é"))
def test_one_more_character_changes_the_shape_as_the_pattern_says(token: str, extra: str) -> None:
    if extra in BASE62 and len(token) < 7 + 64:
        # Appending a letter or digit to a short body only makes a longer body.
        assert is_token_shaped(token + extra)
        assert not is_token_shaped(extra + token)
    else:
        assert not is_token_shaped(token + extra)
        assert not is_token_shaped(extra + token)


@pytest.mark.parametrize(
    "value", ["", "not a token", "sm_xat_" + "a" * 20, "sm_pat_" + "a" * 15, "SM_PAT_" + "a" * 20]
)
def test_kind_of_a_value_that_is_not_a_token_fails(value: str) -> None:
    with pytest.raises(ValueError):
        kind_of(value)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_of_each_kind(kind: str) -> None:
    assert kind_of(f"sm_{kind}_" + "Q1" * 10) == kind


# --- holds -----------------------------------------------------------------------------------

TOKEN_16 = "sm_pat_" + "Ab3" * 5 + "z"  # 16-character body


def test_example_tokens_have_the_intended_shape() -> None:
    assert len(TOKEN_16) == 7 + 16


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        (f"x.{TOKEN_16}json", True),  # the contract's example: the run is a 20-character body
        (f"x.{TOKEN_16}.json", True),
        (TOKEN_16, True),
        (f"/{TOKEN_16}/", True),
        (f"_{TOKEN_16}_", True),  # `_` is neither a letter nor a digit
        (f"a%2F{TOKEN_16}", False),  # `F` is a letter right before
        (f"a/{TOKEN_16}", True),
        (f"x{TOKEN_16}", False),  # a letter right before
        (f"7{TOKEN_16}", False),  # a digit right before
        (f"X{TOKEN_16}.json", False),
        ("sm_pat_" + "a" * 64 + "b", False),  # a 65-character run
        ("sm_pat_" + "a" * 64 + "7", False),
        ("sm_pat_" + "a" * 64 + ".", True),
        ("sm_pat_" + "a" * 65 + ".", False),
        ("sm_pat_" + "a" * 15 + ".", False),
        (f"sm_pat_{TOKEN_16}", True),  # the inner one follows `_`
        ("token=" + "SM_PAT_" + "a" * 20, False),
        ("", False),
        ("sm_", False),
    ],
)
def test_holds_examples(text: str, holds: bool) -> None:
    assert holds_token_shaped(text) is holds


@given(fillers(), boundaries(), tokens(), boundaries(), fillers())
@example("x", ".", TOKEN_16, ".", "json")
@example("", "/", TOKEN_16, "?", "")
def test_a_token_between_boundaries_is_held(
    head: str, before: str, token: str, after: str, tail: str
) -> None:
    assert holds_token_shaped(head + before + token + after + tail)


@given(boundaries(), kinds(), bodies(16, 60), st.text(alphabet=BASE62, min_size=1, max_size=4))
@example(".", "pat", "a" * 16, "json")
def test_letters_and_digits_after_the_body_extend_it_up_to_64(
    before: str, kind: str, body: str, extension: str
) -> None:
    run = body + extension
    assert holds_token_shaped(f"x{before}sm_{kind}_{run}") is (len(run) <= 64)


@given(fillers(), alnums(), tokens(), boundaries(), fillers())
@example("", "x", TOKEN_16, ".", "json")
@example("", "7", TOKEN_16, "", "")
def test_a_letter_or_digit_right_before_blocks_the_match(
    head: str, before: str, token: str, after: str, tail: str
) -> None:
    assert not holds_token_shaped(head + before + token + after + tail)


@given(fillers(), boundaries(), kinds(), bodies(65, 150), boundaries(), fillers())
@example("", ".", "pat", "a" * 65, ".", "")
def test_a_run_longer_than_64_characters_is_not_held(
    head: str, before: str, kind: str, body: str, after: str, tail: str
) -> None:
    assert not holds_token_shaped(head + before + f"sm_{kind}_{body}" + after + tail)


@given(fillers(40))
def test_text_without_underscores_holds_nothing(text: str) -> None:
    assert not holds_token_shaped(text)


# --- issuance --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_issued_tokens_have_the_prefix_and_32_base62_characters(kind: str) -> None:
    token = issue_token(kind)
    prefix = f"sm_{kind}_"
    assert token.startswith(prefix)
    body = token[len(prefix) :]
    assert len(body) == 32
    assert set(body) <= set(BASE62)
    assert is_token_shaped(token)
    assert kind_of(token) == kind


def test_issued_tokens_are_distinct() -> None:
    issued = [issue_token(kind) for kind in KINDS for _ in range(100)]
    assert len(set(issued)) == len(issued)
    assert len({token[7:] for token in issued}) == len(issued)


def test_issued_bodies_use_the_whole_base62_alphabet() -> None:
    seen = set("".join(issue_token("pat")[7:] for _ in range(200)))
    # 6400 draws from 62 characters: missing any one of them by chance is below 1e-40.
    assert seen == set(BASE62)


@pytest.mark.parametrize("kind", ["", "PAT", "pat ", "xat", "personal", "sm_pat"])
def test_issuing_an_unknown_kind_fails(kind: str) -> None:
    with pytest.raises(ValueError):
        issue_token(kind)


# --- digest ----------------------------------------------------------------------------------


def test_digest_of_a_known_token() -> None:
    # sha256("sm_pat_" + "a" * 32), computed independently of the project.
    token = "sm_pat_" + "a" * 32
    assert token_digest(token) == hashlib.sha256(token.encode("ascii")).hexdigest()
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@given(tokens())
def test_digest_is_sha256_hex(token: str) -> None:
    digest = token_digest(token)
    assert digest == hashlib.sha256(token.encode("ascii")).hexdigest()
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    assert token not in digest


@given(tokens(), tokens())
def test_distinct_tokens_have_distinct_digests(first: str, second: str) -> None:
    assert (token_digest(first) == token_digest(second)) is (first == second)


# --- hint ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "hint"),
    [
        ("sm_pat_" + "a" * 12 + "WXYZ", "sm_pat_…WXYZ"),
        ("sm_aat_" + "0" * 28 + "1234", "sm_aat_…1234"),
        ("sm_sat_" + "b" * 60 + "9zZ9", "sm_sat_…9zZ9"),
    ],
)
def test_hint_is_the_prefix_an_ellipsis_and_the_last_four(token: str, hint: str) -> None:
    assert token_hint(token) == hint


@given(kinds(), bodies())
@example("pat", "a" * 16)
def test_hint_of_a_token(kind: str, body: str) -> None:
    token = f"sm_{kind}_{body}"
    hint = token_hint(token)
    assert hint == f"sm_{kind}_…{body[-4:]}"
    assert token not in hint
    assert body not in hint
    assert not holds_token_shaped(hint)


NON_TOKENS = st.one_of(
    st.text(st.characters(max_codepoint=255), max_size=40),
    st.builds(token_of, kinds(), bodies(0, 15)),
    st.builds(token_of, kinds(), bodies(65, 80)),
    st.builds(lambda token: "Bearer " + token, tokens()),
    st.builds(lambda token: token + ",", tokens()),
    st.builds(lambda token: token.upper(), tokens()),
)


@given(NON_TOKENS)
@example("sm_pat_" + "a" * 15)
@example("Bearer " + TOKEN_16)
@example("char")
def test_hint_of_a_value_that_is_not_a_token_shows_no_content(value: str) -> None:
    shaped = value.startswith(("sm_pat_", "sm_aat_", "sm_sat_")) and len(value) in range(23, 72)
    if shaped and set(value[7:]) <= set(BASE62):
        return  # token-shaped after all (drawn from arbitrary text)
    hint = token_hint(value)
    # The hint depends on nothing but the length: another value of the same length that
    # shares no character with this one gets the very same hint.
    other = "".join("\x01" if ch != "\x01" else "\x02" for ch in value)
    assert token_hint(other) == hint
    assert "sm_" not in hint
    assert not holds_token_shaped(hint)


# --- redaction -------------------------------------------------------------------------------


@st.composite
def texts_with_tokens(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Filler and tokens, each token between boundaries: (text, the tokens it holds)."""
    parts: list[str] = []
    held: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        token = draw(tokens())
        parts.append(draw(fillers()) + draw(boundaries()) + token + draw(boundaries()))
        held.append(token)
    parts.append(draw(fillers()))
    return "".join(parts), held


@given(texts_with_tokens())
@example(("GET /x.sm_pat_" + "a" * 20 + ".json HTTP/1.1", ["sm_pat_" + "a" * 20]))
@example((f"{TOKEN_16},{TOKEN_16}", [TOKEN_16, TOKEN_16]))
def test_redaction_removes_every_held_token(case: tuple[str, list[str]]) -> None:
    text, held = case
    redacted = redact_tokens(text)
    assert not holds_token_shaped(redacted)
    for token in held:
        assert token not in redacted
        assert f"{token[:7]}…{token[-4:]}" in redacted


@given(fillers(40))
def test_redaction_leaves_text_without_tokens_alone(text: str) -> None:
    assert redact_tokens(text) == text


def test_redaction_example() -> None:
    token = "sm_sat_" + "k" * 20 + "LAST"
    assert redact_tokens(f"token={token}&a=1") == "token=sm_sat_…LAST&a=1"
    assert redact_tokens(f"x-auth-token: {token}") == "x-auth-token: sm_sat_…LAST"
