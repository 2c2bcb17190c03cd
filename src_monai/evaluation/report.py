"""Evaluation of many cases: pairs of prediction (or scan) and truth, their metric rows,
``per_case.csv``, ``summary.json`` and a box plot.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.errors import LascError
from src_monai.evaluation.metrics import (
    case_metrics,
    earlier_tool_metrics,
    empty_predictions,
    format_summary,
    summarise,
)
from src_monai.inference.measure import measure_atrium
from src_monai.inference.predictor import DEFAULT_OPTIONS, PredictOptions
from src_monai.io.files import write_json, write_text
from src_monai.io.outputs import write_unit
from src_monai.io.scans import case_id_from_path, check_pair, read_labels, scan_suffix
from src_monai.io.tables import new_figure, save_figure, write_csv
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


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
    options: PredictOptions = DEFAULT_OPTIONS,
    true_box: bool = False,
) -> Job[list[dict[str, Any]]]:
    """Per-case metric rows; with a ``predictor``, predictions are made from ``image``.

    ``true_box``: a crop model segments the box around the true atrium (its stage alone,
    as validation during training does); rows say so in ``box``."""
    from src_monai.io.scans import read_scan
    from src_monai.progress import run_to_end

    rows = []
    for done, pair in enumerate(pairs, start=1):
        truth = read_labels(pair.truth, num_classes)
        probabilities = None
        if predictor is not None:
            assert pair.image is not None
            scan = read_scan(pair.image)
            check_pair(scan.geometry, truth.geometry, pair.image, pair.truth)
            box = None
            if true_box:
                axis = predictor.spec.slice_axis
                box = AtriumBox.around(np.moveaxis(truth.array, axis, 0))
            result = run_to_end(
                predictor.predict_volume(
                    scan.array,
                    **options.as_kwargs(),
                    probabilities=True,
                    box=box,
                    spacing=scan.geometry.spacing,
                )
            )
            prediction, probabilities = result.labels, result.probabilities
        else:
            assert pair.prediction is not None
            predicted = read_labels(pair.prediction, num_classes)
            check_pair(predicted.geometry, truth.geometry, pair.prediction, pair.truth)
            prediction = predicted.array
        row: dict[str, Any] = {"case": pair.case_id}
        if true_box:
            row["box"] = "true atrium"
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


def write_report(
    out: Path, rows: Sequence[dict[str, Any]], *, overwrite: bool = False
) -> dict[str, dict[str, float]]:
    """``per_case.csv``, ``summary.json``, ``summary.txt`` and ``boxplot.png`` in ``out``,
    written as one unit: an earlier report there is replaced only with ``overwrite``, and
    only once the new one is complete. Each mean states how many cases it covers; cases whose
    prediction is empty are listed."""
    summary = summarise(rows)
    empty = empty_predictions(rows)
    payload = {"cases": len(rows), "empty_predictions": empty, "metrics": summary}
    text = format_summary(summary, len(rows), empty) + "\n"
    writers = {
        out / "per_case.csv": partial(write_csv, rows=rows, columns=list(rows[0])),
        out / "summary.json": partial(write_json, payload=payload),
        out / "summary.txt": partial(write_text, text=text),
        out / "boxplot.png": partial(save_figure, figure=_boxplot(rows)),
    }
    write_unit(writers, overwrite=overwrite)
    return summary


def _boxplot(rows: Sequence[dict[str, Any]]):
    panels = [
        ("dice", "Dice"),
        ("hd95_mm", "HD95 (mm)"),
        ("asd_mm", "ASD (mm)"),
        ("volume_error_pct", "volume error (%)"),
    ]
    figure = new_figure(10, 3.5)
    for axis, (key, title) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        values = [r[key] for r in rows if not math.isnan(r.get(key, math.nan))]
        axis.boxplot(values, showmeans=True)
        axis.scatter(np.ones(len(values)), values, s=10, alpha=0.6, color="#b03fb0")
        axis.set_title(title)
        axis.set_xticks([])
    figure.suptitle(f"{len(rows)} cases, per-case 3D foreground metrics")
    return figure
