"""Stage 2 in 3D: a 3D network segments the region around the atrium's box at full
resolution, in MONAI's Gaussian-blended sliding windows (nnU-Net's way of tiling a volume).

The region is the box grown by the model's slice margin and :data:`IN_PLANE_MARGIN` voxels
in-plane (the localiser's box is never exact; training drew window centres up to
``data.crop_jitter`` voxels outside the true box), clipped to the scan. Everything outside
it is background, as for the 2.5D crop model.

A localiser's box can still stop short of the atrium (a slice range a dozen slices short, on
a few cross-validation cases of both datasets). So where the labels reach a face of the
region that is not the scan's edge, the region grows past that face by :data:`GROWTH` and is
segmented again, up to :data:`GROWTH_ROUNDS` times: the 3D network, which sees the atrium's
wall, decides where it ends. A box the user gives is the region asked for: it never grows.

With ``options.whole_region`` (what cross-validation chose for the model), a region of at most
:data:`WHOLE_REGION_VOXELS` goes through the network in one pass instead of windows: the network
sees the whole atrium and its surroundings at once, and no window's edge cuts through it.
A scan less than half the window thick along an axis (a slab, an excerpt) always takes the one pass:
its windows would be mostly zero padding (:func:`~src_monai.model.bundle_pipeline.one_pass_limit`).
"""

from __future__ import annotations

import numpy as np
import torch

from src_monai.data.crops import AtriumBox
from src_monai.inference.options import PredictOptions
from src_monai.inference.stage import UNCERTAINTY_VIEWS, StageNetwork, normalised_entropy
from src_monai.model.bundle_pipeline import one_pass_limit
from src_monai.progress import Job, Progress, run_to_end

IN_PLANE_MARGIN = 16  # voxels added around the box in-plane before the windows are laid
WINDOW_OVERLAP = 0.5  # nnU-Net's for 3D windows (the options' overlap is for 2D slices)
GROWTH = (8, 16, 16)  # slices, rows, columns past a face the labels reach
GROWTH_ROUNDS = 2
# The largest region passed whole (e.g. 100 x 200 x 200): its float32 activations stay within
# a few GB on a CPU; larger regions (a user's box, a huge scan) are tiled in windows.
WHOLE_REGION_VOXELS = 4_000_000


def region_around(
    box: AtriumBox,
    slice_margin: int,
    shape: tuple[int, ...],
    *,
    in_plane_margin: int | None = None,
) -> AtriumBox:
    """``box`` grown by ``slice_margin`` slices and :data:`IN_PLANE_MARGIN` voxels (or
    ``in_plane_margin``), inside a slices-first ``shape``."""
    in_plane = IN_PLANE_MARGIN if in_plane_margin is None else in_plane_margin
    margins = (slice_margin, in_plane, in_plane)
    edges = []
    for (low, high), margin, size in zip(
        ((box.z0, box.z1), (box.y0, box.y1), (box.x0, box.x1)), margins, shape, strict=True
    ):
        edges += [max(low - margin, 0), min(high + margin, size)]
    return AtriumBox(*edges)


def grown_region(region: AtriumBox, labels: np.ndarray, shape: tuple[int, ...]) -> AtriumBox:
    """``region`` grown by :data:`GROWTH` past each face its ``labels`` (the region's own,
    slices first) reach, except where the face is the edge of the slices-first ``shape``."""
    edges = []
    ranges = ((region.z0, region.z1), (region.y0, region.y1), (region.x0, region.x1))
    for axis, ((low, high), step, size) in enumerate(zip(ranges, GROWTH, shape, strict=True)):
        planes = np.moveaxis(labels != 0, axis, 0)
        low = max(low - step, 0) if low > 0 and planes[0].any() else low
        high = min(high + step, size) if high < size and planes[-1].any() else high
        edges += [low, high]
    return AtriumBox(*edges)


