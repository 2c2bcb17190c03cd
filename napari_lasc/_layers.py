"""Between napari layers and the core's volumes: axis order, geometry, label colours.

Convention: a volume read from a file has axes in file index order ``(i, j, k)`` and a
voxel-to-world affine. napari shows it with axes reversed, ``(z, y, x) = (k, j, i)``, so the
slider walks the slices (``k``, the axis the MSD scans were acquired along) and each slice is
shown as rows ``j`` by columns ``i``. ``scale`` is the voxel spacing and ``translate`` the
affine's origin, both reversed the same way: a scan and its labels overlay exactly and
napari's distances are millimetres along the voxel axes. The full geometry (affine, NIfTI
header) rides in ``layer.metadata`` so the writer can restore it exactly, oblique scans
included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from src_monai.errors import LascError
from src_monai.inference.steps import check_volume
from src_monai.io.scans import ScanGeometry

GEOMETRY_KEY = "lasc_geometry"
SOURCE_KEY = "lasc_source"
PREDICTION_OF_KEY = "lasc_prediction_of"
# "training" / "validation" when the model that made a prediction had seen its scan
# (ModelSpec.training_role); the Compare widget says so next to its scores.
SEEN_BY_MODEL_KEY = "lasc_seen_by_model"

LA_CLASS_NAMES = ("background", "left atrium")
LA_COLOURS: dict[int, tuple[int, int, int]] = {1: (255, 0, 255)}  # the earlier tool's magenta
# Labels read from a file (an expert's truth, most often) in another colour than the model's
# magenta prediction, so the two can be told apart on the same slice.
FILE_LABEL_COLOURS: dict[int, tuple[int, int, int]] = {1: (60, 220, 90)}
ERROR_CLASS_NAMES = ("agree", "false positive", "false negative")
ERROR_COLOURS: dict[int, tuple[int, int, int]] = {1: (255, 60, 0), 2: (0, 160, 255)}


def to_layer_axes(volume: np.ndarray) -> np.ndarray:
    """File index order ``(i, j, k)`` -> napari's ``(z, y, x)``: a view, no copy."""
    return volume.transpose(2, 1, 0)


def layer_axis(file_axis: int) -> int:
    """The napari axis showing a file axis (napari's axes are the file axes reversed)."""
    return 2 - file_axis


def from_layer_axes(data: np.ndarray) -> np.ndarray:
    """napari's ``(z, y, x)`` -> file index order ``(i, j, k)``: a view, no copy."""
    return data.transpose(2, 1, 0)


def geometry_kwargs(geometry: ScanGeometry) -> dict[str, Any]:
    """``scale``, ``translate``, ``units`` and metadata for a layer of this geometry."""
    return {
        "scale": tuple(float(s) for s in geometry.spacing[::-1]),
        "translate": tuple(float(t) for t in geometry.affine[:3, 3][::-1]),
        "units": ("mm", "mm", "mm"),
        "metadata": {GEOMETRY_KEY: geometry},
    }


def layer_geometry(layer: Any) -> ScanGeometry:
    """The file geometry of a 3D layer: the one it was read with, else made from its
    scale and translate (a layer from another reader or from a numpy array)."""
    data_shape = tuple(int(n) for n in np.shape(layer.data))
    stored = layer.metadata.get(GEOMETRY_KEY)
    if isinstance(stored, ScanGeometry) and stored.shape == data_shape[::-1]:
        return stored
    spacing = tuple(float(s) for s in np.asarray(layer.scale)[::-1])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(layer.translate, dtype=float)[::-1]
    return ScanGeometry(
        affine=affine,
        shape=data_shape[::-1],  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        dtype=str(layer.data.dtype),
        source_format="nifti",
    )


def stated_orientation(layer: Any) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """The layer's affine and axis codes when a file stated them, else ``(None, None)``: a
    bare array (or a layer from another reader) has no orientation, and the pipeline then
    takes its axes as the training scans' (the model's slice axis, no reorientation)."""
    geometry = layer_geometry(layer)
    if layer.metadata.get(GEOMETRY_KEY) is geometry and geometry.orientation_known:
        return geometry.affine, geometry.axcodes
    return None, None


def check_scan_layer(layer: Any) -> None:
    """Refuse what the model cannot segment, with a message naming the layer."""
    import napari.layers

    if layer is None:
        raise LascError(None, "no image layer chosen: open a scan first")
    if not isinstance(layer, napari.layers.Image):
        raise LascError(layer.name, f"is a {type(layer).__name__} layer, not an image")
    if getattr(layer, "rgb", False):
        raise LascError(layer.name, "is an RGB image; a single-channel 3D scan is needed")
    if getattr(layer, "multiscale", False):
        raise LascError(layer.name, "is a multiscale image; open the scan at one resolution")
    shape = np.shape(layer.data)
    if len(shape) != 3:
        kind = "2D" if len(shape) == 2 else f"{len(shape)}D"
        raise LascError(layer.name, f"is a {kind} image {shape}; a 3D scan is needed")
    try:
        check_volume(np.asarray(layer.data))  # the predictor's own check: empty or blank
    except LascError as exc:
        raise LascError(layer.name, exc.problem) from exc


def labels_colormap(colours: Mapping[int, Sequence[int]]):
    """A napari label colormap: background transparent, each class its own RGB colour."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for value, rgb in colours.items():
        color_dict[int(value)] = (*tuple(c / 255 for c in rgb), 1.0)
    return DirectLabelColormap(color_dict=color_dict)


def class_features(names: Sequence[str]):
    """Label features naming each class: napari shows them in the status bar on hover."""
    import pandas as pd

    return pd.DataFrame({"index": list(range(len(names))), "class": list(names)})


def labels_kwargs(
    geometry: ScanGeometry,
    class_names: Sequence[str] = LA_CLASS_NAMES,
    colours: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Layer keywords for class labels in ``geometry``: placement, colours, class names."""
    kwargs = geometry_kwargs(geometry)
    kwargs["colormap"] = labels_colormap(LA_COLOURS if colours is None else colours)
    kwargs["features"] = class_features(class_names)
    return kwargs
