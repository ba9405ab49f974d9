"""Reading the Markdown tables the bench scripts print (their smoke tests share this)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["NUMBER", "RATIO", "positive", "positive_numbers", "ratio"]

NUMBER = r"\d+(?:\.\d+)?"
#: A ratio with the range of the rounds' ratios: "1.23x (rounds 1.01-1.50x)".
RATIO = r"(\d+\.\d\d)x \(rounds (\d+\.\d\d)-(\d+\.\d\d)x\)"


def positive(cell: str, pattern: str) -> float:
    """The number ``cell`` holds, in the form ``pattern`` (one group); it must be > 0."""
    match = re.fullmatch(pattern, cell)
    assert match, (cell, pattern)
    value = float(match.group(1))
    assert value > 0, cell
    return value


def ratio(cell: str) -> float:
    """The ratio of a :data:`RATIO` cell; the rounds' range must be ordered and > 0."""
    match = re.fullmatch(RATIO, cell)
    assert match, cell
    value, low, high = (float(group) for group in match.groups())
    assert 0 < low <= high and value > 0, cell
    return value


def positive_numbers(value: Any) -> bool:
    """Every number in ``value`` (nested lists and dicts) is > 0."""
    if isinstance(value, dict):
        return all(positive_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(positive_numbers(v) for v in value)
    if isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value > 0
    return True
