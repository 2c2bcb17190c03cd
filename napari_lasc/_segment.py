"""The "Segment left atrium" widget: a scan layer in, a left-atrium Labels layer out.

The widget only reads the chosen layer, starts the core's ``Predictor`` in a worker and adds
(or updates) a Labels layer: the same code path as ``lasc infer``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from src_monai.data.crops import AtriumBox
from src_monai.data.prepare import add_msd_case
from src_monai.errors import LascError
from src_monai.inference.measure import (
    AtriumMeasurements,
    UncertaintyScores,
)
from src_monai.inference.predictor import Predictor, resolve_device
from src_monai.inference.session import InteractiveSession, VolumeResult
from src_monai.inference.steps import model_grid
from src_monai.io.scans import image_digest
from src_monai.model.files import load_spec
from src_monai.progress import Progress

from ._area_plot import AreaCurve
from ._layers import (
    GEOMETRY_KEY,
    PREDICTION_OF_KEY,
    SEEN_BY_MODEL_KEY,
    check_scan_layer,
    from_layer_axes,
    geometry_kwargs,
    labels_kwargs,
    layer_axis,
    layer_geometry,
    to_layer_axes,
)
from ._models import FROM_FILE, MODELS, follow_models
from ._worker import start_job

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_SET = Path.home() / "napari-lasc-training-set"


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
        return f"LA volume {self.volume_ml:.1f} mL · slices {first}–{last} · {timing}"


def _cached_predictor():
    cache: dict[tuple[str, float, str], Predictor] = {}

    def get(path: Path | None, device: str) -> Predictor:
        stamp = path.stat().st_mtime if path is not None and path.exists() else 0.0
        key = (str(path), stamp, device)
        if key not in cache:
            cache.clear()  # one model in memory at a time
            cache[key] = Predictor.from_checkpoint(path, device=device)
        return cache[key]

    return get


_predictor = _cached_predictor()


class SegmentWidget(Container):
    """Segment the left atrium in a 3D scan layer, in a background worker."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # MONAI's inferers and transforms are imported now, while the widget is docked:
        # imported inside the first run's worker they hold the GIL for about a second and
        # napari's event loop stalls.
        import monai.inferers
        import monai.transforms  # noqa: F401
        import napari.layers

        self._viewer = napari_viewer
        self._image = create_widget(annotation=napari.layers.Image, label="scan")
        self._model = ComboBox(label="model", choices=self._model_choices)
        self._model_file = FileEdit(
            label="model file", mode="r", filter="*.safetensors *.pt *.pth", visible=False
        )
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._tta = CheckBox(text="test-time augmentation (flips the model trained with)")
        self._postprocess = CheckBox(
            text="post-process: keep largest 3D component, fill holes", value=True
        )
        self._batch_size = SpinBox(label="batch size", min=1, max=512, value=16)
        self._current_slice = CheckBox(text="current slice only (interactive)")
        # The atrium box (a two-stage model's stage 2 segments around it): shown as a Shapes
        # layer after a run; its rectangle, moved, resized or drawn anew, and these slices
        # are used on the next run instead of the localiser's.
        self._box_first = SpinBox(label="box slices from", min=0, max=100_000, value=0)
        self._box_last = SpinBox(label="box slices to", min=0, max=100_000, value=0)
        self._uncertainty = CheckBox(text="uncertainty map (5 views: about 7x the time)")
        self._run = PushButton(text="Segment")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="progress", value=0, max=1, visible=False)
        self._result = Label(label="result", value="")
        self._go_uncertain = PushButton(text="Go to most uncertain slice", enabled=False)
        # Correction loop: fix the prediction with napari's brush, keep it, fine-tune on it.
        self._training_set = FileEdit(label="training set", mode="d", value=DEFAULT_TRAINING_SET)
        self._add_case = PushButton(text="Add to training set")
        self._fine_tune = PushButton(text="Fine-tune")
        super().__init__(
            widgets=[
                self._image,
                self._model,
                self._model_file,
                self._device,
                self._tta,
                self._postprocess,
                self._batch_size,
                self._current_slice,
                self._uncertainty,
                self._box_first,
                self._box_last,
                Container(widgets=[self._run, self._cancel], layout="horizontal", labels=False),
                self._bar,
                self._result,
                self._go_uncertain,
                self._training_set,
                Container(
                    widgets=[self._add_case, self._fine_tune], layout="horizontal", labels=False
                ),
            ]
        )
        self.area_curve = AreaCurve(self.go_to_slice)
        self.native.layout().addWidget(self.area_curve.canvas)
        self._model.changed.connect(self._model_changed)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._go_uncertain.changed.connect(self.go_to_most_uncertain_slice)
        self._add_case.changed.connect(self.add_to_training_set)
        self._fine_tune.changed.connect(self.fine_tune)
        follow_models(self._model, self)
        self.worker: Any = None
        self.summary: SegmentationSummary | None = None
        self._session: tuple[tuple, InteractiveSession] | None = None
        self.measurements: AtriumMeasurements | None = None
        self.quality_flags: list[str] = []
        self._curve_axis = 0
        self._curve_layer: Any = None
        self.uncertainty: UncertaintyScores | None = None
        self.added_case: str | None = None
        self.train_widget: Any = None

    # ------------------------------------------------------------------ choices

    def _model_choices(self, _widget=None) -> list[str]:
        return [*MODELS.names(), FROM_FILE]

    def _model_changed(self, name: str) -> None:
        self._model_file.visible = name == FROM_FILE

    def _model_path(self) -> Path | None:
        if self._model.value == FROM_FILE:
            path = Path(self._model_file.value)
            if not path.is_file():
                raise LascError(path, "model file not found: choose a .safetensors model")
            return path
        return MODELS.path(self._model.value)

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Start a segmentation of the chosen layer (whole volume or the current slice)."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        try:
            layer = self._image.value
            check_scan_layer(layer)
            model_path = self._model_path()
            device = self._device.value
            resolve_device(device)  # CUDA asked for but absent: say so before any work
            box = self.user_box(layer)
        except LascError as exc:
            show_error(str(exc))
            return
        point = None
        if self._current_slice.value:
            point = np.asarray(layer.world_to_data(self._viewer.dims.point))
        choices = {
            "batch_size": int(self._batch_size.value),
            "tta": bool(self._tta.value),
            "postprocess": bool(self._postprocess.value),
            "uncertainty": bool(self._uncertainty.value),
        }
        started = time.perf_counter()

        def job():
            # In the worker: the model loads, the scan is prepared and localised here.
            session = self._session_for(layer, _predictor(model_path, device))
            session.set_box(box)
            options = session.predictor.options(**choices)
            if point is None:
                return (yield from session.segment_volume(options))
            axis = layer_axis(session.slice_axis)
            index = int(np.clip(np.round(point[axis]), 0, session.slice_count - 1))
            labels = yield from session.segment_slice(index, options)
            return SliceResult(index, labels)

        self._set_running(True)
        self.worker = start_job(
            job,
            description=f"Segment {layer.name}",
            on_progress=self._progressed,
            on_done=lambda result: self._add_result(layer, result, started, box is not None),
            on_cancelled=lambda: self._show(f"cancelled: {layer.name} left unchanged"),
            on_finished=lambda: self._set_running(False),
        )

    def _session_for(self, layer: Any, predictor: Predictor) -> InteractiveSession:
        """The layer's session, kept while its data and the model stay the same: the scan is
        normalised once, and slice after slice answers in a fraction of a second."""
        key = (id(layer), id(layer.data), layer.data.shape, id(predictor))
        if self._session is None or self._session[0] != key:
            geometry = layer_geometry(layer)
            # Orientation only where the layer came with a file's (a bare array has none).
            known = layer.metadata.get(GEOMETRY_KEY) is geometry and geometry.orientation_known
            session = InteractiveSession(
                predictor,
                from_layer_axes(np.asarray(layer.data)),
                geometry.spacing,
                affine=geometry.affine if known else None,
                axcodes=geometry.axcodes if known else None,
            )
            self._session = (key, session)
        return self._session[1]

    def cancel(self) -> None:
        """Stop the running segmentation at its next batch; no layer is added or changed."""
        if self.worker is not None:
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running
        self._bar.visible = running
        if running:
            self._bar.value, self._bar.max = 0, 1
            self._show("running…")
        else:
            self.worker = None

    def _progressed(self, report: Progress) -> None:
        self._bar.max = max(report.total, 1)
        self._bar.value = report.done

    def _show(self, text: str) -> None:
        self._result.value = text

    # ------------------------------------------------------------------ results

    def _add_result(
        self, image: Any, result: VolumeResult | SliceResult, started: float, user_box: bool
    ) -> None:
        session = self._session[1]
        predictor = session.predictor
        axis = layer_axis(session.slice_axis)
        layer = self._prediction_layer(image)
        if isinstance(result, VolumeResult):
            data = np.ascontiguousarray(to_layer_axes(result.prediction.labels))
            if layer is None:
                layer = self._new_layer(image, data, predictor)
            else:
                layer.data = data
            current = None
        else:
            if layer is None:
                layer = self._new_layer(image, np.zeros(image.data.shape, np.uint8), predictor)
            region = [slice(None)] * 3
            region[axis] = result.index
            # The model's slice (file rows i, columns j) shown with napari's axes reversed.
            layer.data[tuple(region)] = result.labels.T
            layer.refresh()
            current = (axis, result.index)
        self.summary = summarise(layer, time.perf_counter() - started, current)
        text = self.summary.text()
        if isinstance(result, VolumeResult):
            text += self._show_report(image, layer, result, axis)
            text += self._show_box(image, result.prediction, user_box, session.slice_axis)
        self._show(text)
        logger.info("%s", text.replace("\n", " · "))

    def _show_report(self, image: Any, layer: Any, result: VolumeResult, axis: int) -> str:
        """Area curve, QC flags and the uncertainty map of a whole-volume run; their text."""
        report = result.report
        self.quality_flags, self.uncertainty = report.quality_flags, report.uncertainty
        self._curve_layer = layer
        self._plot_measurements(report.measurements, axis)
        uncertainty_map = result.prediction.uncertainty
        self._go_uncertain.enabled = uncertainty_map is not None
        text = f"\nQC: {report.flags_text}"
        if uncertainty_map is not None and report.uncertainty is not None:
            self._show_uncertainty(image, uncertainty_map, layer_geometry(image))
            text += (
                f"\nuncertain volume {report.uncertainty.uncertain_volume_pct:.1f} % of the "
                f"LA · most uncertain slice {report.uncertainty.most_uncertain_slice}"
            )
        return text

    def _plot_measurements(self, measured: AtriumMeasurements, napari_axis: int) -> None:
        """Area per slice (a click goes there), sphericity and largest in-plane diameter."""
        self.measurements = measured
        self._curve_axis = napari_axis
        title = (
            f"sphericity {measured.sphericity:.2f} · largest diameter "
            f"{measured.max_diameter_mm:.0f} mm (slice {measured.diameter_slice})"
            if measured.volume_ml
            else "no left atrium"
        )
        self.area_curve.show(measured.slice_areas_mm2, title)

    def go_to_slice(self, index: int) -> None:
        """Move napari's slider along the model's slice axis to ``index`` (a curve click).

        Set as a world coordinate through the layer, so it lands on that slice whatever the
        other layers' extents."""
        if self._curve_layer is None:
            return
        position = [0.0, 0.0, 0.0]
        position[self._curve_axis] = float(index)
        world = self._curve_layer.data_to_world(position)
        self._viewer.dims.set_point(self._curve_axis, world[self._curve_axis])

    def _show_uncertainty(self, image: Any, uncertainty: np.ndarray, geometry: Any) -> None:
        """Add (or update) ``<scan> uncertainty``: 0..1, bright where the views disagree."""
        name = f"{image.name} uncertainty"
        data = np.ascontiguousarray(to_layer_axes(uncertainty))
        if name in self._viewer.layers and self._viewer.layers[name].data.shape == data.shape:
            self._viewer.layers[name].data = data
            return
        self._viewer.add_image(
            data,
            name=name,
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=0.7,
            **geometry_kwargs(geometry),
        )

    def go_to_most_uncertain_slice(self) -> None:
        """Move napari to the slice where the views disagree most (the last run's)."""
        if self.uncertainty is not None:
            self.go_to_slice(self.uncertainty.most_uncertain_slice)

    # ------------------------------------------------------------------ correction loop

    def add_to_training_set(self) -> None:
        """Save the scan and its (corrected) left-atrium layer into the training set folder
        as one more MSD case, in a worker; geometry kept, nothing replaced."""
        from napari.utils.notifications import show_error, show_info

        if self.worker is not None:
            return
        try:
            image = self._image.value
            check_scan_layer(image)
            labels_layer = self._prediction_layer(image)
            if labels_layer is None:
                raise LascError(image.name, "has no left-atrium layer yet: Segment first")
            if not np.any(np.asarray(labels_layer.data)):
                raise LascError(labels_layer.name, "is empty: paint the left atrium first")
        except LascError as exc:
            show_error(str(exc))
            return
        folder = Path(self._training_set.value)
        # Copies taken now, in napari's thread: painting may go on while the files are written.
        scan = np.array(from_layer_axes(np.asarray(image.data)))
        labels = np.array(from_layer_axes(np.asarray(labels_layer.data)))
        geometry = layer_geometry(image)

        def job():
            yield Progress(f"saving {image.name}", 0, 1)
            return add_msd_case(folder, image.name, scan, labels, geometry)

        def added(case_id: str) -> None:
            self.added_case = case_id
            self._show(f"added {case_id} to {folder}")
            show_info(f"{case_id}: scan and labels added to the training set {folder}")

        self._set_running(True)
        self.worker = start_job(
            job,
            description=f"Add {image.name} to the training set",
            on_progress=self._progressed,
            on_done=added,
            on_cancelled=lambda: self._show("cancelled: nothing added"),
            on_finished=lambda: self._set_running(False),
        )

    def fine_tune(self) -> None:
        """Open the Train widget on the training set, starting from the current model."""
        from napari.utils.notifications import show_error

        folder = Path(self._training_set.value)
        try:
            if not (folder / "dataset.json").is_file():
                raise LascError(folder, "holds no training set yet: Add to training set first")
            model = self._model.value
            if model == FROM_FILE:
                path = self._model_path()
                model = MODELS.add(f"file: {path.name}", path)
        except LascError as exc:
            show_error(str(exc))
            return
        _, self.train_widget = self._viewer.window.add_plugin_dock_widget(
            "napari-lasc", "Train model"
        )
        self.train_widget.prepare_fine_tune(folder, model)

    # ------------------------------------------------------------------ the atrium box

    def box_layer(self, image: Any):
        """The Shapes layer ``<scan> atrium box`` of ``image``, if there is one."""
        name = _box_layer_name(image)
        return self._viewer.layers[name] if name in self._viewer.layers else None  # noqa: SIM401

    def user_box(self, image: Any) -> AtriumBox | None:
        """The box the next run segments around: the last rectangle of the image's box layer
        (in-plane) and the two spin boxes (slices); ``None`` when there is no such layer or
        it holds no shape (the localiser then finds the box)."""
        layer = self.box_layer(image)
        if layer is None or not len(layer.data):
            return None
        shape = from_layer_axes(np.asarray(image.data)).shape
        spec_axis = self._scan_slice_axis(image, shape)
        vertices = np.asarray(layer.data[-1], dtype=float)  # napari data axes of the image
        in_plane = [a for a in range(3) if a != spec_axis]  # file axes: the box's y, x
        edges = []
        for file_axis in in_plane:
            values = vertices[:, layer_axis(file_axis)]
            low = int(np.clip(np.floor(values.min()), 0, shape[file_axis]))
            high = int(np.clip(np.ceil(values.max()) + 1, 0, shape[file_axis]))
            if high - low < 2:
                raise LascError(
                    layer.name, "the box lies outside the scan: draw it over the atrium"
                )
            edges += [low, high]
        first, last = int(self._box_first.value), int(self._box_last.value)
        if first == last == 0:  # never set (a box drawn before the first run): every slice
            last = shape[spec_axis] - 1
        if not 0 <= first <= last < shape[spec_axis]:
            raise LascError(
                layer.name,
                f"box slices {first}-{last} are not within the scan's 0-{shape[spec_axis] - 1}",
            )
        return AtriumBox(first, last + 1, *edges)

    def _scan_slice_axis(self, image: Any, shape: tuple[int, ...]) -> int:
        """The scan's file axis the model slices across, from the model file's header and
        the layer's geometry (no network is loaded on napari's thread)."""
        geometry = layer_geometry(image)
        known = image.metadata.get(GEOMETRY_KEY) is geometry and geometry.orientation_known
        spec = load_spec(self._model_path())
        return model_grid(spec, shape, affine=geometry.affine if known else None).scan_slice_axis

    def _show_box(self, image: Any, prediction: Any, user_box: bool, slice_axis: int) -> str:
        """After a whole-volume run: the box stage 2 used, as an editable Shapes layer and the
        slice range; when the localiser found nothing, an empty one to draw in."""
        from napari.utils.notifications import show_warning

        layer = self.box_layer(image)
        if prediction.localised is False:
            if layer is None:
                layer = self._new_box_layer(image, [])
            layer.mode = "add_rectangle"
            show_warning(
                f"the localiser found no atrium in {image.name}: draw its box in "
                f"'{layer.name}', set the box slices and press Segment"
            )
            return "\nbox: none found: draw one and press Segment"
        box = prediction.box
        if box is None:
            return ""
        if not user_box:
            rectangle = self._rectangle(box, slice_axis)
            if layer is None:
                self._new_box_layer(image, [rectangle])
            else:
                layer.data = [rectangle]
        self._box_first.value, self._box_last.value = box.z0, box.z1 - 1
        owner = "yours" if user_box else "found by the model"
        return f"\nbox: {owner}, slices {box.z0}-{box.z1 - 1}"

    @staticmethod
    def _rectangle(box: AtriumBox, axis: int) -> np.ndarray:
        """The box's in-plane rectangle on its middle slice, in the image's napari data axes
        (``axis``: the file axis the model slices along)."""
        (y_axis, x_axis) = [a for a in range(3) if a != axis]
        corners = []
        top, bottom, left, right = box.y0, box.y1 - 1, box.x0, box.x1 - 1
        for y, x in ((top, left), (top, right), (bottom, right), (bottom, left)):
            point = [0.0, 0.0, 0.0]
            point[layer_axis(axis)] = (box.z0 + box.z1 - 1) / 2.0
            point[layer_axis(y_axis)], point[layer_axis(x_axis)] = y, x
            corners.append(point)
        return np.array(corners)

    def _new_box_layer(self, image: Any, rectangles: list[np.ndarray]):
        return self._viewer.add_shapes(
            rectangles or None,
            ndim=3,  # an empty layer would otherwise be 2D
            shape_type="rectangle",
            name=_box_layer_name(image),
            edge_color="yellow",
            face_color="transparent",
            edge_width=1.5,
            scale=image.scale,
            translate=image.translate,
            units=image.units,
        )

    def _prediction_layer(self, image: Any):
        """The Labels layer this widget made for ``image`` (found by metadata, not name)."""
        import napari.layers

        for layer in self._viewer.layers:
            if (
                isinstance(layer, napari.layers.Labels)
                and layer.metadata.get(PREDICTION_OF_KEY) == image.name
                and layer.data.shape == image.data.shape
            ):
                return layer
        return None

    def _new_layer(self, image: Any, data: np.ndarray, predictor: Predictor):
        colours = {i: c for i, c in enumerate(predictor.spec.colours) if i > 0}
        kwargs = labels_kwargs(layer_geometry(image), predictor.spec.class_names, colours)
        kwargs["metadata"][PREDICTION_OF_KEY] = image.name
        kwargs["metadata"][SEEN_BY_MODEL_KEY] = seen_by_model_text(predictor.spec, image)
        name = f"{image.name} left atrium"
        return self._viewer.add_labels(np.ascontiguousarray(data), name=name, **kwargs)


def _box_layer_name(image: Any) -> str:
    """The name that ties a box layer to its scan: found by it, made with it."""
    return f"{image.name} atrium box"


def seen_by_model_text(spec: Any, image: Any) -> str:
    """What the Compare widget says next to its scores when the model had learnt from this
    scan (recognised by layer name or by its voxels); empty otherwise."""
    role = spec.training_role(image.name, image_digest(np.asarray(image.data)))
    if not role:
        return ""
    cv = spec.cross_validation
    honest = f"cross-validated {cv.text()}" if cv is not None else "see its model card"
    return f"a {role} case of the model: not its accuracy ({honest})"


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
