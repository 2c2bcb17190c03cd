"""``lasc infer``'s file loop: scans and PNG slices in, geometry-exact labels and
``summary.csv`` out.

Before any work, every output file is planned and checked (:func:`~src_monai.io.outputs.
check_planned_outputs`): none may be an input, no two inputs may write one file, and existing
results are replaced only with ``overwrite``. Each case's labels and derived files (area
curve, probability and uncertainty maps) are written as one unit, and its row (a
:class:`~src_monai.inference.report.CaseReport`) is merged into ``out/summary.csv`` by input
path as soon as it is done: rows of earlier runs and of concurrent runs into the same folder
are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.errors import LascError
from src_monai.inference.options import PredictOptions
from src_monai.inference.predictor import Predictor
from src_monai.inference.report import CaseReport, report_case
from src_monai.inference.steps import Prediction, scan_notes
from src_monai.io.files import creatable_folder, remove_stale_partials, writable_folder
from src_monai.io.inputs import find_inputs
from src_monai.io.outputs import (
    CaseOutputs,
    check_planned_outputs,
    claimed,
    merge_rows,
    write_unit,
)
from src_monai.io.scans import (
    ScanGeometry,
    case_id_from_path,
    image_digest,
    read_geometry,
    read_labels,
    read_scan,
    scan_suffix,
    write_labels,
    write_volume,
)
from src_monai.io.tables import csv_text, read_csv
from src_monai.model.spec import ModelSpec
from src_monai.progress import Job, Progress, run_to_end

logger = logging.getLogger(__name__)


def output_name(path: Path) -> str:
    """NIfTI output name for a scan: same name, NIfTI suffix kept, others become .nii.gz."""
    suffix = scan_suffix(path)
    if suffix is None:  # a DICOM series' folder
        return path.name + ".nii.gz"
    return path.name if suffix in (".nii.gz", ".nii") else path.name[: -len(suffix)] + ".nii.gz"


def plan_case_outputs(
    source: Path, out: Path, *, probabilities: bool, uncertainty: bool
) -> CaseOutputs:
    """Every file ``lasc infer`` writes for one input: a scan's labels with their area curve
    (and probability and uncertainty maps when asked for); a PNG slice's colour mask."""
    if source.suffix.lower() == ".png":
        return CaseOutputs(source, out / source.name)
    labels = out / output_name(source)
    stem = labels.name.removesuffix(".gz").removesuffix(".nii")
    derived = [out / f"{stem}_area_curve.csv"]
    if probabilities:
        derived.append(out / f"{stem}_probability.nii.gz")
    if uncertainty:
        derived.append(out / f"{stem}_uncertainty.nii.gz")
    return CaseOutputs(source, labels, tuple(derived))


SUMMARY = "summary.csv"


def plan_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    probabilities: bool = False,
    uncertainty: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    series: str | None = None,
    found: tuple[list[Path], list[Path]] | None = None,
) -> list[CaseOutputs]:
    """Every input's output files, checked so that no data can be lost
    (:func:`~src_monai.io.outputs.check_planned_outputs`), and every scan's header checked;
    creates nothing. ``found``: what :func:`~src_monai.io.inputs.find_inputs` returned for
    ``inputs``, when the caller has it (a DICOM folder is not scanned twice)."""
    scans, pngs = found if found is not None else find_inputs(inputs)
    for scan in scans:
        read_geometry(scan, series)  # every header field checked before any work
    out = Path(out)
    plans = [
        plan_case_outputs(source, out, probabilities=probabilities, uncertainty=uncertainty)
        for source in scans + pngs
    ]
    check_planned_outputs(
        plans, overwrite=overwrite, skip_existing=skip_existing, extra_outputs=[out / SUMMARY]
    )
    return plans


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    overwrite: bool = False,
    skip_existing: bool = False,
    rgb_map: dict | None = None,
    box: AtriumBox | None = None,
    series: str | None = None,
    plans: Sequence[CaseOutputs] | None = None,
    sequence: str = "auto",
) -> Job[list[dict[str, Any]]]:
    """Segment scans (and PNG slices) into ``out``; returns this run's summary rows.

    ``box`` (one scan only): stage 2 segments around it instead of the localiser's box.
    ``options``: how the model is applied (``None``: its defaults).
    ``plans``: what :func:`plan_files` returned for these inputs and options (the CLI plans
    before the model loads), so that they are not listed and checked a second time.

    Outputs are checked first and written per case (see the module's text). ``skip_existing``
    keeps a case whose files are all there and redoes one with a file missing.
    ``save_uncertainty`` adds ``<name>_uncertainty.nii.gz`` and two summary columns.
    ``sequence`` (``auto``, ``bssfp``, ``lge``): the MRI sequence whose plausible atrium
    volumes the QC flags check against (``auto``: any of them)."""
    if plans is None:
        plans = plan_files(
            inputs,
            out,
            probabilities=save_probabilities,
            uncertainty=save_uncertainty,
            overwrite=overwrite,
            skip_existing=skip_existing,
            series=series,
        )
    options = options or predictor.options()
    request = CaseRequest(save_probabilities, save_uncertainty, box, series, rgb_map, sequence)
    out = _output_folder(out)
    rows: list[dict[str, Any]] = []
    summarised = _summarised_inputs(out / SUMMARY) if skip_existing else set()
    for done, plan in enumerate(plans, start=1):
        source = plan.source
        if skip_existing and plan.complete:
            _keep_case(predictor.spec, plan, request, out / SUMMARY, summarised)
            yield Progress(f"{source.name} (kept)", done, len(plans))
            continue
        if skip_existing and plan.started:
            logger.info("%s: an earlier result is incomplete: segmenting it again", source.name)
        with claimed(plan, replace=overwrite or skip_existing):
            position = (done - 1, len(plans))
            row = yield from _predict_plan(predictor, plan, options, request, position)
        merge_rows(out / SUMMARY, [row], key="input")
        rows.append(row)
        yield Progress(source.name, done, len(plans))
    return rows


