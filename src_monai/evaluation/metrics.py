"""Per-case 3D metrics with MONAI.

For every case and foreground class: Dice, IoU, HD95 and average symmetric surface distance
in millimetres (from the voxel spacing), true and predicted volume (mL) and volume error (%).
Background is never counted. The earlier Keras tool's numbers (categorical cross-entropy and
its background-including Dice) are available beside them, clearly named, for comparison.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from src_monai.errors import PairMismatchError

logger = logging.getLogger(__name__)


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


def empty_predictions(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Cases whose prediction has no foreground: their distances are undefined (NaN)."""
    return [str(r["case"]) for r in rows if r.get("volume_pred_ml") == 0]


def format_summary(
    summary: dict[str, dict[str, float]], cases: int, empty: Sequence[str] = ()
) -> str:
    """The summary as text; a mean over fewer than all cases says how many it left out."""
    lines = [f"{cases} cases (mean ± sd, [min, max])"]
    for key, stats in summary.items():
        covered = f"n={stats['n']}"
        if stats["n"] < cases:
            covered += f" of {cases} ({cases - stats['n']} undefined, left out of the mean)"
        lines.append(
            f"  {key:<34} {stats['mean']:9.4f} ± {stats['sd']:7.4f}  "
            f"[{stats['min']:.4f}, {stats['max']:.4f}]  {covered}"
        )
    if empty:
        lines.append(
            f"  empty predictions ({len(empty)}; Dice 0, distances undefined): {', '.join(empty)}"
        )
    lines.append(
        "  (legacy_* are the earlier tool's numbers, background included: "
        "not comparable to foreground Dice)"
    )
    return "\n".join(lines)
