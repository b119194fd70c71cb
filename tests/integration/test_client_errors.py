"""What an operator sees when Kafka cannot be reached or refuses the detector: JSON lines only (the
client library's own lines included, and rate-limited), and a refusal stops `streamer run` at once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pytest

from streamer.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def json_lines(stderr: bytes) -> list[dict[str, object]]:
    """Every line of ``stderr`` as JSON: the test fails on the first line that is not."""
    out = []
    for line in stderr.decode().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line[:300]}")
    return out


def test_a_refused_login_stops_run_with_one_json_line_naming_it(
    kit, dense_checkpoint: Path, tmp_path: Path
) -> None:
    names = kit.topics("refused")
    config = tmp_path / "streamer.toml"
    # the embedded broker speaks no SASL: the handshake fails, as it does with a wrong mechanism
    config.write_text(
        '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
        'sasl_username = "detector"\nsasl_password = "hunter2-not-logged"\n'
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [*kit.run_args(names, dense_checkpoint), "--config", str(config)],
        env=kit.env(),
        capture_output=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr.decode()[-2000:]
    lines = json_lines(proc.stderr)
    last = lines[-1]
    assert last["event"] == "run_failed" and last["level"] == "error"
    assert "Kafka refused the detector" in str(last["error"])
    assert "hunter2" not in proc.stderr.decode()
    # without --idle-exit it used to retry for ever; the refusal is final at once (well under the
    # session timeout's group join, which a working login would need)
    assert took < 60, took


def test_an_unreachable_broker_is_logged_as_json_at_a_bounded_rate(
    kit, dense_checkpoint: Path
) -> None:
    names = kit.topics("unreachable")
    args = kit.run_args(names, dense_checkpoint)
    args[args.index("--bootstrap") + 1] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(args, env=kit.env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    time.sleep(8)  # librdkafka tries to connect about 20 times a second meanwhile
    assert kit.stop(proc) == 0
    assert proc.stderr is not None
    lines = json_lines(proc.stderr.read())
    events = [line["event"] for line in lines]
    assert "broker_unreachable" in events
    # one line per kind of client message in 8 s (the rate limit is 30 s), not hundreds
    assert len(lines) < 15, events
    assert events[-1] == "stopped"
