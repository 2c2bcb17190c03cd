"""Cross-validate the two-stage model from the fold models of its two stages.

    python scripts/cross_validate.py configs/lasc13_two_stage.toml --stage localiser \\
        --data DATA --out runs/cv-loc --no-final
    python scripts/cross_validate.py configs/lasc13_two_stage.toml --stage segmenter \\
        --data DATA --out runs/cv-crop --no-final
    python scripts/cv_two_stage.py --data DATA --localisers runs/cv-loc --segmenters runs/cv-crop \\
        --out runs/cv-two-stage

Both cross-validations use the same patient-level folds (seed 0). For each fold, on its held-out
patients: the localiser's box against the true one (``boxes.csv``: does it hold the atrium, how
many atrium voxels the stage-2 crop would miss), and the whole two-stage model (the fold's
localiser and crop model in one file) scored end to end, with and without post-processing
(``per_case.csv``, means in ``summary.json``); a 3D stage 2 also with one pass over its whole
region instead of sliding windows (the ``-whole`` variants). With ``--uncertainty``, the
uncertainty map of each held-out case (post-processing on, as shipped) against its errors:
``uncertainty_per_case.csv`` and Spearman correlations under ``uncertainty`` in the summary (the
same measures as ``cv_planes_uncertainty.py``). ``--only FOLD`` scores the folds trained so far.
The variant with the best mean Dice (then HD95; with several datasets, the mean of their means)
is ``chosen`` in the summary, and ``per_case.md`` holds its per-case tables, one per dataset.
With ``--final RUN``, the two-stage model that ``lasc train`` joined in
``RUN/model.safetensors`` (trained on every case; or a model file) is written to
``OUT/model.safetensors`` in fp16 with the chosen variant as its default and its
cross-validated accuracy, per dataset too, in the metadata: the file to bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from cross_validate import fold_model  # this folder
from cv_planes_uncertainty import uncertainty_row, uncertainty_summary  # this folder

from src_monai.data.datasets import discover_datasets
from src_monai.data.splits import load_split
from src_monai.evaluation.boxes import box_rows
from src_monai.evaluation.report import EvalPair, evaluate_pairs
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.io.tables import write_csv
from src_monai.model.files import combine_stages, load_model, save_model
from src_monai.model.spec import CrossValidation, DatasetAccuracy, InferenceDefaults
from src_monai.progress import run_to_end

logger = logging.getLogger("cv_two_stage")

# name: (post-processing, one pass over a 3D segmenter's whole region)
VARIANTS = {
    "plain": (False, False),
    "post": (True, False),
    "plain-whole": (False, True),
    "post-whole": (True, True),
}


def variants_of(spec) -> dict[str, tuple[bool, bool]]:
    """The variants that differ for this model: the whole-region pass only for a 3D one."""
    three_d = spec.stage.spatial_dims == 3
    return {name: v for name, v in VARIANTS.items() if three_d or not v[1]}


def scored_variants(rows: list[dict]) -> list[str]:
    """The variants in ``rows``, in :data:`VARIANTS` order."""
    present = {r["variant"] for r in rows}
    return [name for name in VARIANTS if name in present]


def fold_models(folder: Path, fold: int) -> Path:
    """The fold's model: ``FOLDER/fold<k>.safetensors`` where the fold models were kept as
    files (``tests/data/joint_fold_localisers``), else the fold's last checkpoint in a
    cross-validation folder (a run resumed or restarted by ``cross_validate.py --resume``
    included)."""
    kept = folder / f"fold{fold}.safetensors"
    return kept if kept.is_file() else fold_model(folder.resolve(), f"fold{fold}")


def merged_rows(folders: list[Path]) -> tuple[list[dict], list[dict], list[int]]:
    """The box and score rows of several earlier outputs (one fold each, scored in separate
    sessions: run folders do not outlive one), numbers as numbers, and their folds."""
    from src_monai.io.tables import read_csv

    def typed_value(key: str, value: str):
        if value in ("True", "False"):
            return value == "True"
        if value == "":  # an undefined distance was written empty
            return float("nan") if key.endswith("_mm") else value
        try:
            return float(value)
        except ValueError:
            return value

    def typed(row: dict) -> dict:
        out = {key: typed_value(key, value) for key, value in row.items()}
        out["fold"] = int(out["fold"])
        return out

    boxes, rows = [], []
    for folder in folders:
        boxes += [typed(r) for r in read_csv(folder / "boxes.csv")]
        rows += [typed(r) for r in read_csv(folder / "per_case.csv")]
    folds = sorted({r["fold"] for r in rows})
    if len(folds) != len(folders) or len({r["case"] for r in boxes}) != len(boxes):
        raise SystemExit(f"--merge: {', '.join(map(str, folders))}: a fold or case twice")
    return boxes, rows, folds


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean, sd and the worst (lowest) value, undefined values (NaN) left out."""
    array = np.array(values, dtype=float)
    array = array[~np.isnan(array)]
    return {
        "mean": round(float(array.mean()), 4),
        "sd": round(float(array.std(ddof=1)), 4),
        "min": round(float(array.min()), 4),
    }


