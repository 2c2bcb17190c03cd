"""Resampling a scan to the model's training voxel size and its prediction back (as nnU-Net
does), so a 0.625 mm scan shows the network the same anatomy per voxel as the 1.25 mm scans it
was trained on, and the output keeps the input's exact grid (same shape, same affine).

Only the voxel grid changes: the resampled volume spans the same field of view, and the
prediction is brought back to the input's shape, so the input's affine still holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Resize

# One implementation with the exported MONAI bundle's.
from src_monai.model.bundle_pipeline import resample_labels  # noqa: F401 (re-exported)

# Voxel sizes within this fraction of the training spacing on every axis are predicted as they
# are: the training scans themselves vary this much, and resampling costs time and blurs.
RESAMPLE_TOLERANCE = 0.1


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None
) -> tuple[int, ...] | None:
    """The grid that covers the same field of view at ``target`` voxel size, or ``None`` when
    ``spacing`` is within :data:`RESAMPLE_TOLERANCE` of it (or the model records none)."""
    if target is None:
        return None
    ratios = [float(s) / float(t) for s, t in zip(spacing, target, strict=True)]
    if all(abs(r - 1.0) <= RESAMPLE_TOLERANCE for r in ratios):
        return None
    return tuple(max(1, round(n * r)) for n, r in zip(shape, ratios, strict=True))


def resample_volume(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Intensities on another grid of the same field of view (trilinear; smoothed first where
    the grid gets coarser, so fine detail does not alias)."""
    resize = Resize(tuple(shape), mode="trilinear", anti_aliasing=True, dtype=torch.float32)
    out = resize(torch.from_numpy(np.asarray(volume, dtype=np.float32))[None])
    return np.ascontiguousarray(torch.as_tensor(out)[0].numpy())


def resample_channels(values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A channel-first ``(C, ...)`` map (probabilities, uncertainty) on another grid."""
    resize = Resize(tuple(shape), mode="trilinear", dtype=torch.float32)
    out = resize(torch.from_numpy(np.asarray(values, dtype=np.float32)))
    return np.ascontiguousarray(torch.as_tensor(out).numpy())
