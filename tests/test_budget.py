"""Byte budgets written as text."""

import pytest

from pocketrec.search.budget import format_bytes, parse_budget


@pytest.mark.parametrize("text,dense,expected", [
    ("3%", 1_000_000, 30_000),
    ("2.5%", 1000, 25),
    ("30x", 20_852_736, 695_091),
    ("200KB", None, 200_000),
    ("200kb", None, 200_000),
    ("1.5MB", None, 1_500_000),
    ("1.5 MB", None, 1_500_000),
    ("750KiB", None, 768_000),
    ("2MiB", None, 2 * 2**20),
    ("1GB", None, 10**9),
    ("48000", None, 48_000),
    ("48000B", None, 48_000),
    (" 512 ", None, 512),
    (4096, None, 4096),
    (4096.9, None, 4096),
])
def test_parse_budget(text, dense, expected):
    assert parse_budget(text, dense) == expected


@pytest.mark.parametrize("text,dense,message", [
    ("3%", None, "relative to the dense item table"),
    ("10x", None, "relative to the dense item table"),
    ("150%", 1000, "more than 100%"),
    ("0", None, "must be positive"),
    ("-5KB", None, "cannot read budget"),
    ("12 parsecs", None, "unknown unit"),
    ("12TB", None, "unknown unit 'tb'"),
    ("", None, "cannot read budget"),
    ("0.1%", 100, "less than one byte"),
    (True, None, "budget must be a size"),
])
def test_parse_budget_errors(text, dense, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(text, dense)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1_500_000) == "1,500,000 B (1.50 MB)"
