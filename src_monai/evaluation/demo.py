"""The demo: segment the bundled real sample scan with the bundled model.

Writes, to a new folder, the predicted label volume (NIfTI, the scan's geometry), an overlay
montage PNG and a summary: LA volume in mL and Dice/HD95 against the bundled ground truth.
The sample (MSD Task02_Heart la_016) is one of the model's training cases: the numbers show
the tool works end to end; the cross-validated accuracy is in the model card.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from src_monai.io.files import write_json, write_text
from src_monai.io.tables import new_figure, save_figure
from src_monai.model.spec import CrossValidation
from src_monai.progress import Job, Progress, run_to_end


def run_demo(out: Path | None = None, device: str = "auto") -> Job[dict]:
    """Segment the sample into ``out`` (default: a new ``lasc-demo-<time>`` folder here)."""
    from src_monai.evaluation.metrics import case_metrics
    from src_monai.inference.predictor import Predictor
    from src_monai.io.scans import image_digest, read_labels, read_scan, write_labels
    from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN
    from src_monai.training.run_folder import new_run_dir

    out = new_run_dir(Path.cwd(), "lasc-demo") if out is None else _new_folder(out)
    started = time.perf_counter()
    predictor = Predictor.from_checkpoint(None, device)
    scan, truth = read_scan(SAMPLE_SCAN), read_labels(SAMPLE_LABEL)
    yield Progress("model and sample loaded", 1, 4)
    geometry = scan.geometry
    prediction = run_to_end(
        predictor.predict_volume(
            scan.array, spacing=geometry.spacing, affine=geometry.stated_affine
        )
    )
    seconds = time.perf_counter() - started
    labels_path = write_labels(out / "la_016_prediction.nii.gz", prediction.labels, scan.geometry)
    yield Progress("labels written", 2, 4)
    metrics = case_metrics(prediction.labels, truth.array, scan.geometry.spacing, 2)
    summary = {
        "scan": SAMPLE_SCAN.name,
        "model": asdict(predictor.spec.cross_validation) if predictor.spec.cross_validation else {},
        "cross_validated": predictor.spec.cross_validation.text()
        if predictor.spec.cross_validation
        else "",
        "la_volume_ml": metrics["volume_pred_ml"],
        "la_volume_truth_ml": metrics["volume_truth_ml"],
        "dice": round(metrics["dice"], 4),
        "hd95_mm": round(metrics["hd95_mm"], 2),
        "segmentation_seconds": round(seconds, 2),
        "device": str(predictor.device),
        "labels": str(labels_path),
        "seen_by_model": predictor.spec.training_role("la_016", image_digest(scan.array)) or "",
    }
    if summary["seen_by_model"]:
        summary["note"] = predictor.spec.seen_note({"la_016": summary["seen_by_model"]})
    write_json(out / "summary.json", summary)
    write_text(out / "summary.txt", _summary_text(summary))
    yield Progress("summary written", 3, 4)
    montage = _montage(scan.array, prediction.labels, truth.array)
    save_figure(out / "overlay.png", montage, dpi=80, overwrite=False)
    yield Progress("overlay written", 4, 4)
    summary["folder"] = str(out)
    return summary


def _new_folder(out: Path) -> Path:
    from src_monai.io.files import ensure_empty_folder

    return ensure_empty_folder(out, overwrite=False)


def _montage(volume: np.ndarray, labels: np.ndarray, truth: np.ndarray):
    """Eight slices through the atrium: where prediction and truth disagree is filled
    (magenta: predicted only, green: truth only), both outlines drawn on top, so a close match
    still shows both and every disagreement stands out."""
    slices = np.flatnonzero(truth.any(axis=(0, 1)) | labels.any(axis=(0, 1)))
    picks = slices[np.linspace(0, len(slices) - 1, 8).round().astype(int)] if len(slices) else []
    figure = new_figure(12, 6.8)
    for axis, z in zip(figure.subplots(2, 4).ravel(), picks, strict=False):
        predicted, true = np.rot90(labels[:, :, z] > 0), np.rot90(truth[:, :, z] > 0)
        axis.imshow(np.rot90(volume[:, :, z]), cmap="gray")
        disagreement = np.zeros((*predicted.shape, 4))
        disagreement[predicted & ~true] = (1.0, 0.0, 1.0, 0.6)
        disagreement[true & ~predicted] = (0.0, 1.0, 0.4, 0.6)
        axis.imshow(disagreement)
        axis.contour(true, levels=[0.5], colors="#00ff66", linewidths=1.6, linestyles="dashed")
        axis.contour(predicted, levels=[0.5], colors="#ff00ff", linewidths=0.8)
        axis.set_title(f"slice {z}", fontsize=9)
        axis.axis("off")
    figure.suptitle(
        "la_016: prediction (magenta line) and ground truth (green dashes); filled where they "
        "disagree: magenta predicted only, green truth only"
    )
    return figure


def _summary_text(summary: dict) -> str:
    """``summary.txt``: a line per value, the model's cross-validation in words (the JSON
    keeps its fields)."""
    lines = []
    for key, value in summary.items():
        if key == "model":
            value = (
                f"cross-validated over {value['folds']} folds of {value['cases']} cases, "
                + CrossValidation.from_dict(value).text(spread=True)
                if value
                else "no cross-validation recorded"
            )
        elif key == "cross_validated":
            continue  # said on the model's line
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"
