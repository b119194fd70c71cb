"""``streamer evaluate``: the protocol (train part only, production replay, no labels), inputs, outputs, CLI."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamer import evaluate
from streamer.baselines import PCAScorer, lag_windows
from streamer.cli import main
from streamer.config import GATED_ALERT_CAP, BatchSettings, EventSettings, ThresholdSettings
from streamer.dedup import DEFAULT_ESCALATION, AlertCooldown
from streamer.errors import DataError
from streamer.evaluate import (
    Decisions,
    DetectorSpec,
    Series,
    evaluate_series,
    fit_detector,
    load_series,
    replay,
    resolve_kinds,
    score_decisions,
    write_decisions,
)
from streamer.gate import DEFAULT_GATE_Z, AlertGate
from streamer.nab import probation_rows
from streamer.novelty import NoveltyMemory
from streamer.suites import SuiteResult, format_suite, run_suite, suite_files
from streamer.threshold import QuantileThreshold

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FAST = DetectorSpec(window=16, epochs=8, patience=3, seed=0)
NO_DEDUP = EventSettings(alert_cooldown_s=0, alert_gate_z=0)  # every exceedance published


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Training on a shared 2-core box is many times faster with one thread (see evaluate --threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sine_series(seed: int = 0, n_train: int = 3000, n_test: int = 3000) -> Series:
    """A noisy daily-like cycle; the test part carries six labelled anomalies of four kinds.

    Spikes, level shifts, a stuck sensor and a noise burst: each leaves the cycle's shape, so a model
    of the cycle that sees a window of it finds them, while a single value mostly stays in range.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n_train + n_test)
    x = np.sin(2 * np.pi * t / 50) + 0.05 * rng.normal(size=len(t))
    test = x[n_train:].copy()
    labels = np.zeros(n_test, dtype=np.int8)
    plan = [  # (where, as a fraction of the test part; length; kind)
        (0.13, 1, "spike"),
        (0.30, 25, "shift"),
        (0.47, 30, "stuck"),
        (0.63, 1, "spike"),
        (0.77, 25, "noise"),
        (0.90, 25, "shift"),
    ]
    for where, length, kind in plan:
        start = int(where * n_test)
        span = slice(start, start + length)
        if kind == "spike":
            test[span] += 1.5
        elif kind == "shift":
            test[span] += 0.8
        elif kind == "stuck":
            test[span] = test[start]
        else:
            test[span] += 0.5 * rng.normal(size=length)
        labels[span] = 1
    return Series(
        name="sine",
        features=("value",),
        train=x[:n_train, None].astype(np.float32),
        test=test[:, None].astype(np.float32),
        labels=labels,
    )


# ----------------------------------------------------------------------------------- the protocol


def test_conv_finds_the_generated_anomalies_with_the_expected_quality() -> None:
    series = sine_series()
    results = {
        r.kind: r
        for r in evaluate_series(
            series, ["conv", "pca"], FAST, ThresholdSettings(), events=NO_DEDUP, keep_decisions=True
        )
    }
    conv = results["conv"].metrics
    assert conv["range_recall"] >= 5 / 6  # at least five of the six anomalies alerted
    assert conv["precision"] >= 0.5
    assert conv["f1"] >= 0.4  # point-wise: a stuck value that crosses the cycle looks normal there
    # Novelty weighs each window: for W - 1 rows after an anomaly the window still holds it, so
    # exceedances linger there (the cooldown folds them into the incident's alert). Away from them:
    decisions = results["conv"].decisions
    assert decisions is not None
    near = np.zeros(len(series.labels), dtype=bool)
    for row in np.flatnonzero(series.labels):
        near[row : row + FAST.window] = True
    away = decisions.alerts & ~near
    assert away.sum() / (~near).sum() * 1_000 <= 15
    assert conv["false_alarms_per_1k"] <= 40
    assert conv["auprc"] >= 0.3  # the labelled rate is 3.6%: chance AUPRC is 0.036
    assert conv["mean_delay"] <= 3
    assert results["conv"].window == 16
    # the lag-window PCA baseline ran under the same protocol and found anomalies too
    assert results["pca"].window == 16
    assert results["pca"].metrics["range_recall"] >= 0.5