def _output_folder(out: str | Path) -> Path:
    """``out`` checked (an existing one cleared of the partial files an interrupted run left);
    a new one is made by the first case's files, so a run that writes nothing leaves none."""
    out = Path(out)
    if not out.is_dir():
        return creatable_folder(out)
    out = writable_folder(out)
    for stale in remove_stale_partials(out):
        logger.info("removed %s, left by an interrupted run", stale.name)
    return out


@dataclass(frozen=True)
class CaseRequest:
    """What each case of a run asks for besides the model and its options."""

    probabilities: bool = False
    uncertainty: bool = False
    box: AtriumBox | None = None
    series: str | None = None
    rgb_map: dict | None = None
    sequence: str = "auto"


def _predict_plan(
    predictor: Predictor,
    plan: CaseOutputs,
    options: PredictOptions,
    request: CaseRequest,
    position: tuple[int, int],
) -> Job[dict[str, Any]]:
    """One input's files written; its summary row. ``position``: files done before it, and
    of how many. An error that names no file is made to name this one."""
    source = plan.source
    try:
        if source.suffix.lower() == ".png":
            return _predict_png(predictor, plan, options, request.rgb_map)
        scan_job = _predict_scan(predictor, plan, options, request)
        return (yield from _within_file(scan_job, source.name, *position))
    except LascError as exc:
        if exc.source is not None:
            raise
        raise LascError(source, exc.problem) from exc


def _within_file(job: Job[Any], name: str, before: int, files: int) -> Job[Any]:
    """A file's own progress (batches of slices) as a fraction of the whole run's files, so
    a bar moves while one large scan is segmented."""
    while True:
        try:
            inner = next(job)
        except StopIteration as stop:
            return stop.value
        fraction = min(inner.done / inner.total, 1.0) if inner.total else 0.0
        yield Progress(f"{name}: {inner.message}", before + fraction, files)


def _predict_scan(
    predictor: Predictor, plan: CaseOutputs, options: PredictOptions, request: CaseRequest
) -> Job[dict[str, Any]]:
    scan = read_scan(plan.source, request.series)
    geometry = scan.geometry
    prediction = yield from predictor.predict_volume(
        scan.array,
        replace(options, probabilities=request.probabilities, uncertainty=request.uncertainty),
        spacing=geometry.spacing,
        affine=geometry.stated_affine,
        box=request.box,
    )
    report = _scan_report(predictor.spec, prediction, scan, request)
    write_case_outputs(plan, prediction, report, scan.geometry)
    for flag in report.quality_flags:
        logger.warning("%s: check by eye: %s", plan.source.name, flag)
    return _case_row(predictor.spec, plan, report, scan)


def _scan_report(spec: ModelSpec, prediction: Prediction, scan, request: CaseRequest) -> CaseReport:
    """:func:`report_case` of a scan read from its file (its spacing, stated orientation and
    the flags about its voxels), a fresh result's or a kept one's alike."""
    geometry = scan.geometry
    return report_case(
        prediction,
        geometry.spacing,
        spec,
        axcodes=geometry.axcodes if geometry.orientation_known else None,
        sequence=request.sequence,
        notes=scan_notes(scan.array),
    )


def _summarised_inputs(summary: Path) -> set[str]:
    """The inputs ``summary.csv`` has a row for (none when there is no such file)."""
    try:
        return {row.get("input", "") for row in read_csv(summary)}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LascError(summary, f"cannot be read ({exc}); move it away") from exc


def _keep_case(
    spec: ModelSpec, plan: CaseOutputs, request: CaseRequest, summary: Path, summarised: set
) -> None:
    """A complete earlier result, kept. Written just before an interruption (or with
    summary.csv deleted since), it still gets its row: measured from its files, not
    segmented again."""
    if _input_key(plan.source) not in summarised:
        merge_rows(summary, [_kept_case_row(spec, plan, request)], key="input")


