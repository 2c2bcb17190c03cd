"""The case report: what a whole-volume prediction says beyond its labels.

One sequence, measure -> QC flags -> uncertainty scores, that ``lasc infer`` (a row of
``summary.csv``) and the napari Segment widget (its result text and area curve) both call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from src_monai.inference.measure import (
    AtriumMeasurements,
    UncertaintyScores,
    measure_atrium,
    quality_flags,
    uncertainty_scores,
)
from src_monai.inference.predictor import Prediction
from src_monai.model.spec import ModelSpec


@dataclass(frozen=True)
class CaseReport:
    """Measurements, QC flags and (when the prediction has a map) uncertainty scores."""

    measurements: AtriumMeasurements
    quality_flags: list[str]
    class_volumes_ml: dict[str, float]
    """Volume of each foreground class, by class name."""
    uncertainty: UncertaintyScores | None = None
    box: str = ""
    """Where stage 2 segmented: ``given z0:z1,y0:y1,x0:x1`` (the user's box) or ``found ...``
    (the localiser's), slices-first voxels; empty for a one-stage model."""

    def summary_row(self) -> dict[str, Any]:
        """The report's columns of ``lasc infer``'s ``summary.csv``."""
        row: dict[str, Any] = {f"{n} volume (mL)": v for n, v in self.class_volumes_ml.items()}
        shape = self.measurements.row()
        row["surface (mm²)"] = shape["surface_mm2"]
        row["sphericity"] = shape["sphericity"]
        row["largest in-plane diameter (mm)"] = shape["max_diameter_mm"]
        row["width across it (mm)"] = shape["width_across_mm"]
        if self.uncertainty is not None:
            row["uncertain volume (% of LA)"] = round(self.uncertainty.uncertain_volume_pct, 2)
            row["most uncertain slice"] = self.uncertainty.most_uncertain_slice
        row["QC flags"] = self.flags_text
        if self.box:
            row["atrium box (slices-first voxels)"] = self.box
        return row

    @property
    def flags_text(self) -> str:
        return "; ".join(self.quality_flags) or "ok"


def report_case(
    prediction: Prediction,
    spacing: Sequence[float],
    spec: ModelSpec,
    *,
    axcodes: Sequence[str] | None = None,
    sequence: str = "auto",
    notes: Sequence[str] = (),
) -> CaseReport:
    """Measure the predicted atrium, flag what needs a look, score the uncertainty map.

    ``spacing`` is the scan's voxel size in file axis order; ``axcodes`` its orientation when
    the file records one (``None``: it records none); ``sequence`` (``auto``, ``bssfp``,
    ``lge``) chooses the plausible volume range; ``notes``: flags about the scan itself
    (:func:`~src_monai.inference.steps.scan_notes`), listed first.
    """
    labels = prediction.labels
    measurements = measure_atrium(labels, spacing, slice_axis=spec.slice_axis)
    flags = quality_flags(
        labels,
        spacing,
        training_spacing=spec.training_spacing,
        volume_ml=measurements.volume_ml,
        axcodes=axcodes,
        training_axcodes=spec.orientation_axcodes,
        sequence=sequence,
    )
    if prediction.localised is False:
        flags.insert(0, "the localiser found no atrium: whole slices were segmented")
    flags[:0] = notes
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    volumes = {
        name: round(int(np.count_nonzero(labels == index)) * voxel_ml, 3)
        for index, name in enumerate(spec.class_names[1:], start=1)
    }
    scores = None
    if prediction.uncertainty is not None:
        scores = uncertainty_scores(prediction.uncertainty, labels, spacing, spec.slice_axis)
    box = ""
    if prediction.box is not None:
        box = f"{'given' if prediction.box_from_user else 'found'} {prediction.box.text()}"
        if prediction.box_from_user and not measurements.volume_ml:
            flags.insert(0, "nothing found in the given box: check that it holds the atrium")
    return CaseReport(measurements, flags, volumes, scores, box)
