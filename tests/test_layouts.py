"""Layouts: where a token may stand in the path, where it belongs, where it is inserted.

Contract: generic allows the first or the last segment (canonical: last); ipfs the first
(canonical: first); avalanche and fuji the segment right after `/ext/bc/C/rpc` or
`/ext/bc/C/ws`, ending the path (canonical: the same). Positions index the path's segments
with the trailing slash set aside.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.layouts import Layout, layout_named

LAYOUT_NAMES = ("generic", "ipfs", "avalanche", "fuji")
CCHAIN = (("ext", "bc", "C", "rpc"), ("ext", "bc", "C", "ws"))
T = "sm_pat_" + "x" * 20

# Segments that come close to the C-chain prefixes without being them.
NEAR_CCHAIN = (
    ("ext", "bc", "C", "http"),
    ("ext", "bc", "c", "rpc"),
    ("ext", "bc", "X", "rpc"),
    ("ext", "bc", "P"),
    ("ext", "bc", "C"),
    ("Ext", "bc", "C", "rpc"),
    ("ext", "bc", "C", "rpc", "v2"),
    ("bc", "C", "rpc"),
    ("api", "ext", "bc", "C", "rpc"),
)


def segments() -> st.SearchStrategy[tuple[str, ...]]:
    plain = st.lists(
        st.one_of(
            st.text("abcABC012-._~", max_size=5),
            st.sampled_from(["ext", "bc", "C", "rpc", "ws", "api", "v0", "", T]),
        ),
        max_size=7,
    ).map(tuple)
    return st.one_of(plain, st.sampled_from(CCHAIN), st.sampled_from(NEAR_CCHAIN))


def expected_allowed(name: str, segs: tuple[str, ...], index: int) -> bool:
    """The contract's table, written out."""
    last = len(segs) - 1
    if name == "generic":
        return index in (0, last)
    if name == "ipfs":
        return index == 0
    return index == 4 == last and segs[:4] in CCHAIN


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_layout_named(name: str) -> None:
    layout = layout_named(name)
    assert isinstance(layout, Layout)
    assert layout.name == name


@pytest.mark.parametrize("name", ["", "Generic", "IPFS", "avax", "mainnet", "generic "])
def test_unknown_layout_names_fail(name: str) -> None:
    with pytest.raises(ValueError):
        layout_named(name)


# --- allows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segs", "allowed"),
    [
        ((T,), {0}),  # /TOKEN
        ((T, "graphql"), {0, 1}),  # /TOKEN/graphql
        (("graphql", T), {0, 1}),  # /graphql/TOKEN
        (("a", T, "b"), {0, 2}),
        (("a", "b", "c", T), {0, 3}),
    ],
)
def test_generic_allows_the_first_or_the_last_segment(
    segs: tuple[str, ...], allowed: set[int]
) -> None:
    layout = layout_named("generic")
    assert {i for i in range(len(segs)) if layout.allows(segs, i)} == allowed


@pytest.mark.parametrize(
    "segs", [(T,), (T, "api", "v0", "version"), ("api", T), ("api", "v0", "version", T)]
)
def test_ipfs_allows_the_first_segment_only(segs: tuple[str, ...]) -> None:
    layout = layout_named("ipfs")
    assert {i for i in range(len(segs)) if layout.allows(segs, i)} == {0}


@pytest.mark.parametrize("name", ["avalanche", "fuji"])
@pytest.mark.parametrize("prefix", CCHAIN)
def test_cchain_layouts_allow_the_segment_right_after_rpc_or_ws(
    name: str, prefix: tuple[str, ...]
) -> None:
    layout = layout_named(name)
    segs = (*prefix, T)
    assert [i for i in range(len(segs)) if layout.allows(segs, i)] == [4]


@pytest.mark.parametrize("name", ["avalanche", "fuji"])
@pytest.mark.parametrize(
    "segs",
    [
        (T,),
        (T, "ext", "bc", "C", "rpc"),
        ("ext", "bc", "C", "rpc", T, "extra"),  # must end the path
        ("ext", "bc", "C", "rpc", T, ""),  # an empty segment is still a segment
        ("ext", "bc", "C", "rpc", "x", T),
        ("ext", "bc", "C", T),
        ("ext", "bc", "C", "http", T),
        ("ext", "bc", "X", "rpc", T),
        ("ext", "bc", "c", "rpc", T),
        ("ext", "bc", "P", "rpc", T),
        ("v1", "ext", "bc", "C", "rpc", T),
        ("ext", "bc", "C", "avax", T),
    ],
)
def test_cchain_layouts_allow_nothing_elsewhere(name: str, segs: tuple[str, ...]) -> None:
    layout = layout_named(name)
    assert not any(layout.allows(segs, i) for i in range(len(segs)))


