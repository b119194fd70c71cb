"""`streamer demo --json`, the README's first command, end to end on its own embedded broker."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_json_summary_is_complete_and_good() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamer.cli", "demo", "--events", "16000", "--json"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    summary = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert {
        "events",
        "alerts",
        "dead_lettered",
        "precision",
        "recall",
        "f1",
        "events_per_s",
    } <= set(summary)
    assert summary["events"] == 16_000
    assert summary["dead_lettered"] == summary["malformed_sent"] > 0
    assert summary["precision"] > 0.8 and summary["recall"] > 0.8
    assert summary["events_per_s"] > 0
