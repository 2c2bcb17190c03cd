"""The "Train model" widget: train or fine-tune on layer pairs or a dataset folder.

Image + Labels layer pairs are saved (geometry kept) as an MSD-layout dataset beside the
run, then the headless trainer runs in a worker: the same training as ``lasc train``
(:mod:`src_monai.training.plan`: both stages of a two-stage model, or stage 2 alone when
fine-tuning), with its run folders, checkpoints and curves. *Stop* ends the current epoch,
validates and saves; the trained model is then listed in the Segment widget.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    create_widget,
)

from src_monai.data.prepare import add_msd_case
from src_monai.errors import LascError
from src_monai.inference.predictor import resolve_device
from src_monai.io.scans import as_label_array
from src_monai.progress import Progress
from src_monai.training.plan import training_plan
from src_monai.training.run_folder import new_run_dir
from src_monai.training.trainer import TrainResult
from src_monai.training.two_stage import TwoStageResult

from ._controls import ScrollingContainer, button_row, result_label
from ._layers import check_scan_layer, from_layer_axes, layer_geometry
from ._models import MODELS, follow_models
from ._worker import start_job

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

LAYER_PAIRS, DATASET_FOLDER = "image + labels layers", "dataset folder (MSD or PNG)"
RANDOM_START = "none: random initial weights"
DEFAULT_RUNS = Path.home() / "napari-lasc-runs"


@dataclass(frozen=True)
class TrainingPair:
    """One image layer's data and its labels, captured in the main thread."""

    name: str
    image: np.ndarray  # file index order
    labels: np.ndarray
    geometry: Any


def export_pairs(pairs: list[TrainingPair], folder: Path, class_names: list[str]) -> Path:
    """Write layer pairs as an MSD dataset (``imagesTr``, ``labelsTr``, ``dataset.json``)."""
    for pair in pairs:
        add_msd_case(folder, pair.name, pair.image, pair.labels, pair.geometry, class_names)
    return folder


