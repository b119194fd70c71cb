from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models import CheckpointError, TrainResult, load_checkpoint, save_checkpoint
from models.checkpoint import METADATA_KEY, tensors_sha256
from models.errors import ModelError


def test_round_trip_gives_identical_scores(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable[[str, np.ndarray], np.ndarray],
    trained: dict[str, TrainResult],
    kind: str,
) -> None:
    result = trained[kind]
    a, b = result.scorer, load_checkpoint(result.path)
    x = make_batch(kind, make_data(200, seed=7))
    sa, ea = a.score(x)
    sb, eb = b.score(x)
    assert np.array_equal(sa, sb) and np.array_equal(ea, eb)
    assert np.array_equal(a.encode(x), b.encode(x))
    assert np.array_equal(a.train_scores, b.train_scores)
    assert a.version == b.version and len(a.version) == 12
    for (k, va), vb in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k


def test_metadata_contents(trained: dict[str, TrainResult]) -> None:
    path = trained["conv"].path
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    assert meta["kind"] == "conv" and meta["window"] == 8 and meta["format_version"] == 1
    assert meta["features"] == [f"f{i}" for i in range(6)]
    assert meta["model_config"]["window"] == 8
    assert len(meta["data_sha256"]) == 64 and len(meta["tensors_sha256"]) == 64
    assert {"torch", "numpy", "ae-streamer"} <= set(meta["versions"])
    assert meta["created_at"].endswith("+00:00") and meta["n_train"] > 0


def test_save_is_atomic_and_leaves_no_temp_files(
    trained: dict[str, TrainResult], tmp_path: Path
) -> None:
    s = trained["dense"].scorer
    out = tmp_path / "m.safetensors"
    version = save_checkpoint(
        out, s.model, s.scaler, features=s.features, train_scores=s.train_scores
    )
    assert load_checkpoint(out).version == version
    assert os.listdir(tmp_path) == ["m.safetensors"]


def copy_of(result: TrainResult, tmp_path: Path) -> Path:
    p = tmp_path / "copy.safetensors"
    p.write_bytes(result.path.read_bytes())
    return p


def test_a_checkpoint_gets_the_mode_of_any_new_file(
    trained: dict[str, TrainResult], tmp_path: Path
) -> None:
    """mkstemp's 0600 stayed on the checkpoint: a detector running as another user could not read it."""
    s = trained["dense"].scorer
    out = tmp_path / "m.safetensors"
    mask = os.umask(0o027)
    try:
        save_checkpoint(out, s.model, s.scaler, features=s.features, train_scores=s.train_scores)
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o640


def test_refuses_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_refuses_truncated_file(trained: dict[str, TrainResult], tmp_path: Path) -> None:
    p = copy_of(trained["dense"], tmp_path)
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_refuses_flipped_tensor_byte(trained: dict[str, TrainResult], tmp_path: Path) -> None:
    p = copy_of(trained["vae"], tmp_path)
    blob = bytearray(p.read_bytes())
    blob[-5] ^= 0x01  # last bytes are tensor data, not header
    p.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p)


def test_refuses_garbage(tmp_path: Path) -> None:
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


