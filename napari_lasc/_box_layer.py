"""The atrium box as a napari Shapes layer: pure conversions between a core ``AtriumBox``
(file axes of the scan) and the rectangle the user sees, moves and redraws.

A two-stage model's stage 2 segments inside the box. After a run the box is shown as
``<scan> atrium box``: the same rectangle on every slice of the box's range, so it is seen
(and can be moved, resized or redrawn) on whichever slice the viewer shows. :class:`BoxControls`
keeps the rectangles alike: one edited or drawn rectangle is copied to every slice of the
range, and the widget's two slice spin boxes set that range. The rectangle (in-plane) and the
spin boxes (across) are used on the next run instead of the localiser's box.
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
# In the box layer's metadata: the slice axis (napari's) its rectangles are kept alike along.
FOLLOWED_KEY = "lasc_box_slice_axis"
# How slice numbers are given everywhere in the widget (the box's and the LA's).
SLICE_NUMBERS = "napari's slider indices, first to last inclusive"


def box_layer_name(image: Any) -> str:
    """The name that ties a box layer to its scan: found by it, made with it."""
    return f"{image.name} atrium box"


def find_box_layer(viewer: Any, image: Any):
    """The Shapes layer ``<scan> atrium box`` of ``image``, if there is one; a layer of that
    name that is no 3D Shapes layer (a user can make any) is refused in one line."""
    from napari.layers import Shapes  # a napari widget: napari is there

    name = box_layer_name(image)
    if name not in viewer.layers:
        return None
    layer = viewer.layers[name]
    if not isinstance(layer, Shapes) or layer.ndim != 3:
        kind = f"a {layer.ndim}D {type(layer).__name__} layer"
        raise LascError(
            name, f"{kind} has the atrium box's name: rename or delete it (a box is 3D Shapes)"
        )
    return layer


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


def box_rectangles(box: AtriumBox, slice_axis: int) -> list[np.ndarray]:
    """The box's in-plane rectangle on each of its slices, in the image's napari data axes
    (``slice_axis``: the file axis the model slices across)."""
    (y_axis, x_axis) = [a for a in range(3) if a != slice_axis]
    corners = []
    top, bottom, left, right = box.y0, box.y1 - 1, box.x0, box.x1 - 1
    for y, x in ((top, left), (top, right), (bottom, right), (bottom, left)):
        point = [0.0, 0.0, 0.0]
        point[layer_axis(y_axis)], point[layer_axis(x_axis)] = y, x
        corners.append(point)
    return rectangles_on_slices(np.array(corners), layer_axis(slice_axis), box.z0, box.z1 - 1)


def rectangles_on_slices(
    rectangle: np.ndarray, slice_layer_axis: int, first: int, last: int
) -> list[np.ndarray]:
    """Copies of one rectangle (napari data axes) on the slices ``first``-``last``
    (inclusive) along the layer axis ``slice_layer_axis``."""
    copies = []
    for index in range(first, last + 1):
        copy = np.array(rectangle, dtype=float)
        copy[:, slice_layer_axis] = index
        copies.append(copy)
    return copies


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
        rectangles = box_rectangles(box, slice_axis)
        if layer is None:
            layer = add_box_layer(viewer, image, rectangles)
        else:
            layer.data = rectangles
        layer.metadata[FOUND_BOX_KEY] = box  # what an untouched layer still holds
    owner = "yours" if user_box else "found by the model"
    return f"\nbox: {owner}, slices {box.z0}-{box.z1 - 1}", (box.z0, box.z1 - 1)


class BoxControls:
    """The box's slice range (two spin boxes in napari's slider indices, first to last
    inclusive) and the box layers it keeps in step: after the user moves, resizes or draws a
    rectangle on one slice, and when the range changes, every slice of the range shows that
    rectangle (``0``-``0``: every slice of the scan, the range of a box drawn before a run).

    ``image_of()`` is the scan the widget segments; ``later(fn)`` runs ``fn`` once napari has
    finished the edit that emitted the event (the rectangles are replaced then, not inside
    napari's own mouse handling)."""

    def __init__(
        self,
        viewer: Any,
        image_of: Callable[[], Any],
        later: Callable[[Callable[[], None]], None],
    ) -> None:
        from magicgui.widgets import SpinBox

        self.first = SpinBox(label="box slices from", min=0, max=100_000, value=0)
        self.last = SpinBox(label="box slices to", min=0, max=100_000, value=0)
        self.first.tooltip = self.last.tooltip = SLICE_NUMBERS
        self._viewer, self._image_of, self._later = viewer, image_of, later
        self._replacing = False
        self.first.changed.connect(self._range_changed)
        self.last.changed.connect(self._range_changed)

    @property
    def slices(self) -> tuple[int, int]:
        return int(self.first.value), int(self.last.value)

    def follow(self, layer: Any, slice_layer_axis: int) -> None:
        """Keep ``layer``'s rectangles alike over the range (connected once per layer: the
        layer's metadata says so, as napari hands widgets a new proxy of it each time)."""
        if FOLLOWED_KEY not in layer.metadata:
            layer.events.data.connect(lambda event: self._edited(layer, event))
        layer.metadata[FOLLOWED_KEY] = slice_layer_axis

    def _edited(self, layer: Any, event: Any) -> None:
        from napari.layers.base import ActionType  # a napari widget: napari is there

        if self._replacing or event.action not in (ActionType.ADDED, ActionType.CHANGED):
            return
        index = event.data_indices[-1] if event.data_indices else -1
        rectangle = np.array(layer.data[index])
        self._later(lambda: self.spread(layer, rectangle))

    def _range_changed(self, _value: int) -> None:
        from napari.utils.notifications import show_error

        image = self._image_of()
        try:
            layer = None if image is None else find_box_layer(self._viewer, image)
        except LascError as exc:
            show_error(str(exc))
            return
        if layer is not None and len(layer.data):
            self.spread(layer, np.array(layer.data[-1]))

    def spread(self, layer: Any, rectangle: np.ndarray) -> None:
        """``rectangle`` on every slice of the range, in place of ``layer``'s shapes."""
        axis = layer.metadata.get(FOLLOWED_KEY)
        image = self._image_of()
        if axis is None or image is None or layer not in self._viewer.layers:
            return
        first, last = self.slices
        count = np.asarray(image.data).shape[axis]
        if first == last == 0:  # never set: every slice
            last = count - 1
        if not 0 <= first <= last < count:
            return  # refused in one line at the next run (box_from_rectangle)
        wanted = rectangles_on_slices(rectangle, axis, first, last)
        if len(wanted) == len(layer.data) and all(
            np.allclose(a, b) for a, b in zip(wanted, layer.data, strict=True)
        ):
            return  # already so: nothing to replace (and no event)
        self._replacing = True
        try:
            layer.selected_data = set()
            layer.data = wanted
        finally:
            self._replacing = False
