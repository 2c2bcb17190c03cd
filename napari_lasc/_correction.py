"""The correction loop: a prediction fixed with napari's brush becomes one more training
case (an MSD case with the scan's geometry), and the Train widget fine-tunes on the set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.data.prepare import add_msd_case
from src_monai.errors import LascError
from src_monai.progress import Job, Progress

from ._layers import check_scan_layer, from_layer_axes, layer_geometry


def training_case_job(image: Any, labels_layer: Any, folder: Path) -> Callable[[], Job[str]]:
    """The job that adds ``image`` and its labels to the training set ``folder`` (nothing
    replaced; returns the new case's id). The layers are checked and copied now, in napari's
    thread, so painting may go on while the files are written."""
    check_scan_layer(image)
    if labels_layer is None:
        raise LascError(image.name, "has no left-atrium layer yet: Segment first")
    if not np.any(np.asarray(labels_layer.data)):
        raise LascError(labels_layer.name, "is empty: paint the left atrium first")
    scan = np.array(from_layer_axes(np.asarray(image.data)))
    labels = np.array(from_layer_axes(np.asarray(labels_layer.data)))
    geometry = layer_geometry(image)

    def job():
        yield Progress(f"saving {image.name}", 0, 1)
        return add_msd_case(folder, image.name, scan, labels, geometry)

    return job


def open_fine_tune(viewer: Any, folder: Path, model_name: str):
    """Dock the Train widget set to fine-tune ``model_name`` on the training set ``folder``;
    returns the widget."""
    if not (folder / "dataset.json").is_file():
        raise LascError(folder, "holds no training set yet: Add to training set first")
    _, train_widget = viewer.window.add_plugin_dock_widget("napari-lasc", "Train model")
    train_widget.prepare_fine_tune(folder, model_name)
    return train_widget
