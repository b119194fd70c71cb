"""``streamer evaluate``: detection quality on labelled data, prequential, against baselines.

The protocol, the same for every detector (autoencoders and baselines alike):

1. Split the data into a training part and a test part (an ``.npz`` file's ``train``/``test`` arrays, a
   separate training file, the first ``--train-fraction`` of the rows, or a NAB series' probationary
   period). Labels play no part in training or in any setting.
2. Fit the detector on the training part only, with a bounded budget (rows, epochs).
3. Replay the test part in order through :class:`streamer.pipeline.Pipeline`, the core of
   ``streamer run``: every row becomes a JSON event and goes through the production decoder, entity
   windows, scorer and online quantile threshold in micro-batches of ``BatchSettings().max_events``.
   The threshold is the detector's own, seeded with its ``train_scores``, never tuned on the labels.
4. Compare with the test labels (:mod:`streamer.metrics`, :mod:`streamer.nab`): each event's decision
   (score > threshold) point-wise; the raw scores by AUPRC and ROC-AUC; the alerts an operator would
   receive (de-duplicated per key, ``--cooldown``) range-wise, by false alarms, delay and NAB score.

Whole datasets (``--suite``) live in :mod:`streamer.suites`; plots in :mod:`streamer.plotting`.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.args import (
    ALERT_CAP_HELP,
    alert_cap_arg,
    cooldown_arg,
    non_negative_int,
    positive_int,
    seed,
)
from streamer.baselines import BASELINE_KINDS, HalfSpaceTreesScorer, PCAScorer
from streamer.config import BatchSettings, EventSettings, ThresholdSettings, setting_errors
from streamer.data import number
from streamer.dedup import DEFAULT_COOLDOWN_S, DEFAULT_ESCALATION, NOVELTY_COOLDOWN_S
from streamer.errors import DataError, StreamerError
from streamer.gate import DEFAULT_GATE_Z, DEFAULT_LONG, DEFAULT_SHORT, gate_z_arg
from streamer.metrics import detection_report
from streamer.nab import nab_score, probation_rows
from streamer.pipeline import Message, Pipeline, ScorerLike

__all__ = [
    "AE_KINDS",
    "ALL_KINDS",
    "Decisions",
    "DetectorSpec",
    "EvalResult",
    "Series",
    "best_f1",
    "default_kind",
    "evaluate_series",
    "fit_detector",
    "format_table",
    "load_nab",
    "load_series",
    "register",
    "replay",
    "resolve_kinds",
    "score_decisions",
    "write_decisions",
]

AE_KINDS = ("dense", "conv", "vae")
PAIR_KINDS = ("conv+hst",)
ALL_KINDS = (*AE_KINDS, *PAIR_KINDS, *BASELINE_KINDS)

# The model kind `--model auto` picks, by the shape of the data (chosen on the suites, see the README).
DEFAULT_KIND = {"univariate": "conv+hst", "multivariate": "dense"}

LEAD_IN_CHOICES = ("auto", "on", "off")
# More rows than any state of the pipeline remembers at its defaults (threshold window and novelty's
# history 2,000 rows, the gate's long span 3,000).
LEAD_IN_MAX_ROWS = 10_000

_TOPIC = "evaluate"
_SERIES_KEY = b"series"


# ------------------------------------------------------------------------------------------ data


@dataclass
class Series:
    """One labelled series split into a training part and a test part (rows in time order)."""

    name: str
    features: tuple[str, ...]
    train: np.ndarray  # (N, F) float32
    test: np.ndarray  # (M, F) float32
    labels: np.ndarray  # (M,) int8, 1 anomalous
    train_entities: np.ndarray | None = None  # (N,) str, one series per entity
    test_entities: np.ndarray | None = None  # (M,) str
    # NAB: inclusive row windows over the whole series, whose first `offset` rows are the training part
    nab_windows: list[tuple[int, int]] | None = None
    offset: int = 0
    timestamps: np.ndarray | None = None  # (M,) of the test rows, for plots
    # The training part ends where the test part begins, in one stream (a NAB series' probationary
    # period, --train-fraction): the replay can then lead in with it (DetectorSpec.lead_in).
    contiguous: bool = False

    def __post_init__(self) -> None:
        f = len(self.features)
        if self.train.ndim != 2 or self.train.shape[1] != f or len(self.train) == 0:
            raise DataError(
                f"{self.name}: training part must be (N>0, {f}), got {self.train.shape}"
            )
        if self.test.ndim != 2 or self.test.shape[1] != f or len(self.test) == 0:
            raise DataError(f"{self.name}: test part must be (M>0, {f}), got {self.test.shape}")
        if self.labels.shape != (len(self.test),):
            raise DataError(
                f"{self.name}: {len(self.labels)} labels for {len(self.test)} test rows"
            )
        for part, ent, rows in (
            ("train", self.train_entities, self.train),
            ("test", self.test_entities, self.test),
        ):
            if ent is not None and len(ent) != len(rows):
                raise DataError(f"{self.name}: {len(ent)} {part} entities for {len(rows)} rows")

    @property
    def univariate(self) -> bool:
        return len(self.features) == 1


def _read_row_labels(path: Path, n: int) -> np.ndarray:
    """A 0/1 label per line (an optional header line is skipped)."""
    values: list[int] = []
    with path.open(encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is dropped
        for line_no, line in enumerate(fh, start=1):
            text = line.strip().split(",")[-1].strip()
            if not text:
                continue
            if text not in ("0", "1"):
                if line_no == 1 and number(text) is None:
                    continue  # a header line (a number other than 0 or 1 is a bad label)
                raise DataError(f"{path} line {line_no}: label {text!r} is not 0 or 1")
            values.append(int(text))
    if len(values) != n:
        raise DataError(f"{path}: {len(values)} labels for {n} rows")
    return np.asarray(values, dtype=np.int8)


def load_nab(csv_path: str | Path, windows_json: str | Path | dict[str, Any]) -> Series:
    """A NAB series: its probationary period (NAB's first 15%, at most 750 rows) is the training part."""
    from streamer.data import load_nab_series

    csv_path = Path(csv_path)
    nab = load_nab_series(csv_path, windows_json)
    n = len(nab.values)
    p = probation_rows(n)
    if p < 2 or n - p < 1:
        raise DataError(f"{csv_path}: {n} rows are too few for a probationary training period")
    x = nab.values.reshape(-1, 1).astype(np.float32)
    return Series(
        name=nab.name,
        features=("value",),
        train=x[:p],
        test=x[p:],
        labels=nab.labels[p:],
        nab_windows=nab.window_rows(),
        offset=p,
        timestamps=nab.timestamps[p:],
        contiguous=True,
    )


def _refuse_ignored(what: str, flags: dict[str, object]) -> None:
    """A flag the input cannot use is an error, never silently dropped."""
    if given := [flag for flag, value in flags.items() if value is not None]:
        verb = "does" if len(given) == 1 else "do"
        raise DataError(f"{what}: {', '.join(given)} {verb} not apply to it")


def load_series(
    test: str | Path,
    *,
    train: str | Path | None = None,
    train_fraction: float | None = None,
    label_column: str | None = None,
    labels: str | Path | None = None,
    features: Sequence[str] | None = None,
    entity_column: str | None = None,
    time_column: str | None = None,
) -> Series:
    """Build a :class:`Series` from the ``streamer evaluate`` inputs.

    - ``.npz`` test file: arrays ``train`` (unless ``train`` names another file), ``test``, ``label``;
    - NAB: a ``timestamp,value`` CSV with ``labels`` a windows JSON (``combined_windows.json``);
    - CSV/JSONL: labels from ``label_column`` or a ``labels`` file (one 0/1 per row), training rows from
      ``train`` or the first ``train_fraction`` of the test file.
    """
    from streamer.data import load_table

    test = Path(test)
    if train is not None and train_fraction is not None:
        raise DataError("give --train or --train-fraction, not both")
    if train_fraction is not None and not 0.0 < train_fraction < 1.0:
        raise DataError(f"--train-fraction must be in (0, 1), got {train_fraction}")
    if labels is not None and Path(labels).suffix.lower() == ".json":
        if train is not None or train_fraction is not None:
            raise DataError("NAB series train on their probationary period; drop --train*")
        _refuse_ignored(
            "a NAB series (timestamp, value)",
            {
                "--features": features,
                "--label-column": label_column,
                "--entity-column": entity_column,
                "--time-column": time_column,
            },
        )
        return load_nab(test, labels)

    if test.suffix.lower() == ".npz":
        if label_column or labels:
            raise DataError(f"{test}: .npz files carry their labels in the array 'label'")
        _refuse_ignored(
            f"{test}: an .npz file (no entities, no times)",
            {"--entity-column": entity_column, "--time-column": time_column},
        )
        if train_fraction is not None:
            raise DataError(f"{test}: .npz files carry their own 'train' array")
        t = load_table(test, split="test")
        if t.labels is None:
            raise DataError(f"{test}: array 'label' not found")
        tr = load_table(train or test, split="train")
        if tr.features != t.features:
            raise DataError(
                f"{train or test}: the training data has columns {tr.features}, the test data "
                f"{t.features}; they must be the same"
            )
        cols = list(range(len(t.features)))
        if features is not None:  # columns are named f0..f{F-1}; pick some of them
            unknown = [f for f in features if f not in t.features]
            if unknown:
                raise DataError(f"{test}: no column(s) {unknown}; columns are {t.features}")
            cols = [t.features.index(f) for f in features]
        names = tuple(t.features[c] for c in cols)
        return Series(test.stem, names, tr.X[:, cols], t.X[:, cols], t.labels)

    if (label_column is None) == (labels is None):
        raise DataError("give exactly one of --label-column and --labels")
    t = load_table(
        test,
        features=features,
        label_column=label_column,
        entity_column=entity_column,
        time_column=time_column,
        parse_times=False,  # only kept out of the features
    )
    y = t.labels if t.labels is not None else _read_row_labels(Path(str(labels)), len(t))
    feats = tuple(t.features)
    if train is not None:
        tr = load_table(
            train,
            features=feats,
            entity_column=entity_column,
            time_column=time_column,
            parse_times=False,
        )
        return Series(
            test.stem, feats, tr.X, t.X, y, train_entities=tr.entities, test_entities=t.entities
        )
    if train_fraction is None:
        raise DataError("give --train PATH or --train-fraction F")
    cut = round(len(t) * train_fraction)
    if cut < 2 or cut >= len(t):
        raise DataError(
            f"{test}: --train-fraction {train_fraction} leaves no training or test rows"
        )
    ent = t.entities
    return Series(
        test.stem,
        feats,
        t.X[:cut],
        t.X[cut:],
        y[cut:],
        train_entities=None if ent is None else ent[:cut],
        test_entities=None if ent is None else ent[cut:],
        contiguous=True,
    )


# ------------------------------------------------------------------------------------ detectors


@dataclass(frozen=True)
class DetectorSpec:
    """How every detector of an evaluation is built: bounded budgets, shared across series.

    ``window`` is the conv model's window, and the lag window the baselines see on univariate data
    (on multivariate data they see single events, as the literature's baselines do); it is shortened
    on series whose training part is too short to hold back enough windows for validation.
    """

    window: int = 32
    latent_dim: int | None = None
    normalize_errors: bool = True  # as TrainConfig.normalize_errors
    # Early stopping at 3-5 epochs without progress stops too soon on these datasets: at 60/10 the
    # dense model's mean F1 rises by a fifth to four fifths on SMAP, MSL and ASD (see the README).
    epochs: int = 60
    patience: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    max_train_rows: int = 20_000  # the most recent rows are kept
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    # Replay the training part's last rows (at most LEAD_IN_MAX_ROWS) through the pipeline before the
    # test part, their decisions not scored: "auto" where the two are one stream (Series.contiguous),
    # "on" always, "off" never. A detector that ran through the training period would hold that
    # state (windows, novelty's memory, the threshold's and the gate's history, a cooldown); NAB's
    # own protocol feeds the probationary period to every detector and leaves it out of the score.
    lead_in: str = "auto"

    def __post_init__(self) -> None:
        if self.lead_in not in LEAD_IN_CHOICES:
            raise ValueError(f"lead_in must be one of {LEAD_IN_CHOICES}, got {self.lead_in!r}")
        if self.window < 4:
            raise ValueError(f"window must be >= 4, got {self.window}")
        if self.max_train_rows < 10:
            raise ValueError(f"max_train_rows must be >= 10, got {self.max_train_rows}")

    def lead_in_rows(self, series: Series) -> int:
        """How many of the training part's last rows the replay leads in with."""
        on = self.lead_in == "on" or (self.lead_in == "auto" and series.contiguous)
        return min(len(series.train), LEAD_IN_MAX_ROWS) if on else 0

    def window_for(self, n_train: int) -> int:
        """The window used with ``n_train`` rows: at most half the held-back rows, at least 4."""
        return max(4, min(self.window, int(n_train * self.val_fraction) // 2))


def default_kind(series: Series) -> str:
    """The model kind ``--model auto`` uses for this data's shape."""
    return DEFAULT_KIND["univariate" if series.univariate else "multivariate"]


def fit_detector(kind: str, series: Series, spec: DetectorSpec, workdir: Path) -> ScorerLike:
    """Fit a detector of ``kind`` on the series' training part (the most recent ``max_train_rows``)."""
    x = series.train[-spec.max_train_rows :]
    ent = None if series.train_entities is None else series.train_entities[-spec.max_train_rows :]
    window = spec.window_for(
        len(x) if ent is None else int(np.unique(ent, return_counts=True)[1].min())
    )
    if kind in BASELINE_KINDS:
        w = window if series.univariate else 1
        if ent is not None and w > 1:
            raise DataError("windowed baselines need one series; drop --entity-column")
        if kind == "hst":
            return HalfSpaceTreesScorer(series.features, window=w, seed=spec.seed).fit(x)
        return PCAScorer(series.features, window=w).fit(x)
    if kind not in AE_KINDS and kind not in PAIR_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {list(ALL_KINDS)}")
    from models import TrainConfig, train
    from models.training import split_kind

    model, companion = split_kind(kind)
    config = TrainConfig(
        kind=model,
        companion=companion,
        epochs=spec.epochs,
        patience=spec.patience,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=spec.seed,
        window=window,
        latent_dim=spec.latent_dim,
        normalize_errors=spec.normalize_errors,
        val_fraction=spec.val_fraction,
        progress=False,
        name=kind,
        device=spec.device,
    )
    out = workdir / f"{kind}.safetensors"
    return train(x, list(series.features), config, out, entities=ent).detector


# ---------------------------------------------------------------------------------------- replay


@dataclass
class Decisions:
    """What the pipeline decided for each test row, in row order."""

    scores: np.ndarray  # (M,) float64; NaN for a row the pipeline dead-lettered
    thresholds: np.ndarray  # (M,) float64
    alerts: np.ndarray  # (M,) bool: the alerts published, after the per-key cooldown
    exceeds: np.ndarray  # (M,) bool: the pipeline's decision, score > threshold
    dead_lettered: int = 0
    seconds: float = 0.0


def _encode(features: Sequence[str], x: np.ndarray) -> list[bytes]:
    dumps, names = orjson.dumps, tuple(features)
    return [dumps(dict(zip(names, row, strict=True))) for row in x.tolist()]


def replay(
    scorer: ScorerLike,
    x: np.ndarray,
    *,
    threshold: ThresholdSettings,
    batch: BatchSettings | None = None,
    events: EventSettings | None = None,
    entities: np.ndarray | None = None,
    lead_in_rows: np.ndarray | None = None,
    lead_in_entities: np.ndarray | None = None,
) -> Decisions:
    """Feed the rows ``x`` (M, F) as JSON events, in order, through a fresh :class:`Pipeline`.

    Micro-batches hold ``batch.max_events`` events, as ``streamer run`` would form them from a busy
    topic. ``entities`` (one key per row) become the Kafka message keys; without them every row is
    of one series. ``events.alert_cooldown_s`` and ``events.alert_escalation`` de-duplicate the
    published alerts per key in the pipeline as in ``streamer run``, one row being one second of
    event time; the threshold sees every score either way. ``lead_in_rows`` (with their
    ``lead_in_entities``) come first in the same stream, and only ``x``'s rows are decided on.
    """
    batch = batch or BatchSettings()
    events = events or EventSettings()
    pipeline = Pipeline(scorer, threshold, events)
    n_lead = 0 if lead_in_rows is None else len(lead_in_rows)
    if lead_in_rows is not None and n_lead:
        x = np.concatenate([lead_in_rows, x])
        if (entities is None) != (lead_in_entities is None):
            raise ValueError("give entities for both the lead-in and the rows, or for neither")
        if entities is not None and lead_in_entities is not None:
            entities = np.concatenate([lead_in_entities, entities])
    values = _encode(scorer.features, x)
    keys: list[bytes] = (
        [_SERIES_KEY] * len(values)
        if entities is None
        else [str(e).encode() for e in np.asarray(entities).tolist()]
    )
    m = len(values)
    scores = np.full(m, np.nan)
    thresholds = np.full(m, np.nan)
    alerts = np.zeros(m, dtype=bool)
    published = np.zeros(m, dtype=bool)
    dead = 0
    started = time.perf_counter()
    step = batch.max_events
    # The lead-in in batches of its own, so that the first decided row starts a batch, as it would
    # without a lead-in.
    starts = [*range(0, n_lead, step), *range(n_lead, m, step)]
    for lo, hi in zip(starts, [*starts[1:], m], strict=True):
        chunk = values[lo:hi]

        def origin(i: int, lo: int = lo) -> Message:
            # one row is one second of event time (the alert cooldown is in seconds)
            return Message(values[lo + i], keys[lo + i], _TOPIC, 0, lo + i, (lo + i) * 1_000)

        def chunk_keys(lo: int = lo, hi: int = hi) -> list[bytes]:
            return keys[lo:hi]

        result = pipeline.process(chunk, origin, message_keys=chunk_keys)
        rows = lo + result.valid
        scores[rows] = result.scores
        thresholds[rows] = result.thresholds
        alerts[rows] = result.alert_mask
        published[rows] = result.published
        dead += sum(lo + i >= n_lead for i in result.dead_index)
    seconds = time.perf_counter() - started
    t = slice(n_lead, None)
    return Decisions(
        scores[t], thresholds[t], published[t], alerts[t], dead_lettered=dead, seconds=seconds
    )


# --------------------------------------------------------------------------------------- metrics


def best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """The F1 of the best threshold chosen afterwards on the test labels: an oracle, never a decision.

    Reported only to compare with the literature, whose "point-wise F1" is often this figure (e.g. the
    PCA baselines' F1 0.39 / 0.43 on SMAP / MSL); the detector's own F1 is the ``f1`` metric.
    """
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return math.nan
    precision, recall, _ = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def score_decisions(series: Series, decisions: Decisions) -> dict[str, float]:
    """Every metric of the decisions against the series' labels (and its NAB score, for NAB series).

    Point-wise precision, recall and F1 judge each event's decision (score > threshold); range recall,
    false alarms, delay and the NAB score judge the alerts published, after the per-key cooldown, as
    an operator receives them. A dead-lettered row (none in practice) cannot alert and ranks as the
    most anomalous score, since it could not be scored.
    """
    scores = decisions.scores
    if np.isnan(scores).any():
        finite = scores[np.isfinite(scores)]
        scores = np.where(np.isnan(scores), finite.max() if len(finite) else 0.0, scores)
    scores = np.clip(scores, -np.finfo(np.float64).max, np.finfo(np.float64).max)
    point = detection_report(series.labels, scores, decisions.exceeds, groups=series.test_entities)
    published = detection_report(series.labels, None, decisions.alerts, groups=series.test_entities)
    report = {
        **{k: point[k] for k in ("precision", "recall", "f1", "auprc", "roc_auc", "n_events")},
        "f1_oracle": best_f1(series.labels, scores),
        "n_exceeding": point["n_alerts"],
        **{
            k: published[k]
            for k in ("range_recall", "false_alarms_per_1k", "mean_delay", "n_alerts", "n_windows")
        },
    }
    if series.nab_windows is not None:
        full = np.zeros(series.offset + len(series.test), dtype=bool)
        full[series.offset :] = decisions.alerts
        nab = nab_score(None, full, series.nab_windows)
        report.update(
            nab_score=nab.normalized, nab_raw=nab.raw, nab_null=nab.null, nab_perfect=nab.perfect
        )
    return report


@dataclass
class EvalResult:
    """One detector on one series: its metrics, timings, and (kept for plots) its decisions."""

    kind: str
    metrics: dict[str, float]
    train_s: float
    replay_s: float
    window: int
    version: str
    decisions: Decisions | None = field(default=None, repr=False)
    # what `auto` settings resolved to for this detector (None where not recorded)
    cooldown_s: float | None = None
    novelty: bool | None = None
    alert_cap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self.metrics,
            "train_s": self.train_s,
            "replay_s": self.replay_s,
            "window": self.window,
            "version": self.version,
            "cooldown_s": self.cooldown_s,
            "novelty": self.novelty,
            "alert_cap": self.alert_cap,
        }


def evaluate_series(
    series: Series,
    kinds: Sequence[str],
    spec: DetectorSpec,
    threshold: ThresholdSettings,
    batch: BatchSettings | None = None,
    events: EventSettings | None = None,
    keep_decisions: bool = False,
) -> list[EvalResult]:
    """Fit and replay each detector kind on one series under the same protocol; one result per kind."""
    out = []
    resolved = events or EventSettings()
    with tempfile.TemporaryDirectory(prefix="ae-eval-") as tmp:
        for kind in kinds:
            t0 = time.perf_counter()
            scorer = fit_detector(kind, series, spec, Path(tmp))
            train_s = time.perf_counter() - t0
            decisions = replay(
                scorer,
                series.test,
                threshold=threshold,
                batch=batch,
                entities=series.test_entities,
                events=events,
                **_lead_in(series, spec.lead_in_rows(series)),
            )
            out.append(
                EvalResult(
                    kind=kind,
                    metrics=score_decisions(series, decisions),
                    train_s=train_s,
                    replay_s=decisions.seconds,
                    window=scorer.window,
                    version=scorer.version,
                    decisions=decisions if keep_decisions else None,
                    cooldown_s=resolved.cooldown_s(scorer.window, len(scorer.features)),
                    novelty=resolved.novelty_on(scorer.window, len(scorer.features)),
                    alert_cap=threshold.cap(gated=resolved.gated(scorer.window)),
                )
            )
    return out


def _lead_in(series: Series, n: int) -> dict[str, Any]:
    """The replay's lead-in arguments: the training part's last ``n`` rows and their entities."""
    if n <= 0:
        return {}
    ent = series.train_entities
    return {
        "lead_in_rows": series.train[-n:],
        "lead_in_entities": None if ent is None else ent[-n:],
    }


def write_decisions(path: str | Path, decisions: Decisions) -> None:
    """One CSV row per test row: ``row, score, threshold, alert, exceeds``.

    ``row`` counts the test rows from 0; ``alert`` (0/1) is the alert as published, after the rise gate
    and the cooldown; ``exceeds`` (0/1) is score > threshold, the decision point-wise F1 judges.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "score", "threshold", "alert", "exceeds"])
        for i, (s, t, a, e) in enumerate(
            zip(
                decisions.scores.tolist(),
                decisions.thresholds.tolist(),
                decisions.alerts.tolist(),
                decisions.exceeds.tolist(),
                strict=True,
            )
        ):
            writer.writerow([i, repr(s), repr(t), int(a), int(e)])


# -------------------------------------------------------------------------------------- terminal

_COLUMNS = (
    ("f1", "F1", "{:.3f}"),
    ("precision", "prec", "{:.3f}"),
    ("recall", "rec", "{:.3f}"),
    ("auprc", "AUPRC", "{:.3f}"),
    ("roc_auc", "ROC-AUC", "{:.3f}"),
    ("range_recall", "rng-rec", "{:.3f}"),
    ("false_alarms_per_1k", "FA/1k", "{:.2f}"),
    ("mean_delay", "delay", "{:.1f}"),
)


def format_table(rows: Sequence[tuple[str, dict[str, Any]]], nab: bool = False) -> str:
    """A fixed-width table: one line per (label, metrics) pair."""
    cols = list(_COLUMNS) + ([("nab_score", "NAB", "{:.1f}")] if nab else [])
    width = max([len("detector"), *(len(label) for label, _ in rows)])
    head = f"{'detector':<{width}}  " + "  ".join(f"{title:>8}" for _, title, _ in cols)
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = []
        for key, _, fmt in cols:
            v = metrics.get(key, math.nan)
            cells.append(f"{'-' if v is None or not math.isfinite(v) else fmt.format(v):>8}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- CLI


def _kinds(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    allowed = {*ALL_KINDS, "auto", "all"}
    bad = [v for v in items if v not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {sorted(allowed)}, got {value!r}"
        )
    return items


def _gate_spans(value: str) -> tuple[int, int]:
    try:
        short, long = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (two integers), got {value!r}") from None
    return short, long


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def resolve_kinds(requested: Sequence[str], series: Series, baselines: bool = True) -> list[str]:
    """The detector kinds to run: ``auto`` -> the default for the data's shape, ``all`` -> every kind,
    then the baselines (unless turned off), each kind once, in order."""
    out: list[str] = []
    for k in requested:
        expanded = list(ALL_KINDS) if k == "all" else [default_kind(series) if k == "auto" else k]
        out.extend(e for e in expanded if e not in out)
    if baselines:
        out.extend(b for b in BASELINE_KINDS if b not in out)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand to the ``streamer`` command line."""
    defaults_t, defaults_b, defaults_d = ThresholdSettings(), BatchSettings(), DetectorSpec()
    p = sub.add_parser(
        "evaluate",
        help="measure detection quality on labelled data, against baselines",
        description="Train on the training part, replay the test part through the pipeline core of "
        "`streamer run`, and report point-wise, range-wise and NAB metrics for the model and the "
        "hst/pca baselines side by side.",
    )
    p.add_argument(
        "--model",
        type=_kinds,
        default=["auto"],
        help="comma-separated kinds: dense, conv, vae, conv+hst, hst, pca, auto (by data shape: "
        "conv+hst for one feature, dense for more) or all; the hst and pca baselines always run "
        "too unless --no-baselines (default: auto)",
    )
    p.add_argument("--no-baselines", action="store_true", help="do not add hst and pca")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--test", type=Path, help="labelled data: CSV/JSONL, .npz or a NAB series CSV")
    src.add_argument(
        "--suite", choices=["nab", "smap", "msl", "asd"], help="evaluate a whole dataset"
    )
    p.add_argument("--data-dir", type=Path, help="with --suite: the shared data folder")
    p.add_argument("--train", type=Path, help="training data file (CSV/JSONL/.npz)")
    p.add_argument(
        "--train-fraction", type=float, help="train on the first F of the test file's rows"
    )
    p.add_argument("--label-column", help="column holding the 0/1 label")
    p.add_argument(
        "--labels",
        type=Path,
        help="labels: a NAB windows JSON (the series then trains on its probationary 15%%) "
        "or a file with one 0/1 per row",
    )
    p.add_argument("--features", type=_csv_list, help="feature columns (default: all numeric)")
    p.add_argument("--entity-column", help="column holding the entity key (one series per entity)")
    p.add_argument(
        "--time-column",
        help="CSV/JSONL: the time column, never a feature (a numeric one would otherwise be: "
        "all numeric columns are the default features)",
    )
    p.add_argument("--q", type=float, help=f"threshold quantile (default {defaults_t.q})")
    p.add_argument(
        "--threshold-window",
        type=int,
        help=f"rolling window of the quantile estimate (default {defaults_t.window}; 0 = all history)",
    )
    p.add_argument(
        "--update-on-alert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"let alerting scores update the threshold (default {defaults_t.update_on_alert})",
    )
    p.add_argument("--alert-cap", type=alert_cap_arg, help=ALERT_CAP_HELP)
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"events per micro-batch (default {defaults_b.max_events})",
    )
    p.add_argument(
        "--cooldown",
        type=cooldown_arg,
        default="auto",
        help="alert de-duplication, as events.alert_cooldown_s with one row per second: a key's "
        "alerts are not published for N rows after each one published; auto (the default) = "
        f"{NOVELTY_COOLDOWN_S:g} where novelty is on, else {DEFAULT_COOLDOWN_S:g}; 0 = off",
    )
    p.add_argument(
        "--escalation",
        type=float,
        default=DEFAULT_ESCALATION,
        help="as events.alert_escalation: within the cooldown, an alert scoring this many times the "
        f"key's last published one is published anyway (default {DEFAULT_ESCALATION:g}; 0 = off)",
    )
    p.add_argument(
        "--gate-z",
        type=gate_z_arg,
        default="auto",
        help="as events.alert_gate_z: publish an alert only while the key's last ~N scores stand this "
        f"many sd above its last ~M; auto (the default) = {DEFAULT_GATE_Z:g} for conv and the "
        "lag-window baselines of univariate series, off for models of single rows; 0 = off",
    )
    p.add_argument(
        "--gate-spans",
        type=_gate_spans,
        default=(DEFAULT_SHORT, DEFAULT_LONG),
        metavar="N,M",
        help="as events.alert_gate_short and alert_gate_long, in rows "
        f"(default {DEFAULT_SHORT},{DEFAULT_LONG})",
    )
    p.add_argument(
        "--novelty",
        choices=["auto", "on", "off"],
        default="auto",
        help="as events.novelty: weigh a windowed model's scores by how unlike the key's recent "
        "windows each window is; auto (the default) = on for windowed models of one feature",
    )
    p.add_argument(
        "--novelty-history",
        type=_novelty_history_arg,
        default=EventSettings().novelty_history,
        help="as events.novelty_history: rows of each key that novelty compares a window with",
    )
    p.add_argument(
        "--novelty-seasonal",
        choices=["on", "off"],
        default="on" if EventSettings().novelty_seasonal else "off",
        help="as events.novelty_seasonal: where a key's rows repeat, compare a window only with "
        "windows at the same phase of earlier cycles",
    )
    p.add_argument("--window", type=int, default=defaults_d.window, help="conv / lag window length")
    p.add_argument("--latent-dim", type=int, help="autoencoder latent width (default: from F)")
    p.add_argument(
        "--raw-errors",
        action="store_true",
        help="score raw squared errors, without the per-feature normalisation (dense, conv)",
    )
    p.add_argument("--epochs", type=int, default=defaults_d.epochs, help="most training epochs")
    p.add_argument(
        "--patience",
        type=int,
        default=defaults_d.patience,
        help="epochs without a better validation loss before training stops",
    )
    p.add_argument(
        "--max-train-rows",
        type=int,
        default=defaults_d.max_train_rows,
        help="train on at most the N most recent training rows",
    )
    p.add_argument(
        "--lead-in",
        choices=LEAD_IN_CHOICES,
        default=defaults_d.lead_in,
        help="replay the training part's last rows (at most "
        f"{LEAD_IN_MAX_ROWS:,}) through the pipeline before the test part, undecided: auto where "
        "the two are one stream (NAB's probationary period, --train-fraction), on, or off "
        "(default: auto)",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads",
        type=non_negative_int,
        default=1,
        help="torch CPU threads for training (default 1; 0 = torch's default)",
    )
    p.add_argument("--max-series", type=int, help="with --suite: only the first N series")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--json-out", type=Path, help="also write the JSON results to this file")
    p.add_argument(
        "--decisions-out",
        type=Path,
        help="CSV of row, score, threshold, alert, exceeds for each test row (first model listed)",
    )
    p.add_argument("--plot", type=Path, help="PNG of series, scores, threshold, alerts, labels")
    p.set_defaults(func=evaluate_command)


def _novelty_history_arg(text: str) -> int:
    """A command-line value of ``events.novelty_history``: rows, from 8 to 1,000,000."""
    value = positive_int(text)
    if not 8 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 8 and 1000000, got {value}")
    return value


def settings_record(
    threshold: ThresholdSettings, batch: BatchSettings, events: EventSettings, spec: DetectorSpec
) -> dict[str, Any]:
    """The settings of a run as its JSON output records them."""
    return {
        "threshold": threshold.model_dump(),
        "batch": batch.model_dump(),
        "detector": asdict(spec),
        "cooldown": events.alert_cooldown_s,
        "escalation": events.alert_escalation,
        "gate": {
            "z": events.alert_gate_z,
            "short": events.alert_gate_short,
            "long": events.alert_gate_long,
        },
        "novelty": {
            "on": events.novelty,
            "history": events.novelty_history,
            "seasonal": events.novelty_seasonal,
        },
    }


# The flag of each setting that evaluate sets, by settings model; "" = the model as a whole.
_FLAGS = {
    "ThresholdSettings": {
        "q": "--q",
        "window": "--threshold-window",
        "alert_cap": "--alert-cap",
        "": "--q / --threshold-window",
    },
    "BatchSettings": {"max_events": "--batch-size"},
    "EventSettings": {
        "alert_cooldown_s": "--cooldown",
        "alert_escalation": "--escalation",
        "alert_gate_z": "--gate-z",
        "alert_gate_short": "--gate-spans",
        "alert_gate_long": "--gate-spans",
        "novelty_history": "--novelty-history",
        "": "--gate-spans",
    },
}


def _flag_errors(exc: Any) -> str:
    """A settings ValidationError as evaluate's flags: each error with the flag that set the value."""
    flags = _FLAGS.get(exc.title, {})
    parts = []
    for loc, message in setting_errors(exc):
        key = str(loc[0]) if loc else ""
        parts.append(f"{flags.get(key, key or exc.title)}: {message}")
    return "invalid setting: " + "; ".join(dict.fromkeys(parts))


def settings_from(
    args: argparse.Namespace,
) -> tuple[ThresholdSettings, BatchSettings, EventSettings, DetectorSpec]:
    """The threshold, batch, alert de-duplication and detector settings of an ``evaluate`` run."""
    t = ThresholdSettings()
    updates: dict[str, Any] = {}
    if args.q is not None:
        updates["q"] = args.q
    if args.threshold_window is not None:
        updates["window"] = args.threshold_window
    if args.update_on_alert is not None:
        updates["update_on_alert"] = args.update_on_alert
    if args.alert_cap is not None:
        updates["alert_cap"] = args.alert_cap
    threshold = ThresholdSettings(**{**t.model_dump(), **updates})
    b = BatchSettings()
    batch = (
        b
        if args.batch_size is None
        else BatchSettings(**{**b.model_dump(), "max_events": args.batch_size})
    )
    events = EventSettings(
        alert_cooldown_s=args.cooldown,
        alert_escalation=args.escalation,
        alert_gate_z=args.gate_z,
        alert_gate_short=args.gate_spans[0],
        alert_gate_long=args.gate_spans[1],
        novelty="auto" if args.novelty == "auto" else args.novelty == "on",
        novelty_history=args.novelty_history,
        novelty_seasonal=args.novelty_seasonal == "on",
    )
    spec = replace(
        DetectorSpec(),
        window=args.window,
        latent_dim=args.latent_dim,
        normalize_errors=not args.raw_errors,
        epochs=args.epochs,
        patience=args.patience,
        max_train_rows=args.max_train_rows,
        lead_in=args.lead_in,
        seed=args.seed,
        device=args.device,
    )
    return threshold, batch, events, spec


def evaluate_command(args: argparse.Namespace) -> int:
    """Run ``streamer evaluate``; prints a table (or JSON) and writes the requested files."""
    from pydantic import ValidationError

    # Logging is configured by streamer.cli.main, as for every command.
    if args.threads:
        import torch

        # On a shared or small machine torch's default of one thread per core oversubscribes the
        # CPUs and training slows down many times over; one thread per process is the safe default.
        torch.set_num_threads(args.threads)
    try:
        threshold, batch, events, spec = settings_from(args)
    except ValidationError as exc:
        raise StreamerError(_flag_errors(exc)) from None
    if args.suite:
        from streamer.suites import run_suite_command

        single = {
            "--train": args.train,
            "--train-fraction": args.train_fraction,
            "--label-column": args.label_column,
            "--labels": args.labels,
            "--entity-column": args.entity_column,
            "--time-column": args.time_column,
            "--decisions-out": args.decisions_out,
            "--plot": args.plot,
        }
        if given := [flag for flag, value in single.items() if value is not None]:
            raise StreamerError(
                f"--suite reads its own series; {', '.join(given)}: for --test only"
            )
        return run_suite_command(args, threshold, batch, events, spec)
    if args.test is None:
        raise StreamerError("give --test PATH or --suite NAME")
    suite_only = {"--data-dir": args.data_dir, "--max-series": args.max_series}
    if given := [flag for flag, value in suite_only.items() if value is not None]:
        raise StreamerError(f"{', '.join(given)}: for --suite only")
    series = load_series(
        args.test,
        train=args.train,
        train_fraction=args.train_fraction,
        label_column=args.label_column,
        labels=args.labels,
        features=args.features,
        entity_column=args.entity_column,
        time_column=args.time_column,
    )
    kinds = resolve_kinds(args.model, series, baselines=not args.no_baselines)
    results = evaluate_series(
        series, kinds, spec, threshold, batch, events=events, keep_decisions=True
    )
    primary = results[0]
    payload = {
        "series": series.name,
        "n_train": len(series.train),
        "n_test": len(series.test),
        "n_features": len(series.features),
        "settings": settings_record(threshold, batch, events, spec),
        "detectors": [r.to_dict() for r in results],
    }
    text = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if args.json:
        print(text)
    else:
        print(
            f"{series.name}: {len(series.train)} training rows, {len(series.test)} test rows, "
            f"{int(series.labels.sum())} labelled anomalous"
        )
        print(
            format_table([(r.kind, r.metrics) for r in results], nab=series.nab_windows is not None)
        )
    # The files after the table, so that a bad path loses no result.
    if args.json_out:
        write_text(args.json_out, text + "\n")
    if args.decisions_out and primary.decisions is not None:
        write_decisions(args.decisions_out, primary.decisions)
    if args.plot:
        from streamer.plotting import plot_series

        plot_series(args.plot, series, [(r.kind, r.decisions) for r in results if r.decisions])
    return 0


def write_text(path: str | Path, text: str) -> None:
    """Write an output file, making its folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
