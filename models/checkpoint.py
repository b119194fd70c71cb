"""Checkpoints: ONE .safetensors file holding tensors and JSON metadata, never a pickle.

Tensors: the model's state dict under "model.<name>", the scaler under "scaler.center" /
"scaler.scale" (and "scaler.constant", 1 for a column without spread), and "train_scores" (scores of
held-back normal data). The safetensors header's
`__metadata__` holds a single key, "ae_streamer", whose value is a JSON document:

    format_version, kind, model_config (plain types), features, window, latent_dim, name,
    created_at (UTC ISO 8601), data_sha256, n_train, scaler (clip, method), versions
    (torch, numpy, ae-streamer), train_config (optional), tensors_sha256

`tensors_sha256` covers every tensor (sorted by name: name, dtype, shape, bytes) and is verified
on load, so a flipped byte is refused rather than silently scored with. The checkpoint's
version is sha256(tensors_sha256 + metadata JSON)[:12]. Files are written atomically (temp file
in the same directory, fsync, os.replace) so a reader never sees half a checkpoint.

A model trained with a companion (``--model conv+hst``: ``models.pair``) also holds the companion's
Half-Space Trees under "companion.*" (int64 tree arrays and masses, float64 scaling and held-back
scores) and the training rows' range under "range.low" / "range.high"; the metadata then names it in
"companion" ({kind: "hst", holdout, seed, version}). ``load_detector`` returns the pair,
``load_checkpoint`` the autoencoder alone (embeddings, samples, benchmarks).

Loading rebuilds the model from `kind` + `model_config` (on the meta device, no init) and
loads the state dict strictly.
safetensors parses a fixed-layout header and raw bytes: nothing in a file can execute code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from models.cuda import Precision
from models.errors import CheckpointError, ModelError
from models.hst import HalfSpaceTreesScorer
from models.kinds import KINDS, AnyModel
from models.pair import PairScorer
from models.scaling import RobustScaler
from models.scorer import Scorer

FORMAT_VERSION = 1
METADATA_KEY = "ae_streamer"
SCALER_METHOD = "median-iqr"
_REQUIRED = (
    "format_version",
    "kind",
    "model_config",
    "features",
    "name",
    "tensors_sha256",
    "scaler",
)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over tensors in sorted-name order: name, dtype, shape and raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_version(tensors_digest: str, metadata_json: str) -> str:
    return hashlib.sha256((tensors_digest + metadata_json).encode()).hexdigest()[:12]


def library_versions() -> dict[str, str]:
    try:
        own = importlib_metadata.version("ae-streamer")
    except importlib_metadata.PackageNotFoundError:
        own = "unknown"
    return {"torch": torch.__version__, "numpy": np.__version__, "ae-streamer": own}


def save_checkpoint(
    path: str | Path,
    model: AnyModel,
    scaler: RobustScaler,
    *,
    features: Sequence[str],
    train_scores: np.ndarray,
    name: str | None = None,
    data_sha256: str = "",
    n_train: int = 0,
    train_config: dict[str, Any] | None = None,
    error_scale: np.ndarray | None = None,
    companion: HalfSpaceTreesScorer | None = None,
    train_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """Write model + scaler + train_scores (+ error_scale) + metadata to one .safetensors file; return
    its version. ``companion`` and ``train_range`` (the training rows' per-feature minimum and maximum)
    go together: the pair of ``models.pair``."""
    if (companion is None) != (train_range is None):
        raise CheckpointError("a companion and the training range go together")
    cfg = model.config
    if len(features) != cfg.n_features or scaler.n_features != cfg.n_features:
        raise CheckpointError(
            f"model has {cfg.n_features} features, scaler {scaler.n_features}, names {len(features)}"
        )
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["scaler.center"] = torch.from_numpy(np.ascontiguousarray(scaler.center, np.float32))
    tensors["scaler.scale"] = torch.from_numpy(np.ascontiguousarray(scaler.scale, np.float32))
    if scaler.constant is not None:
        tensors["scaler.constant"] = torch.from_numpy(scaler.constant.astype(np.float32))
    tensors["train_scores"] = torch.from_numpy(np.ascontiguousarray(train_scores, np.float64))
    if error_scale is not None:
        tensors["error_scale"] = torch.from_numpy(np.ascontiguousarray(error_scale, np.float32))
    companion_meta = None
    if companion is not None and train_range is not None:
        arrays, params = companion.state()
        for k, v in arrays.items():
            tensors[f"companion.{k}"] = torch.from_numpy(np.ascontiguousarray(v, _dtype_of(k)))
        tensors["range.low"] = torch.from_numpy(np.ascontiguousarray(train_range[0], np.float64))
        tensors["range.high"] = torch.from_numpy(np.ascontiguousarray(train_range[1], np.float64))
        companion_meta = {"kind": companion.kind, "version": companion.version, **params}
    digest = tensors_sha256(tensors)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "model_config": dataclasses.asdict(cfg),
        "features": list(features),
        "window": int(getattr(cfg, "window", 1)),
        "latent_dim": int(cfg.latent_dim),
        "name": name or model.kind,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_sha256": data_sha256,
        "n_train": int(n_train),
        "scaler": {"method": SCALER_METHOD, "clip": float(scaler.clip)},
        "versions": library_versions(),
        "train_config": train_config,
        "tensors_sha256": digest,
        **({"companion": companion_meta} if companion_meta is not None else {}),
    }
    meta_json = json.dumps(meta, sort_keys=True)
    blob = safetensors_save(tensors, metadata={METADATA_KEY: meta_json})
    # Loaded back from the bytes, as any reader will, before the file is written: a checkpoint that
    # its own loader would refuse (a feature name too long, too many features, a file too large) must
    # not replace a good one at `path`.
    _verified(Path(path), lambda: _from_bytes(Path(path), blob, "cpu", "fp32", False, pair=True))
    _atomic_write(Path(path), blob)
    return checkpoint_version(digest, meta_json)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set straight back
    os.umask(mask)
    return mask


def _atomic_write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file readable by its owner alone; a checkpoint gets the mode any new
            # file would (a detector running as another user must be able to read it).
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself; not possible on every OS
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# Far above any model here (a few MB), and read whole into memory: a bound on what a path can make
# the service allocate.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_NAME_CHARS = 256
MAX_FEATURES = 4_096


def _read(path: Path) -> bytes:
    """Read the file whole (at most ``MAX_CHECKPOINT_BYTES``).

    Reading into memory, rather than letting safetensors map the file, means the loaded model no
    longer depends on the file: a later write over it in place can neither change nor crash the
    running model, and the bytes hashed are the bytes used.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"{path}: {size} bytes, over {MAX_CHECKPOINT_BYTES}")
            return f.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: not readable ({e})") from e


