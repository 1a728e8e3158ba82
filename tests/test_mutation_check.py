"""The mutation run's helpers: which mutants only touch annotations, and the option sets."""

from __future__ import annotations

from itertools import product

from tokenward.harness.mutation_check import annotation_spans, option_sets
from tokenward.harness.oracle import Forward, Mode, Preflight

SOURCE = """from __future__ import annotations


def pick(value: str | None, limit: int = 3) -> list[str] | None:
    kept: dict[str, int] = {}
    return None if value is None else [value] * (limit | 1)
"""


def inside(spans: list[tuple[tuple[int, int], tuple[int, int]]], row: int, column: int) -> bool:
    return any(low <= (row, column) <= high for low, high in spans)


def test_annotation_spans_cover_annotations_and_nothing_else() -> None:
    spans = annotation_spans(SOURCE)
    line = SOURCE.splitlines()[3]
    assert inside(spans, 4, line.index("| None"))  # the argument's annotation
    assert inside(spans, 4, line.index("| None:"))  # the return annotation
    assert inside(spans, 5, SOURCE.splitlines()[4].index("int"))  # a variable's annotation
    body = SOURCE.splitlines()[5]
    assert not inside(spans, 6, body.index("| 1"))  # a real `|` in the code
    assert not inside(spans, 4, line.index("= 3") + 2)  # a default value


def test_every_option_set_is_run() -> None:
    combinations = {(o.forward, o.mode, o.preflight) for o in option_sets()}
    assert combinations == set(product(Forward, Mode, Preflight))
