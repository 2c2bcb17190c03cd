"""The inference pipeline's steps, each a function of typed inputs and outputs.

One scan goes through them in one order, whoever asks (``lasc infer``, ``lasc evaluate``,
napari's session, training's validation):

1. :func:`prepare`: checks, orientation, normalisation, resampling, once
   (in nnU-Net's order: the scan is normalised on its own voxels, then resampled);
2. :func:`localise`: a localiser's box around the atrium (two-stage models);
3. :func:`segment_in_box` (a crop segmenter) or :func:`segment_whole` (whole slices):
   class scores on the model's grid;
4. :func:`restore`: back onto the scan's grid and orientation, then post-processing.

None of them calls back into an entry point; :class:`~src_monai.inference.predictor.
Predictor` strings them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from src_monai.data.crops import AtriumBox, crop_origin, crop_plane
from src_monai.data.sampling import shrink_slices
from src_monai.data.transforms import normalise_volume
from src_monai.errors import LascError
from src_monai.inference.grid import ModelGrid
from src_monai.inference.in_box_3d import one_slice_3d, segment_in_box_3d
from src_monai.inference.options import PredictOptions
from src_monai.inference.postprocess import postprocess_labels
from src_monai.inference.resample import resample_volume
from src_monai.inference.stage import StageNetwork, infer_slices
from src_monai.io.scans import non_finite_voxels
from src_monai.model.spec import ModelSpec
from src_monai.progress import Job


def check_volume(volume: np.ndarray) -> None:
    """A finite 3D volume with some contrast: a blank scan would get a confident guess."""
    if volume.ndim != 3:
        raise LascError(None, f"expected a 3D volume, got shape {volume.shape}")
    if volume.size == 0:
        raise LascError(None, f"the volume is empty (shape {volume.shape})")
    bad = non_finite_voxels(volume)
    if bad:  # a NaN would spread through the normalisation and blank the whole prediction
        raise LascError(None, f"{bad} voxels are NaN or infinite: a scan needs finite values")
    low, high = volume.min(), volume.max()
    if low == high:
        raise LascError(None, f"the scan is blank (every voxel is {low}): nothing to segment")


LABEL_LIKE_VALUES = 8
"""A scan with at most this many distinct whole values is most likely a label file."""


def scan_notes(volume: np.ndarray) -> list[str]:
    """QC flags about the scan itself: one when its voxels look like labels (a few whole
    values, as a label file given as the scan). Cheap for a real scan: its value range
    alone rules it out."""
    low, high = float(volume.min()), float(volume.max())
    if high - low > 4 * LABEL_LIKE_VALUES:
        return []
    if np.any(np.mod(volume.reshape(-1)[::997], 1) != 0):  # a float scan of small range
        return []
    values = np.unique(volume)
    if len(values) > LABEL_LIKE_VALUES or not np.all(np.mod(values, 1) == 0):
        return []
    shown = ", ".join(f"{v:g}" for v in values)
    return [f"the scan holds only {len(values)} values ({shown}): is it a label file?"]


@dataclass(frozen=True)
class PreparedScan:
    """A scan as the networks take it: normalised ``float32`` voxels on the model's grid
    (training orientation and voxel size, model axis order), and the way back."""

    values: np.ndarray
    grid: ModelGrid

    @property
    def slices(self) -> np.ndarray:
        """The voxels with the model's slice axis first (a view)."""
        return np.moveaxis(self.values, self.grid.slice_axis, 0)


@dataclass(frozen=True)
class Scores:
    """A segmenter's output on the model's grid (model axis order), before restoring."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


@dataclass(frozen=True)
class Prediction:
    """Labels in the scan's shape; class probabilities ``(C, ...)`` when asked for; the
    uncertainty map (entropy of the mean over augmented views, 0..1) when asked for."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    localised: bool | None = None
    """A two-stage model's: whether its localiser found the atrium (``None``: one stage)."""
    box: AtriumBox | None = None
    """The box stage 2 segmented (the scan's slices-first voxels), when it had one."""
    box_from_user: bool = False
    """The box was given (``--box``, napari's box layer), not found by the localiser."""
    resampled_to: tuple[int, ...] | None = None
    """The grid the network saw when the scan was resampled to the training voxel size."""


# ---------------------------------------------------------------------- 1. prepare


