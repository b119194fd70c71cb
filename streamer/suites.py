"""Whole labelled datasets (``streamer evaluate --suite``): every series, every detector, side by side.

Suites read the public data in the shared data folder (see its README), never a copy in the repository:

- ``nab``: the 58 NAB series; each trains on its probationary period and is scored with the NAB score
  (standard profile), summed over the corpus as the benchmark does;
- ``smap`` / ``msl``: NASA telemetry, one ``.npz`` per channel (``train``, ``test``, ``label``);
- ``asd``: the 12 application-server entities, one ``.npz`` each.

The mean row of a suite is the plain mean over its series of each metric (series where a metric is
undefined, e.g. recall without any labelled point, are left out of that metric's mean).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog

from streamer.baselines import BASELINE_KINDS
from streamer.config import BatchSettings, EventSettings, ThresholdSettings
from streamer.errors import DataError
from streamer.evaluate import (
    DetectorSpec,
    EvalResult,
    Series,
    evaluate_series,
    format_table,
    load_nab,
    resolve_kinds,
    settings_record,
    write_text,
)
from streamer.nab import NabScore, aggregate

__all__ = ["SUITES", "SuiteResult", "run_suite", "suite_files", "suite_series"]

log = structlog.get_logger(__name__)

SUITES = ("nab", "smap", "msl", "asd")
_MEAN_KEYS = (
    "precision",
    "recall",
    "f1",
    "auprc",
    "roc_auc",
    "range_recall",
    "false_alarms_per_1k",
    "mean_delay",
    "nab_score",
    "f1_oracle",
)
# Point-wise figures mean something only where a series has labelled anomalies: over the others, F1
# and precision were 0 for a detector that raised any exceedance and left out for one that raised
# none, while always-alert averages over the anomalous series alone. All three now use those.
_POINTWISE_KEYS = frozenset({"precision", "recall", "f1", "auprc", "roc_auc", "f1_oracle"})
ALWAYS = "always-alert"  # the reference detector that alerts on every event


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem))


def _root(data_dir: Path, sub: str) -> Path:
    """``data_dir`` may be the shared data folder or the dataset's own folder."""
    if (data_dir / sub).is_dir():
        return data_dir / sub
    if data_dir.is_dir() and data_dir.name == sub:
        return data_dir
    raise DataError(f"{data_dir}: no {sub!r} folder (give the shared data folder as --data-dir)")


def suite_files(name: str, data_dir: str | Path) -> list[Path]:
    """The series files of a suite, in a stable order."""
    data_dir = Path(data_dir)
    if name == "nab":
        from streamer.data import nab_files

        return nab_files(_root(data_dir, "nab"))
    if name in ("smap", "msl"):
        folder = _root(data_dir, "smap_msl") / f"{name.upper()}_npz"
    elif name == "asd":
        folder = _root(data_dir, "asd")
    else:
        raise DataError(f"unknown suite {name!r}; known: {list(SUITES)}")
    files = sorted(folder.glob("*.npz"), key=_natural)
    if not files:
        raise DataError(f"{folder}: no .npz series")
    return files


def suite_series(
    name: str, data_dir: str | Path, features: Sequence[str] | None = None
) -> Iterator[Series]:
    """Load the suite's series one at a time (so a suite never holds all of its data at once).

    ``features`` picks columns of the ``.npz`` suites by name (``f0`` .. ``f{F-1}``), the same for
    every series: e.g. ``["f0"]`` keeps only the telemetry value of the SMAP/MSL channels.
    """
    files = suite_files(name, data_dir)
    if name == "nab":
        if features is not None:
            raise DataError("NAB series have one feature, 'value'; drop --features")
        import json

        labels = _root(Path(data_dir), "nab") / "labels" / "combined_windows.json"
        windows = json.loads(labels.read_text(encoding="utf-8"))
        for f in files:
            yield load_nab(f, windows)
        return
    from streamer.evaluate import load_series

    for f in files:
        yield load_series(f, features=features)


