"""Cross-validation of tri-planar against single-axis prediction, and of the uncertainty score.

    python scripts/cv_planes_uncertainty.py configs/lasc13_2d.toml --data ../shared/data/lasc13 \\
        --out runs/cv-planes [--folds 4] [--epochs 10 --steps 20] [--evaluate-only]

1. The same patient-level folds as ``docs/cv`` (k-fold, seed 0).
2. Per fold, two models with the *same* training budget (epochs x steps x batch slices, not a
   time limit, so machine load cannot favour either): ``single`` (slices along the slice axis)
   and ``tri`` (``data.tri_planar = true``: slices along all three axes). Sequential runs, logs
   in ``OUT/logs``.
3. Each fold's models on its held-out patients (largest component + fill holes, as shipped):
   ``single``; ``tri`` fused over the three planes; ``tri-one-axis`` (the tri-planar model on the
   slice axis alone). Per-case 3D Dice and HD95 (mm): ``OUT/planes_per_case.csv``.
4. The uncertainty map of the ``single`` model (:data:`src_monai.infer.UNCERTAINTY_VIEWS`): per
   case the uncertain volume as % of the predicted LA volume against Dice; per slice the
   uncertain area (mm²) against the error area (false positive + false negative, mm²).
   Spearman correlations in ``OUT/summary.json``, per-case values in
   ``OUT/uncertainty_per_case.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import launch, variant_summary

from src_monai.data.datasets import discover_msd
from src_monai.data.splits import kfold_split, save_split
from src_monai.evaluation.metrics import case_metrics
from src_monai.inference.measure import uncertainty_scores
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.io.tables import write_csv
from src_monai.progress import run_to_end

logger = logging.getLogger("cv_planes_uncertainty")

RECIPES = {"single": "data.tri_planar=false", "tri": "data.tri_planar=true"}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def uncertainty_row(
    prediction, truth: np.ndarray, spacing, axis: int
) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """A case's Dice, HD95 and uncertainty scores, and per slice (uncertain area, error area)
    in mm² (error: false positives + false negatives)."""
    metrics = case_metrics(prediction.labels, truth, spacing, 2)
    scores = uncertainty_scores(prediction.uncertainty, prediction.labels, spacing, axis)
    row = {
        "dice": round(metrics["dice"], 4),
        "hd95_mm": round(metrics["hd95_mm"], 3),
        "uncertain_volume_pct": round(scores.uncertain_volume_pct, 3),
        "most_uncertain_slice": scores.most_uncertain_slice,
    }
    wrong = (prediction.labels == 1) != (truth == 1)
    pixel_mm2 = float(np.prod([s for i, s in enumerate(spacing) if i != axis]))
    error_area = wrong.sum(axis=tuple(i for i in range(3) if i != axis)) * pixel_mm2
    return row, (scores.slice_uncertain_area_mm2, error_area)


def uncertainty_summary(case_rows: list[dict], slice_pairs: list) -> dict:
    """Spearman correlations of the uncertainty scores with the errors, per case and slice."""
    per_slice_u = np.concatenate([u for u, _ in slice_pairs])
    per_slice_e = np.concatenate([e for _, e in slice_pairs])
    volumes = [r["uncertain_volume_pct"] for r in case_rows]
    return {
        "spearman_case_uncertain_volume_vs_dice": round(
            spearman(volumes, [r["dice"] for r in case_rows]), 3
        ),
        "spearman_case_uncertain_volume_vs_hd95": round(
            spearman(volumes, [r["hd95_mm"] for r in case_rows]), 3
        ),
        "spearman_slice_uncertain_area_vs_error_area": round(
            spearman(per_slice_u.tolist(), per_slice_e.tolist()), 3
        ),
        "slices": int(per_slice_u.size),
        "worst_case_by_dice_is_most_uncertain": min(case_rows, key=lambda r: r["dice"])["case"]
        == max(case_rows, key=lambda r: r["uncertain_volume_pct"])["case"],
        # Per case: does the most uncertain slice fall among the slices with the most error?
        "most_uncertain_slice_in_top5_error_slices": int(
            sum(int(np.argmax(u)) in np.argsort(e)[-5:].tolist() for u, e in slice_pairs)
        ),
    }


def train_all(args: argparse.Namespace, out: Path) -> None:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = [
        f"data.dataset='{args.data.resolve()}'",
        f"data.split='{out / 'folds.json'}'",
        f"train.runs_dir='{out / 'runs'}'",
        f"train.epochs={args.epochs}",
        f"train.steps_per_epoch={args.steps}",
        f"train.val_every={args.epochs}",  # validate once, at the end: the budget is training
        "train.time_limit_minutes=0",
        "train.early_stopping_patience=0",
        "train.preview_slices=0",
        *args.overrides,
    ]
    started = time.perf_counter()
    for k in range(args.folds):
        for recipe, setting in RECIPES.items():
            name = f"{recipe}-fold{k}"
            if (out / "runs" / name / "checkpoints" / "last.safetensors").exists():
                continue
            extra = [f"data.fold={k}", f"train.run_name='{name}'", setting]
            process: subprocess.Popen = launch(name, args.config, common + extra, out)
            if process.wait() != 0:
                raise SystemExit(f"{name} failed: see {out / 'logs' / (name + '.log')}")
            logger.info("%s trained (%.0f s since start)", name, time.perf_counter() - started)


def evaluate_all(args: argparse.Namespace, out: Path, folds) -> None:
    dataset = discover_msd(args.data)
    by_case = {c.case_id: c for c in dataset.training}
    plane_rows, case_rows, slice_pairs = [], [], []
    for k, partition in enumerate(folds.partitions):
        models = {
            recipe: Predictor.from_checkpoint(
                out / "runs" / f"{recipe}-fold{k}" / "checkpoints" / "last.safetensors", args.device
            )
            for recipe in RECIPES
        }
        for case_id in partition["val"]:
            scan = read_scan(by_case[case_id].image)
            truth = read_labels(by_case[case_id].label, 2).array
            spacing = scan.geometry.spacing
            variants = {
                "single": (models["single"], None),
                "tri": (models["tri"], True),
                "tri-one-axis": (models["tri"], False),
            }
            for variant, (predictor, tri_planar) in variants.items():
                started = time.perf_counter()
                prediction = run_to_end(
                    predictor.predict_volume(
                        scan.array,
                        predictor.options(
                            postprocess=True, tri_planar=tri_planar, uncertainty=variant == "single"
                        ),
                    )
                )
                seconds = time.perf_counter() - started
                metrics = case_metrics(prediction.labels, truth, spacing, 2)
                plane_rows.append(
                    {
                        "fold": k,
                        "variant": variant,
                        "case": case_id,
                        "dice": round(metrics["dice"], 4),
                        "hd95_mm": round(metrics["hd95_mm"], 3),
                        "seconds": round(seconds, 1),
                    }
                )
                logger.info("%s %s Dice %.4f", case_id, variant, metrics["dice"])
                if prediction.uncertainty is None:
                    continue
                row, slices = uncertainty_row(prediction, truth, spacing, predictor.spec.slice_axis)
                case_rows.append({"fold": k, "case": case_id, **row})
                slice_pairs.append(slices)
    write_csv(out / "planes_per_case.csv", plane_rows)
    write_csv(out / "uncertainty_per_case.csv", case_rows)
    summary: dict = {"folds": args.folds, "epochs": args.epochs, "steps": args.steps}
    for variant in ("single", "tri", "tri-one-axis"):
        rows = [r for r in plane_rows if r["variant"] == variant]
        stats = variant_summary(rows)
        summary[variant] = {
            "dice_mean": round(stats["dice_mean"], 4),
            "dice_sd": round(stats["dice_sd"], 4),
            "hd95_mean": round(stats["hd95_mean"], 3),
            "hd95_sd": round(stats["hd95_sd"], 3),
            "seconds_mean": round(float(np.mean([r["seconds"] for r in rows])), 1),
            "cases": len(rows),
        }
    single = {r["case"]: r for r in plane_rows if r["variant"] == "single"}
    tri = {r["case"]: r for r in plane_rows if r["variant"] == "tri"}
    summary["tri_minus_single"] = {
        "dice_mean": round(float(np.mean([tri[c]["dice"] - single[c]["dice"] for c in single])), 4),
        "hd95_mean": round(
            float(np.nanmean([tri[c]["hd95_mm"] - single[c]["hd95_mm"] for c in single])), 3
        ),
        "cases_tri_better_dice": sum(tri[c]["dice"] > single[c]["dice"] for c in single),
    }
    summary["uncertainty"] = uncertainty_summary(case_rows, slice_pairs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("%s", json.dumps(summary, indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--evaluate-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    folds = kfold_split(discover_msd(args.data).case_ids(), args.folds, seed=0)
    if not (out / "folds.json").exists():
        save_split(out / "folds.json", folds)
    if not args.evaluate_only:
        train_all(args, out)
    evaluate_all(args, out, folds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
