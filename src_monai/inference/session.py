"""An interactive session: one scan held for repeated predictions (the napari widget's core).

The scan is prepared once (:func:`~src_monai.inference.steps.prepare`: checks, orientation,
normalisation, resampling); the whole volume (with its case report) or a single slice is then
predicted as often as the user asks, through the same pipeline steps as ``lasc infer``, so the
whole-volume labels are identical to the CLI's. A two-stage model localises the atrium once
(with the first whole volume or the first slice asked for, inside the caller's worker) and
later predictions reuse that box, or the user's (:meth:`InteractiveSession.set_box`). Like
napari-nninteractive's session, it knows nothing of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.inference.options import PredictOptions
from src_monai.inference.predictor import Predictor
from src_monai.inference.report import CaseReport, report_case
from src_monai.inference.steps import Prediction, scan_notes, segment_one_slice
from src_monai.progress import Job, Progress


@dataclass(frozen=True)
class VolumeResult:
    prediction: Prediction
    report: CaseReport


class InteractiveSession:
    """A predictor and one scan (file axis order), prepared for it once."""

    def __init__(
        self,
        predictor: Predictor,
        volume: np.ndarray,
        spacing: Sequence[float],
        *,
        affine: np.ndarray | None = None,
        axcodes: Sequence[str] | None = None,
    ) -> None:
        self.predictor = predictor
        self.spacing = tuple(float(s) for s in spacing)
        self.axcodes = axcodes
        self.shape = volume.shape
        self.prepared = predictor.prepare(volume, spacing=self.spacing, affine=affine)
        self.notes = scan_notes(volume)  # about the scan itself: in every case report
        self._model_box: AtriumBox | None = None  # on the model's slices-first grid
        self._box_from_user = False
        self.localised: bool | None = None
        """Whether the localiser found the atrium (``None``: not asked yet, or one stage)."""

    @property
    def slice_axis(self) -> int:
        """The scan's file axis the model slices across."""
        return self.prepared.grid.scan_slice_axis

    @property
    def slice_count(self) -> int:
        return self.shape[self.slice_axis]

    @property
    def box(self) -> AtriumBox | None:
        """The box stage 2 segments around (the scan's slices-first voxels): the user's, or
        the localiser's once found; ``None`` before, or for a one-stage model."""
        return None if self._model_box is None else self.prepared.grid.box_to_scan(self._model_box)

    def set_box(self, box: AtriumBox | None) -> None:
        """Segment around ``box`` (the scan's slices-first voxels) from now on; ``None``
        forgets a box the user gave, and the localiser's is used (found anew)."""
        if box is not None:
            self._model_box, self._box_from_user = self.prepared.grid.box_to_model(box), True
            self.localised = True
        elif self._box_from_user:
            self._model_box, self._box_from_user, self.localised = None, False, None

    def segment_volume(self, options: PredictOptions | None = None) -> Job[VolumeResult]:
        """Every slice, then the case report; yields progress per batch."""
        options = options or self.predictor.options()
        box = yield from self._box_for(options)
        prediction = yield from self.predictor.segment(
            self.prepared, options, box, localised=self.localised, from_user=self._box_from_user
        )
        report = report_case(
            prediction, self.spacing, self.predictor.spec, axcodes=self.axcodes, notes=self.notes
        )
        return VolumeResult(prediction, report)

    def segment_slice(self, index: int, options: PredictOptions | None = None) -> Job[np.ndarray]:
        """Labels of the scan's slice ``index`` across :attr:`slice_axis` (2D, its other two
        axes in file order). A two-stage model localises first, with progress."""
        options = options or self.predictor.options()
        grid = self.prepared.grid
        box = yield from self._box_for(options)
        labels = segment_one_slice(
            self.predictor.segmenter,
            self.prepared,
            grid.scan_index_to_model(index),
            box,
            tta=options.tta,
            whole_region=options.whole_region,
        )
        yield Progress(f"slice {index}", 1, 1)
        return grid.slice_to_scan(labels, self.predictor.spec.num_classes)

    def _box_for(self, options: PredictOptions) -> Job[AtriumBox | None]:
        """The box on the model's grid, localised on first use; ``None`` for one stage or
        when the localiser found nothing (whole slices then, as for the volume)."""
        if self.predictor.localiser is None or self.localised is not None:
            return self._model_box
        self._model_box = yield from self.predictor.find_box(self.prepared, options)
        self.localised = self._model_box is not None
        return self._model_box
