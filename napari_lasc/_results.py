"""Painting a segmentation into the viewer: the left-atrium Labels layer, its summary line
and the uncertainty map. Functions of the viewer and the scan layer, no widget state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from src_monai.io.scans import image_digest

from ._layers import (
    PREDICTION_OF_KEY,
    SEEN_BY_MODEL_KEY,
    from_layer_axes,
    geometry_kwargs,
    labels_kwargs,
    layer_axis,
    layer_geometry,
    to_layer_axes,
)


@dataclass(frozen=True)
class SliceResult:
    """Current-slice mode: the slice (along the model's axis) and its labels."""

    index: int
    labels: np.ndarray


@dataclass(frozen=True)
class SegmentationSummary:
    """What the widget reports after a run (also kept for scripts and tests)."""

    layer_name: str
    volume_ml: float
    slice_range: tuple[int, int] | None  # first and last napari slice (axis 0) with LA
    seconds: float
    slice_index: int | None = None  # current-slice mode: the slice, and its LA area
    area_mm2: float | None = None

    def text(self) -> str:
        timing = f"{self.seconds:.2f} s"
        if self.slice_index is not None:
            return f"slice {self.slice_index}: LA area {self.area_mm2:.0f} mm² · {timing}"
        if self.slice_range is None:
            return f"no left atrium found · {timing}"
        first, last = self.slice_range
        # napari's slider indices, first to last inclusive, as the box line says them
        return f"LA volume {self.volume_ml:.1f} mL on slices {first}-{last} · {timing}"


def find_prediction_layer(viewer: Any, image: Any):
    """The Labels layer the widget made for ``image`` (found by metadata, not name)."""
    import napari.layers

    for layer in viewer.layers:
        if (
            isinstance(layer, napari.layers.Labels)
            and layer.metadata.get(PREDICTION_OF_KEY) == image.name
            and layer.data.shape == image.data.shape
        ):
            return layer
    return None


def add_prediction_layer(viewer: Any, image: Any, data: np.ndarray, spec: Any):
    """``<scan> left atrium``: placed over ``image``, the model's class names and colours,
    and a note for the Compare widget when the model had learnt from this scan."""
    colours = {i: c for i, c in enumerate(spec.colours) if i > 0}
    kwargs = labels_kwargs(layer_geometry(image), spec.class_names, colours)
    kwargs["metadata"][PREDICTION_OF_KEY] = image.name
    kwargs["metadata"][SEEN_BY_MODEL_KEY] = seen_by_model_text(spec, image)
    name = f"{image.name} left atrium"
    return viewer.add_labels(np.ascontiguousarray(data), name=name, **kwargs)


def paint_volume(viewer: Any, image: Any, labels: np.ndarray, spec: Any):
    """Whole-volume labels (file axes) into the image's prediction layer, made if absent."""
    data = np.ascontiguousarray(to_layer_axes(labels))
    layer = find_prediction_layer(viewer, image)
    if layer is None:
        return add_prediction_layer(viewer, image, data, spec)
    layer.data = data
    return layer


def paint_slice(viewer: Any, image: Any, result: SliceResult, slice_axis: int, spec: Any):
    """One slice's labels into the image's prediction layer (an empty one made if absent);
    ``slice_axis``: the file axis the model slices across."""
    layer = find_prediction_layer(viewer, image)
    if layer is None:
        layer = add_prediction_layer(viewer, image, np.zeros(image.data.shape, np.uint8), spec)
    region = [slice(None)] * 3
    region[layer_axis(slice_axis)] = result.index
    # The model's slice (file rows i, columns j) shown with napari's axes reversed.
    layer.data[tuple(region)] = result.labels.T
    layer.refresh()
    return layer


def show_uncertainty(viewer: Any, image: Any, uncertainty: np.ndarray) -> None:
    """Add (or update) ``<scan> uncertainty``: 0..1, bright where the views disagree."""
    name = f"{image.name} uncertainty"
    data = np.ascontiguousarray(to_layer_axes(uncertainty))
    if name in viewer.layers and viewer.layers[name].data.shape == data.shape:
        viewer.layers[name].data = data
        return
    viewer.add_image(
        data,
        name=name,
        colormap="inferno",
        blending="additive",
        contrast_limits=(0.0, 1.0),
        opacity=0.7,
        **geometry_kwargs(layer_geometry(image)),
    )


def seen_by_model_text(spec: Any, image: Any) -> str:
    """What the Compare widget says next to its scores when the model had learnt from this
    scan (recognised by layer name or by its voxels); empty otherwise."""
    # The stored digests are of the scan as read, in file axis order: the layer's voxels in
    # napari's order hash differently, so a renamed scan went unrecognised.
    digest = image_digest(from_layer_axes(np.asarray(image.data)))
    role = spec.training_role(image.name, digest)
    return spec.seen_note({image.name: role}) if role else ""


def summarise(
    layer: Any, seconds: float, current: tuple[int, int] | None = None
) -> SegmentationSummary:
    """LA volume (mL) and the napari slices holding it, from a Labels layer's voxels and
    scale; with ``current = (axis, index)`` also that slice's LA area in mm²."""
    scale = np.asarray(layer.scale, dtype=float)
    voxel_ml = float(np.prod(scale)) / 1000.0
    data = np.asarray(layer.data)
    if current is not None:
        axis, index = current
        count = int(np.count_nonzero(np.take(data, index, axis=axis) == 1))
        pixel_mm2 = float(np.prod(np.delete(scale, axis)))
        volume_ml = float(np.count_nonzero(data == 1)) * voxel_ml
        return SegmentationSummary(
            layer.name, volume_ml, None, seconds, index, area_mm2=count * pixel_mm2
        )
    per_slice = np.count_nonzero(data == 1, axis=(1, 2))
    occupied = np.flatnonzero(per_slice)
    span = (int(occupied[0]), int(occupied[-1])) if occupied.size else None
    return SegmentationSummary(layer.name, float(per_slice.sum()) * voxel_ml, span, seconds)
