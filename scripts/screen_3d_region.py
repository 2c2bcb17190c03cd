"""Screen how a 3D stage 2 covers its region: MONAI's sliding windows (as shipped) against
one pass over the whole region, on one joint fold's held-out cases, end to end.

    python scripts/screen_3d_region.py FOLD [--modes windows,whole] [--threads 2]

Uses the fold's joint localiser (``runs/cv-joint-loc``) and 3D stage 2 (``runs/cv-joint3d``),
joined as ``cv_two_stage.py`` joins them, with post-processing. ``whole`` is a screening patch
of :meth:`StageNetwork._logits` (the region zero-padded to a multiple of 16 and passed through
the network at once), not an option of the product: a variant that wins here is implemented and
cross-validated before it ships. Prints per-dataset means (Dice, HD95, lowest Dice) and writes
``/tmp/fold<FOLD>_modes.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cv_two_stage import fold_models  # this folder

import src_monai.inference.stage as stage
from src_monai.data.datasets import discover_datasets
from src_monai.data.splits import load_split
from src_monai.evaluation.report import EvalPair, evaluate_pairs
from src_monai.inference.predictor import Predictor
from src_monai.model.files import combine_stages
from src_monai.progress import run_to_end

DATA = [Path("../shared/data/lasc13"), Path("../shared/data/atriaseg2018")]
MODE = {"name": "windows"}
_windows = stage.StageNetwork._logits


def _logits(self, batch, overlap):
    if batch.ndim != 5 or MODE["name"] == "windows":
        return _windows(self, batch, overlap)
    shape = batch.shape[2:]
    pads = []
    for size in reversed(shape):  # F.pad's order: last axis first
        extra = -size % 16
        pads += [extra // 2, extra - extra // 2]
    with stage.network_autocast(self.device, self.precision):
        out = self.network(F.pad(batch, pads))
    low = [pads[2 * (2 - i)] for i in range(3)]
    inside = tuple(slice(lo, lo + n) for lo, n in zip(low, shape, strict=True))
    return stage._plain(out[(slice(None), slice(None), *inside)]).float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold", type=int)
    parser.add_argument("--modes", default="windows,whole")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = discover_datasets(DATA)
    folds = load_split(Path("runs/cv-joint3d/folds.json"), known_cases=dataset.case_ids())
    by_case = {c.case_id: c for c in dataset.training}
    held_out = folds.partitions[args.fold]["val"]
    pairs = [EvalPair(c, None, by_case[c].label, by_case[c].image) for c in held_out]
    model = combine_stages(
        fold_models(Path("runs/cv-joint-loc"), args.fold),
        fold_models(Path("runs/cv-joint3d"), args.fold),
        Path(f"/tmp/two_fold{args.fold}.safetensors"),
    )
    predictor = Predictor.from_checkpoint(model, "cpu")
    stage.StageNetwork._logits = _logits
    results = {}
    for mode in args.modes.split(","):
        MODE["name"] = mode
        started = time.perf_counter()
        rows = run_to_end(
            evaluate_pairs(
                pairs, 2, predictor=predictor, options=predictor.options(postprocess=True)
            )
        )
        seconds = (time.perf_counter() - started) / len(pairs)
        groups = {
            "lasc13": [r for r in rows if r["case"].startswith("la_")],
            "atriaseg2018": [r for r in rows if not r["case"].startswith("la_")],
        }
        summary = {
            name: {
                "dice": round(float(np.mean([r["dice"] for r in group])), 4),
                "hd95_mm": round(float(np.mean([r["hd95_mm"] for r in group])), 2),
                "lowest_dice": round(float(np.min([r["dice"] for r in group])), 3),
            }
            for name, group in groups.items()
        }
        cases = {r["case"]: (round(r["dice"], 4), round(r["hd95_mm"], 2)) for r in rows}
        results[mode] = {"seconds_per_case": round(seconds, 2), **summary, "cases": cases}
        print(mode, results[mode]["seconds_per_case"], summary, flush=True)
    Path(f"/tmp/fold{args.fold}_modes.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
