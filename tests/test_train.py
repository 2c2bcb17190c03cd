"""Training: run folders, checkpoints, resume, STOP, the earlier tool's INI, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LASC, make_msd_dataset, tiny_config, torchrun_train
from safetensors.torch import load_file

from src_monai.config import load_config
from src_monai.model.files import load_model
from src_monai.progress import run_to_end
from src_monai.training.trainer import run_training


def test_a_run_leaves_a_complete_run_folder(tiny_run):
    _, result = tiny_run
    run = result.run_dir
    assert result.stopped == "completed" and result.epochs_done == 2
    for name in (
        "config.toml",
        "split.json",
        "metrics.csv",
        "validation.csv",
        "curves.png",
        "train.log",
        "checkpoints/best.safetensors",
        "checkpoints/last.safetensors",
        "checkpoints/last_state.pt",
        "previews/epoch_001.png",
        "previews/epoch_002.png",
    ):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)
    validation = list(csv.DictReader((run / "validation.csv").open()))
    assert len(validation) == 2  # one validation case, two epochs
    best = max(float(r["val_dice"]) for r in rows)
    assert result.best_dice == pytest.approx(best)
    _, spec = load_model(result.best_model)
    assert spec.record.progress["val_dice"] == pytest.approx(best)
    assert spec.context_slices == 3 and spec.in_channels == 3
    assert spec.record.recipe.train.epochs == 2  # resolved config inside the checkpoint
    assert set(spec.split["val"]).isdisjoint(spec.split["train"])
    assert load_config(run / "config.toml").train.epochs == 2


def test_runs_never_reuse_a_folder(tmp_path, msd_dataset):
    config = tiny_config(
        msd_dataset, tmp_path / "runs", train={"epochs": 1, "run_name": "x", "preview_slices": 0}
    )
    first = run_to_end(run_training(config)).run_dir
    marker = first / "notes.txt"
    marker.write_text("keep")
    second = run_to_end(run_training(config)).run_dir
    assert first.name == "x" and second.name == "x-2"
    assert marker.read_text() == "keep"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_a_stop_gives_the_uninterrupted_result(tmp_path, msd_dataset, ema_decay):
    sections = {
        "train": {
            "epochs": 3,
            "steps_per_epoch": 2,
            "preview_slices": 0,
            "scheduler": "cosine",
            "run_name": "straight",
            "ema_decay": ema_decay,
        },
        "model": {"dropout": 0.1},
    }
    straight = run_to_end(run_training(tiny_config(msd_dataset, tmp_path / "runs", **sections)))
    sections["train"]["run_name"] = "stopped"
    job = run_training(tiny_config(msd_dataset, tmp_path / "runs", **sections))
    stop_file = tmp_path / "runs" / "stopped" / "STOP"
    for progress in job:
        if progress.done == 2:  # end of the first epoch
            stop_file.touch()
    interrupted = tmp_path / "runs" / "stopped"
    assert _epochs(interrupted) == ["1"]
    resumed = run_to_end(run_training(load_config(interrupted / "config.toml"), resume=interrupted))
    assert resumed.run_dir == interrupted and resumed.stopped == "completed"
    assert not stop_file.exists()
    assert _epochs(interrupted) == ["1", "2", "3"]
    a = _weights(straight.run_dir / "checkpoints" / "last.safetensors")
    b = _weights(interrupted / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _losses(straight.run_dir) == _losses(interrupted)


def test_weight_averaging_saves_the_average_not_the_last_step(tmp_path, msd_dataset):
    config = tiny_config(
        msd_dataset,
        tmp_path / "runs",
        train={"epochs": 1, "steps_per_epoch": 3, "preview_slices": 0, "ema_decay": 0.5},
    )
    run = run_to_end(run_training(config)).run_dir
    state = torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)
    saved = _weights(run / "checkpoints" / "last.safetensors")
    assert int(state["averaged"]["n_averaged"]) == 3
    differs = 0
    for name, value in saved.items():
        assert torch.equal(value, state["averaged"][f"module.{name}"]), name
        differs += not torch.equal(value, state["model"][name])
    assert differs > 0  # the live network's last step is not what was saved


def _epochs(run: Path) -> list[str]:
    return [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())]


def _losses(run: Path) -> list[str]:
    return [r["train_loss"] for r in csv.DictReader((run / "metrics.csv").open())]


def test_resume_removes_the_unfinished_writes_of_a_killed_run(tmp_path, msd_dataset):
    """SIGKILL during a write leaves its `.partial-<pid>-*` temporary; the resumed run
    removes those of dead processes (a live process's are its writes in progress)."""
    config = tiny_config(
        msd_dataset, tmp_path / "runs", train={"epochs": 2, "steps_per_epoch": 2, "run_name": "r"}
    )
    job = run_training(config)
    run = tmp_path / "runs" / "r"
    for progress in job:
        if progress.done == 2:
            (run / "STOP").touch()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        run / f".partial-{dead.pid}-curves.png",
        run / "checkpoints" / f".partial-{dead.pid}-last_state.pt",
        run / "previews" / f".partial-{dead.pid}-epoch_002.png",
    ]
    in_progress = run / f".partial-{os.getppid()}-notes.txt"  # a live process's write
    for path in [*stale, in_progress]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    resumed = run_to_end(run_training(load_config(run / "config.toml"), resume=run))
    assert resumed.stopped == "completed" and _epochs(run) == ["1", "2"]
    assert [path for path in stale if path.exists()] == []
    assert in_progress.read_bytes() == b"half"


