"""Inference speed: the project's Predictor against MONAI's SliceInferer, same model and input.

    .venv/bin/python benchmarks/infer_speed.py [--cases 3] [--repeats 5] [--device cpu]

For each real case (``../shared/data/lasc13``, else the bundled sample) the same normalised,
context-stacked input tensor goes through

* **baseline**: ``monai.inferers.SliceInferer(roi_size=(H, W), sw_batch_size=1,
  spatial_dim=2)`` then ``AsDiscrete(argmax=True)``, the canonical MONAI way to run a 2D
  network over a 3D volume;
* **project**: ``Predictor.predict_volume(normalised=True, postprocess=False)``.

Both use the bundled model and weights in one process; the labels must agree on >= 99.9 %
of voxels. Also measured: a 256x256x130 and a 320x320x130 volume (a real case padded and
repeated), the whole ``lasc infer`` file path with its I/O share, and peak memory of each
method in a fresh process. Prints a table and writes
``benchmarks/results/infer_speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
LASC13 = REPO.parent / "shared" / "data" / "lasc13"


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
    from src_monai.progress import run_to_end

    job = predictor.predict_volume(
        values, normalised=True, postprocess=False, batch_size=batch_size
    )
    return run_to_end(job).labels


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


def _peak_memory(method: str, height: int, depth: int, device: str, batch_size: int) -> float:
    """Peak resident memory (MB) of one method on one volume size, in a fresh process."""
    benchmarks = str(REPO / "benchmarks")
    run = (
        "b.baseline_labels(p, v)"
        if method == "baseline"
        else f"b.project_labels(p, v, {batch_size})"
    )
    code = "\n".join(
        [
            f"import sys, resource; sys.path.insert(0, {str(REPO)!r}); "
            f"sys.path.insert(0, {benchmarks!r})",
            "import infer_speed as b",
            "from src_monai.inference.predictor import Predictor",
            "from src_monai.data.transforms import normalise_volume",
            f"p = Predictor.from_checkpoint(device={device!r})",
            f"v = normalise_volume(b.sized(b._volumes(1)[0][1], {height}, {depth}), "
            "p.spec.normalisation)",
            run,
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ]
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def file_path_timing(repeats: int, device: str) -> dict[str, float]:
    """``lasc infer``'s own steps on a real file: read, predict (normalise included), write."""
    from src_monai.inference.predictor import Predictor
    from src_monai.io.scans import read_scan, write_labels
    from src_monai.model.files import SAMPLE_SCAN
    from src_monai.progress import run_to_end

    path = sorted((LASC13 / "imagesTr").glob("*.nii.gz"))[0] if LASC13.exists() else SAMPLE_SCAN
    predictor = Predictor.from_checkpoint(device=device)
    reads, predicts, writes = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            scan = read_scan(path)
            read_done = time.perf_counter()
            labels = run_to_end(predictor.predict_volume(scan.array)).labels
            predict_done = time.perf_counter()
            write_labels(Path(folder) / f"{attempt}.nii.gz", labels, scan.geometry)
            written = time.perf_counter()
            if attempt:  # the first round warms up
                reads.append(read_done - started)
                predicts.append(predict_done - read_done)
                writes.append(written - predict_done)
    read, predict, write = (statistics.median(x) for x in (reads, predicts, writes))
    return {
        "file": path.name,
        "read_s": read,
        "predict_with_postprocess_s": predict,
        "write_s": write,
        "total_s": read + predict + write,
        "io_share": (read + write) / (read + predict + write),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    from src_monai.data.transforms import normalise_volume
    from src_monai.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(device=args.device)
    device = predictor.device
    cases = [(name, volume) for name, volume in _volumes(args.cases)]
    base_volume = cases[0][1]
    cases += [
        ("256x256x130", sized(base_volume, 256, 130)),
        ("320x320x130", sized(base_volume, 320, 130)),
    ]
    rows = []
    for name, volume in cases:
        values = normalise_volume(volume, predictor.spec.normalisation)
        base_times, base = _timed(
            lambda values=values: baseline_labels(predictor, values), args.repeats, device
        )
        ours_times, ours = _timed(
            lambda values=values: project_labels(predictor, values, args.batch_size),
            args.repeats,
            device,
        )
        agreement = float(np.mean(base == ours))
        row = {
            "case": name,
            "shape": "x".join(map(str, volume.shape)),
            "baseline": _summary(base_times),
            "project": _summary(ours_times),
            "speedup": statistics.median(base_times) / statistics.median(ours_times),
            "voxel_agreement": agreement,
        }
        rows.append(row)
        print(
            f"{name:>12} {row['shape']:>12}  baseline {row['baseline']['median_s']:7.3f} s  "
            f"project {row['project']['median_s']:7.3f} s  x{row['speedup']:.2f}  "
            f"agree {100 * agreement:.3f} %",
            flush=True,
        )
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "device": str(device)
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
        "file_path": file_path_timing(args.repeats, args.device),
    }
    if not args.no_memory:
        results["peak_memory_mb_320x320x130"] = {
            method: _peak_memory(method, 320, 130, args.device, args.batch_size)
            for method in ("baseline", "project")
        }
    out = args.out or REPO / "benchmarks" / "results" / f"infer_speed_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print("| case | shape | SliceInferer (s) | project (s) | speed-up | agreement |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['shape']} | {row['baseline']['median_s']:.3f} "
            f"({row['baseline']['min_s']:.3f}-{row['baseline']['max_s']:.3f}) | "
            f"{row['project']['median_s']:.3f} ({row['project']['min_s']:.3f}-"
            f"{row['project']['max_s']:.3f}) | x{row['speedup']:.2f} | "
            f"{100 * row['voxel_agreement']:.3f} % |"
        )
    file_path = results["file_path"]
    print(
        f"\nlasc infer steps on {file_path['file']}: read {file_path['read_s']:.3f} s, predict "
        f"{file_path['predict_with_postprocess_s']:.3f} s, write {file_path['write_s']:.3f} s; "
        f"I/O {100 * file_path['io_share']:.0f} %"
    )
    if "peak_memory_mb_320x320x130" in results:
        memory = results["peak_memory_mb_320x320x130"]
        print(
            f"peak memory 320x320x130: baseline {memory['baseline']:.0f} MB, "
            f"project {memory['project']:.0f} MB"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