def case_uncertainty(predictor: Predictor, pair: EvalPair):
    """:func:`cv_planes_uncertainty.uncertainty_row` of the two-stage model on one case."""
    scan, truth = read_scan(pair.image), read_labels(pair.truth)
    prediction = run_to_end(
        predictor.predict_volume(
            scan.array,
            predictor.options(postprocess=True, uncertainty=True),
            spacing=scan.geometry.spacing,
        )
    )
    return uncertainty_row(
        prediction, truth.array, scan.geometry.spacing, predictor.spec.slice_axis
    )


def scores(picked: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The Dice and HD95 (mm; NaN where undefined) of score rows."""
    dice = np.array([r["dice"] for r in picked], dtype=float)
    return dice, np.array([r["hd95_mm"] for r in picked], dtype=float)


def dataset_accuracy(name: str, picked: list[dict]) -> DatasetAccuracy:
    """One dataset's per-case means, sd and lowest Dice over its score rows."""
    dice, hd95 = scores(picked)
    return DatasetAccuracy(
        name=name,
        cases=len(dice),
        dice_mean=round(float(dice.mean()), 4),
        dice_sd=round(float(dice.std(ddof=1)), 4),
        dice_min=round(float(dice.min()), 4),
        hd95_mean=round(float(np.nanmean(hd95)), 4),
        hd95_sd=round(float(np.nanstd(hd95, ddof=1)), 4),
    )


def variant_accuracy(rows: list[dict], folds: int, variant: str) -> CrossValidation:
    """One variant's cross-validated accuracy over ``rows``, and per dataset where the folds
    held out cases of several."""
    picked = [r for r in rows if r["variant"] == variant]
    dice, hd95 = scores(picked)
    names = sorted({r["dataset"] for r in picked})
    parts = [dataset_accuracy(n, [r for r in picked if r["dataset"] == n]) for n in names]
    return CrossValidation(
        folds=folds,
        cases=len(picked),
        chosen=variant,
        dice_mean=round(float(dice.mean()), 4),
        dice_sd=round(float(dice.std(ddof=1)), 4),
        hd95_mean=round(float(np.nanmean(hd95)), 4),
        hd95_sd=round(float(np.nanstd(hd95, ddof=1)), 4),
        hd95_undefined=int(np.isnan(hd95).sum()),
        datasets=tuple(parts) if len(parts) > 1 else (),
    )


def chosen_variant(accuracies: dict[str, CrossValidation]) -> str:
    """The best mean Dice (to 3 decimals), then the lower HD95. With several datasets each
    counts equally (the mean of their means): LGE's 80 cases would otherwise outvote
    bSSFP's 16."""

    def ranking(variant: str) -> tuple[float, float]:
        parts = accuracies[variant].datasets or (accuracies[variant],)
        dice = float(np.mean([p.dice_mean for p in parts]))
        return round(dice, 3), -float(np.mean([p.hd95_mean for p in parts]))

    return max(accuracies, key=ranking)


def case_tables(rows: list[dict], boxes: list[dict], variant: str) -> str:
    """Markdown per-case tables of one variant, one per dataset (for the model card)."""
    # Atrium voxels outside stage 2's region from the box, and (a 3D stage 2) outside the
    # region grown as a perfect stage 2 would grow it.
    outside = {
        b["case"]: " / ".join(
            str(b[key])
            for key in ("voxels_outside_crop", "voxels_outside_grown_region")
            if key in b
        )
        for b in boxes
    }
    picked = sorted(
        (r for r in rows if r["variant"] == variant), key=lambda r: (r["fold"], r["case"])
    )
    text = []
    for name in sorted({r["dataset"] for r in picked}):
        part = [r for r in picked if r["dataset"] == name]
        accuracy = dataset_accuracy(name, part)
        lowest = min(part, key=lambda r: r["dice"])["case"]
        text += [
            f"#### {name}: {len(part)} cases, variant `{variant}`",
            "",
            "| fold | case | Dice | HD95 (mm) | ASD (mm) | volume error (%) "
            "| atrium voxels outside the region (first / grown) |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['fold']} | {r['case']} | {r['dice']:.3f} | {r['hd95_mm']:.2f} "
                f"| {r['asd_mm']:.2f} | {r['volume_error_pct']:.1f} "
                f"| {outside.get(r['case'], '')} |"
                for r in part
            ),
            "",
            f"Mean Dice **{accuracy.dice_mean:.3f} ± {accuracy.dice_sd:.3f}** (lowest "
            f"{accuracy.dice_min:.3f}, {lowest}), mean HD95 **{accuracy.hd95_mean:.2f} ± "
            f"{accuracy.hd95_sd:.2f} mm**.",
            "",
        ]
    return "\n".join(text)