@dataclass
class SuiteResult:
    """Per-series results of every detector, their means, and the time it took."""

    suite: str
    kinds: list[str]
    series: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def add(self, series: Series, results: Sequence[EvalResult]) -> None:
        self.series.append(
            {
                "series": series.name,
                "n_train": len(series.train),
                "n_test": len(series.test),
                "n_features": len(series.features),
                "anomalous": int(series.labels.sum()),
                "detectors": [r.to_dict() for r in results],
            }
        )

    def mean(self) -> dict[str, dict[str, float]]:
        """Per kind: the mean of each metric over series, the corpus NAB score, and seconds spent.

        The ``always-alert`` row is the point-wise F1 of alerting on every event: on data whose
        labelled segments are long, a detector's F1 means little unless it beats this. Point-wise
        figures are means over the series with labelled anomalies, as always-alert's are; false
        alarms, range recall, delay and NAB over every series.
        """
        out: dict[str, dict[str, float]] = {}
        for kind in self.kinds:
            pairs = [(s, d) for s in self.series for d in s["detectors"] if d["kind"] == kind]
            rows = [d for _, d in pairs]
            if not rows:
                continue
            labelled = [d for s, d in pairs if s["anomalous"]]
            summary: dict[str, float] = {"n_series": float(len(rows))}
            for key in _MEAN_KEYS:
                pool = labelled if key in _POINTWISE_KEYS else rows
                values = [r[key] for r in pool if r.get(key) is not None and math.isfinite(r[key])]
                if values or key != "nab_score":
                    summary[key] = float(np.mean(values)) if values else math.nan
            if any("nab_raw" in r for r in rows):
                summary["nab_score_mean_series"] = summary.pop("nab_score", math.nan)
                summary["nab_score"] = aggregate(
                    [
                        NabScore(r["nab_raw"], r["nab_null"], r["nab_perfect"], math.nan)
                        for r in rows
                    ]
                )
            summary["train_s"] = float(sum(r["train_s"] for r in rows))
            summary["replay_s"] = float(sum(r["replay_s"] for r in rows))
            out[kind] = summary
        rates = [s["anomalous"] / s["n_test"] for s in self.series if s["anomalous"]]
        if rates:
            out[ALWAYS] = {
                "n_series": float(len(rates)),
                "precision": float(np.mean(rates)),
                "recall": 1.0,
                "f1": float(np.mean([2 * r / (1 + r) for r in rates])),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "kinds": self.kinds,
            "wall_s": self.wall_s,
            "mean": self.mean(),
            "series": self.series,
        }


def run_suite(
    name: str,
    data_dir: str | Path,
    kinds: Sequence[str],
    spec: DetectorSpec,
    threshold: ThresholdSettings,
    batch: BatchSettings | None = None,
    events: EventSettings | None = None,
    max_series: int | None = None,
    features: Sequence[str] | None = None,
    on_series: Callable[[Series, list[EvalResult]], None] | None = None,
) -> SuiteResult:
    """Evaluate ``kinds`` on every series of a suite (or its first ``max_series``)."""
    started = time.perf_counter()
    result: SuiteResult | None = None
    for i, series in enumerate(suite_series(name, data_dir, features)):
        if max_series is not None and i >= max_series:
            break
        run_kinds = resolve_kinds(kinds, series, baselines=False)
        if result is None:
            result = SuiteResult(name, run_kinds)
        t0 = time.perf_counter()
        results = evaluate_series(series, run_kinds, spec, threshold, batch, events=events)
        result.add(series, results)
        log.info(
            "series_evaluated",
            suite=name,
            series=series.name,
            seconds=round(time.perf_counter() - t0, 2),
            f1={r.kind: round(r.metrics["f1"], 3) for r in results},
        )
        if on_series is not None:
            on_series(series, results)
    if result is None:
        raise DataError(f"suite {name!r} has no series")
    result.wall_s = time.perf_counter() - started
    return result


def format_suite(result: SuiteResult) -> str:
    """The per-series tables and the mean table, for the terminal."""
    nab = result.suite == "nab"
    lines = []
    for s in result.series:
        lines.append(f"\n{s['series']} ({s['n_train']} train / {s['n_test']} test rows)")
        lines.append(format_table([(d["kind"], d) for d in s["detectors"]], nab=nab))
    mean = result.mean()
    lines.append(
        f"\n{result.suite}: mean over {len(result.series)} series"
        + (" (NAB = corpus NAB score, standard profile)" if nab else "")
        + f"; wall time {result.wall_s:.0f} s"
    )
    lines.append(format_table(list(mean.items()), nab=nab))
    return "\n".join(lines)


def run_suite_command(
    args: argparse.Namespace,
    threshold: ThresholdSettings,
    batch: BatchSettings,
    events: EventSettings,
    spec: DetectorSpec,
) -> int:
    """``streamer evaluate --suite NAME --data-dir DIR``: tables on the terminal, JSON on request."""
    if args.data_dir is None:
        raise DataError("--suite needs --data-dir (the shared data folder)")
    kinds = list(args.model)
    if not args.no_baselines and "all" not in kinds:
        kinds = [*kinds, *(b for b in BASELINE_KINDS if b not in kinds)]
    result = run_suite(
        args.suite,
        args.data_dir,
        kinds,
        spec,
        threshold,
        batch,
        events=events,
        max_series=args.max_series,
        features=args.features,
    )
    payload = {
        **result.to_dict(),
        "settings": {
            **settings_record(threshold, batch, events, spec),
            "features": args.features,
        },
    }
    text = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    print(text if args.json else format_suite(result))
    if args.json_out:  # after the table, so that a bad path loses no result
        write_text(args.json_out, text + "\n")
    return 0
