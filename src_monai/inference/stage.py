"""One stage of a model on a device: batches of 2.5D slices in, class scores out.

A :class:`StageNetwork` is a network and its :class:`~src_monai.model.spec.ModelSpec`, with
its MONAI ``SlidingWindowInferer`` built once per window mode and batch size, test-time
flips, the augmented views of the uncertainty map, and the out-of-memory fall-backs (the batch
limit it learns is kept for the rest of its life). :func:`infer_slices` runs it over every
slice of a prepared volume. It knows nothing of files, orientation or boxes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from src_monai.data.transforms import context_stack
from src_monai.inference.options import PredictOptions
from src_monai.model.bundle_pipeline import fits_whole, network_autocast, whole_region_logits
from src_monai.model.spec import ModelSpec, Stage
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)

# Test-time views for the uncertainty map: transforms inside the range the models are trained
# with (rotations up to 15 degrees, gamma 0.7-1.5), so each view is a fair input; where the views
# disagree the prediction is unstable. The unchanged input is a view too.
UNCERTAINTY_VIEWS: tuple[tuple[str, float], ...] = (
    ("rotate", 10.0),
    ("rotate", -10.0),
    ("gamma", 0.8),
    ("gamma", 1.25),
)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MONAI MetaTensor as a plain tensor (its metadata is not needed here)."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _in_plane(transform: Any, item: torch.Tensor) -> torch.Tensor:
    """A 2D transform on one batch item: ``(C, H, W)`` as it is; a volume ``(C, D, H, W)``
    channel by channel, its slices as the transform's channels (every slice alike)."""
    if item.ndim == 3:
        return _plain(transform(item))
    return torch.stack([_plain(transform(channel)) for channel in item])


