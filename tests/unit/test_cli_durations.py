"""`--deadline` as typed: every accepted and refused form, as a table."""

from __future__ import annotations

import datetime as dt

import pytest

from newfuse.cli.durations import parse_deadline, parse_duration

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("1m5s", 65),
        (" 10M ", 600),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10 m", "-5m", "10x", "1h-30m", "1e3s", "soon"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW + dt.timedelta(minutes=10)),
        ("2h", NOW + dt.timedelta(hours=2)),
        ("2030-01-01T13:00:00Z", dt.datetime(2030, 1, 1, 13, tzinfo=dt.UTC)),
        ("2030-01-01T15:00:00+02:00", dt.datetime(2030, 1, 1, 13, tzinfo=dt.UTC)),
    ],
)
def test_deadlines_are_utc_instants(text: str, expected: dt.datetime) -> None:
    found = parse_deadline(text, NOW)
    assert found == expected
    assert found.utcoffset() == dt.timedelta(0)


def test_a_naive_time_or_a_date_is_in_the_local_zone() -> None:
    local = dt.datetime(2030, 6, 1, 9, 0).astimezone()
    assert parse_deadline("2030-06-01T09:00", NOW) == local.astimezone(dt.UTC)
    midnight = dt.datetime(2030, 1, 2).astimezone()
    assert parse_deadline("2030-01-02", NOW) == midnight.astimezone(dt.UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0s", "not after now"),
        ("2029-12-31T23:59:59Z", "already past"),
        ("2030-01-01T12:00:00Z", "already past"),
        ("tomorrow", "neither a duration"),
        ("10", "neither a duration"),
        ("99999999999d", "neither a duration"),
    ],
)
def test_refused_deadlines_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_deadline(text, NOW)
