"""The model commands as a user runs them: train from each file format, encode, sample."""

from __future__ import annotations

import csv
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from models import load_checkpoint
from streamer import cli
from streamer.cli import main
from streamer.simulate import SimConfig, normal_frame


@pytest.fixture(scope="module")
def frame():
    return normal_frame(3_000, SimConfig(seed=5))


@pytest.fixture(scope="module")
def csv_path(frame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, features, entities = frame
    path = tmp_path_factory.mktemp("data") / "normal.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sensor_id", *features])
        writer.writerows(
            [key, *row] for key, row in zip(entities.tolist(), x.tolist(), strict=True)
        )
    return path


def train(data: Path, out: Path, *extra: str) -> dict:
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "3",
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    return (
        orjson.loads(out.with_suffix(".json").read_bytes())
        if out.with_suffix(".json").exists()
        else {}
    )


@pytest.mark.parametrize("kind", ["dense", "conv", "vae"])
def test_train_each_kind_from_csv(kind: str, csv_path: Path, frame, tmp_path: Path) -> None:
    out = tmp_path / f"{kind}.safetensors"
    train(
        csv_path,
        out,
        "--model",
        kind,
        "--entity-column",
        "sensor_id",
        "--window",
        "8",
        "--name",
        f"my-{kind}",
    )
    scorer = load_checkpoint(out)
    assert scorer.kind == kind and scorer.name == f"my-{kind}"
    assert list(scorer.features) == frame[1]  # every numeric column, the entity column left out
    assert (tmp_path / f"{kind}.loss.png").stat().st_size > 1_000
    assert scorer.train_scores.size > 0


