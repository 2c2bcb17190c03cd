"""The "Segment left atrium" widget: a scan layer in, a left-atrium Labels layer out.

The widget reads the chosen layer and its controls, hands the work to a
:class:`~napari_lasc._controller.SegmentController` (the core's ``InteractiveSession`` in a
worker: the same pipeline steps as ``lasc infer``) and paints what comes back
(:mod:`napari_lasc._results`, :mod:`napari_lasc._box_layer`); the correction loop lives in
:mod:`napari_lasc._correction`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from src_monai.data.crops import AtriumBox
from src_monai.errors import LascError
from src_monai.inference.measure import AtriumMeasurements, UncertaintyScores
from src_monai.inference.predictor import resolve_device
from src_monai.inference.session import VolumeResult
from src_monai.inference.steps import model_grid
from src_monai.model.files import load_spec
from src_monai.progress import Progress

from ._area_plot import AreaCurve
from ._box_layer import BoxControls, box_to_segment, find_box_layer, show_box
from ._controller import SegmentController
from ._controls import ScrollingContainer, button_row, result_label
from ._correction import open_fine_tune, training_case_job
from ._layers import check_scan_layer, layer_axis, stated_orientation
from ._models import FROM_FILE, MODELS, follow_models
from ._results import (
    SegmentationSummary,
    SliceResult,
    find_prediction_layer,
    paint_slice,
    paint_volume,
    show_uncertainty,
    summarise,
)

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_SET = Path.home() / "napari-lasc-training-set"

__all__ = ["SegmentWidget", "SegmentationSummary", "SliceResult", "summarise"]


class SegmentWidget(ScrollingContainer):
    """Segment the left atrium in a 3D scan layer, in a background worker."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # MONAI's inferers and transforms are imported now, while the widget is docked:
        # imported inside the first run's worker they hold the GIL for about a second and
        # napari's event loop stalls.
        import monai.inferers
        import monai.transforms  # noqa: F401

        self._viewer = napari_viewer
        self._controller = SegmentController()
        super().__init__(self._make_controls())
        self.area_curve = AreaCurve(self.go_to_slice)
        self.body.native.layout().addWidget(self.area_curve.canvas)
        self._connect()
        self.summary: SegmentationSummary | None = None
        self.measurements: AtriumMeasurements | None = None
        self.quality_flags: list[str] = []
        self.uncertainty: UncertaintyScores | None = None
        self._curve_axis = 0
        self._curve_layer: Any = None
        self.added_case: str | None = None
        self.train_widget: Any = None

    def _make_controls(self) -> list[Any]:
        import napari.layers

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
        self._uncertainty = CheckBox(text="uncertainty map (5 more views of the scan: slower)")
        # The atrium box's slices (its rectangle is the box layer's): see _box_layer.
        self._box = BoxControls(self._viewer, lambda: self._image.value, _after_this_event)
        self._box_first, self._box_last = self._box.first, self._box.last
        self._run = PushButton(text="Segment")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="progress", value=0, max=1, visible=False)
        self._result = result_label("result")
        self._go_uncertain = PushButton(text="Go to most uncertain slice", enabled=False)
        # Correction loop: fix the prediction with napari's brush, keep it, fine-tune on it.
        self._training_set = FileEdit(label="training set", mode="d", value=DEFAULT_TRAINING_SET)
        self._add_case = PushButton(text="Add to training set")
        self._fine_tune = PushButton(text="Fine-tune")
        return [
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
            button_row(self._run, self._cancel),
            self._bar,
            self._result,
            self._go_uncertain,
            self._training_set,
            button_row(self._add_case, self._fine_tune),
        ]

    def _connect(self) -> None:
        self._model.changed.connect(self._model_changed)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._go_uncertain.changed.connect(self.go_to_most_uncertain_slice)
        self._add_case.changed.connect(self.add_to_training_set)
        self._fine_tune.changed.connect(self.fine_tune)
        follow_models(self._model, self)

    @property
    def worker(self) -> Any:
        """The running worker (``None`` when idle)."""
        return self._controller.worker

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

        if self._controller.running:
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
        self._controller.start(
            self._controller.segmentation(layer, model_path, device, box, point, choices),
            description=f"Segment {layer.name}",
            on_running=self._set_running,
            on_progress=self._progressed,
            on_done=lambda result: self._add_result(layer, result, started, box is not None),
            on_cancelled=lambda: self._show(f"cancelled: {layer.name} left unchanged"),
        )

    def cancel(self) -> None:
        """Stop the running job at its next batch; no layer is added or changed."""
        self._controller.cancel()

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running
        self._bar.visible = running
        if running:
            self._bar.value, self._bar.max = 0, 1
            self._show("running…")

    def _progressed(self, report: Progress) -> None:
        self._bar.max = max(report.total, 1)
        self._bar.value = report.done

    def _show(self, text: str) -> None:
        self._result.value = text

    # ------------------------------------------------------------------ results

    def _add_result(
        self, image: Any, result: VolumeResult | SliceResult, started: float, user_box: bool
    ) -> None:
        session = self._controller.session
        spec, slice_axis = session.predictor.spec, session.slice_axis
        if isinstance(result, VolumeResult):
            layer = paint_volume(self._viewer, image, result.prediction.labels, spec)
            self.summary = summarise(layer, time.perf_counter() - started)
            text = self.summary.text()
            text += self._show_report(image, layer, result, layer_axis(slice_axis))
            box_text, slices = show_box(
                self._viewer, image, result.prediction, user_box, slice_axis
            )
            if slices is not None:
                self._box_first.value, self._box_last.value = slices
            if (boxes := find_box_layer(self._viewer, image)) is not None:
                self._box.follow(boxes, layer_axis(slice_axis))
            text += box_text
        else:
            layer = paint_slice(self._viewer, image, result, slice_axis, spec)
            current = (layer_axis(slice_axis), result.index)
            self.summary = summarise(layer, time.perf_counter() - started, current)
            text = self.summary.text()
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
            show_uncertainty(self._viewer, image, uncertainty_map)
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

    def go_to_most_uncertain_slice(self) -> None:
        """Move napari to the slice where the views disagree most (the last run's)."""
        if self.uncertainty is not None:
            self.go_to_slice(self.uncertainty.most_uncertain_slice)

    # ------------------------------------------------------------------ correction loop

    def add_to_training_set(self) -> None:
        """Save the scan and its (corrected) left-atrium layer into the training set folder
        as one more MSD case, in a worker; geometry kept, nothing replaced."""
        from napari.utils.notifications import show_error, show_info

        if self._controller.running:
            return
        folder = Path(self._training_set.value)
        image = self._image.value
        try:
            labels_layer = find_prediction_layer(self._viewer, image) if image else None
            job = training_case_job(image, labels_layer, folder)
        except LascError as exc:
            show_error(str(exc))
            return

        def added(case_id: str) -> None:
            self.added_case = case_id
            self._show(f"added {case_id} to {folder}")
            show_info(f"{case_id}: scan and labels added to the training set {folder}")

        self._controller.start(
            job,
            description=f"Add {image.name} to the training set",
            on_running=self._set_running,
            on_progress=self._progressed,
            on_done=added,
            on_cancelled=lambda: self._show("cancelled: nothing added"),
        )

    def fine_tune(self) -> None:
        """Open the Train widget on the training set, starting from the current model."""
        from napari.utils.notifications import show_error

        try:
            model = self._model.value
            if model == FROM_FILE:
                path = self._model_path()
                model = MODELS.add(f"file: {path.name}", path)
            self.train_widget = open_fine_tune(self._viewer, Path(self._training_set.value), model)
        except LascError as exc:
            show_error(str(exc))

    # ------------------------------------------------------------------ the atrium box

    def user_box(self, image: Any) -> AtriumBox | None:
        """The box the next run segments around (:func:`box_to_segment`): the image's box
        layer and the two slice spin boxes."""
        layer = find_box_layer(self._viewer, image)
        return box_to_segment(layer, image, self._box.slices, self._scan_slice_axis)

    def _scan_slice_axis(self, image: Any, shape: tuple[int, ...]) -> int:
        """The scan's file axis the model slices across, from the model file's header and
        the layer's geometry (no network is loaded on napari's thread)."""
        affine, _ = stated_orientation(image)
        spec = load_spec(self._model_path())
        return model_grid(spec, shape, affine=affine).scan_slice_axis


def _after_this_event(function) -> None:
    """Run ``function`` from Qt's event loop once the current event is handled."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, function)