def prepare(
    volume: np.ndarray,
    spec: ModelSpec,
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> PreparedScan:
    """A scan (file axis order) on the model's grid: oriented as the training scans were
    (when ``affine``, the voxel-to-RAS transform, is known), normalised on its own voxels as
    in training, then resampled to the training voxel size (when ``spacing`` is given and
    differs by more than :data:`~src_monai.inference.resample.RESAMPLE_TOLERANCE`)."""
    check_volume(volume)
    grid = model_grid(spec, volume.shape, spacing=spacing, affine=affine)
    values = normalise_volume(grid.orient(volume), spec.normalisation)
    if grid.resampled:
        values = resample_volume(values, grid.shape)
    return PreparedScan(np.ascontiguousarray(values), grid)


def model_grid(
    spec: ModelSpec,
    shape: Sequence[int],
    *,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> ModelGrid:
    """The model's grid of a scan of ``shape`` (read from its header alone: no voxels)."""
    return ModelGrid.for_scan(
        shape,
        spec.slice_axis,
        spacing=spacing,
        affine=affine,
        training_axcodes=spec.orientation_axcodes,
        training_spacing=spec.training_spacing,
    )


def prepared_as_is(values: np.ndarray, slice_axis: int) -> PreparedScan:
    """Voxels prepared already (training's cached, normalised cases): the model's grid is
    theirs."""
    shape = tuple(int(n) for n in values.shape)
    grid = ModelGrid(scan_shape=shape, transform=None, shape=shape, slice_axis=slice_axis)  # type: ignore[arg-type]
    return PreparedScan(np.ascontiguousarray(values, dtype=np.float32), grid)


# ---------------------------------------------------------------------- 2. localise


def localise(
    localiser: StageNetwork, slices: np.ndarray, options: PredictOptions
) -> Job[AtriumBox | None]:
    """A localiser's box around the atrium in prepared slices-first voxels: its prediction on
    the slices shrunk by its factor, largest 3D component; ``None`` when it finds none."""
    factor = localiser.spec.downsample
    small = shrink_slices(torch.from_numpy(np.ascontiguousarray(slices)), factor).numpy()
    if float(small.max()) == float(small.min()):
        # Structure finer than the localiser's pixels (or none) averages out: nothing to
        # find at its resolution; not a blank scan (the caller segments whole slices).
        return None
    labels = yield from localise_shrunk(localiser, small, options)
    box = AtriumBox.around(labels == 1)
    if box is None:
        return None
    _, height, width = slices.shape
    return AtriumBox(
        box.z0,
        box.z1,
        box.y0 * factor,
        min(box.y1 * factor, height),
        box.x0 * factor,
        min(box.x1 * factor, width),
    )


def localise_shrunk(
    localiser: StageNetwork, small: np.ndarray, options: PredictOptions
) -> Job[np.ndarray]:
    """The localiser's post-processed labels of slices shrunk already (slices first): what
    training validates a localiser on."""
    axis = localiser.spec.slice_axis
    scores = yield from infer_slices(localiser, np.moveaxis(small, 0, axis), options)
    labels, _, _ = scores.finish(len(localiser.spec.planes(options.tri_planar)))
    return postprocess_labels(np.moveaxis(labels, axis, 0), localiser.spec.num_classes)


# ---------------------------------------------------------------------- 3. segment


def segment_whole(
    segmenter: StageNetwork, prepared: PreparedScan, options: PredictOptions
) -> Job[Scores]:
    """Every slice of the prepared scan (and the other two planes when tri-planar); a 3D
    crop model's windows over the whole volume."""
    if segmenter.spec.input.spatial_dims == 3:
        count, height, width = prepared.slices.shape
        whole = AtriumBox(0, count, 0, height, 0, width)
        return (yield from _in_box_3d(segmenter, prepared, whole, options))
    scores = yield from infer_slices(segmenter, prepared.values, options)
    labels, probabilities, uncertainty = scores.finish(
        len(segmenter.spec.planes(options.tri_planar))
    )
    return Scores(
        labels,
        probabilities if options.probabilities else None,
        uncertainty,
    )


def segment_in_box(
    segmenter: StageNetwork,
    prepared: PreparedScan,
    box: AtriumBox,
    options: PredictOptions,
    *,
    grow: bool = False,
) -> Job[Scores]:
    """A crop segmenter on the square crop around ``box`` (model slices-first voxels) over
    the box's slices plus the model's margin (with the neighbours their context needs),
    placed into certain background elsewhere. ``grow`` (a localiser's box): a 3D stage 2's
    region grows where the atrium reaches its faces (:mod:`~src_monai.inference.in_box_3d`)."""
    spec = segmenter.spec
    slices = prepared.slices
    if spec.input.spatial_dims == 3:
        return (yield from _in_box_3d(segmenter, prepared, box, options, grow=grow))
    count, half = slices.shape[0], spec.context_slices // 2
    first, stop = box.slice_range(spec.crop_slice_margin, count)
    lower, upper = max(first - half, 0), min(stop + half, count)
    crop = crop_plane(
        torch.from_numpy(np.ascontiguousarray(slices[lower:upper])), box.centre, spec.crop_size
    )
    # The crop is one plane's slices; 3D post-processing waits for the whole grid (restore).
    crop_options = replace(options, tri_planar=False, postprocess=False)
    axis = spec.slice_axis
    scores = yield from infer_slices(segmenter, np.moveaxis(crop.numpy(), 0, axis), crop_options)
    labels, probabilities, uncertainty = scores.finish(1)
    paste = _Paste(box, spec.crop_size, (first - lower, stop - lower), (first, stop), slices.shape)

    def placed(array: np.ndarray | None, fill: float) -> np.ndarray | None:
        if array is None:
            return None
        return np.moveaxis(paste(np.moveaxis(array, axis, 0), fill), 0, axis)

    if probabilities is not None and options.probabilities:
        per_class = [placed(p, 1.0 if c == 0 else 0.0) for c, p in enumerate(probabilities)]
        probabilities = np.stack(per_class)
    else:
        probabilities = None
    return Scores(placed(labels, 0), probabilities, placed(uncertainty, 0.0))


def _in_box_3d(
    segmenter: StageNetwork,
    prepared: PreparedScan,
    box: AtriumBox,
    options: PredictOptions,
    *,
    grow: bool = False,
) -> Job[Scores]:
    """A 3D crop model's scores (:mod:`~src_monai.inference.in_box_3d`) in model axes."""
    axis = prepared.grid.slice_axis
    labels, probabilities, uncertainty = yield from segment_in_box_3d(
        segmenter, prepared.slices, box, options, grow=grow
    )
    if probabilities is not None:
        probabilities = np.moveaxis(probabilities, 1, axis + 1)
    if uncertainty is not None:
        uncertainty = np.moveaxis(uncertainty, 0, axis)
    return Scores(np.moveaxis(labels, 0, axis), probabilities, uncertainty)


@dataclass(frozen=True)
class _Paste:
    """Where a crop's slices-first output lands in the slices-first ``shape``: crop slices
    ``kept`` become slices ``into``, the square crop around the box's centre."""

    box: AtriumBox
    size: int
    kept: tuple[int, int]
    into: tuple[int, int]
    shape: tuple[int, int, int]

    def __call__(self, array: np.ndarray, fill: float) -> np.ndarray:
        top, left = crop_origin(self.box.centre, self.size)
        _, height, width = self.shape
        y0, y1 = max(top, 0), min(top + self.size, height)
        x0, x1 = max(left, 0), min(left + self.size, width)
        out = np.full(self.shape, fill, dtype=array.dtype)
        source = (slice(*self.kept), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
        out[slice(*self.into), y0:y1, x0:x1] = array[source]
        return out


def segment_one_slice(
    segmenter: StageNetwork,
    prepared: PreparedScan,
    index: int,
    box: AtriumBox | None,
    *,
    tta: bool,
    whole_region: bool = False,
) -> np.ndarray:
    """Labels of one prepared slice (model slices-first index) with its neighbours as
    context, edge slices repeated as in training: the same labels the slice gets in the
    whole volume (3D post-processing aside). ``box``: a crop segmenter's, outside whose
    slices (plus the margin) the slice is background; ``whole_region``: a 3D segmenter's
    region in one pass, as in the volume (:class:`PredictOptions`)."""
    spec = segmenter.spec
    slices = prepared.slices
    count, half = slices.shape[0], spec.context_slices // 2
    if not 0 <= index < count:
        raise LascError(None, f"slice {index} is outside 0..{count - 1}")
    if box is not None:
        first, stop = box.slice_range(spec.crop_slice_margin, count)
        if not first <= index < stop:
            return np.zeros(slices.shape[1:], np.uint8)
    if spec.input.spatial_dims == 3:
        return one_slice_3d(segmenter, slices, index, box, tta=tta, whole_region=whole_region)
    wanted = np.clip(np.arange(index - half, index + half + 1), 0, count - 1)
    stack = torch.from_numpy(np.ascontiguousarray(slices[wanted], dtype=np.float32))[None]
    if box is None:
        return segmenter.slice_labels(stack, tta=tta)[0]
    labels = segmenter.slice_labels(crop_plane(stack, box.centre, spec.crop_size), tta=tta)
    paste = _Paste(box, spec.crop_size, (0, 1), (0, 1), (1, *slices.shape[1:]))
    return paste(labels, 0)[0]


# ---------------------------------------------------------------------- 4. restore


def restore(
    scores: Scores,
    grid: ModelGrid,
    num_classes: int,
    *,
    postprocess: bool,
) -> Prediction:
    """Scores on the model's grid as a :class:`Prediction` in the scan's shape and axis
    order (resampled back, re-oriented), then post-processed there."""
    labels = grid.labels_to_scan(scores.labels, num_classes)
    if postprocess:
        labels = postprocess_labels(labels, num_classes)
    probabilities = uncertainty = None
    if scores.probabilities is not None:
        probabilities = grid.channels_to_scan(scores.probabilities)
    if scores.uncertainty is not None:
        uncertainty = grid.channels_to_scan(scores.uncertainty[None])[0]
    return Prediction(
        labels=labels,
        probabilities=probabilities,
        uncertainty=uncertainty,
        resampled_to=grid.shape if grid.resampled else None,
    )
