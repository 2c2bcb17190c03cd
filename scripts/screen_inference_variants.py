"""Screen inference-only variants of one joint fold's two-stage model on its held-out patients:
what a change at inference would buy without retraining.

    python scripts/screen_inference_variants.py FOLD --segmenters runs/cv-joint3d-bf16 \\
        [--localisers tests/data/joint_fold_localisers] [--variants plain,thresholds,...] \\
        [--out runs/screen-fold3.json]

The fold's localiser and 3D stage 2 are joined as ``cv_two_stage.py`` joins them; every variant
starts from the same prepared scan and the localiser's box, and is scored without
post-processing (the shipped default) by the project's own metrics:

- ``plain``: the shipped pipeline (sliding windows, the region grown where labels reach it);
- ``thresholds``: the plain probabilities cut at 0.3, 0.4, 0.6 and 0.7 instead of the
  argmax (0.5): is the network biased towards too much or too little atrium?
- ``overlap75``: windows overlapping by 0.75 instead of nnU-Net's 0.5;
- ``margin16``: the region 16 voxels around the box in-plane, the margin until 2026-12-08
  (now 8; growth, as always, takes it further where the labels reach its faces);
- ``views``: test-time augmentation by the uncertainty map's views (in-plane rotations of
  ±10°, gamma 0.8 and 1.25, all inside the training augmentation), probabilities averaged;
- ``flip-tta``: the plain prediction averaged with that of the left-right mirrored scan (a
  model trained with ``augment.flip`` only);
- ``no-growth``: the localiser's region as it is, never grown;
- ``true-box``: the region around the true atrium's box (an oracle localiser; a bound on what
  a better stage 1 could give, not a deployable variant).

Prints per-case rows and per-dataset means (Dice, HD95, lowest Dice) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from cv_two_stage import fold_models  # this folder

from src_monai.data.crops import AtriumBox
from src_monai.data.datasets import discover_datasets
from src_monai.data.splits import load_split
from src_monai.evaluation.metrics import case_metrics
from src_monai.inference import in_box_3d
from src_monai.inference.predictor import Predictor
from src_monai.inference.stage import UNCERTAINTY_VIEWS, StageNetwork
from src_monai.inference.steps import restore, segment_in_box
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import combine_stages
from src_monai.progress import run_to_end

DATA = [Path("../shared/data/lasc13"), Path("../shared/data/atriaseg2018")]
VARIANTS = (
    "plain",
    "thresholds",
    "overlap75",
    "margin16",
    "views",
    "flip-tta",
    "no-growth",
    "true-box",
)
THRESHOLDS = (0.3, 0.4, 0.6, 0.7)


class ViewAveraged:
    """A 3D stage whose probabilities are the mean over the plain input and its
    :data:`~src_monai.inference.stage.UNCERTAINTY_VIEWS` (what ``segment_in_box`` asks of a
    stage: ``spec``, ``device`` and ``scores``)."""

    def __init__(self, stage: StageNetwork) -> None:
        self.stage, self.spec, self.device = stage, stage.spec, stage.device

    def scores(self, batch, *, tta, overlap, softmax, whole_region_voxels=0):
        plain = self.stage.scores(
            batch, tta=False, overlap=overlap, softmax=True, whole_region_voxels=whole_region_voxels
        ).float()
        views = self.stage.view_scores(batch, overlap, whole_region_voxels)
        return (plain + views) / (1 + len(UNCERTAINTY_VIEWS))


def case_variants(predictor: Predictor, image: Path, label: Path, variants: list[str]) -> dict:
    """``{variant: (Dice, HD95 mm, volume error %)}`` of one case."""
    scan = read_scan(image)
    truth = read_labels(label, 2).array
    spacing = scan.geometry.spacing
    prepared = predictor.prepare(scan.array, spacing=spacing, affine=scan.geometry.stated_affine)
    options = predictor.options(probabilities=True, postprocess=False)
    box = run_to_end(predictor.find_box(prepared, options))

    def score(labels: np.ndarray) -> tuple[float, float, float]:
        m = case_metrics(labels, truth, spacing, 2)
        return round(m["dice"], 4), round(m["hd95_mm"], 2), round(m["volume_error_pct"], 1)

    def segment(stage, region: AtriumBox, grow: bool):
        scores = run_to_end(segment_in_box(stage, prepared, region, options, grow=grow))
        return restore(scores, prepared.grid, 2, postprocess=False)

    row = {}
    if "plain" in variants or "thresholds" in variants:
        plain = segment(predictor.segmenter, box, True)
        row["plain"] = score(plain.labels)
        if "thresholds" in variants:
            for threshold in THRESHOLDS:
                cut = (plain.probabilities[1] > threshold).astype(np.uint8)
                row[f"threshold {threshold}"] = score(cut)
    if "overlap75" in variants:
        nnunets = in_box_3d.WINDOW_OVERLAP
        in_box_3d.WINDOW_OVERLAP = 0.75  # read at call time by segment_in_box_3d
        try:
            row["overlap75"] = score(segment(predictor.segmenter, box, True).labels)
        finally:
            in_box_3d.WINDOW_OVERLAP = nnunets
    if "margin16" in variants:
        shipped = in_box_3d.IN_PLANE_MARGIN
        in_box_3d.IN_PLANE_MARGIN = 16  # read at call time by region_around
        try:
            row["margin16"] = score(segment(predictor.segmenter, box, True).labels)
        finally:
            in_box_3d.IN_PLANE_MARGIN = shipped
    if "views" in variants:
        row["views"] = score(segment(ViewAveraged(predictor.segmenter), box, True).labels)
    if "flip-tta" in variants and predictor.spec.trained_with_flips:
        mirrored = replace(options, tta=True)
        scores = run_to_end(segment_in_box(predictor.segmenter, prepared, box, mirrored, grow=True))
        row["flip-tta"] = score(restore(scores, prepared.grid, 2, postprocess=False).labels)
    if "no-growth" in variants:
        row["no-growth"] = score(segment(predictor.segmenter, box, False).labels)
    if "true-box" in variants:
        axis = prepared.grid.scan_slice_axis
        true_box = AtriumBox.around(np.moveaxis(truth, axis, 0))
        model_box = prepared.grid.box_to_model(true_box)
        row["true-box"] = score(segment(predictor.segmenter, model_box, False).labels)
    return row


def dataset_means(results: dict[str, dict], cases: list[str]) -> dict[str, tuple]:
    """Per variant: (mean Dice, mean HD95 mm, lowest Dice) over ``cases``."""
    means = {}
    for variant in results[cases[0]]:
        values = [results[c][variant] for c in cases]
        means[variant] = (
            round(float(np.mean([v[0] for v in values])), 4),
            round(float(np.mean([v[1] for v in values])), 2),
            round(float(np.min([v[0] for v in values])), 3),
        )
    return means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fold", type=int)
    parser.add_argument("--segmenters", type=Path, required=True)
    parser.add_argument("--localisers", type=Path, default=Path("tests/data/joint_fold_localisers"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    torch.set_num_threads(args.threads)
    dataset = discover_datasets(DATA)
    folds = load_split(args.segmenters / "folds.json", known_cases=dataset.case_ids())
    by_case = {c.case_id: c for c in dataset.training}
    held_out = folds.partitions[args.fold]["val"]
    out = args.out or Path(f"runs/screen-inference-fold{args.fold}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = combine_stages(
        fold_models(args.localisers, args.fold),
        fold_models(args.segmenters, args.fold),
        out.with_suffix(".safetensors"),
    )
    predictor = Predictor.from_checkpoint(model, "cpu")
    results = {}
    for case in held_out:
        started = time.perf_counter()
        results[case] = case_variants(predictor, by_case[case].image, by_case[case].label, variants)
        print(case, results[case], f"{time.perf_counter() - started:.1f} s", flush=True)
    groups = {
        root.name: [c for c in held_out if (by_case[c].dataset or DATA[0].name) == root.name]
        for root in DATA
    }
    summary = {name: dataset_means(results, cases) for name, cases in groups.items() if cases}
    for name, means in summary.items():
        print(f"{name} ({len(groups[name])} cases): (mean Dice, mean HD95 mm, lowest Dice)")
        for variant, values in means.items():
            print(f"  {variant:15s} {values}")
    out.write_text(json.dumps({"fold": args.fold, "cases": results, "summary": summary}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
