from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.lifetimes import (
    RELATIVE_EXPIRIES,
    check_service_name,
    format_scope,
    is_expired,
    parse_expiry,
    parse_scope,
)

NOW = datetime(2030, 6, 15, 12, 30, tzinfo=UTC)

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
service_names = st.from_regex(r"[a-z0-9](?:[a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda name: name != "all"
)


@pytest.mark.parametrize(("text", "days"), [("7d", 7), ("30d", 30), ("60d", 60), ("90d", 90)])
def test_relative_expiry_counts_days_from_now(text: str, days: int) -> None:
    assert parse_expiry(text, NOW) == NOW + timedelta(days=days)


def test_a_date_is_valid_through_the_end_of_that_day_utc() -> None:
    assert parse_expiry("2030-06-20", NOW) == datetime(2030, 6, 21, tzinfo=UTC)


def test_today_is_not_in_the_past() -> None:
    assert parse_expiry("2030-06-15", NOW) == datetime(2030, 6, 16, tzinfo=UTC)


def test_never_has_no_expiry() -> None:
    assert parse_expiry("never", NOW) is None
    assert not is_expired(None, datetime.max.replace(tzinfo=UTC))


def test_now_in_another_zone_is_read_as_utc() -> None:
    from zoneinfo import ZoneInfo

    # 01:00 in Tokyo on the 16th is still the 15th in UTC, so the 15th is today, not the past.
    tokyo_now = datetime(2030, 6, 16, 1, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert parse_expiry("2030-06-15", tokyo_now) == datetime(2030, 6, 16, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2030-06-14", "expiry '2030-06-14' is in the past (today is 2030-06-15 UTC)"),
        ("2030-02-30", "invalid expiry '2030-02-30': no such calendar date"),
        ("9999-12-31", "expiry '9999-12-31' is too far in the future"),
        ("8d", "invalid expiry '8d'; expected 7d, 30d, 60d, 90d, a date YYYY-MM-DD or never"),
        ("Never", "invalid expiry 'Never'; expected 7d, 30d, 60d, 90d, a date YYYY-MM-DD or never"),
        ("20300620", "invalid expiry '20300620'; expected 7d, 30d, 60d, 90d, a date YYYY-MM-DD"),
        ("", "invalid expiry ''; expected 7d"),
        (" 7d", "invalid expiry ' 7d'; expected 7d"),
    ],
)
def test_bad_expiries_are_refused_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_expiry(text, NOW)
    assert str(raised.value).startswith(message)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        parse_expiry("7d", datetime(2030, 1, 1))


@given(now=moments, text=st.sampled_from(sorted(RELATIVE_EXPIRIES)))
def test_relative_expiry_is_in_the_future(now: datetime, text: str) -> None:
    expires_at = parse_expiry(text, now)
    assert expires_at is not None and expires_at > now
    assert not is_expired(expires_at, now)


@given(now=moments, days_ahead=st.integers(min_value=0, max_value=3000))
@example(now=datetime(2030, 6, 15, 0, 0, tzinfo=UTC), days_ahead=0)  # midnight: today counts
@example(now=datetime(2030, 6, 15, 23, 59, 59, 999999, tzinfo=UTC), days_ahead=0)
@example(now=datetime(2028, 2, 28, 12, tzinfo=UTC), days_ahead=1)  # leap day
def test_a_date_is_valid_exactly_through_its_last_day(now: datetime, days_ahead: int) -> None:
    last_day = now.date() + timedelta(days=days_ahead)
    expires_at = parse_expiry(last_day.isoformat(), now)
    assert expires_at == datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    assert not is_expired(expires_at, expires_at - timedelta(microseconds=1))
    assert is_expired(expires_at, expires_at)


@given(now=moments, days_back=st.integers(min_value=1, max_value=3000))
@example(now=datetime(2030, 6, 15, 0, 0, tzinfo=UTC), days_back=1)  # yesterday ended just now
def test_a_past_date_is_refused(now: datetime, days_back: int) -> None:
    text = (now.date() - timedelta(days=days_back)).isoformat()
    with pytest.raises(ValueError, match=f"expiry {text!r} is in the past"):
        parse_expiry(text, now)


@given(text=st.text(max_size=20))
@example(text="2030-6-1")
@example(text="७d")  # a non-ASCII digit
def test_anything_else_is_refused_naming_it(text: str) -> None:
    valid = text == "never" or text in RELATIVE_EXPIRIES
    if valid or (len(text) == 10 and text[4] == "-" and text[7] == "-"):
        return
    with pytest.raises(ValueError) as raised:
        parse_expiry(text, NOW)
    assert repr(text) in str(raised.value)


def test_is_expired_from_the_expiry_instant_on() -> None:
    assert not is_expired(NOW, NOW - timedelta(microseconds=1))
    assert is_expired(NOW, NOW)
    assert is_expired(NOW, NOW + timedelta(days=1))


def test_scope_all_is_none() -> None:
    assert parse_scope("all") is None
    assert format_scope(None) == "all"


def test_scope_lists_names() -> None:
    assert parse_scope("ipfs, avax,ipfs") == frozenset({"ipfs", "avax"})
    assert format_scope(frozenset({"ipfs", "avax"})) == "avax,ipfs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid scope '': empty service name"),
        ("ipfs,", "invalid scope 'ipfs,': empty service name"),
        ("all,ipfs", "invalid scope 'all,ipfs': 'all' cannot be combined with names"),
        ("IPFS", "invalid scope 'IPFS': 'IPFS' is not a service name"),
        ("a b", "invalid scope 'a b': 'a b' is not a service name"),
        ("-x", "invalid scope '-x': '-x' is not a service name"),
    ],
)
def test_bad_scopes_are_refused_naming_the_value(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_scope(text)
    assert str(raised.value).startswith(message)


def test_an_empty_scope_cannot_be_formatted() -> None:
    with pytest.raises(ValueError, match="empty scope"):
        format_scope(frozenset())


@given(names=st.frozensets(service_names, min_size=1, max_size=5))
@example(names=frozenset({"a", "a-b.c_d"}))
def test_scope_round_trips(names: frozenset[str]) -> None:
    assert parse_scope(format_scope(names)) == names
    assert format_scope(parse_scope(",".join(names))) == format_scope(names)


@given(name=service_names)
def test_service_names_are_accepted(name: str) -> None:
    assert check_service_name(name) == name


@pytest.mark.parametrize("name", ["all", "", "Ipfs", "ipfs-", ".x", "a/b", "x" * 254])
def test_bad_service_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=repr(name)):
        check_service_name(name)
