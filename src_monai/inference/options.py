"""How a model is applied to a scan: one options type, resolved from the model's defaults once.

The user's choices (``lasc infer --tta``, napari's check boxes) may leave a switch unset,
meaning "what the model file recommends" (chosen by cross-validation). That is resolved here,
in :meth:`PredictOptions.for_model`, and nowhere else: every later step reads explicit values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from src_monai.errors import LascError
from src_monai.model.spec import ModelSpec

logger = logging.getLogger(__name__)


# The networks' arithmetic (src_monai.model.bundle_pipeline.network_autocast, which keeps its
# own copy: the bundle's file imports nothing of this package).
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class PredictOptions:
    """Explicit prediction options (no "model default" left in them).

    Attributes
    ----------
    batch_size
        Slices per forward pass.
    tta
        Average over the flips the model was trained with.
    postprocess
        Keep each class's largest 3D component and fill holes.
    tri_planar
        Also predict along the other two axes and average the three probability maps.
    probabilities
        Return the class probabilities with the labels.
    uncertainty
        Return the entropy map over the augmented views (the labels stay the plain ones).
    overlap
        Sliding-window overlap where a slice is larger than the network's window.
    whole_region
        A 3D segmenter passes its region through the network at once where it is small
        enough, instead of sliding windows (ignored by 2.5D models).
    """

    batch_size: int = 16
    tta: bool = False
    postprocess: bool = False
    tri_planar: bool = False
    probabilities: bool = False
    uncertainty: bool = False
    overlap: float = 0.25
    whole_region: bool = False

    @classmethod
    def for_model(
        cls,
        spec: ModelSpec,
        *,
        tta: bool | None = None,
        postprocess: bool | None = None,
        tri_planar: bool | None = None,
        batch_size: int = 16,
        probabilities: bool = False,
        uncertainty: bool = False,
        overlap: float = 0.25,
        whole_region: bool | None = None,
    ) -> PredictOptions:
        """The options for ``spec``'s model: ``None`` takes what its file recommends.

        Test-time flips a model never saw are dropped with a warning (a network never shown
        a mirrored heart fails on one); tri-planar prediction of a single-axis model is
        refused in one line."""
        if batch_size < 1:
            raise LascError(None, f"batch size must be >= 1, not {batch_size}")
        defaults = spec.defaults
        tta = defaults.tta if tta is None else tta
        if tta and not spec.trained_with_flips:
            logger.warning(
                "test-time augmentation skipped: this model was trained without flips, and "
                "flipped inputs would mislead it"
            )
            tta = False
        tri_planar = spec.tri_planar if tri_planar is None else tri_planar
        spec.planes(tri_planar)  # a single-axis model refuses tri-planar prediction
        return cls(
            batch_size=batch_size,
            tta=tta,
            postprocess=defaults.postprocess if postprocess is None else postprocess,
            tri_planar=tri_planar,
            probabilities=probabilities,
            uncertainty=uncertainty,
            overlap=overlap,
            whole_region=defaults.whole_region if whole_region is None else whole_region,
        )

    def for_localiser(self, localiser: ModelSpec) -> PredictOptions:
        """The options stage 1 runs with: its own model's defaults, post-processed (its box
        is the largest 3D component), and ``downsample``² times the batch: shrunk slices hold
        that many fewer pixels, so such a batch takes the memory of ``batch_size`` full
        slices, and a scan's shrunk slices mostly go through in one pass (on the 2-core
        development CPU 0.07 s a scan against 0.09 s in batches of 16)."""
        return PredictOptions.for_model(
            localiser,
            postprocess=True,
            batch_size=self.batch_size * max(localiser.downsample, 1) ** 2,
        )

    def for_one_slice(self) -> PredictOptions:
        """A single slice (a PNG) has no other planes: predicted along the slice axis."""
        return replace(self, tri_planar=False)

    @property
    def needs_probabilities(self) -> bool:
        """Labels come straight from the logits unless probabilities are needed: to return,
        to fuse planes, or to compare with the augmented views."""
        return self.probabilities or self.uncertainty or self.tri_planar
