"""The :class:`Predictor`: a trained 2D network and its spec, applied to 3D volumes.

``Predictor.from_checkpoint(path)`` loads a model file (or wraps a live network:
``Predictor(network, spec, device)``); ``predict_volume(volume)`` is a generator that yields
:class:`~src_monai.progress.Progress` per batch of slices and returns a :class:`Prediction`;
``predict_slice`` answers one slice. The CLI, napari and tests share it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src_monai.data.crops import AtriumBox, crop_origin, crop_plane
from src_monai.data.sampling import shrink_slices
from src_monai.data.transforms import context_stack, normalise_volume
from src_monai.errors import LascError
from src_monai.inference.postprocess import postprocess_labels
from src_monai.inference.resample import (
    resample_channels,
    resample_labels,
    resample_volume,
    resampled_shape,
)
from src_monai.model.files import load_model, model_path
from src_monai.model.spec import ModelSpec
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LascError(None, "device cuda requested, but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise LascError(None, f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device(name)


def check_volume(volume: np.ndarray) -> None:
    """A 3D volume with some contrast: a blank scan would get a confident-looking guess."""
    if volume.ndim != 3:
        raise LascError(None, f"expected a 3D volume, got shape {volume.shape}")
    if volume.size == 0:
        raise LascError(None, f"the volume is empty (shape {volume.shape})")
    low, high = volume.min(), volume.max()
    if low == high:
        raise LascError(None, f"the scan is blank (every voxel is {low}): nothing to segment")


@dataclass(frozen=True)
class PredictOptions:
    """How a model is applied to a scan: ``lasc infer``'s and ``lasc evaluate``'s options.

    ``None`` takes what the model file recommends (chosen by cross-validation)."""

    batch_size: int = 16
    tta: bool | None = None
    postprocess: bool | None = None
    tri_planar: bool | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`Predictor.predict_volume`."""
        return asdict(self)


DEFAULT_OPTIONS = PredictOptions()


@dataclass(frozen=True)
class Prediction:
    """Labels in the input volume's shape; class probabilities ``(C, ...)`` when asked for;
    the uncertainty map (entropy of the mean over augmented views, 0..1) when asked for."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    localised: bool | None = None
    """A two-stage model's: whether its localiser found the atrium (``None``: one stage)."""
    box: AtriumBox | None = None
    """The box stage 2 segmented (slices-first voxels of the input), when it had one."""
    box_from_user: bool = False
    """The box was given (``--box``, napari's box layer), not found by the localiser."""
    resampled_to: tuple[int, ...] | None = None
    """The grid the network saw when the scan was resampled to the training voxel size."""


# Test-time views for the uncertainty map: transforms inside the range the models are trained
# with (rotations up to 15 degrees, gamma 0.7-1.5), so each view is a fair input; where the views
# disagree the prediction is unstable. The unchanged input is a view too.
UNCERTAINTY_VIEWS: tuple[tuple[str, float], ...] = (
    ("rotate", 10.0),
    ("rotate", -10.0),
    ("gamma", 0.8),
    ("gamma", 1.25),
)


def slices_first(values: Sequence, axis: int) -> tuple:
    """Per-axis ``values`` in file order, reordered as ``np.moveaxis(volume, axis, 0)``."""
    return (values[axis], *(v for a, v in enumerate(values) if a != axis))


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (its metadata is not needed here)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def normalised_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over the class axis (first) divided by its maximum, log(classes): 0..1."""
    p = probabilities.clamp_min(1e-8)
    return -(p * p.log()).sum(0) / float(np.log(probabilities.shape[0]))


@dataclass
class _Scores:
    """What a prediction accumulates over planes: labels, or class probabilities (and the
    summed augmented views for the uncertainty map) when those are needed."""

    labels: torch.Tensor
    probabilities: torch.Tensor | None = None
    views: torch.Tensor | None = None

    @classmethod
    def empty(cls, shape: tuple[int, ...], classes: int, *, probabilities: bool, views: bool):
        labels = torch.empty(shape, dtype=torch.uint8)
        if not probabilities:
            return cls(labels)
        summed = torch.zeros((classes, *shape), dtype=torch.float32)
        return cls(labels, summed, torch.zeros_like(summed) if views else None)

    def along(self, axis: int) -> _Scores:
        """Views of the outputs with ``axis`` first (writes land in place)."""
        return _Scores(
            self.labels.movedim(axis, 0),
            None if self.probabilities is None else self.probabilities.movedim(axis + 1, 1),
            None if self.views is None else self.views.movedim(axis + 1, 1),
        )

    def finish(self, planes: int, views_per_plane: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (from the mean probabilities, when kept) and the uncertainty map."""
        labels = self.labels
        if self.probabilities is not None:
            self.probabilities /= planes
            labels = self.probabilities.max(0).indices.to(torch.uint8)
        uncertainty = None
        if self.views is not None:
            self.views /= planes * views_per_plane
            uncertainty = normalised_entropy(self.views).numpy()
        return labels.numpy(), uncertainty

    def probabilities_array(self) -> np.ndarray | None:
        return None if self.probabilities is None else self.probabilities.numpy()