def _parse(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint's bytes -> (tensors on cpu, metadata JSON); any error is refused."""
    try:
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: over {MAX_CHECKPOINT_BYTES} bytes")
        # the safetensors layout: u64 little-endian header length, then the JSON header
        n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if not 0 < n <= len(data) - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(data[8 : 8 + n])
        tensors = safetensors_load(data)
    except CheckpointError:
        raise
    except Exception as e:  # OSError, safetensors' own errors, JSON, recursion on nested JSON
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise CheckpointError(
            f"{path}: no {METADATA_KEY!r} metadata; not an ae-streamer checkpoint"
        )
    return tensors, metadata[METADATA_KEY]


def _dtype_of(key: str) -> type:
    """A companion tensor's dtype: the trees' splits, masses and counters are integers."""
    integer = ("forest.feature", "forest.l_mass", "forest.r_mass", "forest.window")
    return np.int64 if key.endswith(integer) else np.float64


def check_names(path: Path, kind: str, features: Sequence[str], name: str | None) -> None:
    """Refuse, as loading would, features or a name that a checkpoint at ``path`` may not hold."""
    _check_meta(
        path, {"kind": kind, "features": list(features), "name": name or kind, "model_config": {}}
    )


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Types and bounds of what the metadata names, before anything is built from it."""
    kind, features, name = meta["kind"], meta["features"], meta["name"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise CheckpointError(f"{path}: unknown model kind {kind!r}; known: {sorted(KINDS)}")
    if (
        not isinstance(features, list)
        or not 0 < len(features) <= MAX_FEATURES
        or not all(isinstance(f, str) and 0 < len(f) <= MAX_NAME_CHARS for f in features)
        or len(set(features)) != len(features)
    ):
        raise CheckpointError(
            f"{path}: features must be 1 to {MAX_FEATURES} distinct names of 1 to "
            f"{MAX_NAME_CHARS} characters"
        )
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise CheckpointError(f"{path}: name must be a string of at most {MAX_NAME_CHARS}")
    if not isinstance(meta["model_config"], dict):
        raise CheckpointError(f"{path}: model_config must be an object")


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The dtypes the scorer computes in, finite weights, and training scores a threshold can start
    from."""
    for key, t in tensors.items():
        if key.startswith(("model.", "scaler.")) or key == "error_scale":
            if t.dtype != torch.float32:
                raise CheckpointError(f"{path}: tensor {key!r} is {t.dtype}, not float32")
            # A diverged training run or a hostile file: every score would be NaN, so every event
            # would be dead-lettered and no alert would ever go out.
            if not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
        if key.startswith(("companion.", "range.")):
            want = torch.int64 if _dtype_of(key) is np.int64 else torch.float64
            if t.dtype != want:
                raise CheckpointError(f"{path}: tensor {key!r} is {t.dtype}, not {want}")
    scores = tensors.get("train_scores")
    if scores is None or scores.ndim != 1 or not scores.numel():
        raise CheckpointError(f"{path}: train_scores must be a non-empty vector")
    if not scores.dtype.is_floating_point or not bool(torch.isfinite(scores).all()):
        raise CheckpointError(f"{path}: train_scores must be finite numbers")


def load_checkpoint(
    path: str | Path,
    device: str = "cpu",
    *,
    precision: Precision = "fp32",
    cuda_graph: bool = False,
) -> Scorer:
    """Verify and load a checkpoint's autoencoder into a Scorer on `device` ("auto" | "cpu" | "cuda").

    ``precision`` and ``cuda_graph`` are the Scorer's GPU options (see ``models.cuda``); a CPU ignores them.
    A companion the file holds is verified and left out: ``load_detector`` joins it.
    """
    scorer = _load(Path(path), device, precision, cuda_graph, pair=False)
    assert isinstance(scorer, Scorer)
    return scorer


def load_detector(
    path: str | Path,
    device: str = "cpu",
    *,
    precision: Precision = "fp32",
    cuda_graph: bool = False,
) -> Scorer | PairScorer:
    """As ``load_checkpoint``, with the companion joined where the file holds one: what ``streamer
    run`` and ``streamer evaluate`` score with."""
    return _load(Path(path), device, precision, cuda_graph, pair=True)


def _load(
    path: Path, device: str, precision: Precision, cuda_graph: bool, *, pair: bool
) -> Scorer | PairScorer:
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}")
    return _verified(
        path, lambda: _from_bytes(path, _read(path), device, precision, cuda_graph, pair=pair)
    )