def normalised_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy over the class axis (first) divided by its maximum, log(classes): 0..1."""
    p = probabilities.clamp_min(1e-8)
    return -(p * p.log()).sum(0) / float(np.log(probabilities.shape[0]))


class StageNetwork:
    """A trained network of one stage, applied to batches of 2.5D slices (or, a 3D crop
    model, of volumes)."""

    def __init__(
        self,
        network: torch.nn.Module,
        spec: ModelSpec,
        device: torch.device,
        precision: str = "auto",
    ) -> None:
        self.network = network.to(device).eval()
        self.spec = spec
        self.device = device
        self.precision = precision  # see bundle_pipeline.network_autocast
        self._inferers: dict[tuple[str, int], Any] = {}
        self._warned_out_of_memory = False
        self._batch_limit = 0  # slices per forward pass that fit in memory; 0: no limit seen

    @property
    def flip_dims(self) -> list[tuple[int, ...]]:
        """Flips for test-time augmentation: only those the model was trained with."""
        return [(-1,)] if self.spec.trained_with_flips else []  # the last axis: left-right

    def scores(
        self,
        batch: torch.Tensor,
        *,
        tta: bool,
        overlap: float,
        softmax: bool,
        whole_region_voxels: int = 0,
    ):
        """Logits (or class probabilities) of a batch, halving the batch when the GPU runs
        out of memory and moving to the CPU (with a warning) when even one slice does not.
        A batch of 3D regions of at most ``whole_region_voxels`` voxels goes through the
        network in one pass, not in windows (:func:`~src_monai.model.bundle_pipeline.
        whole_region_logits`)."""
        options = {
            "tta": tta,
            "overlap": overlap,
            "softmax": softmax,
            "whole_region_voxels": whole_region_voxels,
        }
        limit = self._batch_limit
        if limit and batch.shape[0] > limit:  # a size that ran out of memory before
            return torch.cat([self.scores(p, **options) for p in batch.split(limit)])
        batch = batch.to(self.device)
        try:
            return self._scores(batch, **options)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch.shape[0] == 1 and self.device.type == "cpu":
                raise
        return self._after_out_of_memory(batch, **options)

    def _after_out_of_memory(self, batch: torch.Tensor, **options: Any) -> torch.Tensor:
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
                [self.scores(batch[:half], **options), self.scores(batch[half:], **options)]
            )
        logger.warning("out of memory on %s even for one slice: continuing on the CPU", self.device)
        self.network.to("cpu")
        self.device = torch.device("cpu")
        return self._scores(batch.to("cpu"), **options)

    def _scores(
        self,
        batch: torch.Tensor,
        *,
        tta: bool,
        overlap: float,
        softmax: bool,
        whole_region_voxels: int,
    ):
        flips = self.flip_dims if tta else []
        logits = self._logits(batch, overlap, whole_region_voxels)
        if not flips:
            return torch.softmax(logits.float(), dim=1) if softmax else logits
        total = torch.softmax(logits.float(), dim=1)
        for dims in flips:
            flipped = self._logits(torch.flip(batch, dims), overlap, whole_region_voxels)
            total += torch.flip(torch.softmax(flipped.float(), dim=1), dims)
        return total / (1 + len(flips))

    def _inferer(self, mode: str, windows: int, overlap: float):
        """MONAI's ``SlidingWindowInferer`` with the training patch as its window, one per
        blending mode, batch size and overlap, made once."""
        from monai.inferers import SlidingWindowInferer

        key = (mode, windows, overlap)
        if key not in self._inferers:
            self._inferers[key] = SlidingWindowInferer(
                roi_size=self.spec.input.window,
                sw_batch_size=windows,
                overlap=overlap,
                mode=mode,
                padding_mode="constant",
            )
        return self._inferers[key]

    def _logits(
        self, batch: torch.Tensor, overlap: float, whole_region_voxels: int = 0
    ) -> torch.Tensor:
        """Logits of a batch of 2.5D slices (or 3D regions), as the exported bundle gives.

        A slice no larger than the patch is zero-padded to it, centred, as training did
        (MONAI's ``SpatialPadd``), so instance normalisation sees the same context (a
        tri-planar model's sagittal and coronal slices are such slices); its one window is
        taken as is. Larger slices are tiled with Gaussian-blended windows. A 3D region of
        at most ``whole_region_voxels`` voxels is passed whole.
        """
        if batch.ndim == 5 and fits_whole(batch.shape[2:], whole_region_voxels):
            with network_autocast(self.device, self.precision):
                return whole_region_logits(self.network, batch, self.total_stride).float()
        window = self.spec.input.window
        sizes = zip(batch.shape[-len(window) :], window, strict=True)
        larger = any(size > patch for size, patch in sizes)
        inferer = self._inferer("gaussian" if larger else "constant", batch.shape[0], overlap)
        with network_autocast(self.device, self.precision):
            return _plain(inferer(batch, self.network))

    @property
    def total_stride(self) -> int:
        """The factor every level's stride-2 convolution shrinks the input by: a whole
        region is padded to a multiple of it."""
        return 2 ** (self.spec.network.levels - 1)

    def view_scores(
        self, batch: torch.Tensor, overlap: float, whole_region_voxels: int = 0
    ) -> torch.Tensor:
        """Summed class probabilities of :data:`UNCERTAINTY_VIEWS` of a batch (of 2.5D stacks
        or, a 3D model, of volumes: rotated slice by slice), each mapped back onto the
        original grid."""
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
            views = torch.stack([_in_plane(view, x) for x in batch])
            scores = self.scores(
                views,
                tta=False,
                overlap=overlap,
                softmax=True,
                whole_region_voxels=whole_region_voxels,
            ).float()
            if back is not None:
                scores = torch.stack([_in_plane(back, x) for x in scores])
            total = scores if total is None else total + scores
        assert total is not None
        return total

    def slice_labels(self, stack: torch.Tensor, *, tta: bool) -> np.ndarray:
        """Labels ``(B, H, W)`` of a batch of 2.5D stacks ``(B, context, H, W)``."""
        with torch.inference_mode():
            scores = self.scores(stack, tta=tta, overlap=0.25, softmax=tta)
            # max(1).indices, not argmax: the same result, far cheaper on CPU.
            return scores.max(1).indices.to("cpu", torch.uint8).numpy()


@dataclass
class SliceScores:
    """What a prediction accumulates over planes, in the prepared volume's axes: labels, or
    class probabilities (and the summed augmented views) when those are needed."""

    labels: torch.Tensor
    probabilities: torch.Tensor | None = None
    views: torch.Tensor | None = None

    @classmethod
    def empty(cls, shape: tuple[int, ...], classes: int, options: PredictOptions) -> SliceScores:
        labels = torch.empty(shape, dtype=torch.uint8)
        if not options.needs_probabilities:
            return cls(labels)
        summed = torch.zeros((classes, *shape), dtype=torch.float32)
        return cls(labels, summed, torch.zeros_like(summed) if options.uncertainty else None)

    def along(self, axis: int) -> SliceScores:
        """Views of the outputs with ``axis`` first (writes land in place)."""
        return SliceScores(
            self.labels.movedim(axis, 0),
            None if self.probabilities is None else self.probabilities.movedim(axis + 1, 1),
            None if self.views is None else self.views.movedim(axis + 1, 1),
        )

    def finish(self, planes: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Labels (from the mean probabilities, when kept), probabilities, uncertainty map."""
        labels = self.labels
        if self.probabilities is not None:
            self.probabilities /= planes
            labels = self.probabilities.max(0).indices.to(torch.uint8)
        uncertainty = None
        if self.views is not None:
            self.views /= planes * (1 + len(UNCERTAINTY_VIEWS))
            uncertainty = normalised_entropy(self.views).numpy()
        probabilities = None if self.probabilities is None else self.probabilities.numpy()
        return labels.numpy(), probabilities, uncertainty


def infer_slices(
    stage: StageNetwork, values: np.ndarray, options: PredictOptions
) -> Job[SliceScores]:
    """Every slice of a prepared volume (model axis order) along the stage's slice axis, and
    along the other two when ``options.tri_planar``; whole slices tiled by the network's
    window. Yields progress per batch of slices."""
    axes = stage.spec.planes(options.tri_planar)
    # Which pass this is: a two-stage model goes over the slices twice (shrunk, then cropped).
    role = "localiser" if stage.spec.stage is Stage.LOCALISER else "segmenter"
    scores = SliceScores.empty(values.shape, stage.spec.num_classes, options)
    total, done = sum(values.shape[axis] for axis in axes), 0
    for axis in axes:
        along = scores.along(axis)
        slices = _slices_on_device(stage, values, axis)
        count = slices.shape[0]
        for start in range(0, count, options.batch_size):
            stop = min(start + options.batch_size, count)
            _predict_batch(stage, slices, start, stop, along, options)
            done += stop - start
            plane = f"axis {axis}, " if len(axes) > 1 else ""
            yield Progress(f"{role}: {plane}slices {start + 1}-{stop} of {count}", done, total)
    return scores


def _slices_on_device(stage: StageNetwork, values: np.ndarray, axis: int) -> torch.Tensor:
    """The volume with ``axis`` first, on the device when it fits (else batch by batch)."""
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, axis, 0)))
    try:
        return slices.to(stage.device)
    except torch.OutOfMemoryError:
        logger.warning("the volume does not fit on %s: batches are moved one by one", stage.device)
        return slices


def _predict_batch(
    stage: StageNetwork,
    slices: torch.Tensor,
    start: int,
    stop: int,
    along: SliceScores,
    options: PredictOptions,
) -> None:
    """Predict slices ``start:stop`` into ``along`` (outputs with this pass's axis first)."""
    # Inference mode per batch, never across a yield: grad mode is thread-local, and the
    # caller's code (or, after a cancel, whatever the worker thread runs next) must not
    # inherit it from a suspended generator.
    with torch.inference_mode():
        batch = context_stack(slices, range(start, stop), stage.spec.context_slices)
        softmax = along.probabilities is not None or options.tta
        scores = stage.scores(batch, tta=options.tta, overlap=options.overlap, softmax=softmax)
        if along.probabilities is None:
            # max(1).indices, not argmax: the same result, far cheaper on CPU.
            along.labels[start:stop] = scores.max(1).indices.to("cpu", torch.uint8)
        else:
            scores = scores.float()
            along.probabilities[:, start:stop] += scores.to("cpu").transpose(0, 1)
        if along.views is not None:
            scores = scores + stage.view_scores(batch, options.overlap)
            along.views[:, start:stop] += scores.to("cpu").transpose(0, 1)
