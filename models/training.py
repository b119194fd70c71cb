"""Training: fit a scaler and an autoencoder on normal data, early-stop, write a checkpoint.

Steps of `train`:
  1. split off validation data (dense/vae: random rows; conv: the last `val_fraction` of each
     entity's rows, so no window straddles the split and validation is "the future");
  2. learn the robust scaler on the training split only;
  3. build the model with its init seeded inside a local `fork_rng` (global RNG untouched);
  4. Adam over shuffled minibatches (shuffling and VAE noise from seeded torch.Generators),
     early stopping on validation loss with `patience`, best weights restored;
  5. score the validation (held-back normal) data -> `train_scores` for threshold warm-up;
  6. write the checkpoint atomically and `<out stem>.loss.png` beside it; reload it as the Scorer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models.checkpoint import MAX_FEATURES, check_names, load_detector, save_checkpoint
from models.conv import ConvConfig
from models.dense import DenseConfig
from models.errors import ModelError
from models.hst import HalfSpaceTreesScorer
from models.kinds import KINDS, AnyModel
from models.pair import PairScorer
from models.scaling import RobustScaler
from models.scorer import Scorer, resolve_device
from models.vae import VAE, VAEConfig, kl_divergence

# Held-back samples are evaluated this many floats of input at a time (64 MiB): 8,192 rows of
# 2,048 features, or fewer windows as W x F grows (8,192 windows of 1,024 x 256 were 8.6 GB a chunk).
_EVAL_FLOATS = 16 * 1_048_576


def _eval_chunk(split: _Split) -> int:
    """How many samples of ``split`` one evaluation chunk holds."""
    return max(1, min(8_192, _EVAL_FLOATS // (split.window * split.raw.shape[1])))


# A latent width beyond the widest input a checkpoint may have buys nothing and can ask for gigabytes.
MAX_LATENT = MAX_FEATURES


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "dense"  # "dense" | "conv" | "vae"
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    val_fraction: float = 0.2
    patience: int = 5  # epochs without a better validation loss before stopping
    seed: int = 0
    window: int = 16  # conv only
    latent_dim: int | None = None  # None: chosen from n_features (and window)
    hidden: tuple[int, ...] | None = None  # dense/vae layer widths, conv channels; None: from F
    progress: bool = True
    name: str | None = None
    vae_samples: int = 1  # z samples per event in the VAE's training ELBO
    weight_decay: float = 0.0
    device: str = "cpu"  # "auto" | "cpu" | "cuda"; also the device of the returned Scorer
    max_train_scores: int = 20_000
    # dense/conv: divide each feature's squared error by its mean on held-back normal data (floored at
    # the median over features), stored in the checkpoint as error_scale
    normalize_errors: bool = True
    # "hst": fit Half-Space Trees on the same rows beside a conv model, and keep the rows' range; the
    # checkpoint then scores as the pair of models.pair (``--model conv+hst``)
    companion: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.companion not in (None, "hst"):
            raise ValueError(f"companion must be None or 'hst', got {self.companion!r}")
        if self.companion is not None and self.kind != "conv":
            raise ValueError("a companion goes with a conv model only")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.vae_samples < 1:
            raise ValueError("epochs, batch_size, patience and vae_samples must be >= 1")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.latent_dim is not None and not 1 <= self.latent_dim <= MAX_LATENT:
            raise ValueError(f"latent_dim must be 1 to {MAX_LATENT}, got {self.latent_dim}")
        if self.max_train_scores < 1:
            raise ValueError(f"max_train_scores must be >= 1, got {self.max_train_scores}")


def split_kind(name: str) -> tuple[str, str | None]:
    """A model name as the commands take it -> (TrainConfig.kind, TrainConfig.companion):
    "conv" -> ("conv", None), "conv+hst" -> ("conv", "hst")."""
    kind, _, companion = name.partition("+")
    return kind, companion or None


@dataclass(frozen=True)
class TrainResult:
    path: Path
    history: list[dict[str, float]]  # one {"epoch", "train_loss", "val_loss"} per epoch run
    best_epoch: int  # 1-based epoch whose weights were kept
    scorer: Scorer  # loaded back from `path`: the autoencoder
    detector: Scorer | PairScorer  # what run scores with: the scorer, or the pair with a companion
    # conv: entities with fewer rows than the window, left out of training (and their rows)
    short_entities: int = 0
    short_rows: int = 0


def _round8(n: int) -> int:
    return 8 * math.ceil(n / 8)


def model_config(config: TrainConfig, n_features: int) -> DenseConfig | ConvConfig | VAEConfig:
    """The model config for `config`, with sizes not given chosen from n_features (and window)."""
    f = n_features
    if config.kind == "conv":
        latent = config.latent_dim or max(2, min(64, config.window * f // 8))
        # Small on purpose: the conv encoder runs on every event's whole window. About half the feature
        # count, 8 to 32 channels: at F = 16 and W = 16, 8 channels score ~2.3x as fast as 16 on a CPU
        # core, which keeps the conv pipeline within 2x of dense (`streamer bench`). Below 16 features
        # 16 channels: at 8, a univariate test series lost two of its six anomalies.
        c = 16 if f < 16 else min(32, max(8, _round8(f // 2)))
        return ConvConfig(f, config.window, config.hidden or (c, c), latent)
    # a bottleneck narrower than the input, except for a single feature where none is possible
    latent = config.latent_dim or (max(1, min(max(2, f // 4), f - 1)) if f > 1 else 1)
    h1 = min(256, max(16, _round8(2 * f)))
    hidden = config.hidden or (h1, max(latent, h1 // 2))
    cls = VAEConfig if config.kind == "vae" else DenseConfig
    return cls(f, hidden, latent)


def data_sha256(data: np.ndarray, entities: np.ndarray | None) -> str:
    h = hashlib.sha256(f"{data.dtype}|{data.shape}|".encode())
    h.update(np.ascontiguousarray(data).tobytes())
    if entities is not None:
        h.update(np.asarray(entities).astype(str).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Split:
    """Training and validation samples as start-row indices into one (N, F) array."""

    raw: np.ndarray  # (N, F) float32, rows grouped by entity for conv
    train: np.ndarray  # (n_train,) int64 start rows
    val: np.ndarray  # (n_val,) int64 start rows
    window: int  # 1: a sample is one row; else W consecutive rows
    short_entities: int = 0  # entities left out: fewer rows than the window
    short_rows: int = 0

    def take(self, x: np.ndarray | torch.Tensor, starts: Any) -> Any:
        """Samples at `starts` from rows x: (B, F), or (B, W, F) windows."""
        if self.window == 1:
            return x[starts]
        offsets = (
            np.arange(self.window)
            if isinstance(x, np.ndarray)
            else torch.arange(self.window, device=x.device)
        )
        return x[starts[:, None] + offsets]


def _split(
    data: np.ndarray, entities: np.ndarray | None, config: TrainConfig, gen: torch.Generator
) -> tuple[_Split, np.ndarray]:
    """Return the split and a boolean mask of the rows the scaler may learn from."""
    n = data.shape[0]
    if config.kind != "conv":
        n_val = round(n * config.val_fraction)
        if n_val < 1 or n - n_val < 1:
            raise ValueError(f"{n} rows are too few for val_fraction={config.val_fraction}")
        perm = torch.randperm(n, generator=gen).numpy()
        val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        mask = np.zeros(n, dtype=bool)
        mask[tr] = True
        return _Split(data, tr, val, 1), mask

    w = config.window
    if entities is None:
        order, bounds = np.arange(n), np.array([0, n])
    else:
        keys = entities
        try:
            order = np.argsort(keys, kind="stable")  # group by entity, keep time order within
        except TypeError:  # mixed types (1 and "a") do not sort: number each entity instead
            number: dict[Any, int] = {}
            try:
                keys = np.fromiter(
                    (number.setdefault(e, len(number)) for e in entities.tolist()),
                    dtype=np.int64,
                    count=len(entities),
                )
            except TypeError as exc:
                raise ValueError(f"entities must be hashable values: {exc}") from None
            order = np.argsort(keys, kind="stable")
        _, first = np.unique(keys[order], return_index=True)
        bounds = np.append(first, n)
    raw = data[order]
    mask = np.zeros(n, dtype=bool)
    tr_starts, val_starts = [], []
    short = short_rows = 0
    for a, b in itertools.pairwise(bounds):
        cut = b - round((b - a) * config.val_fraction)  # rows [a, cut) train, [cut, b) validate
        tr_here, val_here = np.arange(a, cut - w + 1), np.arange(cut, b - w + 1)
        if not len(tr_here) and not len(val_here):
            # no window of its own (fewer rows than the window, or too few to give one on either side
            # of the cut): left out, scaler included (the detector pads such an entity's windows)
            short, short_rows = short + 1, short_rows + int(b - a)
            continue
        mask[a:cut] = True
        tr_starts.append(tr_here)
        val_starts.append(val_here)
    if not tr_starts:
        raise ValueError(
            f"window={w} gives no training or validation window in any entity (the longest has "
            f"{int(np.diff(bounds).max())} rows); use more rows or a shorter window"
        )
    tr, val = np.concatenate(tr_starts), np.concatenate(val_starts)
    if len(tr) == 0 or len(val) == 0:
        raise ValueError(
            f"window={w} leaves no {'training' if len(tr) == 0 else 'validation'} windows; "
            "use more rows, a shorter window or another val_fraction"
        )
    return _Split(raw, tr, val, w, short, short_rows), mask


def _loss(
    model: AnyModel, x: torch.Tensor, samples: int, gen: torch.Generator | None
) -> torch.Tensor:
    """Mean training objective of a batch; VAE: negative ELBO, with z = mu when gen is None."""
    if isinstance(model, VAE):
        mu, logvar = model.encode(x)  # (B, L)
        draws = 1 if gen is None else samples
        recon = x.new_zeros(x.shape[0])  # (B,)
        for _ in range(draws):
            z = mu if gen is None else model.reparameterize(mu, logvar, gen)
            recon = recon + 0.5 * (x - model.decode(z)).square().sum(dim=1)
        return (recon / draws + kl_divergence(mu, logvar)).mean()
    return (x - model(x)).square().mean()  # (B, F) or (B, W, F)


def _evaluate(model: AnyModel, split: _Split, rows: torch.Tensor, samples: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        chunk = _eval_chunk(split)
        for i in range(0, len(split.val), chunk):
            idx = torch.from_numpy(split.val[i : i + chunk]).to(rows.device)
            xb = split.take(rows, idx)
            total += _loss(model, xb, samples, None).item() * len(idx)
    return total / len(split.val)


def save_loss_curve(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    """Train/validation loss per epoch as a PNG (Agg canvas; pyplot's global state untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def train(
    data: np.ndarray,
    features: Sequence[str],
    config: TrainConfig,
    out: str | Path,
    entities: np.ndarray | None = None,
) -> TrainResult:
    """Train `config.kind` on normal data (N, F) and write the checkpoint to `out`."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"data must be (N, F), got shape {data.shape}")
    if len(features) != data.shape[1] or len(set(features)) != len(features):
        raise ValueError(f"need {data.shape[1]} distinct feature names, got {list(features)}")
    if not np.isfinite(data).all():
        raise ValueError(
            "training data contains NaN or inf (or values beyond float32's range, "
            f"{np.finfo(np.float32).max:.3g}, which become inf)"
        )
    if entities is not None:
        entities = np.asarray(entities)
        if entities.shape != (data.shape[0],):
            raise ValueError(f"entities must be ({data.shape[0]},), got {entities.shape}")
        if config.companion is not None and len(np.unique(entities)) > 1:
            raise ValueError(
                "a companion learns one series' windows: train conv+hst on one entity's rows"
            )
    out = Path(out)
    # What the checkpoint's loader would refuse, refused before the training rather than after it.
    check_names(out, config.kind, features, config.name)
    # Where it goes, checked before the training too: a folder, or a parent that is a file, was found
    # only at the save, after every epoch ("[Errno 17] File exists").
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --out names the checkpoint file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot write {out}: a part of its folder is a file") from None
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:  # a folder that cannot be written to (read-only, /proc), found now rather than at the save
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.strerror or exc}") from None
    device = resolve_device(config.device)
    gen = torch.Generator().manual_seed(config.seed)  # shuffling (cpu)
    noise = torch.Generator(device=device).manual_seed(config.seed + 1)  # VAE reparameterisation

    split, fit_rows = _split(data, entities, config, gen)
    scaler = RobustScaler.fit(split.raw[fit_rows], names=features)
    rows = torch.from_numpy(scaler.transform(split.raw)).to(device)  # (N, F) scaled
    cfg = model_config(config, data.shape[1])
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # nn init draws from the global RNG; forked, so not leaked
        model: AnyModel = KINDS[config.kind][1](cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state, stale = math.inf, 0, None, 0
    bar = tqdm(
        range(1, config.epochs + 1), desc=f"train {config.kind}", disable=not config.progress
    )
    for epoch in bar:
        model.train()
        total = 0.0
        perm = split.train[torch.randperm(len(split.train), generator=gen).numpy()]
        for i in range(0, len(perm), config.batch_size):
            idx = torch.from_numpy(perm[i : i + config.batch_size]).to(device)
            loss = _loss(model, split.take(rows, idx), config.vae_samples, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        train_loss = total / len(perm)
        val_loss = _evaluate(model, split, rows, config.vae_samples)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < best_val:
            best_val, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val_loss:.4g}", best=best_epoch)
        if stale >= config.patience:
            break
    bar.close()
    if best_state is None:
        raise ModelError("validation loss was never finite; check the data and lr")
    model.load_state_dict(best_state)

    # Scores of held-back normal data, through the same path as serving.
    val = split.val
    if len(val) > config.max_train_scores:
        pick = torch.randperm(len(val), generator=gen)[: config.max_train_scores].numpy()
        val = np.sort(val[pick])

    def held_back(error_scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, per-feature errors) of the held-back rows, scored as the detector will."""
        scorer = Scorer(
            model,
            scaler,
            features=features,
            name="",
            version="",
            train_scores=np.empty(0),
            device=device,
            error_scale=error_scale,
        )
        chunk = _eval_chunk(split)
        parts = [
            scorer.score(split.take(split.raw, val[i : i + chunk]))
            for i in range(0, len(val), chunk)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    train_scores, errors = held_back(None)
    error_scale = None
    if config.normalize_errors and config.kind in ("dense", "conv"):
        typical = errors.astype(np.float64).mean(axis=0)  # (F,)
        floor = max(float(np.median(typical)), 1e-6)
        error_scale = np.maximum(typical, floor).astype(np.float32)
        train_scores, _ = held_back(error_scale)

    companion, train_range = None, None
    if config.companion is not None:  # "hst": on the same rows, with the model's window
        companion = HalfSpaceTreesScorer(features, window=config.window, seed=config.seed).fit(data)
        train_range = (data.min(axis=0), data.max(axis=0))

    save_checkpoint(
        out,
        model,
        scaler,
        features=features,
        train_scores=train_scores,
        name=config.name,
        data_sha256=data_sha256(data, entities),
        n_train=int(fit_rows.sum()),
        train_config=dataclasses.asdict(config),
        error_scale=error_scale,
        companion=companion,
        train_range=train_range,
    )
    save_loss_curve(history, best_epoch, out.parent / f"{out.stem}.loss.png")
    detector = load_detector(out, device=config.device)
    return TrainResult(
        out,
        history,
        best_epoch,
        detector.primary if isinstance(detector, PairScorer) else detector,
        detector,
        split.short_entities,
        split.short_rows,
    )
