"""The test command of the mutation run: the conformance harness alone, in process.

``python -m tokenward.harness.mutation_check`` runs the matrix and ``--examples`` hypothesis
examples per layout (fixed seed) against the addon in process, under every forward x mode x
preflight option set and once more on an unreadable store, and exits 1 at the first run with a
failure or a strict finding (tokenward passes at the strict level, so any difference kills a
mutant). No unit test runs: what it kills, the harness kills. ``just mutation`` runs it for
each mutant of ``tokenward/core``.

``--skip-annotations SESSION`` marks a cosmic-ray session's mutants that only change an
annotation as skipped, before any runs: ``from __future__ import annotations`` keeps every
annotation a string that nothing evaluates, so those mutants are equivalent. ``--report
SESSION`` prints killed / total of the mutants that ran, and every survivor.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import replace
from itertools import product
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

from tokenward.harness.inprocess import InProcessGateway
from tokenward.harness.oracle import Forward, Mode, Preflight
from tokenward.harness.run import Options, Plan, run_conformance, self_test_plan

MUTATION_SEED = 16
MUTATION_EXAMPLES = 100
# The in-process driver never connects: the plan's URLs only name things in reports.
NOWHERE = "http://127.0.0.1:9"


def option_sets() -> list[Options]:
    return [Options(*combination) for combination in product(Forward, Mode, Preflight)]


def plans() -> list[Plan]:
    """Each option set on a readable store, then the default options on an unreadable one."""
    readable = [self_test_plan(NOWHERE, base_url=NOWHERE, options=o) for o in option_sets()]
    default = readable[0]
    unreadable = replace(default, store=replace(default.store, available=False))
    return [*readable, unreadable]


def first_difference(examples: int, run_seed: int) -> str | None:
    """The first plan's first failing case, or None when every plan passes strictly."""
    for plan in plans():
        with InProcessGateway(plan.store) as gateway:
            run = run_conformance(
                gateway, plan, title="mutation", examples=examples, run_seed=run_seed
            )
        if not run.passed_strict:
            case = (*run.failures, *run.strict_findings)[0]
            store = "" if plan.store.available else ", store unreadable"
            return f"{plan.options.label}{store}: {case.name}: {case.signature}"
    return None


Span = tuple[tuple[int, int], tuple[int, int]]
ANNOTATION_ONLY = "equivalent: only an annotation changes, and none is evaluated"


def annotation_spans(source: str) -> list[Span]:
    """The (row, column) spans of every annotation in a module (rows from 1)."""
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for annotation in annotations:
            if annotation is not None and annotation.end_lineno is not None:
                end = (annotation.end_lineno, annotation.end_col_offset or 0)
                spans.append(((annotation.lineno, annotation.col_offset), end))
    return spans


def skip_annotation_mutants(session: Path) -> int:
    """Mark the session's annotation-only mutants as skipped; how many there were."""
    skipped = 0
    spans: dict[str, list[Span]] = {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            for mutation in item.mutations:
                path = str(mutation.module_path)
                if path not in spans:
                    spans[path] = annotation_spans(Path(path).read_text())
                start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
                if any(low <= start and end <= high for low, high in spans[path]):
                    result = WorkResult(
                        output=ANNOTATION_ONLY,
                        worker_outcome=WorkerOutcome.SKIPPED,
                        test_outcome=TestOutcome.KILLED,
                    )
                    db.set_result(item.job_id, result)
                    skipped += 1
    return skipped


def report(session: Path) -> None:
    """Killed / total of the mutants that ran, then each survivor by place and operator."""
    with use_db(str(session), WorkDB.Mode.open) as db:
        ran = [
            (item, result)
            for item, result in db.completed_work_items
            if result.worker_outcome is not WorkerOutcome.SKIPPED
        ]
        skipped = sum(1 for _, r in db.completed_work_items) - len(ran)
        pending = db.num_work_items - db.num_results
    killed = [i for i, r in ran if r.test_outcome is not TestOutcome.SURVIVED]
    survivors = [i for i, r in ran if r.test_outcome is TestOutcome.SURVIVED]
    share = 100 * len(killed) / len(ran) if ran else 0.0
    print(f"{len(killed)} killed / {len(ran)} run ({share:.1f}%); {skipped} annotation-only")
    print(f"skipped as equivalent; {pending} not run")
    for item in survivors:
        for mutation in item.mutations:
            row, column = mutation.start_pos
            print(f"survived: {mutation.module_path}:{row}:{column} {mutation.operator_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=MUTATION_EXAMPLES)
    parser.add_argument("--seed", type=int, default=MUTATION_SEED)
    parser.add_argument("--skip-annotations", type=Path, metavar="SESSION")
    parser.add_argument("--report", type=Path, metavar="SESSION")
    arguments = parser.parse_args()
    if arguments.skip_annotations is not None:
        count = skip_annotation_mutants(arguments.skip_annotations)
        print(f"{count} annotation-only mutants marked skipped")
        return
    if arguments.report is not None:
        report(arguments.report)
        return
    difference = first_difference(arguments.examples, arguments.seed)
    if difference is not None:
        print(f"killed: {difference}")
        sys.exit(1)
    print("survived: every option set passes")


if __name__ == "__main__":
    main()
