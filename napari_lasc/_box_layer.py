"""The atrium box as a napari Shapes layer: pure conversions between a core ``AtriumBox``
(file axes of the scan) and the rectangle the user sees, moves and redraws.

A two-stage model's stage 2 segments inside the box. After a run the box is shown as
``<scan> atrium box``; its last rectangle (in-plane) and the widget's two slice spin boxes
(across) are used on the next run instead of the localiser's box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.errors import LascError
from src_monai.inference.steps import Prediction

from ._layers import from_layer_axes, layer_axis

# In the box layer's metadata: the box the model last put there.
FOUND_BOX_KEY = "lasc_found_box"


def box_layer_name(image: Any) -> str:
    """The name that ties a box layer to its scan: found by it, made with it."""
    return f"{image.name} atrium box"


def find_box_layer(viewer: Any, image: Any):
    """The Shapes layer ``<scan> atrium box`` of ``image``, if there is one."""
    name = box_layer_name(image)
    return viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401


def add_box_layer(viewer: Any, image: Any, rectangles: list[np.ndarray]):
    """A yellow, editable rectangle layer placed over ``image`` (empty: ready to draw in)."""
    return viewer.add_shapes(
        rectangles or None,
        ndim=3,  # an empty layer would otherwise be 2D
        shape_type="rectangle",
        name=box_layer_name(image),
        edge_color="yellow",
        face_color="transparent",
        edge_width=1.5,
        scale=image.scale,
        translate=image.translate,
        units=image.units,
    )


def box_rectangle(box: AtriumBox, slice_axis: int) -> np.ndarray:
    """The box's in-plane rectangle on its middle slice, in the image's napari data axes
    (``slice_axis``: the file axis the model slices across)."""
    (y_axis, x_axis) = [a for a in range(3) if a != slice_axis]
    corners = []
    top, bottom, left, right = box.y0, box.y1 - 1, box.x0, box.x1 - 1
    for y, x in ((top, left), (top, right), (bottom, right), (bottom, left)):
        point = [0.0, 0.0, 0.0]
        point[layer_axis(slice_axis)] = (box.z0 + box.z1 - 1) / 2.0
        point[layer_axis(y_axis)], point[layer_axis(x_axis)] = y, x
        corners.append(point)
    return np.array(corners)


def box_from_rectangle(
    vertices: np.ndarray,
    shape: tuple[int, ...],
    slice_axis: int,
    slices: tuple[int, int],
    layer_name: str,
) -> AtriumBox:
    """The box a drawn rectangle (napari data axes) and the slices ``first, last``
    (inclusive; ``0, 0``: never set, so every slice) make on a scan of ``shape`` (file
    axes); refused in one line, naming the layer, when it misses the scan."""
    vertices = np.asarray(vertices, dtype=float)
    edges = []
    for file_axis in (a for a in range(3) if a != slice_axis):  # the box's y, x
        values = vertices[:, layer_axis(file_axis)]
        low = int(np.clip(np.floor(values.min()), 0, shape[file_axis]))
        high = int(np.clip(np.ceil(values.max()) + 1, 0, shape[file_axis]))
        if high - low < 2:
            raise LascError(layer_name, "the box lies outside the scan: draw it over the atrium")
        edges += [low, high]
    first, last = slices
    count = shape[slice_axis]
    if first == last == 0:  # a box drawn before the first run: every slice
        last = count - 1
    if not 0 <= first <= last < count:
        raise LascError(
            layer_name, f"box slices {first}-{last} are not within the scan's 0-{count - 1}"
        )
    return AtriumBox(first, last + 1, *edges)


def box_to_segment(
    layer: Any,
    image: Any,
    slices: tuple[int, int],
    slice_axis_of: Callable[[Any, tuple[int, ...]], int],
) -> AtriumBox | None:
    """The user's box for the next run: the box ``layer``'s last rectangle (in-plane) and
    ``slices`` make on ``image`` (``slice_axis_of(image, shape)``: the file axis the model
    slices across). ``None`` (the localiser finds the box) when there is no layer, it holds
    no shape, or it still holds the box the model put there (:func:`show_box`): untouched,
    it is not the user's, so it is not called "yours" and the model may grow its region."""
    if layer is None or not len(layer.data):
        return None
    shape = from_layer_axes(np.asarray(image.data)).shape
    slice_axis = slice_axis_of(image, shape)
    box = box_from_rectangle(layer.data[-1], shape, slice_axis, slices, layer.name)
    return None if box == layer.metadata.get(FOUND_BOX_KEY) else box


def show_box(
    viewer: Any, image: Any, prediction: Prediction, user_box: bool, slice_axis: int
) -> tuple[str, tuple[int, int] | None]:
    """After a whole-volume run: the box stage 2 used, as an editable Shapes layer (left as
    it is when it was the user's), or, when the localiser found nothing, an empty one to draw
    in. Returns the line to report and the box's first and last slice."""
    from napari.utils.notifications import show_warning

    layer = find_box_layer(viewer, image)
    if prediction.localised is False:
        if layer is None:
            layer = add_box_layer(viewer, image, [])
        layer.mode = "add_rectangle"
        show_warning(
            f"the localiser found no atrium in {image.name}: draw its box in "
            f"'{layer.name}', set the box slices and press Segment"
        )
        return "\nbox: none found: draw one and press Segment", None
    box = prediction.box
    if box is None:
        return "", None
    if not user_box:
        rectangle = box_rectangle(box, slice_axis)
        if layer is None:
            layer = add_box_layer(viewer, image, [rectangle])
        else:
            layer.data = [rectangle]
        layer.metadata[FOUND_BOX_KEY] = box  # what an untouched layer still holds
    owner = "yours" if user_box else "found by the model"
    return f"\nbox: {owner}, slices {box.z0}-{box.z1 - 1}", (box.z0, box.z1 - 1)
