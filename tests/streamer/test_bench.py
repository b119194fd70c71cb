"""``streamer bench``: a smoke run that must work and print complete JSON, and the pieces it is built of.

No timing is asserted: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import orjson
import pytest

from streamer.bench import BenchConfig, format_report, register
from streamer.decode import Decoder
from streamer.errors import StreamerError
from streamer.loadgen import STAMP_FIELD, stamp
from streamer.workload import KEY_FIELD, feature_names, make_scorer, make_workload

HEADLINE = (
    "decode_only_events_per_s",
    "pipeline_events_per_s",
    "end_to_end_events_per_s",
    "p50_ms",
    "p99_ms",
    "hst_events_per_s",
    "hst_forest_events_per_s",
    "rss_start_mb",
    "rss_end_mb",
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamer")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.broker
@pytest.mark.slow
def test_quick_bench_prints_complete_json(capsys: pytest.CaptureFixture[str]) -> None:
    # Two partitions in the soak's topic: the commit check then covers five partitions of two topics.
    args = parse(["bench", "--quick", "--seconds", "2", "--soak-partitions", "2", "--json"])
    assert args.func(args) == 0
    result = orjson.loads(capsys.readouterr().out)
    missing = [k for k in HEADLINE if result.get(k) is None]
    assert not missing, f"headline keys missing or null: {missing}"
    for key in HEADLINE:
        assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
        assert result[key] > 0, key
    broker = result["by_features"]["16"]["broker"]
    assert broker["errors"] == []
    assert broker["committed_equals_end_offsets"], "the detector did not commit every event"
    assert broker["soak_partitions"] == 2
    assert broker["latency_samples"] > 0
    # a second detector of the group reads the drained backlog's last records again (3 partitions)
    assert 0 < broker["warm_start_events"] <= 3 * 10_000 and broker["warm_start_events_per_s"] > 0
    assert broker["p50_ms"] <= broker["p99_ms"] <= broker["max_ms"]
    quarters = [p for p in broker["p99_ms_by_quarter"] if p is not None]
    assert len(broker["p99_ms_by_quarter"]) == 4 and quarters
    assert all(p <= broker["max_ms"] for p in quarters)
    assert (
        len(broker["broker_cpu_percent_by_quarter"]) == len(broker["detect_p99_ms_by_quarter"]) == 4
    )
    # a 2 s soak has fewer than two CPU samples a quarter: the ones around it are used, not none
    assert all(c is not None and c >= 0 for c in broker["broker_cpu_percent_by_quarter"])
    stages = broker["stages_us_per_event"]
    assert {"consume", "decode", "features", "score", "threshold", "alerts", "commit"} <= set(
        stages
    )
    in_process = result["by_features"]["16"]["in_process"]
    assert set(in_process["pipeline_events_per_s"]) == {"dense", "conv", "vae"}
    report = format_report(result)
    assert "F = 16 features" in report and "None" not in report


@pytest.mark.parametrize(("flag", "want"), [("auto", "auto"), ("30", 30.0)])
def test_the_alert_cooldown_takes_auto_as_the_setting_does(flag: str, want: object) -> None:
    from streamer.bench import BenchConfig, _cooldown_text, _events_overrides

    args = parse(["bench", "--alert-cooldown-s", flag])
    assert args.alert_cooldown_s == want
    assert _events_overrides(BenchConfig(alert_cooldown_s=args.alert_cooldown_s)) == {
        "alert_cooldown_s": want
    }
    assert _cooldown_text(args.alert_cooldown_s) == ("auto" if flag == "auto" else "30 s")
    assert _cooldown_text(None) == "default"
    with pytest.raises(SystemExit):
        parse(["bench", "--alert-cooldown-s", "-1"])


def test_cuda_without_a_gpu_fails_with_a_clear_message() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from streamer.bench import run_bench

    with pytest.raises(StreamerError, match=r"--device cuda: .* sees no CUDA device"):
        run_bench(BenchConfig.quick(device="cuda"))


def test_flags_map_onto_the_config() -> None:
    from streamer.bench import config_from

    config = config_from(
        parse(["bench", "--features", "16,38", "--seconds", "5", "--model", "vae", "--no-broker"])
    )
    assert config.features == (16, 38) and config.seconds == 5.0 and config.model == "vae"
    assert not config.broker
    quick = config_from(parse(["bench", "--quick", "--events", "5000"]))
    assert quick.events == 5_000 and quick.rounds == 1 and quick.features == (16,)
    with pytest.raises(SystemExit):
        parse(["bench", "--features", "x"])
    assert config_from(parse(["bench"])).soak_partitions == 1
    assert config_from(parse(["bench", "--soak-partitions", "3"])).soak_partitions == 3
    with pytest.raises(SystemExit):
        parse(["bench", "--soak-partitions", "0"])
    with pytest.raises(ValueError, match="soak_partitions"):
        BenchConfig(soak_partitions=65)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="model"):
        BenchConfig(model="lstm")
    with pytest.raises(ValueError, match="feature counts"):
        BenchConfig(features=())


def test_workload_is_deterministic_and_decodes_to_its_features() -> None:
    a, b = make_workload(2_000, 16, seed=3), make_workload(2_000, 16, seed=3)
    assert a.values == b.values and a.keys == b.keys
    assert a.features == feature_names(16) == tuple(f"f{i:02d}" for i in range(16))
    decoded = Decoder(a.features, 4096).decode(a.values)
    assert decoded.rejected == [] and decoded.x.shape == (2_000, 16)
    first = orjson.loads(a.values[0])
    assert first[KEY_FIELD].encode() == a.keys[0] and first["seq"] == 0
    assert make_workload(2_000, 16, seed=4).values != a.values


def test_workload_carries_outliers_at_about_the_anomaly_rate() -> None:
    w = make_workload(20_000, 8, seed=1, anomaly_rate=0.01)
    x = Decoder(w.features, 4096).decode(w.values).x
    centre = np.median(w.normal, axis=0)
    spread = np.percentile(w.normal, 99.9, axis=0) - np.percentile(w.normal, 0.1, axis=0)
    far = (np.abs(x - centre) > spread).any(axis=1).mean()
    assert 0.005 < far < 0.02


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
def test_bench_models_score_their_held_back_normal_rows(kind: str) -> None:
    w = make_workload(1_000, 6, n_normal=6_000)
    scorer = make_scorer(kind, w, window=4)
    assert scorer.kind == kind and scorer.features == w.features
    assert len(scorer.train_scores) > 1_000 and np.isfinite(scorer.train_scores).all()


def test_stamp_puts_the_send_time_first() -> None:
    value = orjson.dumps({"a": 1})
    assert orjson.loads(stamp(value, 123)) == {STAMP_FIELD: 123, "a": 1}


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_events": 0},
        {"batch_events": -5},
        {"max_wait_ms": -1},
        {"fetch_wait_ms": -1},
        {"threshold_window": 5},
    ],
)
def test_bench_settings_are_checked_before_anything_runs(bad: dict) -> None:
    """A negative batch size crashed after the in-process figures (AssertionError: cycle() never ends),
    0 was measured as 5,000, and --fetch-wait-ms -1 failed as a librdkafka traceback."""
    from streamer.bench import BenchConfig

    with pytest.raises(ValueError):
        BenchConfig(**bad)