@given(st.sampled_from(LAYOUT_NAMES), segments())
@example("avalanche", ("ext", "bc", "C", "rpc", T))
@example("fuji", ("ext", "bc", "C", "ws", T))
@example("generic", (T,))
def test_allows_follows_the_table(name: str, segs: tuple[str, ...]) -> None:
    layout = layout_named(name)
    for index in range(len(segs)):
        assert layout.allows(segs, index) is expected_allowed(name, segs, index), index
        # With a token in that position the answer does not change.
        with_token = (*segs[:index], T, *segs[index + 1 :])
        assert layout.allows(with_token, index) is expected_allowed(name, with_token, index)


# --- canonical -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "segs", "canonical"),
    [
        ("generic", (T,), {0}),
        ("generic", (T, "graphql"), {1}),
        ("generic", ("graphql", T), {1}),
        ("generic", ("a", "b", T), {2}),
        ("ipfs", (T,), {0}),
        ("ipfs", (T, "api", "v0", "version"), {0}),
        ("avalanche", ("ext", "bc", "C", "rpc", T), {4}),
        ("avalanche", ("ext", "bc", "C", "ws", T), {4}),
        ("fuji", ("ext", "bc", "C", "rpc", T), {4}),
        ("avalanche", ("ext", "bc", "C", "rpc", T, "x"), set()),
        ("avalanche", ("ext", "bc", "C", "http", T), set()),
        ("fuji", (T,), set()),
    ],
)
def test_canonical_positions(name: str, segs: tuple[str, ...], canonical: set[int]) -> None:
    layout = layout_named(name)
    assert {i for i in range(len(segs)) if layout.is_canonical(segs, i)} == canonical


@given(st.sampled_from(LAYOUT_NAMES), segments())
def test_canonical_positions_are_allowed_and_unique(name: str, segs: tuple[str, ...]) -> None:
    layout = layout_named(name)
    canonical = [i for i in range(len(segs)) if layout.is_canonical(segs, i)]
    assert len(canonical) <= 1
    for index in canonical:
        assert layout.allows(segs, index)
        expected = {"generic": len(segs) - 1, "ipfs": 0}.get(name, 4)
        assert index == expected


# --- insertion -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "segs", "index"),
    [
        ("generic", (), 0),  # / -> /TOKEN
        ("generic", ("graphql",), 1),  # /graphql -> /graphql/TOKEN
        ("generic", ("a", "b", "c"), 3),
        ("ipfs", (), 0),
        ("ipfs", ("api", "v0", "version"), 0),
        ("avalanche", ("ext", "bc", "C", "rpc"), 4),
        ("avalanche", ("ext", "bc", "C", "ws"), 4),
        ("fuji", ("ext", "bc", "C", "rpc"), 4),
        ("fuji", ("ext", "bc", "C", "ws"), 4),
        ("avalanche", (), None),
        ("avalanche", ("ext", "bc", "C"), None),
        ("avalanche", ("ext", "bc", "C", "rpc", "x"), None),
        ("avalanche", ("ext", "bc", "C", "avax"), None),
        ("avalanche", ("ext", "bc", "X", "rpc"), None),
        ("fuji", ("ext", "bc", "P"), None),
        ("fuji", ("health",), None),
    ],
)
def test_insertion_index(name: str, segs: tuple[str, ...], index: int | None) -> None:
    assert layout_named(name).insertion_index(segs) == index


@given(st.sampled_from(LAYOUT_NAMES), segments())
@example("avalanche", ("ext", "bc", "C", "rpc"))
@example("generic", ())
def test_a_token_inserted_stands_at_the_canonical_position(
    name: str, segs: tuple[str, ...]
) -> None:
    layout = layout_named(name)
    index = layout.insertion_index(segs)
    if name in ("avalanche", "fuji") and segs not in CCHAIN:
        assert index is None
        return
    assert index is not None
    placed = (*segs[:index], T, *segs[index:])
    assert placed[index] == T
    assert expected_allowed(name, placed, index)
    assert layout.is_canonical(placed, index)
    assert index == {"generic": len(segs), "ipfs": 0}.get(name, 4)
