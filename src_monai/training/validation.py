"""Validation during training: the pipeline's own steps (those ``lasc infer`` runs) on the
cached, prepared validation cases, and the preview slices of the run folder."""

from __future__ import annotations

import numpy as np
import torch

from src_monai.config import Config
from src_monai.data.crops import AtriumBox
from src_monai.data.sampling import VolumeCase
from src_monai.model.spec import Stage


def preview_rows(
    stage, cases: list[VolumeCase], picks: list[tuple[int, int]]
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(title, image, truth, prediction) of the preview slices ``picks`` (case index, slice),
    whole slices as the pipeline's one-slice step predicts them; a 3D model's inside the
    true atrium's box (as it is validated: its windows over whole slices would cost more
    than the validation)."""
    from src_monai.inference.steps import prepared_as_is, segment_one_slice

    axis = stage.spec.slice_axis
    rows = []
    for index, z in picks:
        case = cases[index]
        slices = case.slices.cpu().numpy()
        prepared = prepared_as_is(np.moveaxis(slices, 0, axis), axis)
        box = AtriumBox.around(case.labels.cpu()) if stage.spec.input.spatial_dims == 3 else None
        predicted = segment_one_slice(stage, prepared, z, box, tta=False)
        truth = case.labels[z].cpu().numpy()
        rows.append((f"{case.case_id} z={z}", slices[z], truth, predicted))
    return rows


def validate_cases(stage, cases: list[VolumeCase], config: Config) -> dict[str, float]:
    """Mean foreground 3D Dice of a :class:`~src_monai.inference.stage.StageNetwork` on each
    cached case, through the pipeline's steps: a localiser's labels on its shrunk slices, a
    crop segmenter's around the true atrium's box (its stage alone), whole slices otherwise.

    ``compute_dice`` rather than ``DiceMetric``: the latter all-gathers across ranks when a
    process group exists, and only rank 0 validates.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    scores = {}
    for case in cases:
        labels = _validation_labels(stage, case)
        pred = one_hot(torch.from_numpy(labels).long()[None, None], config.data.num_classes)
        true = one_hot(case.labels.cpu().long()[None, None], config.data.num_classes)
        dice = compute_dice(pred, true, include_background=False, ignore_empty=False)
        scores[case.case_id] = float(dice.mean())
    return scores


def _validation_labels(stage, case: VolumeCase) -> np.ndarray:
    """A cached case's predicted labels, slices first (the cases are normalised, slices
    first, and a localiser's shrunk already)."""
    from src_monai.inference.options import PredictOptions
    from src_monai.inference.steps import (
        localise_shrunk,
        prepared_as_is,
        restore,
        segment_in_box,
        segment_whole,
    )
    from src_monai.progress import run_to_end

    spec = stage.spec
    options = PredictOptions.for_model(spec)
    slices = case.slices.cpu().numpy()
    if spec.stage is Stage.LOCALISER:
        return run_to_end(localise_shrunk(stage, slices, options))
    # The slice axis put back, so a tri-planar model's other two planes are cut exactly as
    # in training and inference.
    prepared = prepared_as_is(np.moveaxis(slices, 0, spec.slice_axis), spec.slice_axis)
    box = AtriumBox.around(case.labels.cpu()) if spec.stage.in_box else None
    job = (
        segment_whole(stage, prepared, options)
        if box is None
        else segment_in_box(stage, prepared, box, options)
    )
    restored = restore(
        run_to_end(job), prepared.grid, spec.num_classes, postprocess=options.postprocess
    )
    return np.moveaxis(restored.labels, spec.slice_axis, 0)
