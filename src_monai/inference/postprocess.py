"""Post-processing of predicted labels: each class's largest 3D component, holes filled."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def postprocess_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep each foreground class's largest 3D component, then fill its enclosed holes.

    A slice-wise network can leave islands far from the atrium (they dominate HD95) and
    holes where a slice disagrees with its neighbours. The same result as MONAI's
    ``KeepLargestConnectedComponent(independent=True)`` then ``FillHoles`` (full
    connectivity for both; a test checks it on real predictions), with SciPy's C
    implementations, on the foreground's box only: 0.37 s instead of 0.88 s for a whole
    256x256x130 scan on this CPU, and a fraction of that on the box of a compact atrium.
    """
    from scipy import ndimage

    result = np.asarray(labels, dtype=np.uint8).copy()
    found = ndimage.find_objects((result != 0).astype(np.uint8))
    if not found:
        return result
    # Only the foreground's box plus one voxel matters: the margin is background connected
    # around the box to the volume's border, so the same holes are found, in a fraction of
    # the time (most of a scan is far from the atrium).
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found[0])
    _postprocess_in_place(result[box], num_classes)  # a view: result changes with it
    return result


def _postprocess_in_place(result: np.ndarray, num_classes: int) -> None:
    from scipy import ndimage

    full = ndimage.generate_binary_structure(result.ndim, result.ndim)
    for cls in range(1, num_classes):
        mask = result == cls
        components, count = ndimage.label(mask, structure=full)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            largest = components == sizes.argmax()
            result[mask & ~largest] = 0
            mask = largest
        if count:
            # A hole is background not connected to the volume's border; it joins the class
            # only where no other class claims it.
            holes = ndimage.binary_fill_holes(mask, structure=full) & ~mask & (result == 0)
            result[holes] = cls
