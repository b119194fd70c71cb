"""``streamer train``: read normal data from a file or a Kafka topic and train a checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Hashable

import numpy as np
import orjson
import structlog

from streamer.decode import Decoder
from streamer.errors import DataError

log = structlog.get_logger(__name__)


# Events looked at to choose the features of a topic, as for a file's columns (streamer.data).
_SAMPLE_EVENTS = 1_000


def _topic_features(values: list[bytes | None], entity_column: str | None) -> list[str]:
    """Fields that are numbers in at least half of the first decodable events (a field most events
    lack is no feature: its rows would all be skipped), in order of first appearance."""
    events: list[dict[str, object]] = []
    for v in values:
        if len(events) >= _SAMPLE_EVENTS:
            break
        try:
            obj = orjson.loads(v) if v else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    counts: dict[str, int] = {}
    for obj in events:
        for k, field in obj.items():
            if type(field) in (int, float) and k != entity_column:
                counts[k] = counts.get(k, 0) + 1
    return [k for k, c in counts.items() if 2 * c >= len(events)]


# Fewer rows than this say too little about a column to call it a counter or an id.
_SUSPECT_MIN_ROWS = 100


def suspect_features(
    x: np.ndarray, features: list[str], entities: np.ndarray | None = None
) -> dict[str, str]:
    """Feature columns that look like counters, clocks or ids, each with why.

    Such a column is never "normal" in service: its values leave the training range as the stream
    goes on, so every event's error grows with it (the simulator's ``seq`` counter took the share of
    events over the threshold from 2 % to 42 % along a stream). Only a warning: a column that rises
    in normal operation (an energy meter) can still be meant. "Never decreases" rather than "always
    increases": in float32 an epoch clock or a counter past 2**24 repeats values. With entities,
    per entity (a topic's partitions interleave them).
    """
    if len(x) < _SUSPECT_MIN_ROWS:
        return {}
    order = np.arange(len(x)) if entities is None else np.argsort(entities, kind="stable")
    # steps within an entity only: the first row of each entity starts afresh
    same = (
        np.ones(len(x) - 1, dtype=bool)
        if entities is None
        else entities[order][1:] == entities[order][:-1]
    )
    found: dict[str, str] = {}
    for j, name in enumerate(features):
        col = x[order, j].astype(np.float64)
        steps = np.diff(col)[same]
        if steps.size and bool(np.all(steps >= 0)) and bool(np.any(steps > 0)):
            found[name] = "never decreases (a counter or a clock)"
        elif bool(np.all(col == np.round(col))) and len(np.unique(col)) == len(col):
            found[name] = "every value is a different integer (an id or a counter)"
    return found


def table_from_topic(args: argparse.Namespace) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """Training rows from a topic: rows that cannot be decoded are skipped and counted, never trained on.

    Each row's entity is what ``streamer run`` windows it by: the ``--entity-column`` field when the
    event has it, else the message's Kafka key; so a conv model trains on windows of one entity each,
    never on a partition's interleaving of several.
    """
    from streamer.config import load_settings
    from streamer.kafka_io import read_topic_records
    from streamer.pipeline import entity_of

    # The connection as `streamer run` makes it (security settings from the file or the environment)
    overrides = {"kafka": {"bootstrap_servers": args.bootstrap}} if args.bootstrap else None
    settings = load_settings(getattr(args, "config", None), overrides)
    max_bytes = settings.events.max_message_bytes
    records = list(
        read_topic_records(
            settings.kafka.common_config(),
            args.from_topic,
            args.max_events,
            max_message_bytes=max_bytes,
        )
    )
    values = [v for _, v in records]
    features = args.features or _topic_features(values, args.entity_column)
    if not features:
        raise DataError(f"no decodable event with numeric fields in topic {args.from_topic!r}")
    decoded = Decoder(features, max_bytes).decode(values)
    if decoded.rejected:
        log.warning(
            "training_rows_skipped",
            count=len(decoded.rejected),
            of=len(values),
            first=decoded.rejected[0][1].reason,
        )
    if not len(decoded.x):
        raise DataError(f"no usable rows in topic {args.from_topic!r}")
    rows = decoded.valid.tolist()
    if args.entity_column is None and all(records[i][0] is None for i in rows):
        return decoded.x, list(features), None  # no keys at all: one stream, as `run` sees it
    # Each entity as the detector keys it (str, int or bytes alike), numbered for grouping.
    codes: dict[Hashable, int] = {}
    entities = np.array(
        [
            codes.setdefault(
                entity_of(decoded.event(j), args.entity_column, records[i][0]), len(codes)
            )
            for j, i in enumerate(rows)
        ],
        dtype=np.int64,
    )
    return decoded.x, list(features), entities


def train_command(args: argparse.Namespace) -> int:
    from models import TrainConfig, train
    from models.training import split_kind
    from streamer.data import load_table

    if args.from_topic:
        x, features, entities = table_from_topic(args)
    else:
        table = load_table(args.data, features=args.features, entity_column=args.entity_column)
        x, features, entities = table.X, table.features, table.entities
    kind, companion = split_kind(args.model)
    config = TrainConfig(
        kind=kind,
        companion=companion,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        window=args.window,
        latent_dim=args.latent_dim,
        name=args.name,
        device=args.device,
        progress=not args.no_progress,
    )
    # Columns the user did not name are checked; named ones were meant.
    suspects = suspect_features(x, list(features), entities) if args.features is None else {}
    if suspects:
        log.warning(
            "suspect_features",
            columns=suspects,
            hint="name the real features with --features to leave these out",
        )
    result = train(x, features, config, args.out, entities=entities)
    if result.short_entities:
        log.warning(
            "entities_left_out",
            entities=result.short_entities,
            rows=result.short_rows,
            why=f"fewer rows than the window ({args.window})",
        )
    best = result.history[result.best_epoch - 1]
    print(
        orjson.dumps(
            {
                "checkpoint": str(result.path),
                "kind": args.model,
                "features": features,
                "rows": len(x),
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "val_loss": best["val_loss"],
                "loss_curve": str(result.path.with_suffix(".loss.png")),
                "suspect_features": suspects,
                "entities_left_out": result.short_entities,
            }
        ).decode()
    )
    return 0
