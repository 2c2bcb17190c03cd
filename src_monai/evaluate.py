"""Per-case 3D evaluation with MONAI metrics, and ``lasc evaluate``.

For every case and foreground class: Dice, IoU, HD95 and average symmetric surface distance
in millimetres (from the voxel spacing), true and predicted volume (mL) and volume error (%).
Background is never counted. The earlier Keras tool's numbers (categorical cross-entropy and
its background-including Dice) are reported beside them for continuity, labelled as not
comparable.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LascError, PairMismatchError
from .fileutil import atomic_destination, ensure_empty_folder, write_json, write_text
from .measure import measure_atrium
from .progress import Job, Progress
from .scan_io import case_id_from_path, check_pair, read_labels, scan_suffix

logger = logging.getLogger(__name__)

METRICS = (
    "dice",
    "iou",
    "hd95_mm",
    "asd_mm",
    "volume_truth_ml",
    "volume_pred_ml",
    "volume_error_pct",
)


def case_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    num_classes: int,
    hd_percentile: float = 95.0,
) -> dict[str, float]:
    """Foreground metrics of one 3D case; keys ``<metric>`` for class 1, ``<metric>_c<k>`` else.

    Distances are NaN when the prediction or the truth of a class is empty (undefined).
    """
    import warnings

    from monai.metrics import (
        DiceMetric,
        HausdorffDistanceMetric,
        MeanIoU,
        SurfaceDistanceMetric,
    )
    from monai.networks.utils import one_hot

    if prediction.shape != truth.shape:
        raise PairMismatchError(
            None, f"prediction shape {prediction.shape} != truth shape {truth.shape}"
        )
    pred = one_hot(torch.as_tensor(prediction, dtype=torch.long)[None, None], num_classes)
    true = one_hot(torch.as_tensor(truth, dtype=torch.long)[None, None], num_classes)
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI warns about empty classes; we report NaN for them on purpose.
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(
            pred, true
        )[0]
        iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(pred, true)[0]
        hd = HausdorffDistanceMetric(
            include_background=False, percentile=hd_percentile, reduction="none"
        )(pred, true, spacing=spacing)[0]
        asd = SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(
            pred, true, spacing=spacing
        )[0]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result: dict[str, float] = {}
    for index, cls in enumerate(range(1, num_classes)):
        suffix = "" if cls == 1 else f"_c{cls}"
        volume_true = float(np.count_nonzero(truth == cls)) * voxel_ml
        volume_pred = float(np.count_nonzero(prediction == cls)) * voxel_ml
        empty = volume_true == 0 or volume_pred == 0
        result[f"dice{suffix}"] = float(dice[index])
        result[f"iou{suffix}"] = float(iou[index])
        result[f"hd95_mm{suffix}"] = math.nan if empty else float(hd[index])
        result[f"asd_mm{suffix}"] = math.nan if empty else float(asd[index])
        result[f"volume_truth_ml{suffix}"] = round(volume_true, 3)
        result[f"volume_pred_ml{suffix}"] = round(volume_pred, 3)
        result[f"volume_error_pct{suffix}"] = (
            math.nan
            if volume_true == 0
            else round(100 * (volume_pred - volume_true) / volume_true, 3)
        )
    return result


def earlier_tool_metrics(
    prediction: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    probabilities: np.ndarray | None = None,
) -> dict[str, float]:
    """The earlier tool's numbers: Dice averaged over classes *including background*, and
    categorical cross-entropy (only with probabilities). Not comparable to foreground Dice.
    """
    dices = []
    for cls in range(num_classes):
        p, t = prediction == cls, truth == cls
        total = np.count_nonzero(p) + np.count_nonzero(t)
        dices.append(1.0 if total == 0 else 2 * np.count_nonzero(p & t) / total)
    result = {"legacy_dice_with_background": float(np.mean(dices))}
    if probabilities is not None:
        picked = np.take_along_axis(probabilities, truth[None].astype(np.int64), axis=0)
        result["legacy_categorical_crossentropy"] = float(-np.log(np.clip(picked, 1e-7, 1)).mean())
    return result


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sd, median, min and max of each numeric column (NaN ignored, n reported)."""
    summary: dict[str, dict[str, float]] = {}
    for key in rows[0]:
        values = np.array(
            [r[key] for r in rows if isinstance(r.get(key), int | float)], dtype=float
        )
        values = values[~np.isnan(values)]
        if key == "case" or values.size == 0:
            continue
        summary[key] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
            "n": int(values.size),
        }
    return summary