def test_resume_of_a_folder_without_checkpoint_is_an_error(tmp_path):
    result = subprocess.run(
        [LASC, "train", "--resume", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: {tmp_path}: no checkpoints/last_state.pt to resume from"
    )


def test_early_stopping(tmp_path, msd_dataset):
    config = tiny_config(
        msd_dataset,
        tmp_path / "runs",
        train={
            "epochs": 20,
            "steps_per_epoch": 1,
            "early_stopping_patience": 1,
            "learning_rate": 1e-9,
            "preview_slices": 0,
            "scheduler": "none",
        },
    )
    result = run_to_end(run_training(config))
    assert result.stopped == "early stopping" and result.epochs_done < 20


EARLIER_TOOL_INI = """\
[model]
model          = "TensorFlowFlexUNet"
image_width    = 32
image_height   = 32
image_channels = 3
num_classes    = 2
base_filters   = 4
base_kernels   = (7,7)
num_layers     = 3
dilation       = (1,1)
dropout_rate   = 0.04
optimizer      = "Adam"
learning_rate  = 0.0001
clipvalue      = 0.5
loss           = "categorical_crossentropy"
metrics        = ["dice_coef_multiclass"]

[train]
epochs        = 1
batch_size    = 2
patience      = 10
model_dir     = "./models/"
images_dir    = "./dataset/train/images/"
masks_dir     = "./dataset/train/masks/"
learning_rate_reducer = True
reducer_factor     = 0.5
reducer_patience   = 4
epoch_change_infer = True
num_infer_images   = 2

[valid]
images_dir = "./dataset/valid/images/"
masks_dir  = "./dataset/valid/masks/"

[mask]
rgb_map = {(0,0,0):0, (255,0,255):1}
"""


def test_one_epoch_from_the_earlier_tools_config_on_a_prepared_png_dataset(tmp_path):
    source = make_msd_dataset(tmp_path / "nifti", cases=4)
    prepared = subprocess.run(
        [
            LASC,
            "prepare",
            str(source),
            str(tmp_path / "dataset"),
            "--format",
            "png",
            "--size",
            "32",
            "--fractions",
            "0.5",
            "0.25",
            "0.25",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prepared.returncode == 0, prepared.stderr
    config = tmp_path / "train_eval_infer.config"
    config.write_text(EARLIER_TOOL_INI)
    result = subprocess.run(
        [LASC, "train", str(config), "--set", "train.steps_per_epoch=3"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "keys with no equivalent, ignored: model.image_channels, model.metrics" in result.stderr
    # Not a terminal: plain progress lines (step, loss, slices/s), not silence.
    progress = [line for line in result.stderr.splitlines() if line.startswith("train: ")]
    assert progress and "epoch 1/" in progress[0] and "slices/s" in progress[0]
    assert progress[-1].startswith("train: 3/3 steps (100 %)")
    (run,) = (tmp_path / "models").iterdir()
    assert _epochs(run) == ["1"]
    _, spec = load_model(run / "checkpoints" / "best.safetensors")
    assert spec.record.layout == "png"
    assert spec.network.first_kernel_size == 7
    assert len(spec.split["train"]) == 2 and len(spec.split["val"]) == 1


@pytest.mark.slow
def test_one_epoch_on_two_real_cases(lasc13, tmp_path):
    dataset = tmp_path / "two"
    for folder in ("imagesTr", "labelsTr"):
        (dataset / folder).mkdir(parents=True)
        for case in ("la_003", "la_016"):
            (dataset / folder / f"{case}.nii.gz").symlink_to(lasc13 / folder / f"{case}.nii.gz")
    config = tiny_config(
        dataset,
        tmp_path / "runs",
        data={"patch_size": [128, 128], "val_fraction": 0.5},
        train={"epochs": 1, "steps_per_epoch": 4},
    )
    result = run_to_end(run_training(config))
    rows = list(csv.DictReader((result.run_dir / "validation.csv").open()))
    assert len(rows) == 1 and rows[0]["case"] in ("la_003", "la_016")
    assert 0.0 <= float(rows[0]["dice"]) <= 1.0
    _, spec = load_model(result.best_model)
    assert spec.spacing_mm == pytest.approx([1.37, 1.25, 1.25], abs=1e-4)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_ends_with_identical_weights(tmp_path, msd_dataset):
    config = tmp_path / "ddp.toml"
    config.write_text(
        f'[data]\ndataset = "{msd_dataset}"\npatch_size = [32, 32]\nval_fraction = 0.25\n'
        "[model]\nbase_filters = 4\nlevels = 3\n"
        f"[train]\nepochs = 2\nsteps_per_epoch = 3\nbatch_size = 2\npreview_slices = 0\n"
        f'runs_dir = "{tmp_path / "runs"}"\nrun_name = "ddp"\n'
    )
    result = torchrun_train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    checksums = {p.name: p.read_text() for p in (run / "ranks").iterdir()}
    assert set(checksums) == {"rank0.sha256", "rank1.sha256"}
    assert checksums["rank0.sha256"] == checksums["rank1.sha256"]
    assert _epochs(run) == ["1", "2"]
    assert not (tmp_path / "runs" / "ddp-2").exists()  # one run folder, made by rank 0


def test_ctrl_c_stops_cleanly_after_saving(tmp_path, msd_dataset):
    import signal
    import time

    config = tmp_path / "long.toml"
    config.write_text(
        f'[data]\ndataset = "{msd_dataset}"\npatch_size = [32, 32]\n'
        "[model]\nbase_filters = 4\nlevels = 3\n"
        f"[train]\nepochs = 1000\nsteps_per_epoch = 2\nbatch_size = 2\npreview_slices = 0\n"
        f'runs_dir = "{tmp_path / "runs"}"\nrun_name = "long"\n'
    )
    process = subprocess.Popen(
        [LASC, "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test run started in the background (`.ci/run &`) inherits SIGINT ignored, and
        # Python then installs no Ctrl-C handler: give the child the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = tmp_path / "runs" / "long" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stdout and "Traceback" not in stderr
    assert "lasc train --resume" in stderr
    run = tmp_path / "runs" / "long"
    assert (run / "checkpoints" / "last_state.pt").is_file()
    saved = len(_epochs(run))
    assert saved >= 2
    resumed = subprocess.run(
        [LASC, "train", "--resume", str(run), "--set", "x.y=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        resumed.returncode == 2 and "--resume continues a run with its own config" in resumed.stderr
    )


def test_fine_tuning_starts_from_the_given_weights_and_refuses_another_architecture(
    tmp_path, msd_dataset, tiny_run
):
    from src_monai.config import ConfigError

    _, base = tiny_run
    # A vanishing learning rate: the fine-tuned model must stay at its starting point
    # (random initial weights would differ by ~0.1).
    config = tiny_config(
        msd_dataset,
        tmp_path / "runs",
        train={"epochs": 1, "learning_rate": 1e-30, "init_model": str(base.best_model)},
    )
    result = run_to_end(run_training(config))
    start, _ = load_model(base.best_model)
    tuned, _ = load_model(result.run_dir / "checkpoints" / "last.safetensors")
    for (name, a), (_, b) in zip(
        start.state_dict().items(), tuned.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
    bigger = tiny_config(
        msd_dataset,
        tmp_path / "runs",
        model={"base_filters": 8},
        train={"init_model": str(base.best_model)},
    )
    with pytest.raises(ConfigError, match="architecture differs"):
        run_to_end(run_training(bigger))


def test_stop_callback_ends_the_epoch_saves_and_reports_metrics(tmp_path, msd_dataset):
    config = tiny_config(msd_dataset, tmp_path / "runs", train={"epochs": 5, "steps_per_epoch": 4})
    steps = []

    def stop() -> bool:
        return len(steps) >= 2

    job = run_training(config, stop=stop)
    epochs_reported = []
    while True:
        try:
            report = next(job)
        except StopIteration as end:
            result = end.value
            break
        if report.metrics:
            epochs_reported.append(dict(report.metrics))
        else:
            steps.append(report)
    assert result.stopped == "stopped" and result.epochs_done == 1
    assert len(steps) == 2  # the epoch ended at the step the callback asked
    (row,) = epochs_reported
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"]) and 0 <= row["val_dice"] <= 1
    assert result.best_model.is_file()


def test_val_fraction_zero_trains_on_every_case_without_validation(tmp_path, msd_dataset):
    config = tiny_config(
        msd_dataset, tmp_path / "runs", data={"val_fraction": 0.0}, train={"epochs": 1}
    )
    result = run_to_end(run_training(config))
    split = json.loads((result.run_dir / "split.json").read_text())
    assert len(split["train"]) == 3 and split["val"] == []
    assert result.best_model.is_file() and result.best_dice == -1.0