def _kept_case_row(spec: ModelSpec, plan: CaseOutputs, request: CaseRequest) -> dict[str, Any]:
    """The summary row of a result ``--skip-existing`` keeps, from its own files: the labels
    (and uncertainty map) measured as a fresh result's are; the box it was segmented in
    is not stored with it."""
    source = plan.source
    if source.suffix.lower() == ".png":
        return {"input": _input_key(source), "output": str(plan.main)}
    scan = read_scan(source, request.series)
    try:
        labels = read_labels(plan.main).array
        maps = [p for p in plan.derived if p.name.endswith("_uncertainty.nii.gz")]
        uncertainty = read_scan(maps[0]).array if maps else None
    except LascError as exc:
        raise LascError(
            exc.source, f"{exc.problem}: an earlier result kept by --skip-existing"
        ) from exc
    report = _scan_report(spec, Prediction(labels=labels, uncertainty=uncertainty), scan, request)
    row = _case_row(spec, plan, report, scan)
    if spec.localiser is not None:
        row["atrium box (slices-first voxels)"] = "not recorded (result kept from an earlier run)"
    return row


def _case_row(spec: ModelSpec, plan: CaseOutputs, report: CaseReport, scan) -> dict[str, Any]:
    """A scan's row of ``summary.csv``."""
    seen = spec.training_role(case_id_from_path(plan.source), image_digest(scan.array))
    return {
        "input": _input_key(plan.source),
        "output": str(plan.main),
        **report.summary_row(),
        # lasc evaluate --pred reads this column: scores of a case the model learnt from
        # are marked as such.
        "seen by model": seen or "no",  # training / validation: its scores overstate
    }


def _input_key(source: Path) -> str:
    """How ``summary.csv`` names an input: its absolute path, so that runs from different
    working folders merge their rows by the same key."""
    return str(source.resolve())


def write_case_outputs(
    plan: CaseOutputs, prediction: Prediction, report: CaseReport, geometry: ScanGeometry
) -> None:
    """A case's labels and what is derived from them (area curve, probability and
    uncertainty maps), as one unit (:func:`~src_monai.io.outputs.write_unit`): all written,
    or none replaced. The labels are renamed last, so they mark the case complete."""
    measurements = report.measurements
    curve = [
        {"slice": i, "position_mm": f"{position:.3f}", "area_mm2": f"{area:.2f}"}
        for i, (position, area) in enumerate(
            zip(measurements.slice_positions_mm, measurements.slice_areas_mm2, strict=True)
        )
    ]
    maps = {}
    if prediction.probabilities is not None:
        maps["_probability"] = prediction.probabilities[1:].sum(axis=0).astype(np.float32)
    if prediction.uncertainty is not None:
        maps["_uncertainty"] = prediction.uncertainty
    writers: dict[Path, Callable[[Path], None]] = {}
    for path in plan.derived:
        if path.name.endswith("_area_curve.csv"):
            writers[path] = partial(_write_table, rows=curve)
        else:
            suffix = path.name.removesuffix(".nii.gz").rsplit("_", 1)[-1]
            if f"_{suffix}" not in maps:
                raise LascError(None, f"the model gave no {suffix} map to write")
            volume = maps[f"_{suffix}"]
            writers[path] = partial(write_volume, array=volume, geometry=geometry, overwrite=True)
    writers[plan.main] = partial(
        write_labels, labels=prediction.labels, geometry=geometry, overwrite=True
    )
    # Existing files were allowed by the plan's check (--overwrite, or an incomplete case).
    write_unit(writers, overwrite=True)


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(csv_text(rows, ["slice", "position_mm", "area_mm2"]), encoding="utf-8")


def _predict_png(
    predictor: Predictor, plan: CaseOutputs, options: PredictOptions, rgb_map: dict | None
) -> dict[str, Any]:
    """One PNG slice of the earlier tool's datasets -> an RGB mask (its ``rgb_map``)."""
    from PIL import Image

    from src_monai.io.png import DEFAULT_RGB_MAP, colour_mask, read_png_image

    image = read_png_image(plan.source).astype(np.float32)
    volume = np.expand_dims(image, axis=predictor.spec.slice_axis)
    labels = run_to_end(predictor.predict_volume(volume, options.for_one_slice())).labels
    labels = np.take(labels, 0, axis=predictor.spec.slice_axis)
    mask = colour_mask(labels, rgb_map or DEFAULT_RGB_MAP)
    write_unit(
        {plan.main: lambda path: Image.fromarray(mask).save(path, format="PNG")}, overwrite=True
    )
    return {
        "input": _input_key(plan.source),
        "output": str(plan.main),
        "foreground pixels": int(np.count_nonzero(labels)),
    }
