"""Last-used times buffered, and the write's parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tokenward.core.tokens import token_digest
from tokenward.store.rows import digest_key
from tokenward.store.usage import UsageBuffer, usage_updates

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
DIGEST = token_digest("sm_pat_0123456789abcdef")


def test_the_latest_use_of_a_token_is_kept() -> None:
    usage = UsageBuffer()
    usage.note(DIGEST, NOW + timedelta(seconds=5))
    usage.note(DIGEST, NOW + timedelta(seconds=9))
    usage.note(DIGEST, NOW + timedelta(seconds=7))
    assert usage.take() == {DIGEST: NOW + timedelta(seconds=9)}
    assert usage.take() == {}


def test_times_given_back_meet_newer_ones() -> None:
    usage = UsageBuffer()
    usage.note(DIGEST, NOW)
    pending = usage.take()
    usage.note(DIGEST, NOW + timedelta(seconds=1))  # noted while the write failed
    usage.note("other", NOW)
    usage.give_back(pending)
    assert usage.take() == {DIGEST: NOW + timedelta(seconds=1), "other": NOW}


def test_updates_bind_by_name() -> None:
    assert usage_updates({DIGEST: NOW, "no digest": NOW}) == [
        {"moment": "2030-06-15T12:00:00.000000+00:00", "key": digest_key(DIGEST), "digest": DIGEST},
        {"moment": "2030-06-15T12:00:00.000000+00:00", "key": None, "digest": "no digest"},
    ]