def test_conv_with_its_companion_finds_them_too_and_is_the_univariate_default(
    tmp_path: Path,
) -> None:
    series = sine_series()
    assert evaluate.default_kind(series) == "conv+hst"
    (result,) = evaluate_series(series, ["conv+hst"], FAST, ThresholdSettings(), events=NO_DEDUP)
    m = result.metrics
    assert result.kind == "conv+hst" and result.window == 16
    assert m["range_recall"] >= 5 / 6 and m["precision"] >= 0.5 and m["f1"] >= 0.4
    assert m["auprc"] >= 0.3 and m["mean_delay"] <= 3
    # what the replay scored with: the pair, as `streamer train --model conv+hst` writes it
    from models.pair import PairScorer

    assert isinstance(fit_detector("conv+hst", series, FAST, tmp_path), PairScorer)


def test_the_rise_gate_trades_short_anomalies_for_far_fewer_false_alarms(tmp_path: Path) -> None:
    """What the gate (on for conv by default) does to the generated series: the two level shifts, which
    last, are still found with a fraction of the false alarms; the two one-row spikes and the noise
    burst (a few scattered exceedances) no longer are."""
    series = sine_series()
    scorer = fit_detector("conv", series, FAST, tmp_path)

    def run(events: EventSettings) -> tuple[dict[str, float], Decisions]:
        # the cap fixed: its auto follows the gate, and only the gate is compared here
        threshold = ThresholdSettings(alert_cap=GATED_ALERT_CAP)
        decisions = replay(scorer, series.test, threshold=threshold, events=events)
        return score_decisions(series, decisions), decisions

    # novelty off: its lingering exceedances after each anomaly are a rise the gate passes
    every, _ = run(EventSettings(alert_cooldown_s=0, alert_gate_z=0, novelty=False))
    gated, decisions = run(
        EventSettings(alert_cooldown_s=0, novelty=False)
    )  # the gate as set by auto
    assert gated["f1"] == every["f1"]  # point-wise decisions are the threshold's alone
    assert gated["false_alarms_per_1k"] < every["false_alarms_per_1k"] / 3
    assert gated["range_recall"] < every["range_recall"]
    edges = np.flatnonzero(np.diff(np.r_[0, series.labels, 0]))
    windows = list(zip(edges[::2], edges[1::2], strict=True))
    assert len(windows) == 6
    for start, end in (windows[1], windows[5]):  # the level shifts
        assert decisions.alerts[start:end].any()


def test_replay_is_the_production_path_exactly(tmp_path: Path) -> None:
    """Scores equal the scorer's on lag windows; thresholds and alerts equal a fresh threshold's."""
    series = sine_series(n_train=1500, n_test=700)
    scorer = fit_detector("pca", series, FAST, tmp_path)
    settings = ThresholdSettings(q=0.99)
    d = replay(scorer, series.test, threshold=settings, batch=BatchSettings(max_events=64))
    errors, _ = scorer.score(lag_windows(series.test, scorer.window))
    # a windowed model of one feature: each error's root weighed by its window's novelty, in one go
    events = EventSettings()
    novelty = NoveltyMemory(
        scorer.window, 1, history=events.novelty_history, seasonal=events.novelty_seasonal
    )
    expected = novelty.weigh(errors, series.test, ["series"] * len(errors))
    np.testing.assert_allclose(d.scores, expected, rtol=1e-9)
    seeds = np.sqrt(scorer.train_scores)  # the held-back scores on the same scale
    # a windowed model: the rise gate is on, and with it the gated cap
    t = QuantileThreshold(
        settings.q, window=settings.window, initial_scores=seeds, alert_cap=GATED_ALERT_CAP
    )
    thresholds, exceeds = t.decide(expected)
    # alerting scores under 1.5 thresholds enter the estimate as they are, with the scores' own
    # rounding (rtol 1e-9 above; 1e-16 seen)
    np.testing.assert_allclose(d.thresholds, thresholds, rtol=1e-12)
    np.testing.assert_array_equal(d.exceeds, exceeds)  # the pipeline's per-event decisions
    # then through the rise gate and de-duplicated per key, one row being one second
    gate = AlertGate.from_scores(DEFAULT_GATE_Z, seeds)
    rise = gate.zscores(expected, ["series"] * len(expected))
    rows = np.flatnonzero(exceeds & (rise >= DEFAULT_GATE_Z))
    assert 0 < len(rows) < exceeds.sum()
    published = np.zeros_like(exceeds)
    cooldown = EventSettings().cooldown_s(scorer.window, 1)  # auto: with novelty, 120
    published[rows] = AlertCooldown(cooldown, DEFAULT_ESCALATION).apply(
        ["series"] * len(rows), (rows * 1000.0).tolist(), d.scores[rows].tolist()
    )
    np.testing.assert_array_equal(d.alerts, published)
    assert 0 < d.alerts.sum() < len(rows)
    assert d.dead_lettered == 0


