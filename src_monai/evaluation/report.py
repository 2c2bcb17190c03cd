"""Evaluation of many cases: pairs of prediction (or scan) and truth, their metric rows,
``per_case.csv``, ``summary.json`` and a box plot.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from src_monai.inference.options import PredictOptions
from src_monai.io.files import write_json, write_text
from src_monai.io.outputs import write_unit
from src_monai.io.scans import (
    case_id_from_path,
    check_pair,
    is_scan_folder,
    read_labels,
    scan_suffix,
)
from src_monai.io.tables import new_figure, save_figure, write_csv
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalPair:
    case_id: str
    prediction: Path | None
    truth: Path
    image: Path | None = None
    seen: str = ""
    """For a prediction file: what ``lasc infer``'s summary said of its scan (``training``:
    the model had learnt from it)."""


def _role(seen: str | None) -> str:
    """``training`` / ``validation``, or empty for a scan the model never saw (``no``, and
    the empty value of summaries written before that word)."""
    return seen if seen in ("training", "validation") else ""


def _seen_by_model(pred_dir: Path) -> dict[str, str]:
    """Case id -> ``seen by model`` from the ``summary.csv`` that ``lasc infer`` wrote beside
    its predictions, when there is one."""
    from src_monai.io.tables import read_csv

    try:
        rows = read_csv(pred_dir / "summary.csv")
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return {
        case_id_from_path(row.get("output") or ""): _role(row.get("seen by model"))
        for row in rows
        if row.get("output")
    }


@dataclass(frozen=True)
class FolderPairs:
    """Cases found in both folders, and those found in only one."""

    pairs: list[EvalPair]
    without_prediction: list[str]
    without_truth: list[str]


def pairs_from_folders(
    pred_dir: Path, truth_dir: Path, *, require_all: bool = False
) -> FolderPairs:
    """Pair ``pred_dir`` and ``truth_dir`` scans by case id: the cases present in both.

    Truth cases without a prediction (and predictions without truth) are listed, not fatal,
    unless ``require_all``: then any truth case without a prediction is refused, all named."""

    def scans(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise LascError(folder, "folder not found")
        return {
            case_id_from_path(p): p
            for p in sorted(folder.iterdir())
            if not p.name.startswith(".")
            and ((p.is_file() and scan_suffix(p)) or is_scan_folder(p))  # a DICOM series
        }

    predictions, truths = scans(pred_dir), scans(truth_dir)
    if not truths:
        raise LascError(truth_dir, "no label volumes found")
    missing = sorted(set(truths) - set(predictions))
    if missing and require_all:
        raise LascError(
            pred_dir,
            f"no prediction for {len(missing)} of {len(truths)} truth case(s) (--require-all): "
            + ", ".join(missing),
        )
    common = sorted(set(truths) & set(predictions))
    seen = _seen_by_model(pred_dir)
    if not common:
        raise LascError(pred_dir, f"no prediction has the name of a truth case in {truth_dir}")
    return FolderPairs(
        [EvalPair(cid, predictions[cid], truths[cid], seen=seen.get(cid, "")) for cid in common],
        missing,
        sorted(set(predictions) - set(truths)),
    )


def evaluate_pairs(
    pairs: Sequence[EvalPair],
    num_classes: int,
    *,
    predictor=None,
    hd_percentile: float = 95.0,
    options: PredictOptions | None = None,
    true_box: bool = False,
) -> Job[list[dict[str, Any]]]:
    """Per-case metric rows; with a ``predictor``, predictions are made from ``image``.

    ``true_box``: a crop model segments the box around the true atrium (its stage alone,
    as validation during training does); rows say so in ``box``."""
    rows = []
    for done, pair in enumerate(pairs, start=1):
        truth = read_labels(pair.truth, num_classes)
        row: dict[str, Any] = {"case": pair.case_id}
        if predictor is not None:
            prediction, probabilities, role = _predicted(predictor, pair, truth, options, true_box)
            row["seen_by_model"] = role
        else:
            assert pair.prediction is not None
            predicted = read_labels(pair.prediction, num_classes)
            check_pair(
                predicted.geometry,
                truth.geometry,
                pair.prediction,
                pair.truth,
                roles=("prediction", "truth"),
            )
            prediction, probabilities = predicted.array, None
            row["seen_by_model"] = pair.seen
        if true_box:
            row["box"] = "true atrium"
        spacing = truth.geometry.spacing
        row.update(case_metrics(prediction, truth.array, spacing, num_classes, hd_percentile))
        row.update(earlier_tool_metrics(prediction, truth.array, num_classes, probabilities))
        # LA shape next to overlap: a segmentation can score well and still misjudge the
        # diameter or sphericity that remodelling studies report.
        for who, labels in (("pred", prediction), ("truth", truth.array)):
            shape = measure_atrium(labels, spacing).row()
            row[f"sphericity_{who}"] = shape["sphericity"]
            row[f"max_diameter_mm_{who}"] = shape["max_diameter_mm"]
        rows.append(row)
        yield Progress(pair.case_id, done, len(pairs))
    return rows


def _predicted(predictor, pair: EvalPair, truth, options, true_box: bool):
    """The predictor's labels and probabilities for ``pair``'s image, and whether the model
    learnt from it: a case it did scores far above what unseen patients get, so its row says
    so (recognised by name or by its voxels, so a renamed copy is caught)."""
    from src_monai.io.scans import image_digest, read_scan
    from src_monai.progress import run_to_end

    assert pair.image is not None
    scan = read_scan(pair.image)
    check_pair(scan.geometry, truth.geometry, pair.image, pair.truth, roles=("scan", "truth"))
    geometry = scan.geometry
    prepared = predictor.prepare(
        scan.array, spacing=geometry.spacing, affine=geometry.stated_affine
    )
    box = None
    if true_box:
        axis = prepared.grid.scan_slice_axis
        box = AtriumBox.around(np.moveaxis(truth.array, axis, 0))
    chosen = replace(options or predictor.options(), probabilities=True)
    result = run_to_end(predictor.predict_prepared(prepared, chosen, box=box))
    role = predictor.spec.training_role(pair.case_id, image_digest(scan.array))
    return result.labels, result.probabilities, role or ""


def seen_cases_note(rows: Sequence[dict[str, Any]], spec=None) -> str:
    """One line when some scored cases were the model's training (or validation) cases,
    naming them and the figures that apply instead (:func:`~src_monai.model.spec.seen_note`);
    empty otherwise. Without the model's ``spec`` (predictions read from files, their
    ``summary.csv`` saying which scans the model knew) its model card is the pointer."""
    from src_monai.model.spec import seen_note

    roles = {row["case"]: row["seen_by_model"] for row in rows if row.get("seen_by_model")}
    if not roles:
        return ""
    if spec is not None:
        return spec.seen_note(roles, len(rows))
    return seen_note(roles, len(rows), "for new patients see the model's card")


def write_report(
    out: Path,
    rows: Sequence[dict[str, Any]],
    *,
    overwrite: bool = False,
    left_out: Sequence[str] = (),
    seen_note: str = "",
) -> dict[str, dict[str, float]]:
    """``per_case.csv``, ``summary.json``, ``summary.txt`` and ``boxplot.png`` in ``out``,
    written as one unit: an earlier report there is replaced only with ``overwrite``, and
    only once the new one is complete. Each mean states how many cases it covers; cases whose
    prediction is empty are listed."""
    summary = summarise(rows)
    empty = empty_predictions(rows)
    payload = {
        "cases": len(rows),
        "left_out_without_prediction": list(left_out),
        "empty_predictions": empty,
        "metrics": summary,
    }
    text = format_summary(summary, len(rows), empty) + "\n"
    if left_out:
        text += f"left out, no prediction ({len(left_out)}): {', '.join(left_out)}\n"
    if seen_note:
        payload["seen_by_model"] = seen_note
        text += f"warning: {seen_note}\n"
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
