"""Training step time in fp32 against bf16 autocast, for a recipe's network, in one process.

    .venv/bin/python benchmarks/train_precision.py [configs/joint_crop3d.toml] [--stage segmenter]
        [--rounds 3] [--steps 5] [--device cpu]

The trainer's own :class:`~src_monai.training.optimisation.Optimisation` (network, loss,
optimiser, precision) steps on random tensors of the recipe's window and batch, fp32 and bf16
alternating for ``--rounds`` rounds of ``--steps`` steps (the machine's noise falls on both
alike). On a CPU with AVX512-BF16 or AMX, bf16 computes the convolutions natively; elsewhere
it is emulated and can be slower. Prints a table and writes
``benchmarks/results/train_precision_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import machine_facts  # this folder

REPO = Path(__file__).resolve().parents[1]


def window_tensors(config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of the recipe's training windows and labels."""
    data = config.data
    if data.stage.spatial_dims == 3:
        shape = (1, data.crop_depth, data.crop_size, data.crop_size)
    else:
        side = (data.crop_size, data.crop_size) if data.crop_size else tuple(data.patch_size)
        shape = (data.context_slices, *side)
    batch = config.train.batch_size
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, data.num_classes, (batch, 1, *shape[1:]), device=device)
    return images, labels


def step_seconds(config, device: torch.device, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each precision, one figure per round."""
    from src_monai.training.optimisation import Optimisation

    runs = {
        name: Optimisation(replace(config, train=replace(config.train, precision=name)), device)
        for name in ("fp32", "bf16")
    }
    images, labels = window_tensors(config, device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up: allocator, oneDNN kernels
        run.loss(images, labels)
        run.apply()
    for _ in range(rounds):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                run.loss(images, labels)
                run.apply()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - started) / steps)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=REPO / "configs/joint_crop3d.toml")
    parser.add_argument("--stage", default="segmenter", help="of a two-stage config")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from src_monai.config import is_two_stage_config, load_config

    stage = args.stage if is_two_stage_config(args.config) else None
    config = load_config(args.config, stage=stage)
    device = torch.device(args.device)
    load = os.getloadavg()[0]
    times = step_seconds(config, device, args.rounds, args.steps)
    medians = {name: statistics.median(values) for name, values in times.items()}
    results = {
        **machine_facts(load),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": str(
            args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config
        ),
        "stage": stage,
        "batch": list(window_tensors(config, torch.device("cpu"))[0].shape),
        "seconds_per_step": times,
        "median_seconds_per_step": medians,
        "bf16_speedup": medians["fp32"] / medians["bf16"],
    }
    out = args.out or REPO / "benchmarks" / "results" / f"train_precision_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\n{results['config']} ({stage or 'one stage'}), batch {results['batch']}, load {load:.2f}"
    )
    print("| precision | median s/step (min-max) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.3f} ({min(values):.3f}-{max(values):.3f}) |")
    print(f"bf16 x{results['bf16_speedup']:.2f} faster than fp32")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