def _one_pass_voxels(
    window: tuple[int, ...], shape: tuple[int, ...], options: PredictOptions
) -> int:
    """The largest region of a scan of ``shape`` passed whole: the bundle's rule."""
    chosen = WHOLE_REGION_VOXELS if options.whole_region else 0
    stage = {
        "window": window,
        "whole_region_voxels": chosen,
        "thin_scan_voxels": WHOLE_REGION_VOXELS,
    }
    return one_pass_limit(shape, stage)


def segment_in_box_3d(
    segmenter: StageNetwork,
    slices: np.ndarray,
    box: AtriumBox,
    options: PredictOptions,
    *,
    slice_margin: int | None = None,
    grow: bool = False,
) -> Job[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Labels, and when asked class probabilities ``(C, ...)`` and the uncertainty map, of
    the prepared, slices-first volume ``slices``: the 3D network inside the region around
    ``box`` (``slice_margin``: slices added on each side, the model's margin unless given),
    certain background elsewhere. The uncertainty map is the 2.5D models': the normalised
    entropy of the mean over the unchanged region and its
    :data:`~src_monai.inference.stage.UNCERTAINTY_VIEWS` (slices rotated alike)."""
    spec = segmenter.spec
    margin = spec.crop_slice_margin if slice_margin is None else slice_margin
    region = region_around(box, margin, slices.shape)
    steps = 2 if options.uncertainty else 1
    whole = _one_pass_voxels(spec.input.window, slices.shape, options)
    yield Progress("3D segmenter inside the box", 0, steps)
    for round_ in range(GROWTH_ROUNDS + 1):
        part = (
            slice(region.z0, region.z1),
            slice(region.y0, region.y1),
            slice(region.x0, region.x1),
        )
        volume = torch.from_numpy(np.ascontiguousarray(slices[part]))[None, None]
        with torch.inference_mode():
            probabilities = segmenter.scores(
                volume,
                tta=options.tta,
                overlap=WINDOW_OVERLAP,
                softmax=True,
                whole_region_voxels=whole,
            )[0].float()
        if not grow or round_ == GROWTH_ROUNDS:
            break
        larger = grown_region(region, probabilities.max(0).indices.cpu().numpy(), slices.shape)
        if larger == region:
            break
        region = larger
    yield Progress("3D segmenter inside the box", 1, steps)
    uncertainty = None
    if options.uncertainty:
        with torch.inference_mode():
            views = segmenter.view_scores(volume, WINDOW_OVERLAP, whole)[0].cpu()
        mean = (probabilities.cpu() + views) / (1 + len(UNCERTAINTY_VIEWS))
        uncertainty = np.zeros(slices.shape, np.float32)  # certain outside the region
        uncertainty[part] = normalised_entropy(mean).numpy()
        yield Progress("3D segmenter: uncertainty views", 2, steps)
    labels = np.zeros(slices.shape, np.uint8)
    labels[part] = probabilities.max(0).indices.to("cpu", torch.uint8).numpy()
    if not options.probabilities:
        return labels, None, uncertainty
    placed = np.zeros((probabilities.shape[0], *slices.shape), np.float32)
    placed[0] = 1.0  # background outside the region, certainly
    placed[(slice(None), *part)] = probabilities.cpu().numpy()
    return labels, placed, uncertainty


def one_slice_3d(
    segmenter: StageNetwork,
    slices: np.ndarray,
    index: int,
    box: AtriumBox | None,
    *,
    tta: bool,
    whole_region: bool = False,
) -> np.ndarray:
    """One slice's labels from a 3D model: the region the whole volume is segmented in
    (around ``box``, or every slice when there is none), so the slice gets the labels the
    whole volume gives it (before post-processing and before any growth of the region); with
    ``whole_region`` that region goes through in one pass, as the volume's does."""
    count, height, width = slices.shape
    options = PredictOptions(tta=tta, whole_region=whole_region)
    margin = None
    if box is None:
        box, margin = AtriumBox(0, count, 0, height, 0, width), 0
    labels, _, _ = run_to_end(
        segment_in_box_3d(segmenter, slices, box, options, slice_margin=margin)
    )
    return labels[index]
