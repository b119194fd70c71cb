"""Argument types shared by the subcommands: a bad value is a usage error naming the flag."""

from __future__ import annotations

import argparse

ALERT_CAP_HELP = (
    "an alerting score enters the threshold's estimate as at most threshold + (cap - 1) x "
    "|threshold|, and as the threshold itself in a burst (default 1.05; 1 = never above the "
    "threshold, so a rolling estimate can only fall)"
)


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    return _int(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """An integer of at least 0."""
    return _int(text, 0, "0 or more")


def non_negative_float(text: str) -> float:
    """A finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value
