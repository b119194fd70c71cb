"""Argument types shared by the subcommands: a bad value is a usage error naming the flag."""

from __future__ import annotations

import argparse
import math
from typing import Literal

ALERT_CAP_HELP = (
    "an alerting score enters the threshold's estimate as at most threshold + (cap - 1) x "
    "|threshold|, and as the threshold itself in a burst; auto (the default) = 1.5 where the rise "
    "gate is on (windowed models), else 1.05; 1 = never above the threshold, so a rolling estimate "
    "can only fall"
)


def alert_cap_arg(text: str) -> float | Literal["auto"]:
    """``threshold.alert_cap`` on a command line: ``auto`` or a number (its range is the setting's to
    check, so that the error names the flag with the others)."""
    return auto_or_number(text, -math.inf, math.inf)


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


# Seeds feed torch, NumPy and Python's random; NumPy's legacy seeding stops at 2**32 - 1, and a
# seed beyond 64 bits reached torch as "Overflow when unpacking long long".
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """A random seed: an integer from 0 to 2**32 - 1."""
    value = _int(text, 0, "0 or more")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEED}, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def auto_or_number(text: str, low: float, high: float) -> float | Literal["auto"]:
    """``auto`` or a number from ``low`` to ``high`` (a setting that ``auto`` resolves per model)."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"must be between {low:.15g} and {high:.15g}, got {value:.15g}"
        )
    return value


def cooldown_arg(text: str) -> float | Literal["auto"]:
    """A command-line value of ``events.alert_cooldown_s``: ``auto`` or seconds from 0 to 30 days."""
    return auto_or_number(text, 0.0, 30 * 86_400.0)
