"""Screen how a 3D stage 2 covers its region: MONAI's sliding windows against one pass over the
whole region (``PredictOptions.whole_region``), on one joint fold's held-out cases, end to end.

    python scripts/screen_3d_region.py FOLD [--segmenters runs/cv-joint3d] [--threads 2]

Uses the fold's joint localiser (``runs/cv-joint-loc``) and 3D stage 2 (``--segmenters``), joined
as ``cv_two_stage.py`` joins them, with post-processing: a quick look at one fold, where
``cv_two_stage.py`` scores every fold and every variant. Prints per-dataset means (Dice, HD95,
lowest Dice) and writes ``/tmp/fold<FOLD>_modes.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from cv_two_stage import fold_models  # this folder

from src_monai.data.datasets import discover_datasets
from src_monai.data.splits import load_split
from src_monai.evaluation.report import EvalPair, evaluate_pairs
from src_monai.inference.predictor import Predictor
from src_monai.model.files import combine_stages
from src_monai.progress import run_to_end

DATA = [Path("../shared/data/lasc13"), Path("../shared/data/atriaseg2018")]
MODES = {"windows": False, "whole": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold", type=int)
    parser.add_argument("--segmenters", type=Path, default=Path("runs/cv-joint3d"))
    parser.add_argument("--modes", default="windows,whole")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = discover_datasets(DATA)
    folds = load_split(args.segmenters / "folds.json", known_cases=dataset.case_ids())
    by_case = {c.case_id: c for c in dataset.training}
    held_out = folds.partitions[args.fold]["val"]
    pairs = [EvalPair(c, None, by_case[c].label, by_case[c].image) for c in held_out]
    model = combine_stages(
        fold_models(Path("runs/cv-joint-loc"), args.fold),
        fold_models(args.segmenters, args.fold),
        Path(f"/tmp/two_fold{args.fold}.safetensors"),
    )
    predictor = Predictor.from_checkpoint(model, "cpu")
    results = {}
    for mode in args.modes.split(","):
        started = time.perf_counter()
        options = predictor.options(postprocess=True, whole_region=MODES[mode])
        rows = run_to_end(evaluate_pairs(pairs, 2, predictor=predictor, options=options))
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