def format_summary(summary: dict[str, dict[str, float]], cases: int) -> str:
    lines = [f"{cases} cases (mean ± sd, [min, max])"]
    for key, stats in summary.items():
        lines.append(
            f"  {key:<34} {stats['mean']:9.4f} ± {stats['sd']:7.4f}  "
            f"[{stats['min']:.4f}, {stats['max']:.4f}]  n={stats['n']}"
        )
    lines.append(
        "  (legacy_* are the earlier tool's numbers, background included: "
        "not comparable to foreground Dice)"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalPair:
    case_id: str
    prediction: Path | None
    truth: Path
    image: Path | None = None


def pairs_from_folders(pred_dir: Path, truth_dir: Path) -> list[EvalPair]:
    """Pair ``pred_dir`` and ``truth_dir`` scans by case id."""

    def scans(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise LascError(folder, "folder not found")
        return {
            case_id_from_path(p): p
            for p in sorted(folder.iterdir())
            if p.is_file() and scan_suffix(p) and not p.name.startswith(".")
        }

    predictions, truths = scans(pred_dir), scans(truth_dir)
    missing = sorted(set(truths) - set(predictions))
    if missing:
        raise LascError(pred_dir, f"no prediction for case(s) {', '.join(missing[:5])}")
    if not truths:
        raise LascError(truth_dir, "no label volumes found")
    return [EvalPair(cid, predictions[cid], truths[cid]) for cid in sorted(truths)]


def evaluate_pairs(
    pairs: Sequence[EvalPair],
    num_classes: int,
    *,
    predictor=None,
    hd_percentile: float = 95.0,
    batch_size: int = 16,
    tta: bool | None = None,
    postprocess: bool | None = None,
    tri_planar: bool | None = None,
) -> Job[list[dict[str, Any]]]:
    """Per-case metric rows; with a ``predictor``, predictions are made from ``image``."""
    from .progress import run_to_end
    from .scan_io import read_scan

    rows = []
    for done, pair in enumerate(pairs, start=1):
        truth = read_labels(pair.truth, num_classes)
        probabilities = None
        if predictor is not None:
            assert pair.image is not None
            scan = read_scan(pair.image)
            check_pair(scan.geometry, truth.geometry, pair.image, pair.truth)
            result = run_to_end(
                predictor.predict_volume(
                    scan.array,
                    batch_size=batch_size,
                    tta=tta,
                    postprocess=postprocess,
                    tri_planar=tri_planar,
                    probabilities=True,
                )
            )
            prediction, probabilities = result.labels, result.probabilities
        else:
            assert pair.prediction is not None
            predicted = read_labels(pair.prediction, num_classes)
            check_pair(predicted.geometry, truth.geometry, pair.prediction, pair.truth)
            prediction = predicted.array
        row: dict[str, Any] = {"case": pair.case_id}
        row.update(
            case_metrics(
                prediction, truth.array, truth.geometry.spacing, num_classes, hd_percentile
            )
        )
        row.update(earlier_tool_metrics(prediction, truth.array, num_classes, probabilities))
        # LA shape next to overlap: a segmentation can score well and still misjudge the
        # diameter or sphericity that remodelling studies report.
        for role, labels in (("pred", prediction), ("truth", truth.array)):
            shape = measure_atrium(labels, truth.geometry.spacing).row()
            row[f"sphericity_{role}"] = shape["sphericity"]
            row[f"max_diameter_mm_{role}"] = shape["max_diameter_mm"]
        rows.append(row)
        yield Progress(pair.case_id, done, len(pairs))
    return rows


def write_report(out: Path, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``per_case.csv``, ``summary.json``, ``summary.txt`` and ``boxplot.png`` in ``out``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "per_case.csv", buffer.getvalue())
    summary = summarise(rows)
    write_json(out / "summary.json", {"cases": len(rows), "metrics": summary})
    write_text(out / "summary.txt", format_summary(summary, len(rows)) + "\n")
    with atomic_destination(out / "boxplot.png") as temporary:
        _boxplot(rows).savefig(temporary, format="png", dpi=100)
    return summary


def _boxplot(rows: Sequence[dict[str, Any]]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        ("dice", "Dice"),
        ("hd95_mm", "HD95 (mm)"),
        ("asd_mm", "ASD (mm)"),
        ("volume_error_pct", "volume error (%)"),
    ]
    figure = Figure(figsize=(10, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    for axis, (key, title) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
        axis.boxplot(values, showmeans=True)
        axis.scatter(np.ones(len(values)), values, s=10, alpha=0.6, color="#b03fb0")
        axis.set_title(title)
        axis.set_xticks([])
    figure.suptitle(f"{len(rows)} cases, per-case 3D foreground metrics")
    return figure


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc evaluate`` options."""
    from .infer import add_prediction_arguments

    parser.add_argument("--out", type=Path, required=True, help="report folder (new or empty)")
    source = parser.add_argument_group("what to evaluate (a model on data, or label folders)")
    source.add_argument("--model", type=Path, help="model file: predict the cases of --data")
    source.add_argument("--data", type=Path, help="MSD-layout dataset")
    source.add_argument("--split", type=Path, help="split JSON (lasc prepare --folds/--format png)")
    source.add_argument(
        "--subset", default=None, help="subset of the split: test, valid, val (with --fold), train"
    )
    source.add_argument("--fold", type=int, default=0, help="partition of a k-fold split")
    source.add_argument("--pred", type=Path, help="folder of predicted label volumes")
    source.add_argument("--truth", type=Path, help="folder of true label volumes")
    parser.add_argument("--num-classes", type=int, default=2)
    add_prediction_arguments(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out (deletes nothing)"
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc evaluate`` with parsed arguments."""
    from .cli_support import drive
    from .data import discover_msd, load_split
    from .infer import Predictor

    predictor = None
    if args.pred or args.truth:
        if not (args.pred and args.truth) or args.model or args.data:
            raise LascError(None, "give --pred and --truth together, or --model with --data")
        pairs = pairs_from_folders(args.pred, args.truth)
        num_classes = args.num_classes
    elif args.model and args.data:
        predictor = Predictor.from_checkpoint(args.model, args.device, tri_planar=args.tri_planar)
        num_classes = predictor.num_classes
        dataset = discover_msd(args.data)
        cases = dataset.training
        if args.split:
            plan = load_split(args.split, known_cases=dataset.case_ids())
            subset = args.subset or ("test" if plan.kind == "holdout" else "val")
            partition = (
                plan.partitions[args.fold] if 0 <= args.fold < len(plan.partitions) else None
            )
            if partition is None or subset not in partition:
                raise LascError(args.split, f"has no subset {subset!r} in partition {args.fold}")
            wanted = set(partition[subset])
            cases = [c for c in cases if c.case_id in wanted]
        pairs = [EvalPair(c.case_id, None, c.label, c.image) for c in cases]
    else:
        raise LascError(None, "give --model with --data, or --pred with --truth")
    out = ensure_empty_folder(args.out, overwrite=args.overwrite)
    rows = drive(
        evaluate_pairs(
            pairs,
            num_classes,
            predictor=predictor,
            batch_size=args.batch_size,
            tta=args.tta,
            postprocess=args.postprocess,
            tri_planar=args.tri_planar,
        ),
        description="evaluate",
        unit="case",
    )
    summary = write_report(out, rows)
    print(format_summary(summary, len(rows)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from .cli_support import module_main

    raise SystemExit(
        module_main(add_arguments, run, prog="python -m src_monai.evaluate", description=__doc__)
    )
