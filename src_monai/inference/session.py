"""An interactive session: one scan held for repeated predictions (the napari widget's core).

The scan is checked and normalised once; the whole volume (with its case report) or a single
slice is then predicted as often as the user asks, slice after slice in a fraction of a
second. The labels equal :meth:`Predictor.predict_volume`'s on the raw scan, since the
normalisation is the same. A two-stage model localises the atrium once (with the first whole
volume, or the first slice asked for) and every slice after reuses that box; a scan at another
voxel size than the training scans' is resampled once for the slices too. Like
napari-nninteractive's session, it knows nothing of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.data.transforms import normalise_volume
from src_monai.inference.predictor import Prediction, Predictor, check_volume, slices_first
from src_monai.inference.report import CaseReport, report_case
from src_monai.inference.resample import resample_labels, resample_volume, resampled_shape
from src_monai.progress import Job, run_to_end


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
        # The grid the network works on when the voxel size is not the training one.
        self._grid = resampled_shape(volume.shape, self.spacing, predictor.spec.training_spacing)
        self._on_grid: np.ndarray | None = None
        self.box: AtriumBox | None = None
        """The atrium's box (slices-first voxels of the scan) stage 2 uses; ``None`` until
        localised, or for a one-stage model."""
        self.localised: bool | None = None

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
        box: AtriumBox | None = None,
    ) -> Job[VolumeResult]:
        """Every slice, then the case report; yields progress per batch. ``box`` (the user's,
        slices-first voxels of the scan): stage 2 segments around it instead of localising,
        and later slices reuse it."""
        prediction = yield from self.predictor.predict_volume(
            self._normalised,
            batch_size=batch_size,
            tta=tta,
            postprocess=postprocess,
            uncertainty=uncertainty,
            normalised=True,
            spacing=self.spacing,
            box=box,
        )
        if box is not None:
            self.box, self.localised = box, True
        elif prediction.localised is not None:
            self.box, self.localised = prediction.box, prediction.localised
        report = report_case(prediction, self.spacing, self.predictor.spec, axcodes=self.axcodes)
        return VolumeResult(prediction, report)

    def segment_slice(self, index: int, *, tta: bool | None = None) -> np.ndarray:
        """Labels of slice ``index`` along the model's slice axis (2D, file axis order)."""
        predictor, axis = self.predictor, self.slice_axis
        box = self._box_for_slices()
        if self._grid is None:
            return predictor.predict_slice(
                self._normalised, index, tta=tta, normalised=True, box=box
            )
        # The grid slice whose centre is nearest this slice's, and its labels back in-plane.
        scale = self._grid[axis] / self.shape[axis]
        nearest = int(np.clip(round((index + 0.5) * scale - 0.5), 0, self._grid[axis] - 1))
        if box is not None:
            box = box.scaled(self._slices_first_ratios(), slices_first(self._grid, self.slice_axis))
        labels = predictor.predict_slice(
            self._grid_volume(), nearest, tta=tta, normalised=True, box=box
        )
        plane = tuple(1 if a == axis else n for a, n in enumerate(self.shape))
        back = resample_labels(np.expand_dims(labels, axis), predictor.spec.num_classes, plane)
        return np.take(back, 0, axis=axis)

    def _box_for_slices(self) -> AtriumBox | None:
        """A two-stage model's box, localised on first use; ``None`` for one stage or when
        the localiser found nothing (whole slices then, as for the volume)."""
        localiser = self.predictor.localiser
        if localiser is None or self.localised is not None:
            return self.box
        if self._grid is None:
            self.box = run_to_end(localiser.localise(self._normalised, normalised=True))
        else:
            found = run_to_end(localiser.localise(self._grid_volume(), normalised=True))
            ratios = [1.0 / r for r in self._slices_first_ratios()]
            self.box = (
                None
                if found is None
                else found.scaled(ratios, slices_first(self.shape, self.slice_axis))
            )
        self.localised = self.box is not None
        return self.box

    def _grid_volume(self) -> np.ndarray:
        """The normalised scan on the network's grid, resampled once."""
        assert self._grid is not None
        if self._on_grid is None:
            self._on_grid = resample_volume(self._normalised, self._grid)
        return self._on_grid

    def _slices_first_ratios(self) -> tuple:
        """Grid voxels per scan voxel, slices first."""
        assert self._grid is not None
        ratios = [g / n for g, n in zip(self._grid, self.shape, strict=True)]
        return slices_first(ratios, self.slice_axis)
