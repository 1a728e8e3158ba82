"""Shared test set-up: hypothesis profiles (HYPOTHESIS_PROFILE, default `fast`) and the
recording upstream that the real-process tests forward to."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tokenward.fixtures.postgres import (
    POSTGRES_MISSING_REASON,
    PostgresCluster,
    postgres_bin_dir,
    start_postgres,
)
from tokenward.fixtures.processes import RunningUpstream, start_upstream

settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningUpstream]:
    """The recording upstream in a process of its own; a module's tests share it."""
    with start_upstream() as running:
        yield running


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole session; skips without the server binaries."""
    if postgres_bin_dir() is None:
        pytest.skip(POSTGRES_MISSING_REASON)
    with start_postgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a fresh, empty database of the session's cluster, one per test."""
    return postgres_cluster.create_database(f"t_{uuid.uuid4().hex[:16]}")