def test_micro_batch_size_does_not_change_any_decision(tmp_path: Path) -> None:
    series = sine_series(n_train=1500, n_test=700)
    scorer = fit_detector("conv", series, FAST, tmp_path)
    big = replay(scorer, series.test, threshold=ThresholdSettings(), batch=BatchSettings())
    small = replay(
        scorer, series.test, threshold=ThresholdSettings(), batch=BatchSettings(max_events=7)
    )
    # float32 rounding differs with the batch's shape (the kernels block the work differently, and
    # by CPU): the smallest scores, differences of near-equal values, keep fewer exact digits (on one
    # machine 3.6e-5 relative at a score of 0.0076, 2.7e-7 absolute)
    np.testing.assert_allclose(small.scores, big.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(small.alerts, big.alerts)


def test_a_lead_in_is_the_same_stream_with_its_first_rows_left_undecided(tmp_path: Path) -> None:
    """The training part's tail, replayed first: the test rows are decided exactly as in one stream
    of both, and the state it leaves (windows, novelty, threshold, gate) changes those decisions."""
    series = sine_series(n_train=1500, n_test=700)
    scorer = fit_detector("pca", series, FAST, tmp_path)
    tail = series.train[-400:]
    batch = BatchSettings(max_events=100)
    kw: dict = {"threshold": ThresholdSettings(), "batch": batch, "events": NO_DEDUP}
    led = replay(scorer, series.test, lead_in_rows=tail, **kw)
    whole = replay(scorer, np.concatenate([tail, series.test]), **kw)
    cold = replay(scorer, series.test, **kw)
    assert len(led.scores) == len(led.alerts) == len(series.test)
    np.testing.assert_array_equal(led.scores, whole.scores[400:])
    np.testing.assert_array_equal(led.thresholds, whole.thresholds[400:])
    np.testing.assert_array_equal(led.alerts, whole.alerts[400:])
    np.testing.assert_array_equal(led.exceeds, whole.exceeds[400:])
    # cold, the first W - 1 rows' windows are padded; led in, they hold the training part's tail
    w = scorer.window
    assert not np.allclose(led.scores[: w - 1], cold.scores[: w - 1])
    assert not np.array_equal(led.thresholds[w:], cold.thresholds[w:])
    with pytest.raises(ValueError, match="entities"):
        replay(scorer, series.test, lead_in_rows=tail, entities=np.array(["a"] * 700), **kw)


def test_a_lead_in_of_part_of_a_batch_with_unreadable_rows_and_keys(tmp_path: Path) -> None:
    """A lead-in that is not a whole number of batches, with rows that are dead-lettered (only the
    test part's are counted) and one key per row, decides as one stream of both."""
    series = sine_series(n_train=1500, n_test=700)
    scorer = fit_detector("pca", series, FAST, tmp_path)
    tail, test = series.train[-437:].copy(), series.test.copy()
    tail[[10, 200]] = np.nan  # written as null: dead letters
    test[300] = np.nan
    keys = np.array(["s"] * (437 + 700))
    kw: dict = {"threshold": ThresholdSettings(), "batch": BatchSettings(max_events=100)}
    led = replay(
        scorer, test, lead_in_rows=tail, lead_in_entities=keys[:437], entities=keys[437:], **kw
    )
    whole = replay(scorer, np.concatenate([tail, test]), entities=keys, **kw)
    assert len(led.scores) == 700
    assert (led.dead_lettered, whole.dead_lettered) == (1, 3)
    assert np.isnan(led.scores[300]) and np.isnan(led.scores).sum() == 1
    # the batches are cut elsewhere (the lead-in's own), which moves sums by a rounding, and with
    # it which of near-tied windows novelty's float32 products pick (seasonal novelty compares a
    # cycle with its own repeats: ties are many; one score moved by 1.2e-8)
    np.testing.assert_allclose(led.scores, whole.scores[437:], rtol=1e-7)
    np.testing.assert_allclose(led.thresholds, whole.thresholds[437:], rtol=1e-9)
    np.testing.assert_array_equal(led.alerts, whole.alerts[437:])
    np.testing.assert_array_equal(led.exceeds, whole.exceeds[437:])


def test_lead_in_auto_follows_whether_train_and_test_are_one_stream(tmp_path: Path) -> None:
    csv_path, labels = nab_files(tmp_path)
    nab = load_series(csv_path, labels=labels)  # the probation is the series' head
    rows = [[i, float(i % 7), int(i == 50)] for i in range(100)]
    path = write_csv(tmp_path / "d.csv", ["t", "a", "label"], rows)
    head = load_series(path, train_fraction=0.4, label_column="label", features=["a"])
    npz = tmp_path / "c.npz"
    np.savez(npz, train=np.zeros((30, 1)), test=np.ones((10, 1)), label=np.zeros(10))
    apart = load_series(npz)
    assert (nab.contiguous, head.contiguous, apart.contiguous) == (True, True, False)
    auto, on, off = (DetectorSpec(lead_in=v) for v in ("auto", "on", "off"))
    assert [auto.lead_in_rows(s) for s in (nab, head, apart)] == [60, 40, 0]
    assert [on.lead_in_rows(s) for s in (nab, head, apart)] == [60, 40, 30]
    assert [off.lead_in_rows(s) for s in (nab, head, apart)] == [0, 0, 0]
    with pytest.raises(ValueError, match="lead_in"):
        DetectorSpec(lead_in="always")


def test_no_test_label_reaches_any_decision() -> None:
    series = sine_series(n_train=1500, n_test=700)
    shuffled = Series(
        series.name,
        series.features,
        series.train,
        series.test,
        np.random.default_rng(1).permutation(series.labels),
    )
    a = evaluate_series(series, ["pca", "hst"], FAST, ThresholdSettings(), keep_decisions=True)
    b = evaluate_series(shuffled, ["pca", "hst"], FAST, ThresholdSettings(), keep_decisions=True)
    for ra, rb in zip(a, b, strict=True):
        assert ra.decisions is not None and rb.decisions is not None
        np.testing.assert_array_equal(ra.decisions.scores, rb.decisions.scores)
        np.testing.assert_array_equal(ra.decisions.alerts, rb.decisions.alerts)
    assert a[0].metrics["f1"] != b[0].metrics["f1"]  # the labels do change the verdict


def test_decisions_file_has_one_row_per_test_row(tmp_path: Path) -> None:
    series = sine_series(n_train=1500, n_test=700)
    scorer = PCAScorer(series.features, window=16).fit(series.train)
    d = replay(scorer, series.test, threshold=ThresholdSettings(q=0.99))
    out = tmp_path / "sub" / "decisions.csv"
    write_decisions(out, d)
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row", "score", "threshold", "alert", "exceeds"]
    body = rows[1:]
    assert len(body) == len(series.test)
    assert [int(r[0]) for r in body] == list(range(len(series.test)))
    assert {r[3] for r in body} <= {"0", "1"}
    assert sum(int(r[3]) for r in body) == int(d.alerts.sum())
    # the point-wise decision, from which F1 can be recomputed (alert is what was published)
    assert [int(r[4]) for r in body] == d.exceeds.astype(int).tolist()
    assert all(int(r[4]) == (float(r[1]) > float(r[2])) for r in body)
    np.testing.assert_allclose([float(r[1]) for r in body], d.scores)


def test_cooldown_deduplicates_alerts_per_key() -> None:
    c = AlertCooldown(3.0)
    keys = ["a", "b", "a", "b", "a", "a", "b"]
    times = [0, 1_000, 2_000, 3_000, 2_999, 3_000, 4_000]  # ms
    # a: 0 published, quiet until 3 s: 2 s and 2.999 s suppressed, 3 s published;
    # b: 1 s published, quiet until 4 s: 3 s suppressed, 4 s published
    assert c.apply(keys, times) == [True, True, False, False, False, True, True]
    assert AlertCooldown(0).apply(keys, times) == [True] * 7
    with pytest.raises(ValueError):
        AlertCooldown(-1)


def test_point_metrics_judge_events_and_range_metrics_judge_published_alerts() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], dtype=np.int8)
    series = Series(
        "hand", ("v",), np.zeros((5, 1), np.float32), np.zeros((10, 1), np.float32), labels
    )
    exceeds = np.array([0, 1, 1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    alerts = np.array([0, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)  # a cooldown of 3 events
    m = score_decisions(
        series, evaluate.Decisions(np.arange(10.0), np.full(10, 5.0), alerts, exceeds)
    )
    # events: TP rows 2-4, FP rows 1, 7, 8, FN row 5
    assert (m["precision"], m["recall"]) == pytest.approx((3 / 6, 3 / 4))
    assert m["n_exceeding"] == 6 and m["n_alerts"] == 2
    # published: the window (2, 5) got no alert of its own; rows 1 and 7 are false alarms
    assert m["range_recall"] == 0.0
    assert m["false_alarms_per_1k"] == pytest.approx(200.0)
    assert m["f1_oracle"] == pytest.approx(
        2 * 4 / (2 * 4 + 4)
    )  # best cut: score >= 2 flags rows 2-9


# ------------------------------------------------------------------------------------------ inputs


def write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_with_label_column_and_train_fraction(tmp_path: Path) -> None:
    rows = [[i, float(i % 7), float(i % 3), int(i in (50, 51))] for i in range(100)]
    path = write_csv(tmp_path / "d.csv", ["t", "a", "b", "label"], rows)
    s = load_series(path, train_fraction=0.4, label_column="label", features=["a", "b"])
    assert s.features == ("a", "b")
    assert (len(s.train), len(s.test)) == (40, 60)
    assert s.labels.sum() == 2 and s.labels[10] == 1  # row 50 is test row 10
    with pytest.raises(DataError, match="--train"):
        load_series(path, label_column="label")
    with pytest.raises(DataError, match="one of"):
        load_series(path, train_fraction=0.5)


def test_the_label_or_time_column_cannot_be_a_feature(tmp_path: Path) -> None:
    """`--features value,label` was accepted: the test labels became a model input (pca F1 1.000)."""
    rows = [[1_700_000_000 + 60 * i, float(i % 7), int(i in (50, 51))] for i in range(100)]
    path = write_csv(tmp_path / "d.csv", ["ts", "value", "label"], rows)
    with pytest.raises(DataError, match="'label' is the label column"):
        load_series(path, train_fraction=0.4, label_column="label", features=["value", "label"])
    with pytest.raises(DataError, match="'ts' is the time column"):
        load_series(
            path, train_fraction=0.4, label_column="label", features=["ts"], time_column="ts"
        )
    # A numeric time column was a default feature, outside the training range for every test row.
    assert load_series(path, train_fraction=0.4, label_column="label").features == ("ts", "value")
    named = load_series(path, train_fraction=0.4, label_column="label", time_column="ts")
    assert named.features == ("value",)
    # The time column is only kept out: a format the detector does not read is no error there.
    rows = [[f"01/01/2024 10:{i % 60:02d}", float(i % 7), int(i == 50)] for i in range(100)]
    odd = write_csv(tmp_path / "odd.csv", ["time", "value", "label"], rows)
    assert load_series(
        odd, train_fraction=0.4, label_column="label", time_column="time"
    ).features == ("value",)


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        (["--labels", "W.json", "--features", "x"], "--features"),
        (["--labels", "W.json", "--entity-column", "e"], "--entity-column"),
        (["--labels", "W.json", "--label-column", "l"], "--label-column"),
        (["--entity-column", "e"], "--entity-column"),  # an .npz file
        (["--labels", "W.json", "--max-series", "2"], "--max-series"),
        (["--labels", "W.json", "--data-dir", "d"], "--data-dir"),
    ],
)
def test_flags_an_input_cannot_use_are_errors(
    tmp_path: Path, argv: list[str], refused: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was accepted and silently ignored."""
    nab = tmp_path / "s.csv"
    nab.write_text(
        "timestamp,value\n" + "".join(f"2024-01-01 00:{i:02d}:00,{i}\n" for i in range(60))
    )
    (tmp_path / "W.json").write_text('{"s.csv": []}')
    npz = tmp_path / "s.npz"
    np.savez(npz, train=np.ones((20, 2)), test=np.ones((20, 2)), label=np.zeros(20))
    test = npz if "--labels" not in argv else nab
    argv = [a.replace("W.json", str(tmp_path / "W.json")) for a in argv]
    assert main(["evaluate", "--test", str(test), "--model", "pca", *argv]) == 2
    assert refused in capsys.readouterr().err


def test_csv_with_separate_train_file_and_a_labels_file(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", ["a", "b"], [[1.0, 2.0]] * 20)
    test = write_csv(tmp_path / "test.csv", ["a", "b"], [[1.0, 2.0]] * 5)
    labels = tmp_path / "labels.txt"
    labels.write_text("label\n0\n0\n1\n0\n0\n")
    s = load_series(test, train=train, labels=labels)
    assert (len(s.train), len(s.test)) == (20, 5)
    assert s.labels.tolist() == [0, 0, 1, 0, 0]
    labels.write_text("0\n1\n")
    with pytest.raises(DataError, match="2 labels for 5 rows"):
        load_series(test, train=train, labels=labels)


def test_npz_carries_train_test_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez(
        path,
        train=np.zeros((30, 3)),
        test=np.ones((10, 3)),
        label=np.array([0] * 9 + [1], dtype=np.uint8),
    )
    s = load_series(path)
    assert s.name == "c" and s.features == ("f0", "f1", "f2")
    assert (len(s.train), len(s.test), int(s.labels.sum())) == (30, 10, 1)


def nab_files(tmp_path: Path, n: int = 400) -> tuple[Path, Path]:
    """A tiny NAB checkout: data/<category>/<name>.csv and labels/combined_windows.json."""
    folder = tmp_path / "nab" / "data" / "realTest"
    folder.mkdir(parents=True)
    start = np.datetime64("2024-01-01T00:00:00")
    times = [str(start + np.timedelta64(5 * i, "m")).replace("T", " ") for i in range(n)]
    values = (10 + np.sin(np.arange(n) / 5)).round(4).tolist()
    values[300] = 40.0
    csv_path = write_csv(
        folder / "s.csv", ["timestamp", "value"], [list(r) for r in zip(times, values, strict=True)]
    )
    labels = tmp_path / "nab" / "labels" / "combined_windows.json"
    labels.parent.mkdir(parents=True)
    labels.write_text(json.dumps({"realTest/s.csv": [[times[290], times[310]]]}))
    return csv_path, labels


def test_nab_series_trains_on_its_probationary_period(tmp_path: Path) -> None:
    csv_path, labels = nab_files(tmp_path)
    s = load_series(csv_path, labels=labels)
    p = probation_rows(400)
    assert s.offset == p == 60
    assert (len(s.train), len(s.test)) == (p, 400 - p)
    assert s.nab_windows == [(290, 310)]
    assert s.labels.sum() == 21 and s.labels[290 - p] == 1
    with pytest.raises(DataError, match="probationary"):
        load_series(csv_path, labels=labels, train_fraction=0.5)
    # NAB scoring covers the whole series; the training rows are the probation and never alert
    first = np.arange(len(s.test)) == 290 - p  # an alert on the window's first row
    decisions = evaluate.Decisions(
        scores=np.zeros(len(s.test)), thresholds=np.ones(len(s.test)), alerts=first, exceeds=first
    )
    m = score_decisions(s, decisions)
    assert m["nab_score"] == pytest.approx(100.0)
    assert m["range_recall"] == 1.0 and m["mean_delay"] == 0.0


# --------------------------------------------------------------------------------------- the CLI


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="streamer")
    sub = parser.add_subparsers(dest="command", required=True)
    evaluate.register(sub)
    args = parser.parse_args(["evaluate", *argv])
    return int(args.func(args))


def test_cli_single_series_writes_json_decisions_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = sine_series(n_train=800, n_test=400)
    rows = [[float(v), int(y)] for v, y in zip(series.test[:, 0], series.labels, strict=True)]
    train_rows = [[float(v), 0] for v in series.train[:, 0]]
    data = write_csv(tmp_path / "s.csv", ["value", "label"], train_rows + rows)
    out = tmp_path / "d.csv"
    png = tmp_path / "p.png"
    code = run_cli(
        "--model", "pca", "--test", str(data), "--train-fraction", "0.6667",
        "--label-column", "label", "--window", "16", "--json",
        "--decisions-out", str(out), "--plot", str(png), "--q", "0.99",
        "--cooldown", "20", "--escalation", "3", "--gate-z", "1.5", "--gate-spans", "5,200",
        "--novelty-seasonal", "off",
    )  # fmt: skip
    assert code == 0
    payload = orjson.loads(capsys.readouterr().out)
    assert (payload["settings"]["cooldown"], payload["settings"]["escalation"]) == (20.0, 3.0)
    assert payload["settings"]["gate"] == {"z": 1.5, "short": 5, "long": 200}
    assert payload["settings"]["novelty"] == {"on": "auto", "history": 2_000, "seasonal": False}
    assert [d["kind"] for d in payload["detectors"]] == ["pca", "hst"]
    assert payload["n_test"] == 400 and payload["settings"]["threshold"]["q"] == 0.99
    assert {"f1", "precision", "recall", "auprc", "roc_auc", "range_recall"} <= set(
        payload["detectors"][0]
    )
    assert sum(1 for _ in out.open()) == 1 + 400
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_bad_combinations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli("--model", "lstm", "--test", "x.csv")
    from streamer.errors import StreamerError

    with pytest.raises(StreamerError, match="--test"):
        run_cli("--model", "pca")
    with pytest.raises(StreamerError, match="invalid setting"):
        run_cli("--test", "x.csv", "--q", "1.5")
    for flag, bad in [("--cooldown", v) for v in ("-1", "nan", "often", "3000000")] + [
        ("--novelty-history", v) for v in ("7", "2000000", "x")
    ]:
        with pytest.raises(SystemExit):
            run_cli("--test", "x.csv", flag, bad)
        assert f"argument {flag}:" in capsys.readouterr().err  # the flag is named
    with pytest.raises(StreamerError, match=r"invalid setting.*alert_escalation"):
        run_cli("--test", "x.csv", "--escalation", "0.5")
    for bad in (["--gate-z", "high"], ["--gate-z", "-1"], ["--gate-spans", "10"]):
        with pytest.raises(SystemExit):
            run_cli("--test", "x.csv", *bad)
    with pytest.raises(StreamerError, match=r"invalid setting.*alert_gate_short"):
        run_cli("--test", "x.csv", "--gate-spans", "100,100")
    # flags of a single series were silently ignored with --suite (no file written, exit 0)
    with pytest.raises(StreamerError, match=r"--decisions-out, --plot: for --test only"):
        run_cli(
            "--suite",
            "asd",
            "--data-dir",
            str(tmp_path),
            "--decisions-out",
            "d.csv",
            "--plot",
            "p.png",
        )


def test_resolve_kinds_adds_baselines_once_and_expands_auto() -> None:
    s = sine_series(n_train=200, n_test=400)
    assert resolve_kinds(["auto"], s) == [evaluate.default_kind(s), "hst", "pca"]
    assert resolve_kinds(["pca", "dense"], s) == ["pca", "dense", "hst"]
    assert resolve_kinds(["all"], s, baselines=False) == list(evaluate.ALL_KINDS)


# ------------------------------------------------------------------------------------------ suites


def fake_asd(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "asd"
    folder.mkdir(parents=True)
    for i in (2, 10, 1):
        base = rng.normal(size=(600, 1))
        x = np.hstack([base, 2 * base, -base]) + 0.05 * rng.normal(size=(600, 3))
        label = np.zeros(200, dtype=np.uint8)
        test = x[400:].copy()
        test[100:110, 1] += 3.0
        label[100:110] = 1
        np.savez(folder / f"omi-{i}.npz", train=x[:400], test=test, label=label)
    return tmp_path / "data"


def test_suite_runs_every_series_and_averages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = fake_asd(tmp_path)
    assert [p.stem for p in suite_files("asd", data)] == ["omi-1", "omi-2", "omi-10"]
    result = run_suite(
        "asd", data, ["pca", "hst"], FAST, ThresholdSettings(q=0.99), events=NO_DEDUP
    )
    assert [s["series"] for s in result.series] == ["omi-1", "omi-2", "omi-10"]
    mean = result.mean()
    assert set(mean) == {"pca", "hst", "always-alert"} and mean["pca"]["n_series"] == 3
    assert mean["always-alert"]["f1"] == pytest.approx(2 * 0.05 / 1.05)  # 10 of 200 rows labelled
    f1s = [d["f1"] for s in result.series for d in s["detectors"] if d["kind"] == "pca"]
    assert mean["pca"]["f1"] == pytest.approx(np.mean(f1s))
    assert mean["pca"]["range_recall"] == 1.0
    text = format_suite(result)
    assert "omi-10" in text and "mean over 3 series" in text

    code = run_cli(
        "--suite", "asd", "--data-dir", str(data), "--model", "pca", "--max-series", "2", "--json"
    )
    assert code == 0
    payload = orjson.loads(capsys.readouterr().out)
    assert len(payload["series"]) == 2
    assert set(payload["mean"]) == {"pca", "hst", "always-alert"}
    assert payload["wall_s"] > 0


def test_point_wise_means_are_over_the_series_with_anomalies_as_always_alerts_is() -> None:
    """On a series without labelled anomalies F1 was 0 for a detector that raised any exceedance and
    left out for one that raised none, while always-alert averaged over the labelled series: the
    NAB suite's five clean series pulled every F1 down by about a tenth."""
    result = SuiteResult("nab", ["a", "b"])
    for name, anomalous, f1a, f1b, fa in (("s1", 10, 0.5, 0.5, 1.0), ("clean", 0, 0.0, None, 3.0)):
        result.series.append(
            {
                "series": name,
                "n_train": 10,
                "n_test": 200,
                "n_features": 1,
                "anomalous": anomalous,
                "detectors": [
                    {
                        "kind": "a",
                        "f1": f1a,
                        "precision": f1a,
                        "false_alarms_per_1k": fa,
                        "train_s": 0,
                        "replay_s": 0,
                    },
                    {
                        "kind": "b",
                        "f1": f1b,
                        "precision": f1b,
                        "false_alarms_per_1k": 0.0,
                        "train_s": 0,
                        "replay_s": 0,
                    },
                ],
            }
        )
    mean = result.mean()
    assert mean["a"]["f1"] == mean["b"]["f1"] == 0.5 and mean["a"]["precision"] == 0.5
    assert mean["a"]["false_alarms_per_1k"] == 2.0  # false alarms count on every series
    assert mean["always-alert"]["n_series"] == 1


def test_suite_needs_its_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="asd"):
        suite_files("asd", tmp_path)


@pytest.mark.data
@pytest.mark.skipif(
    not (SHARED_DATA / "asd").is_dir(), reason=f"shared ASD data absent at {SHARED_DATA}"
)
def test_real_asd_entity_with_pca_ranks_its_incidents_high() -> None:
    series = load_series(SHARED_DATA / "asd" / "omi-8.npz")
    assert (len(series.train), len(series.test), len(series.features)) == (8640, 4320, 19)
    (pca,) = evaluate_series(series, ["pca"], FAST, ThresholdSettings())
    assert pca.metrics["roc_auc"] > 0.85  # 0.90 when written; chance is 0.5
    assert pca.metrics["f1"] > 0.3  # 0.37 when written; always alerting scores 0.08


def test_cli_raw_errors_trains_without_error_normalisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = sine_series(n_train=600, n_test=200)
    rows = [
        [float(v), float(v) ** 2, int(y)]
        for v, y in zip(series.test[:, 0], series.labels, strict=True)
    ]
    train_rows = [[float(v), float(v) ** 2, 0] for v in series.train[:, 0]]
    data = write_csv(tmp_path / "s.csv", ["a", "b", "label"], train_rows + rows)
    argv = ["--model", "dense", "--no-baselines", "--test", str(data), "--train-fraction", "0.75",
            "--label-column", "label", "--epochs", "3", "--json"]  # fmt: skip
    for flag, expected in (([], True), (["--raw-errors"], False)):
        assert run_cli(*argv, *flag) == 0
        payload = orjson.loads(capsys.readouterr().out)
        assert payload["settings"]["detector"]["normalize_errors"] is expected


def test_npz_train_and_test_columns_must_match(tmp_path: Path) -> None:
    """Training columns were taken by position: a (60, 3) train with a (40, 2) test trained on the
    first two, and a (60, 1) train raised IndexError."""
    rng = np.random.default_rng(0)
    for width in (3, 1):
        path = tmp_path / f"w{width}.npz"
        np.savez(
            path,
            train=rng.normal(size=(60, width)),
            test=rng.normal(size=(40, 2)),
            label=np.zeros(40),
        )
        with pytest.raises(DataError, match="must be the same"):
            evaluate.load_series(path)


def test_row_labels_file_skips_only_a_text_header(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("2\n" + "0\n" * 4)
    with pytest.raises(DataError, match="'2' is not 0 or 1"):
        evaluate._read_row_labels(path, 4)
    path.write_text("label\n" + "0\n" * 4)
    assert evaluate._read_row_labels(path, 4).tolist() == [0, 0, 0, 0]
    path.write_text("1\n0\n0\n1\n", encoding="utf-8-sig")  # a BOM made '\ufeff1' a "header"
    assert evaluate._read_row_labels(path, 4).tolist() == [1, 0, 0, 1]


def test_json_out_into_a_new_folder_is_written_after_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json-out into a folder that did not exist raised FileNotFoundError after the whole run, and
    the table was never printed."""
    from streamer.cli import main

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    x[250:255] += 8.0
    data = tmp_path / "d.csv"
    data.write_text(
        "a,b,label\n" + "".join(f"{a},{b},{int(250 <= i < 255)}\n" for i, (a, b) in enumerate(x))
    )
    out = tmp_path / "new" / "folder" / "r.json"
    args = ["evaluate", "--test", str(data), "--label-column", "label", "--train-fraction", "0.5"]
    assert main([*args, "--model", "pca", "--no-baselines", "--json-out", str(out)]) == 0
    assert "pca" in capsys.readouterr().out and json.loads(out.read_text())["detectors"]
    # a bad --decisions-out (a folder) fails after the table too
    assert main([*args, "--model", "pca", "--no-baselines", "--decisions-out", str(tmp_path)]) == 2
    assert "pca" in capsys.readouterr().out
    missing = tmp_path / "nowhere.txt"
    assert (
        main(["evaluate", "--test", str(data), "--labels", str(missing), "--train-fraction", "0.5"])
        == 2
    )
    assert "nowhere.txt" in capsys.readouterr().err
