"""Reading durations and dates, and laying out tables, for people at a terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alice_spool.errors import InvalidParameters
from alice_spool.terminal import parse_duration, parse_when, short_duration, table

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h30m", 5400), ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "soon", "5", "h", "1h x", "-1h", "1y"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(InvalidParameters, match="window") as info:
        parse_duration(text, "window")
    assert info.value.field == "window"


def test_points_in_time() -> None:
    assert parse_when("2h", now=NOW) == NOW - timedelta(hours=2)
    assert parse_when("2026-11-01T08:00:00Z", now=NOW) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    assert parse_when("2026-11-01T08:00:00+02:00") == datetime(2026, 11, 1, 6, tzinfo=UTC)
    local = parse_when("2026-11-01")  # no offset: local time
    assert local == datetime(2026, 11, 1).astimezone().astimezone(UTC)
    with pytest.raises(InvalidParameters, match="neither a duration"):
        parse_when("yesterday", "since")


def test_short_durations() -> None:
    assert [short_duration(s) for s in (None, 0.25, 42, 150, 7200, 200000)] == [
        "-",
        "0.2s",
        "42s",
        "2m",
        "2h",
        "2d",
    ]


def test_table_cuts_only_the_last_column_to_fit() -> None:
    text = table(["ID", "PROMPT"], [["abc", "x" * 200]], width=40)
    header, row = text.splitlines()
    assert header.split() == ["ID", "PROMPT"]
    assert len(row) == 40 and row.endswith("~") and row.startswith("abc  ")
