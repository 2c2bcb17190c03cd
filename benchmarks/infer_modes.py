"""Cost of the optional inference modes against a plain prediction, same model, same process.

    .venv/bin/python benchmarks/infer_modes.py [--repeats 3] [--device cpu]

On the bundled sample (la_016, 256x256x90), with the bundled model and post-processing:

* **plain**: ``predict_volume`` as ``lasc infer`` runs it;
* **uncertainty**: plus the uncertainty map (four augmented views);
* **tri-planar**: the same network predicting along all three axes and fusing them (the
  weights are the single-axis model's: speed does not depend on them, accuracy does);
* **tri-planar + uncertainty**.

Modes run interleaved, ``--repeats`` rounds, median seconds; the ratio to plain is what to
read (the machine's load changes absolute times). Prints a table and writes
``benchmarks/results/infer_modes_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

MODES = {
    "plain": {},
    "uncertainty": {"uncertainty": True},
    "tri-planar": {"tri_planar": True},
    "tri-planar + uncertainty": {"tri_planar": True, "uncertainty": True},
}


def main() -> int:
    from src_monai.inference.predictor import Predictor
    from src_monai.io.scans import read_scan
    from src_monai.model.files import SAMPLE_SCAN
    from src_monai.progress import run_to_end

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    single = Predictor.from_checkpoint(None, args.device)
    tri = Predictor(single.network, single.spec.with_input(tri_planar=True), single.device)
    volume = read_scan(SAMPLE_SCAN).array
    run_to_end(single.predict_volume(volume))  # warm-up: MONAI imports, first allocations
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode, options in MODES.items():
            predictor = tri if options.get("tri_planar") else single
            if args.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            run_to_end(predictor.predict_volume(volume, predictor.options(**options)))
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - started)
    plain = statistics.median(times["plain"])
    rows = {
        mode: {
            "median_s": round(statistics.median(values), 3),
            "all_s": [round(v, 3) for v in values],
            "ratio_to_plain": round(statistics.median(values) / plain, 2),
        }
        for mode, values in times.items()
    }
    print(f"la_016 256x256x90, {args.device}, {torch.get_num_threads()} threads")
    print(f"{'mode':<26}{'median s':>10}{'x plain':>10}")
    for mode, row in rows.items():
        print(f"{mode:<26}{row['median_s']:>10.2f}{row['ratio_to_plain']:>10.2f}")
    out = args.out or REPO / "benchmarks" / "results" / f"infer_modes_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": args.device,
        },
        "repeats": args.repeats,
        "modes": rows,
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