def _verified(path: Path, load: Callable[[], Scorer | PairScorer]) -> Scorer | PairScorer:
    """``load()``, with whatever a hostile file provokes turned into a refusal, never a crash."""
    try:
        return load()
    except ModelError:  # CheckpointError included: refused with its own reason
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint refused ({type(e).__name__}: {e})") from e


def _from_bytes(
    path: Path, data: bytes, device: str, precision: Precision, cuda_graph: bool, *, pair: bool
) -> Scorer | PairScorer:
    tensors, meta_json = _parse(path, data)
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object")
    if missing := [k for k in _REQUIRED if k not in meta]:
        raise CheckpointError(f"{path}: metadata lacks required keys {missing}")
    if type(meta["format_version"]) is not int or meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta['format_version']!r} unsupported (expected {FORMAT_VERSION})"
        )
    _check_meta(path, meta)
    digest = tensors_sha256(tensors)
    if digest != meta["tensors_sha256"]:
        raise CheckpointError(
            f"{path}: tensor bytes do not match their recorded sha256 (modified or corrupt)"
        )

    _check_tensors(path, tensors)
    config_cls, model_cls = KINDS[meta["kind"]]
    try:
        cfg_args = dict(meta["model_config"])
        for k, v in cfg_args.items():  # JSON turns tuples into lists
            if isinstance(v, list):
                cfg_args[k] = tuple(v)
        with torch.device("meta"):  # no random init: it would be overwritten, and draws global RNG
            model = model_cls(config_cls(**cfg_args))
        if len(meta["features"]) != model.config.n_features:
            raise ValueError(
                f"{len(meta['features'])} feature names for {model.config.n_features} inputs"
            )
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True, assign=True)
        constant = tensors.get("scaler.constant")
        if constant is not None and not bool(((constant == 0) | (constant == 1)).all()):
            raise ValueError("scaler.constant must hold only 0 and 1")
        scaler = RobustScaler(
            tensors["scaler.center"].numpy(),
            tensors["scaler.scale"].numpy(),
            float(meta["scaler"]["clip"]),
            None if constant is None else constant.numpy() == 1,
        )
        train_scores = tensors["train_scores"].numpy()
        error_scale = tensors["error_scale"].numpy() if "error_scale" in tensors else None
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: checkpoint content does not fit its metadata ({e})") from e
    scorer = Scorer(
        model,
        scaler,
        features=meta["features"],
        name=meta["name"],
        version=checkpoint_version(digest, meta_json),
        train_scores=train_scores,
        device=device,
        metadata=meta,
        error_scale=error_scale,
        precision=precision,
        cuda_graph=cuda_graph,
    )
    _probe(path, scorer)
    companion = meta.get("companion")
    if companion is None:
        return scorer
    joined = _pair(path, scorer, tensors, companion)
    return joined if pair else scorer


