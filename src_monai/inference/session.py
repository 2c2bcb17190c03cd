"""An interactive session: one scan held for repeated predictions (the napari widget's core).

The scan is checked and normalised once; the whole volume (with its case report) or a single
slice is then predicted as often as the user asks, slice after slice in a fraction of a
second. The labels equal :meth:`Predictor.predict_volume`'s on the raw scan, since the
normalisation is the same. Like napari-nninteractive's session, it knows nothing of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_monai.data.transforms import normalise_volume
from src_monai.inference.predictor import Prediction, Predictor, check_volume
from src_monai.inference.report import CaseReport, report_case
from src_monai.progress import Job


@dataclass(frozen=True)
class VolumeResult:
    prediction: Prediction
    report: CaseReport


class InteractiveSession:
    """A predictor and one scan (file axis order), normalised for it once."""

    def __init__(
        self,
        predictor: Predictor,
        volume: np.ndarray,
        spacing: Sequence[float],
        *,
        axcodes: Sequence[str] | None = None,
    ) -> None:
        check_volume(volume)
        self.predictor = predictor
        self.spacing = tuple(float(s) for s in spacing)
        self.axcodes = axcodes
        self.shape = volume.shape
        self._normalised = normalise_volume(volume, predictor.spec.normalisation)

    @property
    def slice_axis(self) -> int:
        """The file axis the model slices along."""
        return self.predictor.spec.slice_axis

    @property
    def slice_count(self) -> int:
        return self.shape[self.slice_axis]

    def segment_volume(
        self,
        *,
        batch_size: int = 16,
        tta: bool | None = None,
        postprocess: bool | None = None,
        uncertainty: bool = False,
    ) -> Job[VolumeResult]:
        """Every slice, then the case report; yields progress per batch."""
        prediction = yield from self.predictor.predict_volume(
            self._normalised,
            batch_size=batch_size,
            tta=tta,
            postprocess=postprocess,
            uncertainty=uncertainty,
            normalised=True,
            spacing=self.spacing,
        )
        report = report_case(prediction, self.spacing, self.predictor.spec, axcodes=self.axcodes)
        return VolumeResult(prediction, report)

    def segment_slice(self, index: int, *, tta: bool | None = None) -> np.ndarray:
        """Labels of slice ``index`` along the model's slice axis (2D, file axis order)."""
        return self.predictor.predict_slice(self._normalised, index, tta=tta, normalised=True)