def test_train_conv_with_its_companion_from_one_series(
    frame, csv_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, features, entities = frame
    path = tmp_path / "one.csv"
    one = x[entities == entities[0]]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(features)
        writer.writerows(one.tolist())
    out = tmp_path / "pair.safetensors"
    train(path, out, "--model", "conv+hst", "--window", "8")
    printed = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["kind"] == "conv+hst"
    from models.checkpoint import load_detector
    from models.pair import PairScorer

    pair = load_detector(out)
    assert isinstance(pair, PairScorer) and pair.window == 8
    assert np.array_equal(pair.low, one.min(axis=0)) and np.array_equal(pair.high, one.max(axis=0))
    assert load_checkpoint(out).kind == "conv"  # the autoencoder alone, for embed and the like
    # with an entity column of several series it is refused, before any training
    capsys.readouterr()
    argv = ["train", "--data", str(csv_path), "--out", str(tmp_path / "k.safetensors")]
    assert main([*argv, "--model", "conv+hst", "--entity-column", "sensor_id"]) == 2
    assert "one series" in capsys.readouterr().err
    assert not (tmp_path / "k.safetensors").exists()


def test_train_from_jsonl_and_npz_with_chosen_features(frame, tmp_path: Path) -> None:
    x, features, _ = frame
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(
        b"".join(
            orjson.dumps(dict(zip(features, row, strict=True))) + b"\n" for row in x[:500].tolist()
        )
    )
    train(jsonl, tmp_path / "j.safetensors", "--features", "rpm,current")
    assert load_checkpoint(tmp_path / "j.safetensors").features == ("rpm", "current")
    npz = tmp_path / "data.npz"
    np.savez(npz, train=x[:500])
    train(npz, tmp_path / "n.safetensors")
    assert len(load_checkpoint(tmp_path / "n.safetensors").features) == x.shape[1]


def test_encode_to_npy_and_csv(csv_path: Path, frame, tmp_path: Path) -> None:
    ckpt = tmp_path / "d.safetensors"
    train(csv_path, ckpt, "--latent-dim", "3")
    assert (
        main(
            [
                "encode",
                "--model",
                str(ckpt),
                "--data",
                str(csv_path),
                "--out",
                str(tmp_path / "z.npy"),
            ]
        )
        == 0
    )
    z = np.load(tmp_path / "z.npy", allow_pickle=False)
    assert z.shape == (len(frame[0]), 3) and np.isfinite(z).all()
    assert (
        main(
            [
                "encode",
                "--model",
                str(ckpt),
                "--data",
                str(csv_path),
                "--out",
                str(tmp_path / "z.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.reader((tmp_path / "z.csv").open()))
    assert rows[0] == ["row", "z0", "z1", "z2"] and len(rows) == len(frame[0]) + 1
    np.testing.assert_allclose(np.array(rows[1:], dtype=float)[:, 1:], z, rtol=1e-6)


def test_sample_writes_events_in_original_units(csv_path: Path, frame, tmp_path: Path) -> None:
    ckpt = tmp_path / "v.safetensors"
    train(csv_path, ckpt, "--model", "vae")
    out = tmp_path / "synthetic.jsonl"
    assert (
        main(["sample", "--model", str(ckpt), "-n", "200", "--out", str(out), "--seed", "3"]) == 0
    )
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == 200 and set(rows[0]) == set(frame[1])
    rpm = np.array([r["rpm"] for r in rows])
    assert (
        abs(rpm.mean() - frame[0][:, frame[1].index("rpm")].mean())
        < frame[0][:, frame[1].index("rpm")].std()
    )
    again = tmp_path / "new" / "folder" / "again.jsonl"  # its folder is made
    main(["sample", "--model", str(ckpt), "-n", "200", "--out", str(again), "--seed", "3"])
    assert again.read_bytes() == out.read_bytes()  # the seed makes it reproducible


def test_sample_draws_in_blocks_and_its_first_events_do_not_depend_on_how_many(
    csv_path: Path, tmp_path: Path
) -> None:
    """`sample -n` held every event in memory at once (~250 bytes each); it now draws a block at a
    time, and whole blocks, so that a longer run begins with the shorter one."""
    from models import load_checkpoint
    from models.scorer import SAMPLE_BLOCK

    ckpt = tmp_path / "v.safetensors"
    train(csv_path, ckpt, "--model", "vae")
    scorer = load_checkpoint(ckpt)
    n = SAMPLE_BLOCK + 5
    chunks = list(scorer.sample_chunks(n, seed=5))
    assert [len(c) for c in chunks] == [SAMPLE_BLOCK, 5]
    longer = np.concatenate(chunks)
    np.testing.assert_array_equal(longer[:10], scorer.sample(10, seed=5))
    np.testing.assert_array_equal(longer, scorer.sample(n, seed=5))
    assert not np.array_equal(longer[:10], scorer.sample(10, seed=6))


@pytest.mark.parametrize("size", ["0", "-1"])
def test_encode_refuses_a_batch_size_below_one(
    csv_path: Path, tmp_path: Path, size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """-1 wrote an empty file and exited 0; 0 raised from range()."""
    with pytest.raises(SystemExit) as info:
        main(
            [
                "encode",
                "--model",
                "m",
                "--data",
                str(csv_path),
                "--out",
                "z.npy",
                "--batch-size",
                size,
            ]
        )
    assert info.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_sample_needs_a_vae_and_says_so(
    csv_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "d.safetensors"
    train(csv_path, ckpt)
    assert (
        main(["sample", "--model", str(ckpt), "-n", "5", "--out", str(tmp_path / "s.jsonl")]) == 2
    )
    assert "vae" in capsys.readouterr().err


def test_bad_checkpoint_is_refused_by_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04\x95not a checkpoint")
    assert main(["run", "--model", str(bad), "--bootstrap", "127.0.0.1:9"]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def run_main_with(monkeypatch: pytest.MonkeyPatch, fake: Callable[[list[str]], int]) -> int:
    """``main(["run"])`` with ``fake`` in place of the command itself (as ``cli._main``)."""
    monkeypatch.setattr(cli, "_main", fake)
    return main(["run"])


def test_run_holds_the_stop_signals_from_its_first_line_and_gives_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    seen = []

    def fails(argv: list[str]) -> int:
        seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))
        raise OSError("the model's file is gone")

    with pytest.raises(OSError):
        run_main_with(monkeypatch, fails)
    assert seen == [(cli._RunStart.handle, cli._RunStart.handle)]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_while_run_parses_ends_it_once_its_log_is_set_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The signal is kept while parsing (logging is not set up: its line went to stdout in the
    default format) and ends run as soon as the run's logging is."""
    from streamer.logs import configure_logging

    def parsing_then_starting(argv: list[str]) -> int:
        os.kill(os.getpid(), signal.SIGTERM)  # run's handler has it: kept
        configure_logging("INFO", "json")
        cli._RunStart.starting()  # raises: the kept signal ends the run here
        return 1

    assert run_main_with(monkeypatch, parsing_then_starting) == 0
    out, err = capsys.readouterr()
    assert out == ""
    line = orjson.loads(err.strip().splitlines()[-1])
    assert (line["event"], line["before_start"], line["signal"]) == ("stopped", True, "SIGTERM")


def test_a_signal_after_the_detectors_loop_leaves_runs_exit_status_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the detector has run, its handlers give the signals back to run's: a signal then (a
    second Ctrl-C as a flush is aborted) was taken for one before the start, turning exit 2 into 0
    with a second stopped line (a reviewer's reproduction)."""

    def aborted(argv: list[str]) -> int:
        cli._RunStart.starting()
        cli._RunStart.running()  # the detector's loop ran, and ended
        os.kill(os.getpid(), signal.SIGTERM)
        return 2

    assert run_main_with(monkeypatch, aborted) == 2
    assert "before_start" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [["--max-events", "0"], ["--max-events", "-5"], ["--idle-exit", "-1"], ["--idle-exit", "nan"]],
)
def test_run_refuses_counts_and_durations_that_mean_nothing(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-events -5 exited 0 at once with nothing read; --idle-exit nan never idle-exited."""
    with pytest.raises(SystemExit) as info:
        main(["run", "--bootstrap", "127.0.0.1:9", *flags])
    assert info.value.code == 2 and flags[0] in capsys.readouterr().err


def test_demo_with_no_anomaly_to_find_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --events 10100` ran and reported success with precision 0 and recall NaN: after the
    10,000 normal training events, 100 held no labelled anomaly. No broker is started for it."""
    assert main(["demo", "--events", "10050"]) == 2
    assert "no labelled anomaly" in capsys.readouterr().err


def test_clocks_and_counters_are_named_in_float32_and_per_entity(frame) -> None:
    """In float32 an epoch clock or a counter past 2**24 repeats values, so "always increases"
    missed them; a per-sensor counter read from several partitions never rises overall."""
    from streamer.training import suspect_features

    x, features, _ = frame
    n = 400
    rng = np.random.default_rng(0)
    keys = np.array([f"s{k}" for k in rng.integers(0, 4, n)])
    per_entity = np.zeros(n)
    for k in np.unique(keys):
        per_entity[keys == k] = np.arange((keys == k).sum())
    columns = {
        "epoch_s": 1.7e9 + np.arange(n),
        "epoch_ms": 1.7e12 + 1_000 * np.arange(n),
        "seq_big": 2e7 + np.arange(n),
        "seq_per_sensor": per_entity,
    }
    table = np.column_stack([*columns.values(), x[:n]]).astype(np.float32)
    found = suspect_features(table, [*columns, *features], keys)
    assert set(found) == set(columns)
    assert suspect_features(table, [*columns, *features])  # without entities: the clocks still
    assert "seq_per_sensor" not in suspect_features(table, [*columns, *features])


def test_train_names_columns_that_look_like_counters_or_ids(
    frame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, features, _ = frame
    n = 400
    ids = np.random.default_rng(0).permutation(n) * 7 + 1_000
    path = tmp_path / "with_counters.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seq", "txn_id", *features])
        writer.writerows([i, int(ids[i]), *row] for i, row in enumerate(x[:n].tolist()))
    train(path, tmp_path / "a.safetensors")
    captured = capsys.readouterr()
    # The warning is a log line on stderr; stdout is the summary alone (it was both: `| jq` broke).
    assert "suspect_features" in captured.err
    assert len(captured.out.strip().splitlines()) == 1
    out = orjson.loads(captured.out)
    assert set(out["suspect_features"]) == {"seq", "txn_id"}
    assert "never decreases" in out["suspect_features"]["seq"]
    assert "id" in out["suspect_features"]["txn_id"]
    # The simulator's real features are not suspects, and named features are not checked.
    train(path, tmp_path / "b.safetensors", "--features", ",".join(["seq", *features]))
    assert orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])["suspect_features"] == {}
    train(path, tmp_path / "c.safetensors", "--features", ",".join(features))
    assert orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])["suspect_features"] == {}


def test_encode_builds_conv_windows_a_batch_at_a_time(
    csv_path: Path, frame, tmp_path: Path
) -> None:
    """All N windows were built before batching (N x W x F floats: 1.7 GB for 200,000 rows of 25
    features at window 64); each batch's windows are built as it is encoded, and an entity's window
    carries across batch boundaries, so the codes do not depend on the batch size."""
    from streamer.latent import model_inputs

    x, _, entities = frame
    batches = list(model_inputs(x, 8, entities, 7))
    assert max(len(b) for b in batches) == 7 and sum(len(b) for b in batches) == len(x)
    assert np.array_equal(np.concatenate(batches), next(model_inputs(x, 8, entities, len(x))))
    ckpt = tmp_path / "c.safetensors"
    train(csv_path, ckpt, "--model", "conv", "--window", "8", "--entity-column", "sensor_id")
    codes = []
    for size in ("5", "100000"):
        out = tmp_path / f"z{size}.npy"
        argv = ["encode", "--model", str(ckpt), "--data", str(csv_path), "--out", str(out)]
        assert main([*argv, "--entity-column", "sensor_id", "--batch-size", size]) == 0
        codes.append(np.load(out))
    assert codes[0].shape == (len(x), load_checkpoint(ckpt).latent_dim)
    np.testing.assert_allclose(codes[0], codes[1], rtol=1e-5, atol=1e-6)


def test_train_refuses_where_it_cannot_write_before_it_trains(
    csv_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both were found at the save, after every epoch, as "[Errno 17] File exists"."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for out, why in (
        (afile / "m.safetensors", "a part of its folder is a file"),
        (folder, "folder"),
    ):
        argv = ["train", "--data", str(csv_path), "--out", str(out), "--epochs", "200"]
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert why in err and "epoch" not in err
    assert not list(tmp_path.glob("**/*.loss.png"))


def test_train_names_a_column_beyond_float32(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{v},{(-1) ** i * 3e38}" for i, v in enumerate(range(200))]
    path = tmp_path / "big.csv"
    path.write_text("ok,big\n" + "\n".join(rows) + "\n")
    assert main(["train", "--data", str(path), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "feature 'big'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "x.csv", "--out", "m", "--seed", str(2**64 - 1)],
        ["train", "--from-topic", "t", "--out", "m", "--max-events", "0"],
        ["sample", "--model", "m", "--out", "o.jsonl", "--seed", str(2**64)],
        ["simulate", "--bootstrap", "b", "--topic", "t", "--events", "1", "--seed", "-1"],
    ],
)
def test_seeds_and_event_counts_out_of_range_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A seed beyond 64 bits reached torch as "Overflow when unpacking long long"; --max-events 0
    read nothing and was reported as a topic without decodable events."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    flag = next(a for a in argv if a in ("--seed", "--max-events"))
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (
            ["--alert-cap", "0.5"],
            "--alert-cap: Input should be greater than or equal to 1 (or 'auto')",
        ),
        (["--escalation", "-1"], "--escalation"),
        (["--threshold-window", "5"], "--threshold-window: Value error, must be 0 (all history)"),
        (["--gate-spans", "50,10"], "--gate-spans"),
        (["--batch-size", "0"], "--batch-size"),
        (["--q", "0.999"], "--q / --threshold-window"),
    ],
)
def test_evaluate_names_the_flag_of_a_bad_setting(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """They said only "invalid setting: Input should be greater than or equal to 1"."""
    assert main(["evaluate", "--test", str(tmp_path / "x.csv"), *flags]) == 2
    assert named in capsys.readouterr().err


def test_sample_writes_csv_or_jsonl_and_refuses_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out s.csv got JSON lines."""
    from models import TrainConfig
    from models import train as train_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    ckpt = tmp_path / "v.safetensors"
    train_model(x, ["a", "b", "c"], TrainConfig(kind="vae", epochs=2, progress=False), ckpt)
    argv = ["sample", "--model", str(ckpt), "-n", "7", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "s.csv")]) == 0
    assert main([*argv, "--out", str(tmp_path / "s.jsonl")]) == 0
    with (tmp_path / "s.csv").open() as fh:
        rows = list(csv.reader(fh))
    jsonl = [orjson.loads(line) for line in (tmp_path / "s.jsonl").read_bytes().splitlines()]
    assert rows[0] == ["a", "b", "c"] and len(rows) == 8
    assert [[float(v) for v in r] for r in rows[1:]] == [[j[k] for k in "abc"] for j in jsonl]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "s.txt")]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err
    assert not (tmp_path / "s.txt").exists()


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--model", str(tmp_path), "--bootstrap", "127.0.0.1:9"]) == 2
    assert "a folder, not a checkpoint file" in capsys.readouterr().err


def test_train_refuses_a_folder_it_cannot_write_to_before_it_trains(
    csv_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc takes no new files: found at the save, after every epoch, naming a temporary file."""
    argv = ["train", "--data", str(csv_path), "--out", "/proc/m.safetensors", "--epochs", "200"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot write /proc/m.safetensors" in err and "epoch" not in err


def test_config_prints_the_settings_run_would_use_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flags over STREAMER_* variables over the TOML file over the defaults, as for `run`."""
    for name in [n for n in os.environ if n.startswith("STREAMER_")]:
        monkeypatch.delenv(name)
    toml = tmp_path / "streamer.toml"
    toml.write_text('[kafka]\ngroup_id = "from-toml"\nbootstrap_servers = "toml:9092"\n')
    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("STREAMER_KAFKA__SASL_PASSWORD", "hunter2-not-printed")
    monkeypatch.setenv("STREAMER_KAFKA__EXTRA", '{"ssl.key.password": "also-secret"}')
    # run's flags that are not settings are taken too, so that a run command line can be pasted
    argv = ["--config", str(toml), "--q", "0.995", "--metrics-port", "9464", "--max-events", "5"]
    argv += ["--warm-start", "0"]
    assert main(["config", *argv, "--idle-exit", "3", "--create-topics"]) == 0
    out = capsys.readouterr().out
    settings = orjson.loads(out)
    assert settings["kafka"]["group_id"] == "from-toml"
    assert settings["kafka"]["bootstrap_servers"] == "env:9092"
    assert settings["threshold"]["q"] == 0.995 and settings["metrics"]["port"] == 9464
    assert settings["kafka"]["warm_start_events"] == 0  # the default is 10,000
    assert settings["kafka"]["sasl_password"] == "**********"
    assert settings["kafka"]["extra"] == {"ssl.key.password": "**********"}
    assert "hunter2" not in out and "also-secret" not in out
    monkeypatch.setenv("STREAMER_THRESHOLD__Q", "2")
    assert main(["config"]) == 2
    assert "threshold.q" in capsys.readouterr().err