def _pair(
    path: Path, scorer: Scorer, tensors: dict[str, torch.Tensor], companion: Any
) -> PairScorer:
    """The autoencoder joined with the companion the file holds; anything inconsistent is refused."""
    if not isinstance(companion, dict) or companion.get("kind") != HalfSpaceTreesScorer.kind:
        raise CheckpointError(f"{path}: companion must be an object of kind 'hst'")
    params: dict[str, int | float] = {}
    for k in ("holdout", "seed"):
        v = companion.get(k)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise CheckpointError(f"{path}: the companion's {k} must be a number")
        params[k] = v
    if not isinstance(companion.get("version"), str):
        raise CheckpointError(f"{path}: the companion's version must be a string")
    arrays = {
        k[len("companion.") :]: v.numpy() for k, v in tensors.items() if k.startswith("companion.")
    }
    try:
        hst = HalfSpaceTreesScorer.from_state(
            scorer.features, scorer.window, arrays, params, version=companion["version"]
        )
        return PairScorer(scorer, hst, tensors["range.low"].numpy(), tensors["range.high"].numpy())
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: the companion does not fit the model ({e})") from e


def _probe(path: Path, scorer: Scorer) -> None:
    """Refuse a model whose scores are not finite where its inputs are in range: the training centre
    and the scaler's clip either side. Finite weights alone do not ensure it (weights of +-3e38, or
    an error divisor of 1e-45): such a model would dead-letter every event it is given."""
    sc = scorer.scaler
    z = np.array([0.0, sc.clip, -sc.clip])[:, None]  # scaled units, per row
    raw = sc.center.astype(np.float64) + z * sc.scale.astype(np.float64)
    big = float(np.finfo(np.float32).max)
    rows = np.clip(raw, -big, big).astype(np.float32)  # (3, F)
    x = rows if scorer.window <= 1 else np.repeat(rows[:, None, :], scorer.window, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        scores, _ = scorer.score(x)
    if not np.isfinite(scores).all():
        raise CheckpointError(
            f"{path}: the model's scores are not finite for inputs in its training range "
            f"({scores.tolist()}): every event would be dead-lettered"
        )
