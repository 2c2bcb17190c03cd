"""The :class:`Predictor`: a model file's stages on a device, and the pipeline that joins them.

``Predictor.from_checkpoint(path)`` loads a model file (or wraps a live network:
``Predictor(network, spec, device)``, as training's validation does). Its one path from scan
to labels is, in the manner of nnU-Net's predictor::

    prepared = predictor.prepare(volume, spacing=..., affine=...)   # once per scan
    prediction = yield from predictor.predict_prepared(prepared, options, box=None)

:meth:`Predictor.predict_volume` is both in one call. The steps themselves live in
:mod:`~src_monai.inference.steps`; the CLI, napari's session, evaluation and training all
call them through here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from src_monai.data.crops import AtriumBox
from src_monai.errors import LascError
from src_monai.inference.options import PRECISIONS, PredictOptions
from src_monai.inference.stage import StageNetwork
from src_monai.inference.steps import (
    Prediction,
    PreparedScan,
    Scores,
    localise,
    prepare,
    restore,
    segment_in_box,
    segment_whole,
)
from src_monai.model.files import load_model, model_path
from src_monai.model.spec import ModelSpec, Stage
from src_monai.progress import Job

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


_LOCALISER_ALONE = "this model is a localiser (stage 1): it finds the atrium's box, see localise"


class Predictor:
    """A model's stages on a device, as its file states them: a segmenter (crop or
    whole-slice) and, for a two-stage model, its localiser; or a localiser alone (it finds
    boxes, see :meth:`localise`). Made from a model file (:meth:`from_checkpoint`) or from a
    live network and its spec."""

    def __init__(
        self,
        network: torch.nn.Module,
        spec: ModelSpec,
        device: torch.device,
        precision: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            raise LascError(None, f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
        self.localiser: StageNetwork | None = None
        self._segmenter: StageNetwork | None = None
        if spec.stage is Stage.LOCALISER:
            self.localiser = StageNetwork(network, spec, device, precision)
        elif spec.localiser is not None:  # a two-stage model: network holds both stages
            self.localiser = StageNetwork(network.localiser, spec.localiser, device, precision)
            self._segmenter = StageNetwork(network.segmenter, spec, device, precision)
        else:
            self._segmenter = StageNetwork(network, spec, device, precision)
        self.spec = spec

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str = "auto",
        *,
        tri_planar: bool | None = None,
        precision: str = "auto",
    ) -> Predictor:
        """Load a model file; ``None`` loads the model bundled with the package.

        ``tri_planar=True`` refuses (naming the file) a model trained on one axis only.
        ``precision``: ``auto`` (bfloat16 where the device computes it natively), ``float32``
        or ``bfloat16`` (:func:`~src_monai.model.bundle_pipeline.network_autocast`)."""
        torch_device = resolve_device(device)
        path = model_path(path)
        network, spec = load_model(path, torch_device)
        try:
            spec.planes(tri_planar)
        except LascError as exc:
            raise LascError(path, exc.problem) from None
        return cls(network, spec, torch_device, precision)

    @property
    def segmenter(self) -> StageNetwork:
        """The stage that gives labels; a localiser alone has none (said in one line)."""
        if self._segmenter is None:
            raise LascError(None, _LOCALISER_ALONE)
        return self._segmenter

    @property
    def network(self) -> torch.nn.Module:
        """The network of the stage that gives labels (of a lone localiser, its own)."""
        return (self._segmenter or self.localiser).network  # type: ignore[union-attr]

    @property
    def device(self) -> torch.device:
        return (self._segmenter or self.localiser).device  # type: ignore[union-attr]

    def options(self, **choices) -> PredictOptions:
        """:meth:`PredictOptions.for_model` of this model: unset choices take its defaults."""
        return PredictOptions.for_model(self.spec, **choices)

    # ------------------------------------------------------------------ the pipeline

    def prepare(
        self,
        volume: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
    ) -> PreparedScan:
        """Step 1 (:func:`~src_monai.inference.steps.prepare`) for this model."""
        return prepare(volume, self.spec, spacing=spacing, affine=affine)

    def predict_volume(
        self,
        volume: np.ndarray,
        options: PredictOptions | None = None,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        box: AtriumBox | None = None,
    ) -> Job[Prediction]:
        """Segment a scan (file axis order): :meth:`prepare`, then :meth:`predict_prepared`.

        ``spacing`` (the voxel size, file axis order) lets a scan of another voxel size be
        resampled to the training one; ``affine`` (voxel to RAS) lets it be oriented as the
        training scans were. ``box``: see :meth:`predict_prepared`."""
        prepared = self.prepare(volume, spacing=spacing, affine=affine)
        return (yield from self.predict_prepared(prepared, options, box=box))

    def predict_prepared(
        self,
        prepared: PreparedScan,
        options: PredictOptions | None = None,
        *,
        box: AtriumBox | None = None,
    ) -> Job[Prediction]:
        """Steps 2-4 on a prepared scan; yields progress per batch of slices.

        ``box`` (the scan's slices-first voxels, see :attr:`ModelGrid.scan_slice_axis`): a
        crop segmenter segments around it instead of the localiser's box. A two-stage model
        whose localiser finds nothing segments whole slices (its windows tiled) and says so
        in :attr:`Prediction.localised`."""
        options = options or self.options()
        if box is not None:
            if not self.spec.stage.in_box:
                raise LascError(
                    None, "a box is for a crop segmenter; this model segments whole slices"
                )
            model_box = prepared.grid.box_to_model(box)
            return (
                yield from self.segment(
                    prepared, options, model_box, localised=True, from_user=True
                )
            )
        if self._segmenter is None:  # a lone localiser refuses before any work
            raise LascError(None, _LOCALISER_ALONE)
        model_box = yield from self.find_box(prepared, options)
        localised = None if self.localiser is None else model_box is not None
        return (yield from self.segment(prepared, options, model_box, localised=localised))

    def segment(
        self,
        prepared: PreparedScan,
        options: PredictOptions,
        model_box: AtriumBox | None,
        *,
        localised: bool | None,
        from_user: bool = False,
    ) -> Job[Prediction]:
        """Steps 3-4 around a box on the model's slices-first grid (``None``: whole slices)
        already found (``localised``: by the localiser) or given (``from_user``)."""
        segmenter, grid = self.segmenter, prepared.grid
        if model_box is None:
            if localised is False:
                logger.warning(
                    "the localiser found no left atrium: whole slices are segmented instead"
                )
            scores: Scores = yield from segment_whole(segmenter, prepared, options)
        else:
            scores = yield from segment_in_box(
                segmenter, prepared, model_box, options, grow=not from_user
            )
        prediction = restore(scores, grid, self.spec.num_classes, postprocess=options.postprocess)
        return replace(
            prediction,
            localised=localised,
            box=None if model_box is None else grid.box_to_scan(model_box),
            box_from_user=from_user,
        )

    def find_box(self, prepared: PreparedScan, options: PredictOptions) -> Job[AtriumBox | None]:
        """Step 2: the localiser's box on the model's slices-first grid; ``None`` for a
        one-stage model or when it finds nothing."""
        if self.localiser is None:
            return None
        localiser_options = options.for_localiser(self.localiser.spec)
        return (yield from localise(self.localiser, prepared.slices, localiser_options))

    def localise(self, prepared: PreparedScan, *, batch_size: int = 16) -> Job[AtriumBox | None]:
        """Stage 1 alone: the atrium's box in the scan's slices-first voxels, or ``None``."""
        if self.localiser is None:
            raise LascError(None, "this model has no localiser (it segments in one stage)")
        box = yield from self.find_box(prepared, PredictOptions(batch_size=batch_size))
        return None if box is None else prepared.grid.box_to_scan(box)
