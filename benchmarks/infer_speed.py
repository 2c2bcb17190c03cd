"""Inference speed: ``lasc infer`` against plain MONAI (``SliceInferer`` + the tutorial UNet).

    .venv/bin/python benchmarks/infer_speed.py [--cases 4] [--repeats 3] [--device cpu]

1. **Whole processes** on the first ``--cases`` real scans of ``../shared/data/lasc13``, timed
   from start to exit, interleaved over ``--repeats`` rounds:
   * **baseline**: ``benchmarks/monai_baseline.py``: MONAI's ``LoadImage``, percentile clip
     and z-score, ``SliceInferer`` over whole slices with the tutorial 2D UNet (the weights of
     the single-stage model shipped until the two-stage one, ``tests/data/``),
     ``AsDiscrete(argmax=True)``, ``SaveImage``;
   * **lasc infer** with ``--model`` (default: the bundled model), everything it does by
     default (the model's own post-processing choice, measurements, QC, summary);
   * **lasc infer on the first scan alone**, in the same rounds: each further scan's cost
     after start-up is the difference, divided by ``--cases`` - 1 (the ``<= 1 s a scan after
     start-up`` figure).
   Dice of each against the truth, per case (these cases are training cases of both bundled
   models: the Dice shows the fast path is not broken; held-out figures are in the model card).
2. **Model time** in one process on a 256x256x130 scan (la_003): the project's
   ``predict_volume`` (normalised input, no post-processing) and the baseline's
   ``SliceInferer`` on the same normalised volume.
3. **Peak memory** of ``predict_volume`` on a 320x320x130 volume (a real case zero-padded),
   in a fresh process, for the project's model and the baseline's.

Prints tables and writes ``benchmarks/results/infer_speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_facts  # this folder

REPO = Path(__file__).resolve().parents[1]
LASC13 = REPO.parent / "shared" / "data" / "lasc13"
BASELINE_MODEL = REPO / "tests" / "data" / "single_stage_2d5_v1.safetensors"
LASC = str(Path(sys.executable).with_name("lasc"))
ONE_SCAN = "lasc infer, first scan alone"


def _volumes(count: int) -> list[tuple[str, np.ndarray]]:
    from src_monai.io.scans import read_scan
    from src_monai.model.files import SAMPLE_SCAN

    paths = sorted((LASC13 / "imagesTr").glob("*.nii.gz"))[:count] if LASC13.exists() else []
    paths = paths or [SAMPLE_SCAN]
    return [(p.name.split(".")[0], read_scan(p).array) for p in paths]


def sized(volume: np.ndarray, height: int, depth: int) -> np.ndarray:
    """A real scan padded (zeros) to ``height`` x ``height`` and repeated to ``depth`` slices."""
    pad = [((height - n) // 2, height - n - (height - n) // 2) for n in volume.shape[:2]]
    padded = np.pad(volume, [*pad, (0, 0)])
    repeats = -(-depth // padded.shape[2])
    return np.concatenate([padded] * repeats, axis=2)[:, :, :depth]


def baseline_labels(predictor, values: np.ndarray) -> np.ndarray:
    """SliceInferer + AsDiscrete(argmax=True) on the context-stacked 5D tensor."""
    from monai.inferers import SliceInferer
    from monai.transforms import AsDiscrete

    half = predictor.spec.context_slices // 2
    depth = values.shape[2]
    # Channel c holds slice k + c - half (edge slices repeated), exactly the project's stack.
    index = np.clip(np.arange(depth)[None, :] + np.arange(-half, half + 1)[:, None], 0, depth - 1)
    stacked = torch.from_numpy(np.ascontiguousarray(values[:, :, index].transpose(2, 0, 1, 3)))
    inferer = SliceInferer(
        roi_size=tuple(values.shape[:2]), sw_batch_size=1, spatial_dim=2, progress=False
    )
    with torch.inference_mode():
        logits = inferer(stacked[None].to(predictor.device), predictor.network)
        labels = AsDiscrete(argmax=True)(logits[0])
    return np.asarray(labels[0].to("cpu"), dtype=np.uint8)


def project_labels(predictor, values: np.ndarray, batch_size: int) -> np.ndarray:
    from src_monai.inference.steps import prepared_as_is
    from src_monai.progress import run_to_end

    options = predictor.options(postprocess=False, batch_size=batch_size)
    prepared = prepared_as_is(values, predictor.spec.slice_axis)  # normalised already
    return run_to_end(predictor.predict_prepared(prepared, options)).labels


def _timed(function, repeats: int, device: torch.device) -> tuple[list[float], object]:
    result = function()  # warm-up (allocator, kernels, lazy imports)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times, result


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def _peak_memory(model: str, height: int, depth: int, device: str, batch_size: int) -> float:
    """Peak resident memory (MB) of ``predict_volume`` with ``model`` on one volume size, in a
    fresh process."""
    code = "\n".join(
        [
            f"import sys, resource; sys.path.insert(0, {str(REPO)!r}); "
            f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})",
            "import infer_speed as b",
            "from src_monai.inference.predictor import Predictor",
            "from src_monai.progress import run_to_end",
            f"p = Predictor.from_checkpoint({model!r}, device={device!r})",
            f"v = b.sized(b._volumes(1)[0][1], {height}, {depth})",
            f"run_to_end(p.predict_volume(v, p.options(batch_size={batch_size})))",
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ]
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def whole_processes(scans: list[Path], model: str, device: str, repeats: int) -> dict:
    """Both processes on ``scans``, and ``lasc infer`` on the first scan alone, interleaved,
    ``repeats`` rounds; seconds and Dice. The one-scan process is start-up plus one scan, so
    the difference to the whole run is what the other scans cost after start-up."""

    def lasc_infer(inputs: list[Path]) -> list[str]:
        return [LASC, "infer", *map(str, inputs), "--out", "{out}", "--model", model]

    commands = {
        "baseline": (
            [
                sys.executable,
                str(REPO / "benchmarks" / "monai_baseline.py"),
                str(BASELINE_MODEL),
                "{out}",
                *map(str, scans),
            ],
            scans,
        ),
        "lasc infer": ([*lasc_infer(scans), "--device", device], scans),
        ONE_SCAN: ([*lasc_infer(scans[:1]), "--device", device], scans[:1]),
    }
    if len(scans) < 2:
        del commands[ONE_SCAN]
    times: dict[str, list[float]] = {name: [] for name in commands}
    dice: dict[str, dict[str, float]] = {}
    for round_ in range(repeats):
        for name, (command, inputs) in commands.items():
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                subprocess.run(
                    [part.replace("{out}", out) for part in command],
                    check=True,
                    capture_output=True,
                )
                times[name].append(time.perf_counter() - started)
                if round_ == 0:
                    dice[name] = _dice_against_truth(Path(out), inputs)
    return {
        name: {**_summary(times[name]), "times_s": times[name], "dice": dice[name]}
        for name in commands
    }


def per_scan_after_startup(processes: dict, scans: int) -> dict[str, float] | None:
    """Seconds each scan after the first adds to ``lasc infer`` (median of the rounds' own
    differences, so a slow round affects both of its terms alike)."""
    if ONE_SCAN not in processes:
        return None
    pairs = zip(processes["lasc infer"]["times_s"], processes[ONE_SCAN]["times_s"], strict=True)
    each = [(many - one) / (scans - 1) for many, one in pairs]
    return _summary(each)


def _dice_against_truth(out: Path, scans: list[Path]) -> dict[str, float]:
    from src_monai.evaluation.metrics import case_metrics
    from src_monai.io.scans import read_labels

    scores = {}
    for scan in scans:
        truth = read_labels(LASC13 / "labelsTr" / scan.name, 2)
        predicted = read_labels(out / scan.name, 2)
        scores[scan.name.split(".")[0]] = case_metrics(
            predicted.array, truth.array, truth.geometry.spacing, 2
        )["dice"]
    return scores


def startup_seconds(repeats: int = 3) -> dict[str, float]:
    """Median seconds of ``lasc --help`` and of importing what the baseline imports."""
    commands = {
        "lasc --help": [LASC, "--help"],
        "baseline imports": [
            sys.executable,
            "-c",
            "import monai.inferers, monai.transforms, monai.networks.nets, safetensors.torch",
        ],
    }
    result = {}
    for name, command in commands.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        result[name] = statistics.median(times)
    return result


def model_time(model: str, device: str, repeats: int, batch_size: int) -> dict:
    """Model time on la_003 (256x256x130): the project's predictor vs SliceInferer."""
    from src_monai.data.transforms import normalise_volume
    from src_monai.inference.predictor import Predictor
    from src_monai.io.scans import read_scan

    volume = read_scan(LASC13 / "imagesTr" / "la_003.nii.gz").array
    project = Predictor.from_checkpoint(model, device)
    # The same model in float32: what the default precision (bfloat16 where the CPU has it)
    # buys, apart from everything else.
    float32 = Predictor.from_checkpoint(model, device, precision="float32")
    baseline = Predictor.from_checkpoint(BASELINE_MODEL, device, precision="float32")
    values = normalise_volume(volume, project.spec.normalisation)
    ours, labels = _timed(
        lambda: project_labels(project, values, batch_size), repeats, project.device
    )
    ours32, labels32 = _timed(
        lambda: project_labels(float32, values, batch_size), repeats, project.device
    )
    theirs, _ = _timed(lambda: baseline_labels(baseline, values), repeats, baseline.device)
    return {
        "shape": "x".join(map(str, volume.shape)),
        "project": _summary(ours),
        "project_float32": _summary(ours32),
        "voxels_differing_from_float32": int((labels != labels32).sum()),
        "baseline": _summary(theirs),
        "speedup": statistics.median(theirs) / statistics.median(ours),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="bundled", help="the model lasc infer uses")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument(
        "--all-scans", action="store_true", help="also one round of both on every scan"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from src_monai.model.files import BUNDLED_MODEL

    model = str(BUNDLED_MODEL) if args.model == "bundled" else args.model
    scans = sorted((LASC13 / "imagesTr").glob("*.nii.gz"))[: args.cases]
    if not scans:
        print(f"no scans in {LASC13 / 'imagesTr'}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    processes = whole_processes(scans, model, args.device, args.repeats)
    every_scan = sorted((LASC13 / "imagesTr").glob("*.nii.gz"))
    # Both processes start by importing torch and MONAI (about 4 s here): over more scans the
    # ratio tends to the per-scan one.
    amortised = whole_processes(every_scan, model, args.device, 1) if args.all_scans else None
    timing = model_time(model, args.device, args.repeats, args.batch_size)
    results = {
        **machine_facts(load),
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": Path(model).name,
        "baseline_model": BASELINE_MODEL.name,
        "scans": [s.name for s in scans],
        "repeats": args.repeats,
        "whole_process": processes,
        "whole_process_speedup": processes["baseline"]["median_s"]
        / processes["lasc infer"]["median_s"],
        "lasc_infer_per_scan_after_startup_s": per_scan_after_startup(processes, len(scans)),
        "whole_process_all_scans": amortised,
        "startup_s": startup_seconds(),
        "model_time_256x256x130": timing,
    }
    if not args.no_memory:
        results["peak_memory_mb_320x320x130"] = {
            "project": _peak_memory(model, 320, 130, args.device, args.batch_size),
            "baseline": _peak_memory(str(BASELINE_MODEL), 320, 130, args.device, args.batch_size),
        }
    out = args.out or REPO / "benchmarks" / "results" / f"infer_speed_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    _print_tables(results)
    print(f"wrote {out}")
    return 0


def _print_tables(results: dict) -> None:
    processes = results["whole_process"]
    print(
        f"\nwhole processes on {len(results['scans'])} scans, {results['repeats']} rounds "
        f"(load {results['load_average_1min_at_start']:.2f} at start)"
    )
    print("| process | median s (min-max) | mean Dice | per case |")
    print("|---|---|---|---|")
    for name, row in processes.items():
        dice = row["dice"]
        print(
            f"| {name} | {row['median_s']:.2f} ({row['min_s']:.2f}-{row['max_s']:.2f}) | "
            f"{statistics.mean(dice.values()):.3f} | "
            + ", ".join(f"{case} {value:.3f}" for case, value in dice.items())
            + " |"
        )
    print(f"speed-up of lasc infer as a whole process: x{results['whole_process_speedup']:.2f}")
    each = results["lasc_infer_per_scan_after_startup_s"]
    if each:
        print(
            f"lasc infer per scan after start-up (each scan after the first): "
            f"{each['median_s']:.2f} s ({each['min_s']:.2f}-{each['max_s']:.2f})"
        )
    startup = results["startup_s"]
    print(
        f"start-up alone: lasc --help {startup['lasc --help']:.2f} s, the baseline's imports "
        f"{startup['baseline imports']:.2f} s"
    )
    if results["whole_process_all_scans"]:
        every = results["whole_process_all_scans"]
        base, ours = every["baseline"], every["lasc infer"]
        print(
            f"all {len(base['dice'])} scans, one round: baseline {base['median_s']:.2f} s "
            f"(Dice {statistics.mean(base['dice'].values()):.3f}), lasc infer "
            f"{ours['median_s']:.2f} s (Dice {statistics.mean(ours['dice'].values()):.3f}), "
            f"x{base['median_s'] / ours['median_s']:.2f}"
        )
    timing = results["model_time_256x256x130"]
    print(
        f"\nmodel time, {timing['shape']}: project {timing['project']['median_s']:.3f} s "
        f"(float32 {timing['project_float32']['median_s']:.3f} s, "
        f"{timing['voxels_differing_from_float32']} voxels differ), "
        f"SliceInferer {timing['baseline']['median_s']:.3f} s (x{timing['speedup']:.2f})"
    )
    if "peak_memory_mb_320x320x130" in results:
        memory = results["peak_memory_mb_320x320x130"]
        print(
            f"peak memory 320x320x130: project {memory['project']:.0f} MB, "
            f"baseline {memory['baseline']:.0f} MB"
        )


if __name__ == "__main__":
    raise SystemExit(main())