class Exploit:
    """Unpickling this would create a marker file: what a malicious torch.save file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_refuses_pickle_without_running_it(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.safetensors"
    if writer == "pickle":
        p.write_bytes(pickle.dumps(Exploit(marker)))
    else:
        torch.save({"model": Exploit(marker)}, p)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_checkpoint(p)
    assert not marker.exists()


def test_refuses_safetensors_without_our_metadata(tmp_path: Path) -> None:
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(p)


def rewrite_meta(result: TrainResult, tmp_path: Path, **changes: object) -> Path:
    with safe_open(str(result.path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()[METADATA_KEY])
    meta.update(changes)
    p = tmp_path / "edited.safetensors"
    save_file(tensors, str(p), metadata={METADATA_KEY: json.dumps(meta)})
    return p


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"kind": "transformer"}, "unknown model kind"),
        ({"format_version": 99}, "format version"),
        ({"tensors_sha256": "0" * 64}, "sha256"),
        ({"features": ["a"]}, "feature names"),
    ],
)
def test_refuses_edited_metadata(
    trained: dict[str, TrainResult], tmp_path: Path, changes: dict[str, object], match: str
) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(rewrite_meta(trained["dense"], tmp_path, **changes))


def test_unedited_rewrite_still_loads(trained: dict[str, TrainResult], tmp_path: Path) -> None:
    """Guards the test above: only the edit, not the rewriting, makes a checkpoint refused."""
    assert load_checkpoint(rewrite_meta(trained["dense"], tmp_path)).kind == "dense"


def rewrite(
    result: TrainResult,
    tmp_path: Path,
    meta_changes: dict[str, object] | None = None,
    tensor_changes: dict[str, torch.Tensor] | None = None,
    raw_meta: str | None = None,
) -> Path:
    """A checkpoint with edited metadata or tensors, re-hashed, so that only the edit is judged."""
    with safe_open(str(result.path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()[METADATA_KEY])
    tensors.update(tensor_changes or {})
    meta.update(meta_changes or {})
    meta["tensors_sha256"] = tensors_sha256(tensors)
    p = tmp_path / "hostile.safetensors"
    save_file(tensors, str(p), metadata={METADATA_KEY: raw_meta or json.dumps(meta)})
    return p


@pytest.mark.parametrize(
    ("kind", "meta", "tensors", "match"),
    [
        ("dense", {"kind": ["dense"]}, None, "unknown model kind"),
        ("dense", {"features": ["a", "a", "b", "c", "d", "e"]}, None, "distinct names"),
        ("dense", {"features": [1, "b", "c", "d", "e", "f"]}, None, "distinct names"),
        ("dense", {"name": {"x": 1}}, None, "name must be"),
        ("dense", {"model_config": {"n_features": 6, "hidden": [1] * 100_000}}, None, "hidden"),
        ("conv", {"model_config": {"n_features": 6, "kernel_size": 257}}, None, "too large"),
        ("conv", {"model_config": {"n_features": 6, "window": 10**9}}, None, "window"),
        ("dense", {"scaler": {"method": "median-iqr", "clip": 10**400}}, None, "refused"),
        ("dense", None, {"train_scores": torch.zeros(3, 2, dtype=torch.float64)}, "vector"),
        ("dense", None, {"train_scores": torch.tensor([1.0, float("nan")])}, "finite"),
        ("dense", None, {"scaler.center": torch.zeros(6, dtype=torch.float64)}, "float32"),
        # below: these loaded, and then every score failed (clip 1e39: an overflow at the first batch)
        # or was infinite or NaN, so every event was dead-lettered
        ("dense", {"scaler": {"method": "median-iqr", "clip": 1e39}}, None, "at most"),
        ("dense", {"format_version": True}, None, "format version"),
        ("dense", None, {"error_scale": torch.full((6,), 1e-45)}, "error_scale"),
        ("conv", None, {"error_scale": torch.full((6,), 1e-30)}, "error_scale"),
    ],
)
def test_refuses_hostile_content_that_hashes_correctly(
    trained: dict[str, TrainResult],
    tmp_path: Path,
    kind: str,
    meta: dict[str, object] | None,
    tensors: dict[str, torch.Tensor] | None,
    match: str,
) -> None:
    """Each of these once escaped as TypeError, RecursionError, OverflowError or a huge allocation, or
    loaded and failed only at the first batch; all are refused (ModelError, CheckpointError's root),
    quickly."""
    with pytest.raises(ModelError, match=match):
        load_checkpoint(rewrite(trained[kind], tmp_path, meta, tensors))


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_refuses_weights_that_are_not_finite(
    trained: dict[str, TrainResult], tmp_path: Path, kind: str, value: float
) -> None:
    """Such a model loaded, then scored NaN for every event: all of them dead-lettered, no alert."""
    with safe_open(str(trained[kind].path), framework="pt") as f:
        names = sorted(k for k in f.keys() if k.startswith("model.") and k.endswith("weight"))  # noqa: SIM118
        first = f.get_tensor(names[0])
        scale = f.get_tensor("scaler.scale")
    poisoned = first.clone()
    poisoned.view(-1)[0] = value
    with pytest.raises(CheckpointError, match=f"{re.escape(names[0])}.*NaN or infinite"):
        load_checkpoint(rewrite(trained[kind], tmp_path, tensor_changes={names[0]: poisoned}))
    bad_scale = scale.clone()
    bad_scale[-1] = value
    with pytest.raises(CheckpointError, match=r"scaler\.scale.*NaN or infinite"):
        load_checkpoint(
            rewrite(trained[kind], tmp_path, tensor_changes={"scaler.scale": bad_scale})
        )


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
def test_refuses_finite_weights_whose_scores_are_not(
    trained: dict[str, TrainResult], tmp_path: Path, kind: str
) -> None:
    """Weights of +-3e38 are finite and passed the check, but scored inf or NaN for in-range inputs:
    every event dead-lettered. The loader scores the training centre and +-clip and refuses them."""
    with safe_open(str(trained[kind].path), framework="pt") as f:
        name = sorted(k for k in f.keys() if k.startswith("model.") and k.endswith("weight"))[0]  # noqa: SIM118
        huge = f.get_tensor(name).clone()
    huge.view(-1)[::2] = 3e38
    huge.view(-1)[1::2] = -3e38
    with pytest.raises(CheckpointError, match="not finite for inputs in its training range"):
        load_checkpoint(rewrite(trained[kind], tmp_path, tensor_changes={name: huge}))


@pytest.mark.parametrize("raw", ['["x"]', "[" * 200_000 + "]" * 200_000, "null"])
def test_refuses_metadata_that_is_not_an_object(
    trained: dict[str, TrainResult], tmp_path: Path, raw: str
) -> None:
    with pytest.raises(CheckpointError):
        load_checkpoint(rewrite(trained["dense"], tmp_path, raw_meta=raw))


def test_a_loaded_model_does_not_depend_on_its_file(
    make_data: Callable[..., np.ndarray],
    make_batch: Callable[[str, np.ndarray], np.ndarray],
    trained: dict[str, TrainResult],
    tmp_path: Path,
) -> None:
    """Overwriting or truncating the file in place (``cp`` over it) after loading changes nothing."""
    p = copy_of(trained["dense"], tmp_path)
    scorer = load_checkpoint(p)
    x = make_batch("dense", make_data(50, seed=3))
    before = scorer.score(x)[0].copy()
    other = trained["vae"].path.read_bytes()
    with p.open("r+b") as f:  # in place: same inode, as cp does
        f.write(other)
    assert np.array_equal(scorer.score(x)[0], before)
    with p.open("r+b") as f:
        f.truncate(100)
    assert np.array_equal(scorer.score(x)[0], before)


@pytest.mark.parametrize(
    "change",
    [{"name": "n" * 300}, {"features": ["f0", "f1", "f2", "f3", "f4", "x" * 300]}],
    ids=["long-name", "long-feature-name"],
)
def test_a_checkpoint_its_loader_would_refuse_never_replaces_a_good_one(
    trained: dict[str, TrainResult], tmp_path: Path, change: dict[str, object]
) -> None:
    """`streamer train --out prod.safetensors` on a CSV with a 300-character column name wrote the
    file, then refused to load it: the good checkpoint at that path was gone."""
    s = trained["dense"].scorer
    out = tmp_path / "prod.safetensors"
    save_checkpoint(out, s.model, s.scaler, features=s.features, train_scores=s.train_scores)
    before = out.read_bytes()
    kwargs: dict = {"features": s.features, "train_scores": s.train_scores, **change}
    with pytest.raises(CheckpointError, match="256"):
        save_checkpoint(out, s.model, s.scaler, **kwargs)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_training_refuses_names_a_checkpoint_may_not_hold_before_it_trains(
    make_data: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    from models import TrainConfig, train

    features = ["a", "", "b", "c", "d", "e"]
    with pytest.raises(CheckpointError, match="features"):
        train(
            make_data(50), features, TrainConfig(kind="dense", epochs=1), tmp_path / "m.safetensors"
        )
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(ValueError, match="latent_dim"):
        TrainConfig(kind="dense", latent_dim=100_000)
