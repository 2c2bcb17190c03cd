"""Post-processing of predicted labels: each class's largest 3D component, holes filled."""

from __future__ import annotations

import numpy as np

from src_monai.model.bundle_pipeline import postprocess


def postprocess_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep each foreground class's largest 3D component, then fill its enclosed holes.

    A slice-wise network can leave islands far from the atrium (they dominate HD95) and
    holes where a slice disagrees with its neighbours. The same result as MONAI's
    ``KeepLargestConnectedComponent(independent=True)`` then ``FillHoles`` (full
    connectivity for both; a test checks it on real predictions), with SciPy's C
    implementations, on the foreground's box only: 0.37 s instead of 0.88 s for a whole
    256x256x130 scan on this CPU, and a fraction of that on the box of a compact atrium.
    One implementation with the exported MONAI bundle's
    (:func:`src_monai.model.bundle_pipeline.postprocess`).
    """
    return postprocess(labels, num_classes)
