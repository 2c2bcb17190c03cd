"""``lasc infer``'s file loop: scans and PNG slices in, geometry-exact labels and
``summary.csv`` out.

Each case's labels and derived files (area curve, probability and uncertainty maps) are
written as one unit; ``summary.csv`` holds each case's :class:`~src_monai.inference.report.
CaseReport` row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.errors import LascError
from src_monai.inference.predictor import DEFAULT_OPTIONS, Prediction, PredictOptions, Predictor
from src_monai.inference.report import CaseReport, report_case
from src_monai.io.files import (
    atomic_destination,
    remove_stale_partials,
    writable_folder,
)
from src_monai.io.scans import (
    SCAN_SUFFIXES,
    ScanGeometry,
    read_scan,
    scan_suffix,
    write_labels,
    write_volume,
)
from src_monai.io.tables import write_csv
from src_monai.progress import Job, Progress, run_to_end

logger = logging.getLogger(__name__)


def find_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into (scan files, PNG files), sorted."""
    scans, pngs = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            children = sorted(
                p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
            )
            scans += [p for p in children if scan_suffix(p)]
            pngs += [p for p in children if p.suffix.lower() == ".png"]
        elif item.is_file() and item.suffix.lower() == ".png":
            pngs.append(item)
        elif item.is_file() and scan_suffix(item):
            scans.append(item)
        elif not item.exists():
            raise LascError(item, "input not found")
        else:
            raise LascError(item, f"not a scan ({', '.join(SCAN_SUFFIXES)}) or PNG")
    if not scans and not pngs:
        raise LascError(", ".join(map(str, inputs)), "no scans or PNG images found")
    return scans, pngs


def output_name(path: Path) -> str:
    """NIfTI output name for a scan: same name, NIfTI suffix kept, others become .nii.gz."""
    suffix = scan_suffix(path) or ""
    return path.name if suffix in (".nii.gz", ".nii") else path.name[: -len(suffix)] + ".nii.gz"


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions = DEFAULT_OPTIONS,
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    rgb_map: dict | None = None,
) -> Job[list[dict[str, Any]]]:
    """Segment scans (and PNG slices) into ``out``; returns the summary rows.

    ``save_uncertainty`` writes ``<name>_uncertainty.nii.gz`` per scan and adds the uncertain
    volume (% of the LA) and the most uncertain slice to the summary."""
    scans, pngs = find_inputs(inputs)
    out = writable_folder(out)
    for stale in remove_stale_partials(out):
        logger.info("removed %s, left by an interrupted run", stale.name)
    targets = [out / output_name(p) for p in scans] + [out / p.name for p in pngs]
    existing = [t for t in targets if t.exists()]
    if existing and not (overwrite or skip_existing):
        raise LascError(
            existing[0],
            f"already exists ({len(existing)} outputs exist; use "
            "--overwrite to replace them or --skip-existing to keep them)",
        )
    rows: list[dict[str, Any]] = []
    total = len(targets)
    for done, (source, target) in enumerate(zip(scans + pngs, targets, strict=True), start=1):
        if skip_existing and target.exists():
            yield Progress(f"{source.name} (kept)", done, total)
            continue
        try:
            if source in scans:
                row = _predict_scan(
                    predictor,
                    source,
                    target,
                    options,
                    save_probabilities=save_probabilities,
                    save_uncertainty=save_uncertainty,
                    overwrite=overwrite,
                )
            else:
                row = _predict_png(predictor, source, target, options, overwrite, rgb_map)
        except LascError as exc:
            if exc.source is not None:
                raise
            raise LascError(source, exc.problem) from exc  # name the file it is about
        rows.append(row)
        yield Progress(source.name, done, total)
    if rows:
        write_csv(out / "summary.csv", rows)
    return rows


def _predict_scan(
    predictor: Predictor,
    source: Path,
    target: Path,
    options: PredictOptions,
    *,
    save_probabilities: bool,
    save_uncertainty: bool,
    overwrite: bool,
) -> dict[str, Any]:
    scan = read_scan(source)
    prediction = run_to_end(
        predictor.predict_volume(
            scan.array,
            **options.as_kwargs(),
            spacing=scan.geometry.spacing,
            probabilities=save_probabilities,
            uncertainty=save_uncertainty,
        )
    )
    report = report_case(
        prediction,
        scan.geometry.spacing,
        predictor.spec,
        axcodes=scan.geometry.axcodes if scan.geometry.orientation_known else None,
    )
    write_case_outputs(
        target,
        prediction,
        report,
        scan.geometry,
        overwrite=overwrite,
        probabilities=save_probabilities,
    )
    for flag in report.quality_flags:
        logger.warning("%s: check by eye: %s", source.name, flag)
    return {"input": str(source), "output": str(target), **report.summary_row()}


def write_case_outputs(
    target: Path,
    prediction: Prediction,
    report: CaseReport,
    geometry: ScanGeometry,
    *,
    overwrite: bool,
    probabilities: bool,
) -> None:
    """A case's labels and what is derived from them (area curve, probability and
    uncertainty maps), as one unit: the derived files are written first and the labels last,
    so the labels file marks the case complete (``--skip-existing`` keys on it); when the
    labels cannot be written, the derived files are removed."""
    name = target.name.replace(".nii.gz", "").replace(".nii", "")
    extras = [target.with_name(f"{name}_area_curve.csv")]
    measurements = report.measurements
    curve = [
        {"slice": i, "position_mm": f"{position:.3f}", "area_mm2": f"{area:.2f}"}
        for i, (position, area) in enumerate(
            zip(measurements.slice_positions_mm, measurements.slice_areas_mm2, strict=True)
        )
    ]
    write_csv(extras[0], curve, ["slice", "position_mm", "area_mm2"])
    if probabilities and prediction.probabilities is not None:
        foreground = prediction.probabilities[1:].sum(axis=0).astype(np.float32)
        extras.append(target.with_name(f"{name}_probability.nii.gz"))
        write_volume(extras[-1], foreground, geometry, overwrite=True)
    if prediction.uncertainty is not None:
        extras.append(target.with_name(f"{name}_uncertainty.nii.gz"))
        write_volume(extras[-1], prediction.uncertainty, geometry, overwrite=True)
    try:
        write_labels(target, prediction.labels, geometry, overwrite=overwrite)
    except LascError:
        for extra in extras:  # derived from labels that could not be saved: not a result
            extra.unlink(missing_ok=True)
        raise


def _predict_png(
    predictor: Predictor,
    source: Path,
    target: Path,
    options: PredictOptions,
    overwrite: bool,
    rgb_map: dict | None,
) -> dict[str, Any]:
    """One PNG slice of the earlier tool's datasets -> an RGB mask (its ``rgb_map``)."""
    from PIL import Image

    from src_monai.legacy.png import DEFAULT_RGB_MAP, colour_mask, read_png_image
    from src_monai.progress import run_to_end

    image = read_png_image(source).astype(np.float32)
    volume = np.expand_dims(image, axis=predictor.spec.slice_axis)
    # One slice has no other planes: a tri-planar model answers from its slice axis.
    single_plane = replace(options, tri_planar=None)
    labels = run_to_end(predictor.predict_volume(volume, **single_plane.as_kwargs())).labels
    labels = np.take(labels, 0, axis=predictor.spec.slice_axis)
    mask = colour_mask(labels, rgb_map or DEFAULT_RGB_MAP)
    with atomic_destination(target, overwrite=overwrite) as temporary:
        Image.fromarray(mask).save(temporary, format="PNG")
    return {
        "input": str(source),
        "output": str(target),
        "foreground pixels": int(np.count_nonzero(labels)),
    }