def write_final_model(run: Path, out: Path, accuracy: CrossValidation) -> None:
    """The final two-stage model with the chosen inference variant and its CV accuracy."""
    network, spec = load_model(run if run.is_file() else run / "model.safetensors")
    post, whole = VARIANTS[accuracy.chosen]
    spec = spec.with_inference(
        InferenceDefaults(tta=False, postprocess=post, whole_region=whole), accuracy
    )
    save_model(out / "model.safetensors", network, spec, half=True)
    logger.info("final model %s: %s", out / "model.safetensors", accuracy)


def score_summary(boxes: list[dict], rows: list[dict]) -> dict:
    """The boxes' counts and each variant's mean and sd of Dice and HD95."""
    summary: dict = {
        "cases": len(boxes),
        "boxes_holding_the_atrium": sum(bool(b.get("box_holds_atrium")) for b in boxes),
        "crops_missing_atrium_voxels": sum(bool(b.get("voxels_outside_crop")) for b in boxes),
    }
    if rows:
        summary["variants"] = {
            variant: {
                "dice": mean_sd([r["dice"] for r in rows if r["variant"] == variant]),
                "hd95_mm": mean_sd([r["hd95_mm"] for r in rows if r["variant"] == variant]),
            }
            for variant in scored_variants(rows)
        }
    return summary


