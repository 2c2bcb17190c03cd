"""Training throughput: the real pipeline against the network alone, and time to accuracy.

    .venv/bin/python benchmarks/train_speed.py [--device cpu] [--steps 10] [--batch-size 16]
    .venv/bin/python benchmarks/train_speed.py --device cuda --time-to-accuracy 180

* **end to end**: the trainer's own pieces, step by step: slice sampling, 2.5D context,
  MONAI augmentation (on the device when ``augment_on_device`` and CUDA), forward, loss,
  backward, optimiser step; cases cached as the trainer caches them.
* **model only**: the same network, batch, precision, loss and optimiser on random tensors
  already on the device.

The ratio end-to-end / model-only says how much the data pipeline costs. With
``--time-to-accuracy SECONDS`` the real trainer (``run_training``, fold 0 of a patient-level
4-fold split of the real cases) runs for that long and the validation Dice is recorded
against wall time (meaningful on a GPU; hours on this CPU). Prints a table and writes
``benchmarks/results/train_speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
LASC13 = REPO.parent / "shared" / "data" / "lasc13"
CONFIG = REPO / "configs" / "lasc13_2d.toml"


def _config(device: str, batch_size: int, dataset: Path, split: Path, runs: Path):
    from src_monai.config import apply_overrides, load_config

    return apply_overrides(
        load_config(CONFIG),
        [
            f"data.dataset={dataset}",
            f"data.split={split}",
            f"train.device={device}",
            f"train.batch_size={batch_size}",
            f"train.runs_dir={runs}",
            "train.preview_slices=0",
        ],
    )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(config, steps: int) -> dict[str, float]:
    """Slices per second of the end-to-end step and of the model-only step."""
    from src_monai.data.sampling import SliceSampler, load_training_data, make_batch
    from src_monai.data.transforms import training_transforms
    from src_monai.inference.predictor import resolve_device
    from src_monai.model.networks import build_network
    from src_monai.training.components import build_loss, build_optimiser

    device = resolve_device(config.train.device)
    data = load_training_data(config)
    if device.type == "cuda" and config.train.augment_on_device:
        for case in data.train:
            case.slices, case.labels = case.slices.to(device), case.labels.to(device)
    network = build_network(config.model, config.data.context_slices, config.data.num_classes)
    network = network.to(device).train()
    optimiser = build_optimiser(config, network.parameters())
    loss_function = build_loss(config.train.loss, config.data.num_classes)
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    batch = config.train.batch_size

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=bool(autocast)):
            loss = loss_function(network(images), labels)
        loss.backward()
        optimiser.step()

    sampler = SliceSampler(data.train, config.data.foreground_oversample, np.random.default_rng(0))
    transform = training_transforms(config.augment, config.data.patch_size, seed=0)

    def end_to_end() -> None:
        images, labels = make_batch(
            data.train, sampler.draw(batch), config.data.context_slices, transform
        )
        step(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))

    height, width = config.data.patch_size
    images = torch.randn(batch, config.data.context_slices, height, width, device=device)
    labels = torch.randint(0, config.data.num_classes, (batch, 1, height, width), device=device)

    def model_only() -> None:
        step(images, labels)

    rates = {}
    for name, function in (("model_only", model_only), ("end_to_end", end_to_end)):
        for _ in range(2):  # warm-up
            function()
        _synchronise(device)
        started = time.perf_counter()
        for _ in range(steps):
            function()
        _synchronise(device)
        rates[f"{name}_slices_per_s"] = steps * batch / (time.perf_counter() - started)
    rates["end_to_end_share"] = rates["end_to_end_slices_per_s"] / rates["model_only_slices_per_s"]
    rates["precision"] = precision
    return rates


def time_to_accuracy(config, seconds: float) -> dict[str, object]:
    """Run the real trainer for ``seconds`` and record validation Dice against wall time."""
    from src_monai.config import apply_overrides
    from src_monai.training.trainer import run_training

    config = apply_overrides(
        config,
        [
            f"train.time_limit_minutes={seconds / 60}",
            "train.epochs=100000",
            "train.early_stopping_patience=0",
            "train.val_every=1",
        ],
    )
    started = time.perf_counter()
    curve = []
    job = run_training(config)
    while True:
        try:
            report = next(job)
        except StopIteration as end:
            result = end.value
            break
        if "val_dice" in report.metrics:
            curve.append((time.perf_counter() - started, float(report.metrics["val_dice"])))
    reached = next((t for t, dice in curve if dice >= 0.90), None)
    return {
        "curve_s_dice": curve,
        "seconds_to_dice_0.90": reached,
        "dice_at_end": curve[-1][1] if curve else None,
        "best_dice": result.best_dice,
        "wall_s": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", type=Path, default=LASC13)
    parser.add_argument("--time-to-accuracy", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from src_monai.data.datasets import discover_msd
    from src_monai.data.splits import kfold_split, save_split

    with tempfile.TemporaryDirectory() as folder:
        split = Path(folder) / "folds.json"
        save_split(split, kfold_split(discover_msd(args.data).case_ids(), folds=4, seed=0))
        config = _config(args.device, args.batch_size, args.data, split, Path(folder) / "runs")
        results: dict[str, object] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": platform.processor() or platform.machine(),
            "device": args.device
            + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
            "torch_threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "patch_size": config.data.patch_size,
            "steps": args.steps,
            "throughput": throughput(config, args.steps),
        }
        if args.time_to_accuracy:
            results["time_to_accuracy"] = time_to_accuracy(config, args.time_to_accuracy)
    rates = results["throughput"]
    print("| measure | slices/s |")
    print("|---|---|")
    print(f"| model only ({rates['precision']}) | {rates['model_only_slices_per_s']:.1f} |")
    print(f"| end to end | {rates['end_to_end_slices_per_s']:.1f} |")
    print(f"| end to end / model only | {100 * rates['end_to_end_share']:.0f} % |")
    if "time_to_accuracy" in results:
        accuracy = results["time_to_accuracy"]
        print(
            f"time to validation Dice 0.90: {accuracy['seconds_to_dice_0.90']} s; "
            f"Dice at the end: {accuracy['dice_at_end']}"
        )
    out = args.out or REPO / "benchmarks" / "results" / f"train_speed_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