class TrainWidget(ScrollingContainer):
    """Train a model from napari layers or a dataset folder, live loss and validation Dice."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        super().__init__(self._make_controls())
        self._pairs: list[tuple[Any, Any]] = []
        self._stop_requested = threading.Event()
        self._source.changed.connect(self._source_changed)
        self._add_pair.changed.connect(self.add_pair)
        self._clear_pairs.changed.connect(self.clear_pairs)
        self._start.changed.connect(self.start)
        self._stop.changed.connect(self.stop)
        follow_models(self._base, self)
        self.worker: Any = None
        self.result: TrainResult | None = None
        self.history: list[dict[str, float]] = []
        self.model_name: str | None = None

    def _make_controls(self) -> list[Any]:
        import napari.layers

        self._source = ComboBox(label="train on", choices=[LAYER_PAIRS, DATASET_FOLDER])
        self._image = create_widget(annotation=napari.layers.Image, label="scan")
        self._labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self._add_pair = PushButton(text="Add pair")
        self._clear_pairs = PushButton(text="Clear")
        self._pairs_label = Label(label="pairs", value="none")
        self._dataset = FileEdit(label="dataset", mode="d", visible=False)
        self._base = ComboBox(label="start from", choices=self._base_choices)
        self._epochs = SpinBox(label="epochs", min=1, max=10_000, value=10)
        self._steps = SpinBox(label="steps per epoch", min=1, max=100_000, value=50)
        self._batch_size = SpinBox(label="batch size", min=1, max=1024, value=8)
        self._localiser_too = CheckBox(
            label="also fine-tune stage 1",
            value=False,
            tooltip="For a two-stage model: fine-tune the localiser as well as the segmenter "
            "(else the starting model's localiser is kept)",
        )
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._runs_dir = FileEdit(label="runs folder", mode="d", value=DEFAULT_RUNS)
        self._start = PushButton(text="Train")
        self._stop = PushButton(text="Stop and save", enabled=False)
        self._bar = ProgressBar(label="progress", value=0, max=1, visible=False)
        self._status = result_label("status")
        return [
            self._source,
            self._image,
            self._labels_layer,
            button_row(self._add_pair, self._clear_pairs),
            self._pairs_label,
            self._dataset,
            self._base,
            self._epochs,
            self._steps,
            self._batch_size,
            self._localiser_too,
            self._device,
            self._runs_dir,
            button_row(self._start, self._stop),
            self._bar,
            self._status,
        ]

    def prepare_fine_tune(self, dataset: Path, model_name: str) -> None:
        """Set up fine-tuning: the dataset folder as the data, ``model_name`` as the start."""
        self._source.value = DATASET_FOLDER
        self._dataset.value = dataset
        self._base.reset_choices()
        self._base.value = model_name
        self._status_text(f"fine-tune {model_name} on {dataset}: press Train")

    def _base_choices(self, _widget=None) -> list[str]:
        return [*MODELS.names(), RANDOM_START]

    def _source_changed(self, source: str) -> None:
        layers = source == LAYER_PAIRS
        for widget in (self._image, self._labels_layer, self._add_pair, self._clear_pairs):
            widget.visible = layers
        self._pairs_label.visible = layers
        self._dataset.visible = not layers

    # ------------------------------------------------------------------ pairs

    def add_pair(self) -> None:
        """Add the chosen scan and labels layers as one training case."""
        from napari.utils.notifications import show_error

        image, labels = self._image.value, self._labels_layer.value
        try:
            check_scan_layer(image)
            if labels is None:
                raise LascError(None, "no labels layer chosen")
            if labels.data.shape != image.data.shape:
                raise LascError(
                    labels.name, f"shape {labels.data.shape} differs from {image.name}'s"
                )
            if not np.any(np.asarray(labels.data)):
                raise LascError(labels.name, "is empty: paint the left atrium first")
            if any(existing is image for existing, _ in self._pairs):
                raise LascError(image.name, "is already in the training set")
        except LascError as exc:
            show_error(str(exc))
            return
        self._pairs.append((image, labels))
        self._pairs_label.value = ", ".join(f"{i.name} + {lab.name}" for i, lab in self._pairs)

    def clear_pairs(self) -> None:
        self._pairs.clear()
        self._pairs_label.value = "none"

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Save the layer pairs (if any) and start training in a worker."""
        from napari.utils.notifications import show_error

        if self.worker is not None:
            return
        try:
            resolve_device(self._device.value)
            base = None if self._base.value == RANDOM_START else self._base_path()
            runs_dir = Path(self._runs_dir.value)
            pairs, dataset = self._captured_data()
        except LascError as exc:
            show_error(str(exc))
            return
        options = {
            "epochs": int(self._epochs.value),
            "steps_per_epoch": int(self._steps.value),
            "batch_size": int(self._batch_size.value),
            "device": self._device.value,
            "localiser_too": bool(self._localiser_too.value),
        }
        self._stop_requested.clear()
        self.history = []

        def job():
            folder = dataset
            if pairs:
                runs_dir.mkdir(parents=True, exist_ok=True)
                staging = new_run_dir(runs_dir, "layers-dataset")
                folder = export_pairs(pairs, staging / "data", ["background", "left atrium"])
            cases = len(pairs) if pairs else _msd_case_count(folder)
            plan = training_plan(base, folder, runs_dir, cases=cases, **options)
            return (yield from plan.run(stop=self._stop_requested.is_set))

        self._set_running(True)
        self.worker = start_job(
            job,
            description="Train model",
            on_progress=self._progressed,
            on_done=self._trained,
            on_cancelled=lambda: self._status_text("cancelled"),
            on_finished=lambda: self._set_running(False),
        )

    def _base_path(self) -> Path:
        """The chosen starting model's file (the bundled model's own file for it)."""
        from src_monai.model.files import BUNDLED_MODEL

        return MODELS.path(self._base.value) or BUNDLED_MODEL

    def _captured_data(self) -> tuple[list[TrainingPair], Path | None]:
        if self._source.value == DATASET_FOLDER:
            folder = Path(self._dataset.value)
            if not folder.is_dir():
                raise LascError(folder, "dataset folder not found")
            return [], folder
        if not self._pairs:
            raise LascError(None, "no training pairs: choose a scan and its labels, Add pair")
        pairs = []
        for image, labels in self._pairs:
            if image not in self._viewer.layers or labels not in self._viewer.layers:
                raise LascError(image.name, "was removed from the viewer; Clear and add again")
            pairs.append(
                TrainingPair(
                    name=image.name.replace(" ", "_"),
                    image=np.ascontiguousarray(from_layer_axes(np.asarray(image.data))),
                    labels=as_label_array(
                        np.ascontiguousarray(from_layer_axes(np.asarray(labels.data))),
                        2,
                        source=labels.name,
                    ),
                    geometry=layer_geometry(image),
                )
            )
        return pairs, None

    def stop(self) -> None:
        """Finish the current epoch early, validate, save, and end the run."""
        self._stop_requested.set()
        self._status_text("stopping after this step: validating and saving…")

    def _set_running(self, running: bool) -> None:
        self._start.enabled = not running
        self._stop.enabled = running
        self._bar.visible = running
        if not running:
            self.worker = None

    def _progressed(self, report: Progress) -> None:
        self._bar.max = max(report.total, 1)
        self._bar.value = min(report.done, report.total)
        if report.metrics:
            self.history.append(dict(report.metrics))
            self._status_text(_epoch_text(report.metrics))

    def _status_text(self, text: str) -> None:
        self._status.value = text

    def _trained(self, result: TrainResult | TwoStageResult) -> None:
        from napari.utils.notifications import show_info, show_warning

        self.result = result
        if result.best_model is None:  # stopped during a two-stage run's first stage
            self._status_text(
                f"{result.stopped}: no model yet; continue with "
                f"`lasc train --resume {result.run_dir}`"
            )
            show_warning(f"stopped before both stages were trained: {result.run_dir}")
            return
        self.model_name = MODELS.add(f"trained: {result.run_dir.name}", result.best_model)
        dice = "" if result.best_dice < 0 else f", best validation Dice {result.best_dice:.3f}"
        self._status_text(
            f"{result.stopped} after {result.epochs_done} epochs{dice}; "
            f"model in {result.best_model}"
        )
        show_info(f"trained model {self.model_name!r} is now listed in Segment left atrium")


def _msd_case_count(folder: Path) -> int | None:
    """How many cases an MSD-layout folder lists (``None`` for other layouts)."""
    from src_monai.data.datasets import discover_msd

    try:
        return len(discover_msd(folder, verify=False).training)
    except LascError:
        return None


def _epoch_text(metrics: Any) -> str:
    text = f"epoch {int(metrics['epoch'])}: loss {metrics['train_loss']:.4f}"
    if "val_dice" in metrics:
        text += f", validation Dice {metrics['val_dice']:.3f}"
    return text