def score_folds(args, dataset, folds, scored_folds: list[int]):
    """Boxes, score rows (every variant), uncertainty rows and slice pairs of the folds
    ``scored_folds``, each fold's models on its held-out cases."""
    dataset_of = {c.case_id: c.dataset or args.data[0].name for c in dataset.training}
    by_case = {c.case_id: c for c in dataset.training}
    boxes, rows, uncertain_rows, slice_pairs = [], [], [], []
    for k, partition in enumerate(folds.partitions):
        if k not in scored_folds:
            continue
        pairs = [EvalPair(c, None, by_case[c].label, by_case[c].image) for c in partition["val"]]
        if args.segmenters is None:
            localiser = Predictor.from_checkpoint(fold_models(args.localisers, k), args.device)
            found = run_to_end(
                box_rows(localiser, pairs, crop_size=128, slice_margin=5, region_3d=args.region_3d)
            )
            boxes += [{"fold": k, "dataset": dataset_of[r["case"]], **r} for r in found]
            continue
        model = combine_stages(
            fold_models(args.localisers, k),
            fold_models(args.segmenters, k),
            args.out / f"two_stage_fold{k}.safetensors",
        )
        predictor = Predictor.from_checkpoint(model, args.device)
        assert predictor.localiser is not None
        spec = predictor.spec
        found = run_to_end(
            box_rows(
                predictor,
                pairs,
                crop_size=spec.crop_size,
                slice_margin=spec.crop_slice_margin,
                region_3d=spec.stage.spatial_dims == 3,
            )
        )
        boxes += [{"fold": k, "dataset": dataset_of[r["case"]], **r} for r in found]
        for variant, (post, whole) in variants_of(spec).items():
            started = time.perf_counter()
            scored = run_to_end(
                evaluate_pairs(
                    pairs,
                    dataset.num_classes,
                    predictor=predictor,
                    options=predictor.options(postprocess=post, whole_region=whole),
                )
            )
            seconds = (time.perf_counter() - started) / len(pairs)
            for row in scored:
                rows.append(
                    {
                        "fold": k,
                        "dataset": dataset_of[row["case"]],
                        "variant": variant,
                        "seconds_per_case": round(seconds, 2),
                        **row,
                    }
                )
        logger.info("fold %d: %s", k, [(b["case"], b.get("voxels_outside_crop")) for b in found])
        if args.uncertainty:
            for pair in pairs:
                row, slices = case_uncertainty(predictor, pair)
                uncertain_rows.append({"fold": k, "case": pair.case_id, **row})
                slice_pairs.append(slices)
    return boxes, rows, uncertain_rows, slice_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--localisers", type=Path, required=True)
    parser.add_argument(
        "--segmenters", type=Path, help="without it: the localisers' boxes only (boxes.csv)"
    )
    parser.add_argument(
        "--region-3d",
        action="store_true",
        help="with --localisers alone: score the boxes by the region a 3D stage 2 segments",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--uncertainty", action="store_true", help="re-validate the case score")
    parser.add_argument(
        "--final",
        type=Path,
        help="the final model: its two-stage run folder, or the model file (the bundled one)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="OUT",
        help="score nothing: merge earlier outputs (one fold each, from --only) into one "
        "summary (and --final's model)",
    )
    parser.add_argument(
        "--folds", type=Path, help="the folds file (default: SEGMENTERS/folds.json)"
    )
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        metavar="FOLD",
        help="score only this fold (repeatable): the folds trained so far; the summary says "
        "which folds it covers",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    dataset = discover_datasets(args.data)
    split_file = args.folds or (args.segmenters or args.localisers) / "folds.json"
    folds = load_split(split_file, known_cases=dataset.case_ids())
    scored_folds = sorted(set(args.only or range(len(folds.partitions))))
    if not set(scored_folds) <= set(range(len(folds.partitions))):
        parser.error(f"--only: the folds are 0-{len(folds.partitions) - 1}")
    if args.final and args.only:
        parser.error("--final chooses from the whole cross-validation: not with --only")
    if args.merge and (args.only or args.uncertainty):
        parser.error("--merge takes the folds scored already: not with --only or --uncertainty")
    args.out.mkdir(parents=True, exist_ok=False)
    uncertain_rows, slice_pairs = [], []
    if args.merge:
        boxes, rows, scored_folds = merged_rows(args.merge)
        if args.final and scored_folds != list(range(len(folds.partitions))):
            parser.error(f"--final needs every fold; --merge holds folds {scored_folds}")
    else:
        boxes, rows, uncertain_rows, slice_pairs = score_folds(args, dataset, folds, scored_folds)
    write_csv(args.out / "boxes.csv", boxes)
    if rows:
        write_csv(args.out / "per_case.csv", rows)
    summary = {"folds": scored_folds, **score_summary(boxes, rows)}
    if len(args.data) > 1:
        summary["datasets"] = {
            root.name: score_summary(
                [b for b in boxes if b["dataset"] == root.name],
                [r for r in rows if r["dataset"] == root.name],
            )
            for root in args.data
        }
    if args.uncertainty:
        write_csv(args.out / "uncertainty_per_case.csv", uncertain_rows)
        summary["uncertainty"] = uncertainty_summary(uncertain_rows, slice_pairs)
    if rows:
        accuracies = {
            v: variant_accuracy(rows, len(folds.partitions), v) for v in scored_variants(rows)
        }
        summary["chosen"] = chosen_variant(accuracies)
        (args.out / "per_case.md").write_text(case_tables(rows, boxes, summary["chosen"]))
        if args.final:
            write_final_model(args.final, args.out, accuracies[summary["chosen"]])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.info("%s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
