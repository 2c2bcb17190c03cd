"""The "Compare with ground truth" widget: Dice, HD95, volume difference, and an error layer.

The numbers come from the same ``case_metrics`` that ``lasc evaluate`` writes to its CSV.
"""

from __future__ import annotations

import logging
import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import PushButton, create_widget

from src_monai.errors import LascError
from src_monai.evaluation.metrics import case_metrics
from src_monai.progress import Progress

from ._controls import ScrollingContainer, result_label
from ._layers import (
    ERROR_CLASS_NAMES,
    ERROR_COLOURS,
    PREDICTION_OF_KEY,
    SEEN_BY_MODEL_KEY,
    labels_kwargs,
    layer_geometry,
)
from ._worker import start_job

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

FALSE_POSITIVE, FALSE_NEGATIVE = 1, 2


def check_label_pair(prediction: Any, truth: Any) -> None:
    """Two 3D Labels layers of one shape and voxel size, else a message naming the layer."""
    import napari.layers

    for role, layer in (("prediction", prediction), ("ground truth", truth)):
        if layer is None:
            raise LascError(None, f"no {role} layer chosen")
        if not isinstance(layer, napari.layers.Labels):
            raise LascError(layer.name, f"is a {type(layer).__name__} layer, not labels")
        if np.ndim(layer.data) != 3:
            raise LascError(layer.name, f"is {np.ndim(layer.data)}D; 3D labels are needed")
    if prediction is truth:
        raise LascError(prediction.name, "is chosen as both prediction and ground truth")
    if prediction.data.shape != truth.data.shape:
        raise LascError(
            prediction.name,
            f"shape {prediction.data.shape} differs from {truth.name}'s {truth.data.shape}",
        )
    if not np.allclose(prediction.scale, truth.scale, rtol=1e-4):
        raise LascError(
            prediction.name,
            f"voxel size {tuple(prediction.scale)} differs from {truth.name}'s "
            f"{tuple(truth.scale)}",
        )


def error_map(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1 where only the prediction has foreground, 2 where only the truth has; else 0."""
    predicted, true = prediction != 0, truth != 0
    errors = np.zeros(prediction.shape, dtype=np.uint8)
    errors[predicted & ~true] = FALSE_POSITIVE
    errors[true & ~predicted] = FALSE_NEGATIVE
    return errors


def format_metrics(metrics: dict[str, float]) -> tuple[str, str]:
    """Two short lines: overlap and distance, then the volumes and their difference."""

    def number(value: float, digits: int, unit: str = "") -> str:
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}{unit}"

    difference = metrics["volume_pred_ml"] - metrics["volume_truth_ml"]
    return (
        f"Dice {number(metrics['dice'], 3)} · HD95 {number(metrics['hd95_mm'], 1, ' mm')}",
        f"{metrics['volume_pred_ml']:.1f} vs {metrics['volume_truth_ml']:.1f} mL: "
        f"{difference:+.1f} mL ({number(metrics['volume_error_pct'], 1, ' %')})",
    )


class CompareWidget(ScrollingContainer):
    """Score a predicted Labels layer against a ground-truth Labels layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        import napari.layers

        self._viewer = napari_viewer
        self._prediction = create_widget(annotation=napari.layers.Labels, label="prediction")
        self._truth = create_widget(annotation=napari.layers.Labels, label="ground truth")
        self._compare = PushButton(text="Compare")
        self._result = result_label("result")
        self._volumes = result_label("volume")
        super().__init__(
            [self._prediction, self._truth, self._compare, self._result, self._volumes]
        )
        self._compare.changed.connect(self.compare)
        self.worker: Any = None
        self.metrics: dict[str, float] | None = None
        self._choose_defaults()
        napari_viewer.layers.events.inserted.connect(self._choose_defaults)

    def _choose_defaults(self, _event: Any = None) -> None:
        """A model's prediction in the first picker and another Labels layer (the truth) in
        the second: the pickers never both start on one layer."""
        import napari.layers

        try:
            self._prediction.reset_choices()
            self._truth.reset_choices()
        except RuntimeError:  # the dock was closed and its Qt widgets deleted: stop listening
            self._viewer.layers.events.inserted.disconnect(self._choose_defaults)
            return
        labels = [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, napari.layers.Labels) and not layer.name.endswith(" errors")
        ]
        predictions = [layer for layer in labels if layer.metadata.get(PREDICTION_OF_KEY)]
        others = [layer for layer in labels if layer not in predictions]
        if predictions:
            self._prediction.value = predictions[-1]
        chosen = self._truth.value
        if others and (chosen is None or chosen is self._prediction.value or chosen in predictions):
            self._truth.value = others[-1]  # a truth the user picked is kept

    def compare(self) -> None:
        """Compute the metrics in a worker, then show them and add the error layer."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        prediction, truth = self._prediction.value, self._truth.value
        try:
            check_label_pair(prediction, truth)
        except LascError as exc:
            self._result.value = self._volumes.value = ""  # no earlier scores beside an error
            show_error(str(exc))
            return
        predicted, true = np.asarray(prediction.data), np.asarray(truth.data)
        spacing = tuple(float(s) for s in truth.scale)
        num_classes = max(2, int(max(predicted.max(), true.max())) + 1)

        def job():
            yield Progress("metrics", 0, 1)
            metrics = case_metrics(predicted, true, spacing, num_classes)
            return metrics, error_map(predicted, true)

        self._compare.enabled = False
        self._result.value = "computing…"
        self.worker = start_job(
            job,
            description="Compare with ground truth",
            on_progress=lambda report: None,
            on_done=lambda result: self._show(prediction, truth, *result),
            on_cancelled=lambda: None,
            on_finished=self._finished,
        )

    def _finished(self) -> None:
        self._compare.enabled = True
        self.worker = None

    def _show(self, prediction: Any, truth: Any, metrics: dict, errors: np.ndarray) -> None:
        import napari.layers

        self.metrics = metrics
        self._result.value, self._volumes.value = format_metrics(metrics)
        seen = prediction.metadata.get(SEEN_BY_MODEL_KEY)
        if seen:  # a score on a case the model learnt from says little about new patients
            self._result.value += "\n" + textwrap.fill(seen, 60)  # the dock stays narrow
        name = f"{prediction.name} vs {truth.name} errors"
        # LayerList has no .get(): look the name up.
        existing = self._viewer.layers[name] if name in self._viewer.layers else None  # noqa: SIM401
        if isinstance(existing, napari.layers.Labels) and existing.data.shape == errors.shape:
            existing.data = errors
        else:
            kwargs = labels_kwargs(layer_geometry(truth), ERROR_CLASS_NAMES, ERROR_COLOURS)
            self._viewer.add_labels(errors, name=name, opacity=1.0, **kwargs)  # seen over both
        logger.info("%s: %s; %s", name, self._result.value, self._volumes.value)
