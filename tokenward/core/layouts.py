"""Path layouts: where a service lets a token stand in the path, and where it belongs.

Positions are indexes into the path's segments with the trailing slash set aside, compared after
decoding percent-encoded unreserved characters (see `placement.path_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class LayoutName(StrEnum):
    GENERIC = "generic"
    IPFS = "ipfs"
    AVALANCHE = "avalanche"
    FUJI = "fuji"


_CCHAIN_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("ext", "bc", "C", "rpc"),
    ("ext", "bc", "C", "ws"),
)


# Made once each, below: compared and hashed by identity, at C speed (a route's layout is part
# of the key of every request's remembered decision).
@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    name: LayoutName
    example: str
    # Where `allows` lets a token stand, for a person.
    rule: str

    def allows(self, segments: Sequence[str], index: int) -> bool:
        """May a token stand at `segments[index]` (the token's own segment included)?"""
        last = len(segments) - 1
        match self.name:
            case LayoutName.GENERIC:
                return index == 0 or index == last
            case LayoutName.IPFS:
                return index == 0
            case LayoutName.AVALANCHE | LayoutName.FUJI:
                return index == 4 == last and tuple(segments[:4]) in _CCHAIN_PREFIXES

    def is_canonical(self, segments: Sequence[str], index: int) -> bool:
        """Is `segments[index]` the canonical place of a token that stands there?"""
        if self.name is LayoutName.IPFS:
            return index == 0
        return index == len(segments) - 1 and self.allows(segments, index)

    def insertion_index(self, segments: Sequence[str]) -> int | None:
        """Where a token goes in a path that holds none, or None when the path has no place."""
        match self.name:
            case LayoutName.GENERIC:
                return len(segments)
            case LayoutName.IPFS:
                return 0
            case LayoutName.AVALANCHE | LayoutName.FUJI:
                return 4 if tuple(segments) in _CCHAIN_PREFIXES else None


_CCHAIN_RULE = "as the segment right after /ext/bc/C/rpc or /ext/bc/C/ws, ending the path"

LAYOUTS: dict[str, Layout] = {
    layout.name.value: layout
    for layout in (
        Layout(
            LayoutName.GENERIC,
            "/TOKEN, /TOKEN/graphql, /graphql/TOKEN",
            "as the first or the last path segment",
        ),
        Layout(LayoutName.IPFS, "/TOKEN/api/v0/version", "as the first path segment"),
        Layout(LayoutName.AVALANCHE, "/ext/bc/C/rpc/TOKEN", _CCHAIN_RULE),
        Layout(LayoutName.FUJI, "/ext/bc/C/rpc/TOKEN", _CCHAIN_RULE),
    )
}


def layout_named(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; expected one of {', '.join(LAYOUTS)}") from None
