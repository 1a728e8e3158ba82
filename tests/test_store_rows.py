"""Row formats: the digest key, times, scopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from tokenward.store.rows import digest_key, format_time, key_if_digest, scope_json

HEX_DIGESTS = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(HEX_DIGESTS, HEX_DIGESTS)
def test_digest_keys_are_signed_64_bit_and_sort_as_the_digests(first: str, second: str) -> None:
    assert -(2**63) <= digest_key(first) < 2**63
    if first[:16] != second[:16]:
        assert (digest_key(first) < digest_key(second)) is (first < second)


def test_only_a_hex_sha256_has_a_key() -> None:
    assert key_if_digest("0" * 64) == -(2**63)
    assert key_if_digest("F" * 64) is None
    assert key_if_digest("0" * 63) is None


MOMENTS = st.datetimes(min_value=datetime(1000, 1, 2), timezones=st.just(UTC))


@given(MOMENTS, MOMENTS)
def test_times_are_fixed_width_and_sort_as_time(first: datetime, second: datetime) -> None:
    assert len(format_time(first)) == len(format_time(second)) == 32
    assert (format_time(first) < format_time(second)) is (first < second)


def test_a_time_is_stored_in_utc() -> None:
    moment = datetime(2030, 6, 15, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2030-06-15T12:00:00.000000+00:00"


def test_a_scope_is_a_sorted_json_list_and_all_is_null() -> None:
    assert scope_json(frozenset({"ipfs", "avax"})) == '["avax", "ipfs"]'
    assert scope_json(None) is None
