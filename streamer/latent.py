"""The two other jobs of an autoencoder: latent embeddings (``streamer encode``) and synthetic data
(``streamer sample``, VAE only)."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from streamer.args import positive_int, seed
from streamer.errors import DataError


def model_inputs(
    x: np.ndarray, window: int, entities: np.ndarray | None, batch_size: int
) -> Iterator[np.ndarray]:
    """Rows (N, F) -> what the model reads, ``batch_size`` rows at a time: the rows themselves, or for
    a windowed model the window ending at each row, per entity, padded like the detector does for an
    entity's first rows. Built batch by batch: all N windows at once took N x W x F floats (1.7 GB
    for 200,000 rows of 25 features at window 64)."""
    if window == 1:
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size]
        return
    from streamer.features import EntityWindows

    keys = entities.tolist() if entities is not None else [0] * len(x)
    windows = EntityWindows(window, x.shape[1], max_entities=max(1, len(set(keys))))
    for i in range(0, len(x), batch_size):
        yield windows.windows(x[i : i + batch_size], keys[i : i + batch_size])


def encode_command(args: argparse.Namespace) -> int:
    from models import load_checkpoint
    from streamer.data import load_table

    scorer = load_checkpoint(args.model, device=args.device)
    table = load_table(args.data, features=list(scorer.features), entity_column=args.entity_column)
    codes = np.concatenate(
        [
            scorer.encode(batch)
            for batch in model_inputs(table.X, scorer.window, table.entities, args.batch_size)
        ]
        or [np.empty((0, scorer.latent_dim), dtype=np.float32)]
    )
    columns = [f"z{i}" for i in range(codes.shape[1])]
    if args.to_topic:
        _encode_to_topic(args, codes, columns, table.entities)
    elif args.out.suffix not in (".npy", ".csv"):
        raise DataError(f"--out must end in .npy or .csv, got {args.out}")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".npy":
            np.save(args.out, codes, allow_pickle=False)
        else:
            with args.out.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["row", *columns])
                writer.writerows([i, *map(float, row)] for i, row in enumerate(codes))
    print(
        orjson.dumps(
            {
                "rows": len(codes),
                "latent_dim": codes.shape[1],
                "out": str(args.out or args.to_topic),
            }
        ).decode()
    )
    return 0


def _encode_to_topic(
    args: argparse.Namespace, codes: np.ndarray, columns: list[str], entities: np.ndarray | None
) -> None:
    from streamer.simulate import SimEvent, produce

    if not args.bootstrap:
        raise DataError("--to-topic needs --bootstrap HOST:PORT")
    events = (
        SimEvent(
            key=str(entities[i]) if entities is not None else str(i),
            value=orjson.dumps({"row": i, **dict(zip(columns, map(float, row), strict=True))}),
            label=0,
            kind="embedding",
            seq=i,
            malformed=False,
        )
        for i, row in enumerate(codes)
    )
    produce(args.bootstrap, args.to_topic, events)


def sample_command(args: argparse.Namespace) -> int:
    from models import load_checkpoint

    out = Path(args.out)
    if out.suffix not in (".jsonl", ".csv"):
        raise DataError(f"--out must end in .jsonl or .csv, got {out}")
    scorer = load_checkpoint(args.model, device=args.device)
    names = scorer.features
    chunks = scorer.sample_chunks(args.n, seed=args.seed)  # raises here for a model that is no VAE
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        with out.open("w", newline="") as text:
            writer = csv.writer(text)
            writer.writerow(names)
            for rows in chunks:
                writer.writerows(rows.tolist())  # str of a float is its shortest exact form
    else:
        with out.open("wb") as fh:
            for rows in chunks:
                for row in rows.tolist():
                    fh.write(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n")
    print(orjson.dumps({"rows": args.n, "features": list(names), "out": str(args.out)}).decode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="latent coordinates of each row (dimensionality reduction)")
    p.add_argument("--model", type=Path, required=True, help="checkpoint (any kind)")
    p.add_argument(
        "--data", type=Path, required=True, help="CSV, JSONL or .npz with the model's features"
    )
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="FILE.npy or FILE.csv")
    out.add_argument("--to-topic", help="write one JSON record per row to this Kafka topic instead")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (with --to-topic)")
    p.add_argument(
        "--entity-column", help="entity key column (windows of a conv model; record keys)"
    )
    p.add_argument("--batch-size", type=positive_int, default=4096)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.set_defaults(func=encode_command)

    p = sub.add_parser("sample", help="synthetic events from a VAE checkpoint")
    p.add_argument("--model", type=Path, required=True, help="a vae checkpoint")
    p.add_argument("-n", type=int, required=True, help="number of events")
    p.add_argument("--out", type=Path, required=True, help="FILE.jsonl or FILE.csv")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.set_defaults(func=sample_command)
