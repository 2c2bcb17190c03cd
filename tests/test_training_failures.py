"""Training fails loudly, never quietly: a non-finite loss stops the run and keeps its
checkpoints; a resumed run never repeats rows; a model file with broken weights is refused."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file
from test_reliability import one_error_line, tree_state

from src_monai.cli import main as lasc
from src_monai.model.files import METADATA_KEY
from src_monai.progress import run_to_end
from src_monai.training.run_folder import RunFolder
from src_monai.training.trainer import run_training


def _stopped_after_one_epoch(msd_dataset, runs):
    config = tiny_config(msd_dataset, runs, train={"epochs": 4, "steps_per_epoch": 2})
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) >= 2

    return run_to_end(run_training(config, stop=stop))


def test_a_non_finite_loss_stops_the_run_and_keeps_its_checkpoints(msd_dataset, tmp_path, capsys):
    result = _stopped_after_one_epoch(msd_dataset, tmp_path / "runs")
    state_path = result.run_dir / "checkpoints" / "last_state.pt"
    state = torch.load(state_path, weights_only=True)
    # Weights gone bad (as after a step with an exploding gradient): every output is NaN.
    state["model"] = {name: torch.full_like(v, math.nan) for name, v in state["model"].items()}
    torch.save(state, state_path)
    kept = {
        name: (result.run_dir / name).read_bytes()
        for name in ("checkpoints/best.safetensors", "checkpoints/last.safetensors", "metrics.csv")
    }
    assert lasc(["train", "--resume", str(result.run_dir)]) == 2
    line = one_error_line(capsys, "training diverged: the loss became nan")
    assert "earlier checkpoints are kept" in line
    assert {name: (result.run_dir / name).read_bytes() for name in kept} == kept


def test_validation_rows_of_an_epoch_validated_again_are_replaced(tmp_path):
    folder = RunFolder(tmp_path)
    folder.append_validation(1, {"a": 0.5, "b": 0.6})
    folder.append_validation(2, {"a": 0.7, "b": 0.8})
    folder.append_validation(2, {"a": 0.71, "b": 0.81})  # killed before the checkpoint: again
    with open(tmp_path / "validation.csv", encoding="utf-8") as handle:
        rows = [(r["epoch"], r["case"], r["dice"]) for r in csv.DictReader(handle)]
    assert rows == [
        ("1", "a", "0.500000"),
        ("1", "b", "0.600000"),
        ("2", "a", "0.710000"),
        ("2", "b", "0.810000"),
    ]


def test_a_model_file_with_nan_weights_is_refused(tiny_run, tmp_path, capsys):
    from src_monai.model.files import _read_safetensors

    state, metadata = _read_safetensors(tiny_run[1].best_model)
    first = next(iter(state))
    state[first] = torch.full_like(state[first], math.nan)
    model = tmp_path / "broken.safetensors"
    save_file(state, model, metadata={METADATA_KEY: json.dumps(metadata)})
    before = tree_state(tmp_path)
    scan = tiny_run[0] / "imagesTr" / "case_000.nii.gz"
    assert lasc(["infer", str(scan), "--out", str(tmp_path / "out"), "--model", str(model)]) == 2
    one_error_line(capsys, "broken.safetensors", "NaN or infinite values")
    assert tree_state(tmp_path) == before and not (tmp_path / "out").exists()
    assert load_file(model)[first].isnan().all()


def test_a_finished_run_stops_logging_into_its_folder(msd_dataset, tmp_path):
    """napari trains many runs in one process: each run's train.log gets its own run only."""
    import logging

    first = run_to_end(run_training(tiny_config(msd_dataset, tmp_path / "runs")))
    second = run_to_end(run_training(tiny_config(msd_dataset, tmp_path / "runs")))
    assert not [
        h for h in logging.getLogger("src_monai").handlers if isinstance(h, logging.FileHandler)
    ]
    assert second.run_dir.name not in (first.run_dir / "train.log").read_text()
    assert second.run_dir.name in (second.run_dir / "train.log").read_text()


def test_bf16_trains_on_the_cpu_and_fp16_is_refused_before_a_run_folder(msd_dataset, tmp_path):
    """bf16 autocast runs on CPUs (``benchmarks/train_precision.py`` times it against fp32);
    fp16's loss scaling is CUDA's, so it is refused on the CPU before anything is written."""

    from src_monai.config import ConfigError
    from src_monai.training.optimisation import Optimisation

    config = tiny_config(msd_dataset, tmp_path / "runs", train={"precision": "bf16"})
    optimisation = Optimisation(config, torch.device("cpu"))
    seen = []
    optimisation.network.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    images = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 2, (2, 1, 32, 32))
    loss = optimisation.loss(images, labels)
    optimisation.apply()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in optimisation.network.parameters())
    result = run_to_end(run_training(config))
    assert result.stopped == "completed" and result.best_model.is_file()

    refused = tiny_config(msd_dataset, tmp_path / "fp16", train={"precision": "fp16"})
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        run_to_end(run_training(refused))
    assert not (tmp_path / "fp16").exists()