def _paste(
    inner: Prediction,
    axis: int,
    kept: tuple[int, int],
    into: tuple[int, int],
    box: AtriumBox,
    shape: tuple[int, int, int],
) -> Prediction:
    """A crop's prediction (file axes, slice axis ``axis``) placed into certain background of
    the slices-first ``shape``: crop slices ``kept`` become slices ``into``. The result is
    slices first."""
    size = next(n for i, n in enumerate(inner.labels.shape) if i != axis)  # square crops
    top, left = crop_origin(box.centre, size)
    _, height, width = shape
    y0, y1, x0, x1 = max(top, 0), min(top + size, height), max(left, 0), min(left + size, width)
    source = (slice(*kept), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    target = (slice(*into), slice(y0, y1), slice(x0, x1))

    def place(array: np.ndarray | None, fill: float) -> np.ndarray | None:
        if array is None:
            return None
        out = np.full(shape, fill, dtype=array.dtype)
        out[target] = np.moveaxis(array, axis, 0)[source]
        return out

    probabilities = None
    if inner.probabilities is not None:
        per_class = [place(p, 1.0 if c == 0 else 0.0) for c, p in enumerate(inner.probabilities)]
        probabilities = np.stack(per_class)
    return Prediction(
        labels=place(inner.labels, 0),
        probabilities=probabilities,
        uncertainty=place(inner.uncertainty, 0.0),
    )


class Predictor:
    """A trained 2D network and its :class:`ModelSpec`: everything needed to apply it to a
    3D volume. Made from a model file (:meth:`from_checkpoint`) or from a live network and its
    spec (training's validation and previews), as nnU-Net's predictor is."""

    def __init__(self, network: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
        self.localiser: Predictor | None = None
        if spec.localiser is not None:  # a two-stage model: network holds both stages
            self.localiser = Predictor(network.localiser, spec.localiser, device)
            network = network.segmenter
        self.network = network.to(device).eval()
        self.spec = spec
        self.device = device
        self._warned_out_of_memory = False
        self._batch_limit = 0  # slices per forward pass that fit in memory; 0: no limit seen

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str = "auto", *, tri_planar: bool | None = None
    ) -> Predictor:
        """Load a model file; ``None`` loads the model bundled with the package.

        ``tri_planar=True`` refuses (naming the file) a model trained on one axis only."""
        torch_device = resolve_device(device)
        path = model_path(path)
        network, spec = load_model(path, torch_device)
        try:
            spec.planes(tri_planar)
        except LascError as exc:
            raise LascError(path, exc.problem) from None
        return cls(network, spec, torch_device)

    def predict_volume(
        self,
        volume: np.ndarray,
        *,
        batch_size: int = 16,
        tta: bool | None = None,
        postprocess: bool | None = None,
        probabilities: bool = False,
        normalised: bool = False,
        overlap: float = 0.25,
        uncertainty: bool = False,
        tri_planar: bool | None = None,
        box: AtriumBox | None = None,
        localise: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> Job[Prediction]:
        """Segment a 3D volume slice by slice along the model's slice axis.

        ``tta`` averages over flips; ``postprocess`` keeps each class's largest 3D component
        and fills holes. ``None`` takes what the model's metadata recommends (chosen by
        cross-validation), else off. ``tri_planar`` (default: when the model was trained for
        it) also predicts along the other two axes and averages the three probability maps.
        ``uncertainty`` adds the entropy map over :data:`UNCERTAINTY_VIEWS` (the labels stay
        those of the plain prediction). ``normalised=True`` skips the per-volume normalisation
        (the caller did it). ``box`` (slices-first voxel coordinates, see
        :class:`~src_monai.data.crops.AtriumBox`): a crop model segments only the crop around
        it over the box's slices plus the model's margin; the rest is background. ``spacing``
        (the volume's voxel size, file axis order): a scan whose voxel size differs from the
        training scans' is resampled to theirs and the prediction back (see
        :mod:`~src_monai.inference.resample`). Yields progress per batch of slices; returns a
        :class:`Prediction` in the input's shape.
        """
        if self.spec.downsample > 1:
            raise LascError(
                None, "this model is a localiser (stage 1): it finds the atrium's box, see localise"
            )
        options = {
            "batch_size": batch_size,
            "tta": tta,
            "postprocess": postprocess,
            "probabilities": probabilities,
            "normalised": normalised,
            "overlap": overlap,
            "uncertainty": uncertainty,
        }
        if spacing is not None:
            check_volume(volume)
            shape = resampled_shape(volume.shape, spacing, self.spec.training_spacing)
            if shape is not None:
                return (
                    yield from self._predict_resampled(
                        volume, shape, box=box, localise=localise, tri_planar=tri_planar, **options
                    )
                )
        if box is None and localise and self.localiser is not None:
            return (yield from self._predict_two_stage(volume, options))
        if box is not None:
            boxed = yield from self._predict_in_box(volume, box, **options)
            return replace(boxed, box_from_user=True)
        return (yield from self._predict_slices(volume, tri_planar=tri_planar, **options))

    def _predict_slices(
        self,
        volume: np.ndarray,
        *,
        batch_size: int,
        tta: bool | None,
        postprocess: bool | None,
        probabilities: bool,
        normalised: bool,
        overlap: float,
        uncertainty: bool,
        tri_planar: bool | None,
    ) -> Job[Prediction]:
        """Every slice of the volume along the model's axis (and the other two when
        tri-planar), whole slices tiled by the network's window."""
        defaults = self.spec.defaults
        tta = self._usable_tta(defaults.tta if tta is None else tta)
        postprocess = defaults.postprocess if postprocess is None else postprocess
        axes = self.spec.planes(tri_planar)
        check_volume(volume)
        values = (
            volume.astype(np.float32)
            if normalised
            else normalise_volume(volume, self.spec.normalisation)
        )
        # Labels come straight from the logits unless probabilities are needed: to return,
        # to fuse planes, or to compare with the augmented views.
        scores = _Scores.empty(
            values.shape,
            self.spec.num_classes,
            probabilities=probabilities or uncertainty or len(axes) > 1,
            views=uncertainty,
        )
        total, done = sum(values.shape[axis] for axis in axes), 0
        for axis in axes:
            along = scores.along(axis)
            slices = self._slices_on_device(values, axis)
            for start in range(0, slices.shape[0], batch_size):
                stop = min(start + batch_size, slices.shape[0])
                self._predict_batch(slices, start, stop, along, tta=tta, overlap=overlap)
                done += stop - start
                plane = f"axis {axis}: " if len(axes) > 1 else ""
                yield Progress(
                    f"{plane}slices {start + 1}-{stop} of {slices.shape[0]}", done, total
                )
        labels, uncertainty_map = scores.finish(len(axes), 1 + len(UNCERTAINTY_VIEWS))
        if postprocess:
            labels = postprocess_labels(labels, self.spec.num_classes)
        return Prediction(
            labels=np.ascontiguousarray(labels),
            probabilities=scores.probabilities_array() if probabilities else None,
            uncertainty=uncertainty_map,
        )

    def _predict_resampled(
        self, volume: np.ndarray, shape: tuple[int, ...], *, box: AtriumBox | None, **options
    ) -> Job[Prediction]:
        """:meth:`predict_volume` on the volume resampled to ``shape`` (the training voxel
        size), its outputs resampled back to the volume's own grid."""
        original = volume.shape
        logger.info(
            "voxel size differs from the training scans': the %s grid is resampled to %s "
            "for the network and its prediction back",
            "x".join(map(str, original)),
            "x".join(map(str, shape)),
        )
        axis = self.spec.slice_axis
        to_model = slices_first([n / o for n, o in zip(shape, original, strict=True)], axis)
        if box is not None:
            box = box.scaled(to_model, slices_first(shape, axis))
        inner = yield from self.predict_volume(
            resample_volume(volume, shape), box=box, spacing=None, **options
        )
        back = [1.0 / f for f in to_model]
        return replace(
            inner,
            labels=resample_labels(inner.labels, self.spec.num_classes, original),
            probabilities=None
            if inner.probabilities is None
            else resample_channels(inner.probabilities, original),
            uncertainty=None
            if inner.uncertainty is None
            else resample_channels(inner.uncertainty[None], original)[0],
            box=None if inner.box is None else inner.box.scaled(back, slices_first(original, axis)),
            resampled_to=tuple(shape),
        )

    def _predict_two_stage(self, volume: np.ndarray, options: dict[str, Any]) -> Job[Prediction]:
        """Stage 1 finds the atrium's box, stage 2 segments the crop around it; when stage 1
        finds none, stage 2 segments whole slices (its windows tiled) and says so."""
        assert self.localiser is not None
        if not options["normalised"]:  # once for both stages (one scheme: combine_stages)
            check_volume(volume)
            volume = normalise_volume(volume, self.spec.normalisation)
            options = {**options, "normalised": True}
        box = yield from self.localiser.localise(
            volume, normalised=True, batch_size=options["batch_size"]
        )
        if box is None:
            logger.warning("the localiser found no left atrium: whole slices are segmented instead")
            whole = yield from self.predict_volume(volume, **options, localise=False)
            return replace(whole, localised=False)
        boxed = yield from self._predict_in_box(volume, box, **options)
        return replace(boxed, localised=True)

    def _predict_in_box(
        self, volume: np.ndarray, box: AtriumBox, *, normalised: bool, postprocess, **options
    ) -> Job[Prediction]:
        """:meth:`predict_volume` on the crop around ``box`` (with the neighbours its first
        and last slices need as context), pasted into a background volume."""
        check_volume(volume)
        spec, axis = self.spec, self.spec.slice_axis
        values = volume if normalised else normalise_volume(volume, spec.normalisation)
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, axis, 0)))
        count, half = slices.shape[0], spec.context_slices // 2
        first, stop = box.slice_range(spec.crop_slice_margin, count)
        lower, upper = max(first - half, 0), min(stop + half, count)
        size = spec.patch_size[0]
        crop = crop_plane(slices[lower:upper].float(), box.centre, size)
        inner = yield from self.predict_volume(
            np.moveaxis(crop.numpy(), 0, axis),
            normalised=True,
            postprocess=False,
            tri_planar=False,
            localise=False,
            **options,
        )
        kept = (first - lower, stop - lower)
        pasted = _paste(inner, axis, kept, (first, stop), box, tuple(slices.shape))
        labels = np.moveaxis(pasted.labels, 0, axis)
        if spec.defaults.postprocess if postprocess is None else postprocess:
            labels = postprocess_labels(labels, spec.num_classes)
        return Prediction(
            labels=np.ascontiguousarray(labels),
            probabilities=None
            if pasted.probabilities is None
            else np.moveaxis(pasted.probabilities, 1, axis + 1),
            uncertainty=None
            if pasted.uncertainty is None
            else np.moveaxis(pasted.uncertainty, 0, axis),
            box=box,
        )

    def localise(
        self, volume: np.ndarray, *, normalised: bool = False, batch_size: int = 16
    ) -> Job[AtriumBox | None]:
        """Stage 1: the atrium's box (slices-first voxels of ``volume``) from a localiser's
        low-resolution prediction, its largest 3D component; ``None`` when it finds none."""
        spec, axis = self.spec, self.spec.slice_axis
        if spec.downsample < 2:
            raise LascError(None, "this model is not a localiser (data.downsample = 1)")
        check_volume(volume)
        values = volume if normalised else normalise_volume(volume, spec.normalisation)
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, axis, 0)))
        small = shrink_slices(slices, spec.downsample).numpy()
        if float(small.max()) == float(small.min()):
            # Structure finer than the localiser's pixels (or none) averages out: nothing to
            # find at its resolution; not a blank scan (the caller segments whole slices).
            return None
        at_its_resolution = Predictor(self.network, replace(spec, downsample=1), self.device)
        coarse = yield from at_its_resolution.predict_volume(
            np.moveaxis(small, 0, axis), normalised=True, batch_size=batch_size, postprocess=True
        )
        box = AtriumBox.around(np.moveaxis(coarse.labels, axis, 0) == 1)
        if box is None:
            return None
        f, (_, height, width) = spec.downsample, slices.shape
        return AtriumBox(
            box.z0, box.z1, box.y0 * f, min(box.y1 * f, height), box.x0 * f, min(box.x1 * f, width)
        )

    def _usable_tta(self, tta: bool) -> bool:
        if tta and not self.tta_flip_dims:
            logger.warning(
                "test-time augmentation skipped: this model was trained without "
                "flips, and flipped inputs would mislead it"
            )
            return False
        return tta

    def _slices_on_device(self, values: np.ndarray, axis: int) -> torch.Tensor:
        """The volume with ``axis`` first, on the device when it fits (else batch by batch)."""
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, axis, 0)))
        try:
            return slices.to(self.device)
        except torch.OutOfMemoryError:
            logger.warning(
                "the volume does not fit on %s: batches are moved one by one", self.device
            )
            return slices

    def _predict_batch(
        self,
        slices: torch.Tensor,
        start: int,
        stop: int,
        along: _Scores,
        *,
        tta: bool,
        overlap: float,
    ) -> None:
        """Predict slices ``start:stop`` into ``along`` (outputs with this pass's axis first)."""
        # Inference mode per batch, never across a yield: grad mode is thread-local, and the
        # caller's code (or, after a cancel, whatever the worker thread runs next) must not
        # inherit it from a suspended generator.
        with torch.inference_mode():
            batch = context_stack(slices, range(start, stop), self.spec.context_slices)
            softmax = along.probabilities is not None or tta
            scores = self._scores_fitting(batch, tta=tta, overlap=overlap, softmax=softmax)
            if along.probabilities is None:
                # max(1).indices, not argmax: the same result, far cheaper on CPU.
                along.labels[start:stop] = scores.max(1).indices.to("cpu", torch.uint8)
            else:
                scores = scores.float()
                along.probabilities[:, start:stop] += scores.to("cpu").transpose(0, 1)
            if along.views is not None:
                scores = scores + self._view_scores(batch, overlap)
                along.views[:, start:stop] += scores.to("cpu").transpose(0, 1)

    def _view_scores(self, batch: torch.Tensor, overlap: float) -> torch.Tensor:
        """Summed class probabilities of :data:`UNCERTAINTY_VIEWS` of a batch, each mapped
        back onto the original slice grid."""
        from monai.transforms import AdjustContrast, Rotate

        total: torch.Tensor | None = None
        for kind, amount in UNCERTAINTY_VIEWS:
            back = None
            if kind == "rotate":
                angle = float(np.deg2rad(amount))
                view = Rotate(angle, keep_size=True, mode="bilinear", padding_mode="zeros")
                # Back-rotation samples outside the slice at the corners: repeat the border.
                back = Rotate(-angle, keep_size=True, mode="bilinear", padding_mode="border")
            else:
                view = AdjustContrast(amount)
            scores = self._scores_fitting(
                torch.stack([_plain(view(x)) for x in batch]),
                tta=False,
                overlap=overlap,
                softmax=True,
            ).float()
            if back is not None:
                scores = torch.stack([_plain(back(x)) for x in scores])
            total = scores if total is None else total + scores
        assert total is not None
        return total

    def predict_slice(
        self,
        volume: np.ndarray,
        index: int,
        *,
        tta: bool | None = None,
        normalised: bool = False,
        box: AtriumBox | None = None,
    ) -> np.ndarray:
        """Labels of one slice (along the model's slice axis) of a 3D volume: interactive use.

        The whole volume is normalised as in :meth:`predict_volume`, so the slice gets the
        same labels as it would there (3D post-processing aside, which needs every slice).
        ``normalised=True``: the caller did that already (and can reuse it slice after slice).
        A tri-planar model answers from the slice axis alone (one slice has no other planes).
        ``box`` (a crop model's, slices-first): only the crop around it is segmented, and a
        slice outside its range plus the model's margin is background, as in the volume.
        """
        check_volume(volume)
        axis = self.spec.slice_axis
        count = volume.shape[axis]
        if not 0 <= index < count:
            raise LascError(None, f"slice {index} is outside 0..{count - 1}")
        tta = self.spec.defaults.tta if tta is None else tta
        tta = tta and bool(self.tta_flip_dims)
        half = self.spec.context_slices // 2
        plane = tuple(n for a, n in enumerate(volume.shape) if a != axis)
        if box is not None:
            first, stop = box.slice_range(self.spec.crop_slice_margin, count)
            if not first <= index < stop:
                return np.zeros(plane, np.uint8)
        # Only the neighbours the context needs, edge slices repeated as in training.
        wanted = np.clip(np.arange(index - half, index + half + 1), 0, count - 1)
        values = volume if normalised else normalise_volume(volume, self.spec.normalisation)
        stack = np.take(values, wanted, axis=axis).astype(np.float32, copy=False)
        batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stack, axis, 0)))[None]
        if box is not None:
            batch = crop_plane(batch, box.centre, self.spec.patch_size[0])
        with torch.inference_mode():
            scores = self._scores_fitting(batch, tta=tta, overlap=0.25, softmax=tta)
            labels = scores.max(1).indices[0].to("cpu", torch.uint8).numpy()
        if box is None:
            return labels
        one = Prediction(labels=labels[None])
        return _paste(one, 0, (0, 1), (0, 1), box, (1, *plane)).labels[0]

    @property
    def tta_flip_dims(self) -> list[tuple[int, ...]]:
        """Flips used for test-time augmentation: only those the model was trained with.

        A network never shown a mirrored heart fails on one; averaging in such outputs
        ruins the prediction instead of smoothing it.
        """
        return [(3,)] if self.spec.trained_with_flips else []

    def _scores_fitting(self, batch: torch.Tensor, **options: Any) -> torch.Tensor:
        """:meth:`_scores`, halving the batch when the GPU runs out of memory, and moving to
        the CPU (with a warning) when even one slice does not fit."""
        limit = self._batch_limit
        if limit and batch.shape[0] > limit:  # a size that ran out of memory before
            return torch.cat([self._scores_fitting(part, **options) for part in batch.split(limit)])
        batch = batch.to(self.device)
        try:
            return self._scores(batch, **options)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch.shape[0] > 1:
                if not self._warned_out_of_memory:
                    logger.warning(
                        "out of memory on %s with %d slices at once: smaller batches",
                        self.device,
                        batch.shape[0],
                    )
                    self._warned_out_of_memory = True
                half = batch.shape[0] // 2
                self._batch_limit = half
                return torch.cat(
                    [
                        self._scores_fitting(batch[:half], **options),
                        self._scores_fitting(batch[half:], **options),
                    ]
                )
            if self.device.type == "cpu":
                raise
            logger.warning(
                "out of memory on %s even for one slice: continuing on the CPU", self.device
            )
            self.network.to("cpu")
            self.device = torch.device("cpu")
            return self._scores(batch.to("cpu"), **options)

    def _scores(
        self, batch: torch.Tensor, *, tta: bool, overlap: float, softmax: bool
    ) -> torch.Tensor:
        flips = self.tta_flip_dims if tta else []
        logits = self._logits(batch, overlap)
        if not flips:
            return torch.softmax(logits.float(), dim=1) if softmax else logits
        total = torch.softmax(logits.float(), dim=1)
        for dims in flips:
            flipped = self._logits(torch.flip(batch, dims), overlap)
            total += torch.flip(torch.softmax(flipped.float(), dim=1), dims)
        return total / (1 + len(flips))

    def _logits(self, batch: torch.Tensor, overlap: float) -> torch.Tensor:
        """Logits of a batch of 2.5D slices through MONAI's ``SlidingWindowInferer`` with the
        training patch as its window, as the exported bundle's ``SliceInferer`` does.

        A slice no larger than the patch is zero-padded to it, centred, as training did
        (MONAI's ``SpatialPadd``), so instance normalisation sees the same context (a
        tri-planar model's sagittal and coronal slices are such slices); its one window is
        taken as is. Larger slices are tiled with Gaussian-blended windows.
        """
        from monai.inferers import SlidingWindowInferer

        larger = any(
            size > patch for size, patch in zip(batch.shape[-2:], self.spec.patch_size, strict=True)
        )
        inferer = SlidingWindowInferer(
            roi_size=self.spec.patch_size,
            sw_batch_size=batch.shape[0],
            overlap=overlap,
            mode="gaussian" if larger else "constant",
            padding_mode="constant",
        )
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with autocast:
            return _plain(inferer(batch, self.network))
