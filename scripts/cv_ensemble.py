"""Cross-validate an ensemble of crop models (stage 2) behind each fold's localiser.

    python scripts/cv_ensemble.py --data DATA --localisers runs/cv-loc \\
        --segmenters runs/cv-crop runs/cv-crop-ema runs/cv-crop160 --out runs/cv-ensemble

Each ``--segmenters`` folder is a ``cross_validate.py --stage segmenter`` run with the same
folds. For each fold's held-out patients the fold's localiser finds the box once; every listed
crop model segments its own crop around it (each with its own crop size and context slices);
their atrium probabilities (background outside a model's crop) are averaged, thresholded at
0.5 and post-processed as shipped. Scored are each model alone and every combination of two or
more: per case in ``per_case.csv``, means in ``summary.json``. Written to decide whether fold
ensembling wins enough accuracy to pay for its time (the model card's "variants tried").
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import numpy as np
from cv_two_stage import fold_models, mean_sd  # this folder

from src_monai.data.datasets import discover_msd
from src_monai.data.splits import load_split
from src_monai.evaluation.metrics import case_metrics
from src_monai.inference.postprocess import postprocess_labels
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.io.tables import write_csv
from src_monai.progress import run_to_end

logger = logging.getLogger("cv_ensemble")


def atrium_probabilities(predictors: dict[str, Predictor], localiser: Predictor, image: Path):
    """Each crop model's atrium probability on the localiser's box of one scan."""
    scan = read_scan(image)
    # One preparation for every model: they share the localiser's normalisation and grid.
    prepared = localiser.prepare(
        scan.array, spacing=scan.geometry.spacing, affine=scan.geometry.stated_affine
    )
    box = run_to_end(localiser.localise(prepared))
    found = {}
    for name, predictor in predictors.items():
        options = predictor.options(probabilities=True, postprocess=False)
        prediction = run_to_end(predictor.predict_prepared(prepared, options, box=box))
        found[name] = prediction.probabilities[1]
    return found, scan.geometry.spacing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--localisers", type=Path, required=True)
    parser.add_argument("--segmenters", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=False)
    dataset = discover_msd(args.data)
    folds = load_split(args.segmenters[0] / "folds.json", known_cases=dataset.case_ids())
    by_case = {c.case_id: c for c in dataset.training}
    names = [folder.name for folder in args.segmenters]
    combinations = [
        members
        for size in range(1, len(names) + 1)
        for members in itertools.combinations(names, size)
    ]
    rows = []
    for k, partition in enumerate(folds.partitions):
        localiser = Predictor.from_checkpoint(fold_models(args.localisers, k), args.device)
        predictors = {
            folder.name: Predictor.from_checkpoint(fold_models(folder, k), args.device)
            for folder in args.segmenters
        }
        for case in partition["val"]:
            found, spacing = atrium_probabilities(predictors, localiser, by_case[case].image)
            truth = read_labels(by_case[case].label).array
            for members in combinations:
                mean = np.mean([found[name] for name in members], axis=0)
                labels = postprocess_labels((mean > 0.5).astype(np.uint8), 2)
                metrics = case_metrics(labels, truth, spacing, 2)
                rows.append({"fold": k, "case": case, "ensemble": "+".join(members), **metrics})
            logger.info("fold %d %s done", k, case)
    write_csv(args.out / "per_case.csv", rows)
    summary = {
        "+".join(members): {
            "dice": mean_sd([r["dice"] for r in rows if r["ensemble"] == "+".join(members)]),
            "hd95_mm": mean_sd([r["hd95_mm"] for r in rows if r["ensemble"] == "+".join(members)]),
        }
        for members in combinations
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("%s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
