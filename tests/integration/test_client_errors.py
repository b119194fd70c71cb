"""What an operator sees when Kafka cannot be reached or refuses the detector: JSON lines only (the
client library's own lines included, and rate-limited), and a refusal stops `streamer run` at once."""

from __future__ import annotations

import signal
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


def read_until(proc: subprocess.Popen[bytes], event: str, within_s: float = 60.0) -> list[bytes]:
    """stderr lines of ``proc`` up to and including the first JSON line of ``event``."""
    assert proc.stderr is not None
    lines: list[bytes] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if f'"event":"{event}"'.encode() in line.replace(b" ", b""):
            return lines
    pytest.fail(f"no {event} line within {within_s} s: {b''.join(lines)[-2000:]!r}")


def test_an_unreachable_broker_is_logged_as_json_at_a_bounded_rate(
    kit, dense_checkpoint: Path
) -> None:
    names = kit.topics("unreachable")
    args = kit.run_args(names, dense_checkpoint)
    args[args.index("--bootstrap") + 1] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(args, env=kit.env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # Timed from the detector's first word on it, not from the process's start: the start-up (a
        # model on a GPU, say) took over 8 s on the GPU machine.
        head = read_until(proc, "broker_unreachable")
        time.sleep(8)  # librdkafka tries to connect about 20 times a second meanwhile
        assert kit.stop(proc) == 0
    finally:
        kit.stop(proc, signal.SIGKILL, timeout=5)
    assert proc.stderr is not None
    lines = json_lines(b"".join(head) + proc.stderr.read())
    events = [line["event"] for line in lines]
    # one line per kind of client message in 8 s (the rate limit is 30 s), not hundreds
    assert len(lines) < 15, events
    assert events[-1] == "stopped"


def test_a_stop_signal_while_run_is_starting_ends_it_cleanly(kit, dense_checkpoint: Path) -> None:
    """A SIGTERM before the detector exists (here while --create-topics waits for an unreachable
    broker, as a container stopped during its start would be) used to kill run without a line."""
    names = kit.topics("early")
    args = kit.run_args(names, dense_checkpoint, "--create-topics")
    args[args.index("--bootstrap") + 1] = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(args, env=kit.env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        head = read_until(
            proc, "kafka_client_log"
        )  # the topic creation's client, not the detector's
        started = time.monotonic()
        code = kit.stop(proc, timeout=20)
        took = time.monotonic() - started
    finally:
        kit.stop(proc, signal.SIGKILL, timeout=5)
    assert proc.stderr is not None
    lines = json_lines(b"".join(head) + proc.stderr.read())
    assert code == 0, lines[-3:]
    assert took < 10, took
    assert lines[-1]["event"] == "stopped" and lines[-1]["before_start"] is True, lines[-1]


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_a_stop_signal_while_run_parses_its_command_line_is_one_json_line_on_stderr(
    kit, dense_checkpoint: Path
) -> None:
    """Parsing imports torch (seconds): a SIGTERM then is kept until the run's logging is set up,
    and ends it with the run's own line (it was a console line on stdout, a reviewer found)."""
    names = kit.topics("parsing")
    args = kit.run_args(names, dense_checkpoint)
    proc = subprocess.Popen(args, env=kit.env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not catches_sigterm(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)  # the interpreter's start: run's handler is its first act
        code = kit.stop(proc, timeout=30)
    finally:
        kit.stop(proc, signal.SIGKILL, timeout=5)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read() == b""
    lines = json_lines(proc.stderr.read())
    assert code == 0, lines[-3:]
    assert [line["event"] for line in lines] == ["stopped"], lines
    assert lines[0]["before_start"] is True
