"""The napari plugin in a real viewer (Xvfb through pytest-xvfb): reader, writer, sample
data and the three widgets, driven as a user would and waited for like a user would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import OBLIQUE_AFFINE, save_nifti, synthetic_case

from src_monai.evaluation.metrics import case_metrics
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_scan
from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN
from src_monai.progress import run_to_end

pytestmark = pytest.mark.gui

PLUGIN = "napari-lasc"
WORKER_TIMEOUT_MS = 120_000


def dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_for(qtbot, widget) -> None:
    """Wait until the widget's worker has finished and its results are in the viewer.

    Polls the widget's own state (cleared by its `finished` handler, connected before the
    worker started) rather than connecting to the worker's signals now: a fast worker may
    already have emitted them, and a late connection would wait for ever.
    """
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WORKER_TIMEOUT_MS)


def wait_for_progress(qtbot, widget) -> None:
    """Wait until the running worker has reported at least one step."""
    qtbot.waitUntil(lambda: widget._bar.value >= 1, timeout=WORKER_TIMEOUT_MS)


def segment(viewer, qtbot, image):
    """Dock the Segment widget, run it on ``image`` and wait for its result."""
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    widget.run()
    wait_for(qtbot, widget)
    return widget


def open_sample(viewer):
    layers = viewer.open_sample(PLUGIN, "la_016")
    return layers[0], layers[1]


# --------------------------------------------------------------------------- reader / writer


@pytest.mark.slow
def test_reader_places_a_real_case_and_its_labels_exactly(make_napari_viewer, lasc13):
    import napari.layers

    viewer = make_napari_viewer()
    image_path = lasc13 / "imagesTr" / "la_003.nii.gz"
    label_path = lasc13 / "labelsTr" / "la_003.nii.gz"
    (image,) = viewer.open(image_path, plugin=PLUGIN)
    (labels,) = viewer.open(label_path, plugin=PLUGIN)
    header = nib.load(image_path)
    assert isinstance(image, napari.layers.Image)
    assert isinstance(labels, napari.layers.Labels)
    assert image.data.shape == header.shape[::-1]
    np.testing.assert_allclose(image.scale, header.header.get_zooms()[::-1], rtol=1e-6)
    np.testing.assert_allclose(image.translate, header.affine[:3, 3][::-1], atol=1e-5)
    # Same world placement for every voxel corner: the labels overlay the scan exactly.
    for corner in [(0, 0, 0), tuple(n - 1 for n in image.data.shape), (10, 100, 50)]:
        np.testing.assert_allclose(
            image.data_to_world(corner), labels.data_to_world(corner), atol=1e-6
        )
    truth = np.asanyarray(nib.load(label_path).dataobj)
    np.testing.assert_array_equal(labels.data, truth.transpose(2, 1, 0))
    assert labels.name == "la_003 labels"
    # Distances in napari are millimetres: the world extent is shape x spacing.
    extent = image.extent.world[1] - image.extent.world[0]
    np.testing.assert_allclose(
        extent,
        (np.array(image.data.shape) - 1) * np.array(header.header.get_zooms()[::-1]),
        rtol=1e-5,
    )


def test_reader_declines_other_files_and_reports_bad_scans(make_napari_viewer, tmp_path, errors):
    from napari_lasc._reader import get_reader

    assert get_reader(str(tmp_path / "slice.png")) is None
    assert get_reader(str(tmp_path)) is None
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    untouched = bad.read_bytes()
    viewer = make_napari_viewer()
    viewer.open(bad, plugin=PLUGIN)
    assert len(viewer.layers) == 0
    (message,) = errors()
    assert "broken.nii.gz" in message and "\n" not in message
    assert bad.read_bytes() == untouched
    # The viewer still opens a good scan afterwards.
    good = save_nifti(tmp_path / "good.nii.gz", synthetic_case()[0])
    viewer.open(good, plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["good"]


def test_writer_restores_the_scan_geometry_oblique_included(make_napari_viewer, tmp_path):
    scan, labels, _ = synthetic_case()
    scan_path = save_nifti(tmp_path / "case.nii.gz", scan)
    (tmp_path / "labelsTr").mkdir()
    label_path = save_nifti(tmp_path / "labelsTr" / "case.nii.gz", labels)
    viewer = make_napari_viewer()
    viewer.open(scan_path, plugin=PLUGIN)
    (label_layer,) = viewer.open(label_path, plugin=PLUGIN)
    label_layer.data[0, 0, 0] = 1  # an edit, as with napari's brush
    out = tmp_path / "saved" / "case_labels.nii.gz"
    out.parent.mkdir()
    written = label_layer.save(str(out), plugin=PLUGIN)
    assert written == [str(out)]
    saved, source = nib.load(out), nib.load(scan_path)
    np.testing.assert_allclose(saved.affine, OBLIQUE_AFFINE, atol=1e-6)
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-6)
    assert saved.header["qform_code"] == source.header["qform_code"]
    assert saved.header["sform_code"] == source.header["sform_code"]
    expected = labels.astype(np.uint8).copy()
    expected[0, 0, 0] = 1
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), expected)


def test_writer_uses_scale_and_translate_for_layers_from_elsewhere(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((5, 6, 7), dtype=np.uint8)
    data[2, 3, 4] = 1
    layer = viewer.add_labels(data, scale=(3.0, 0.5, 0.25), translate=(10.0, -4.0, 2.0))
    out = tmp_path / "plain.nii.gz"
    layer.save(str(out), plugin=PLUGIN)
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine[:3, :3], np.diag([0.25, 0.5, 3.0]))
    np.testing.assert_allclose(saved.affine[:3, 3], [2.0, -4.0, 10.0])
    # Reopened through the reader it lands where it was.
    (again,) = viewer.open(out, plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, layer.scale)
    np.testing.assert_allclose(again.translate, layer.translate)
    np.testing.assert_array_equal(again.data, data)


def test_sample_data_is_a_real_scan_with_its_labels(make_napari_viewer):
    import napari.layers

    viewer = make_napari_viewer()
    image, labels = open_sample(viewer)
    assert isinstance(image, napari.layers.Image) and isinstance(labels, napari.layers.Labels)
    assert image.data.shape == labels.data.shape
    np.testing.assert_allclose(image.scale, labels.scale)
    np.testing.assert_allclose(image.translate, labels.translate)
    assert 20 < np.count_nonzero(labels.data) * np.prod(labels.scale) / 1000 < 300  # mL
    assert labels.features["class"].tolist() == ["background", "left atrium"]


# --------------------------------------------------------------------------- segment


def test_segment_widget_whole_volume_then_update_in_place(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    image, truth = open_sample(viewer)
    widget = segment(viewer, qtbot, image)
    assert errors() == []
    layer = viewer.layers["la_016 left atrium"]
    assert layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.features["class"].tolist() == ["background", "left atrium"]
    # A real check of the shipped model on real data, not a stored number.
    dice = case_metrics(layer.data, truth.data, truth.scale, 2)["dice"]
    assert dice >= 0.85
    summary = widget.summary
    expected_ml = np.count_nonzero(layer.data == 1) * np.prod(image.scale) / 1000
    assert summary.volume_ml == pytest.approx(expected_ml)
    first, last = summary.slice_range
    occupied = np.flatnonzero(np.any(layer.data == 1, axis=(1, 2)))
    assert (first, last) == (occupied[0], occupied[-1])
    assert f"{summary.volume_ml:.1f} mL" in widget._result.value
    assert widget.quality_flags == []  # one atrium of plausible size, away from the edges
    assert "QC: ok" in widget._result.value
    # The area curve: one point per napari slice; a click on it moves napari there.
    areas = np.count_nonzero(layer.data == 1, axis=(1, 2)) * np.prod(image.scale[1:])
    np.testing.assert_allclose(widget.measurements.slice_areas_mm2, areas)
    assert 0.3 < widget.measurements.sphericity < 1.0
    from matplotlib.backend_bases import MouseEvent

    curve = widget.area_curve
    curve.canvas.draw()
    x, y = curve.axes.transData.transform((30, float(areas[30])))
    curve.canvas.callbacks.process(
        "button_press_event", MouseEvent("button_press_event", curve.canvas, x, y, button=1)
    )
    assert round(layer.world_to_data(viewer.dims.point)[0]) == 30
    # Re-run without post-processing: the same layer is updated, not a second one added.
    count = len(viewer.layers)
    widget._postprocess.value = False
    widget.run()
    wait_for(qtbot, widget)
    assert len(viewer.layers) == count
    assert viewer.layers["la_016 left atrium"] is layer


def test_segment_cancel_leaves_no_layer_and_the_viewer_usable(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = open_sample(viewer)
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    widget._batch_size.value = 1  # many small steps: a cancel lands mid-run
    widget.run()
    worker = widget.worker
    wait_for_progress(qtbot, widget)
    with qtbot.waitSignal(worker.aborted, timeout=WORKER_TIMEOUT_MS):
        widget._cancel.native.click()
    wait_for(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["la_016", "la_016 ground truth"]
    assert "cancelled" in widget._result.value
    assert widget._run.enabled and not widget._cancel.enabled
    # Usable: the viewer responds and the next run completes.
    viewer.dims.set_current_step(0, 40)
    widget._current_slice.value = True
    widget.run()
    wait_for(qtbot, widget)
    assert "la_016 left atrium" in viewer.layers


def test_segment_current_slice_matches_the_whole_volume(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, _ = open_sample(viewer)
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    widget._current_slice.value = True
    index = 45
    viewer.dims.set_current_step(0, index)
    widget.run()
    wait_for(qtbot, widget)
    layer = viewer.layers["la_016 left atrium"]
    predictor = Predictor.from_checkpoint(device="cpu")
    whole = run_to_end(
        predictor.predict_volume(read_scan(SAMPLE_SCAN).array, predictor.options(postprocess=False))
    ).labels
    np.testing.assert_array_equal(layer.data[index], whole[:, :, index].T)
    assert not np.any(np.delete(layer.data, index, axis=0))
    assert widget.summary.slice_index == index
    assert widget.summary.area_mm2 == pytest.approx(
        np.count_nonzero(whole[:, :, index] == 1) * np.prod(image.scale[1:])
    )
    assert widget.summary.seconds < 30  # sanity only; the timing is measured in benchmarks


def test_segment_errors_are_notifications_and_the_widget_stays_usable(
    make_napari_viewer, qtbot, tmp_path, errors
):
    from napari_lasc._models import FROM_FILE

    viewer = make_napari_viewer()
    widget = dock(viewer, "Segment left atrium")
    widget.run()  # no layer at all
    viewer.add_image(np.zeros((32, 32), dtype=np.float32), name="flat")
    widget._image.value = viewer.layers["flat"]
    widget.run()
    viewer.add_image(np.zeros((4, 32, 32, 3), dtype=np.uint8), name="colour", rgb=True)
    widget._image.value = viewer.layers["colour"]
    widget.run()
    viewer.add_image(np.zeros((8, 32, 32), dtype=np.float32), name="empty")
    widget._image.value = viewer.layers["empty"]
    widget.run()
    image, _ = open_sample(viewer)
    # One NaN voxel (a layer edited in napari's console): refused as lasc infer refuses such
    # a file, not segmented into an empty prediction.
    holed = np.asarray(image.data, dtype=np.float32).copy()
    holed[40, 100, 100] = np.nan
    viewer.add_image(holed, name="holed", scale=image.scale)
    widget._image.value = viewer.layers["holed"]
    widget.run()
    widget._image.value = image
    widget._model.value = FROM_FILE
    widget._model_file.value = tmp_path / "missing.safetensors"
    widget.run()
    messages = errors()
    assert len(messages) == 6, messages
    assert "no image layer" in messages[0]
    assert "flat" in messages[1] and "2D" in messages[1]
    assert "colour" in messages[2] and "RGB" in messages[2]
    assert "empty" in messages[3] and "blank" in messages[3]
    assert messages[4].startswith("holed: 1 voxels are NaN or infinite"), messages[4]
    assert "holed left atrium" not in viewer.layers
    assert "missing.safetensors" in messages[5] and "not found" in messages[5]
    if not torch.cuda.is_available():
        widget._model.value = widget._model.choices[0]
        widget._device.value = "cuda"
        widget.run()
        assert "CUDA" in errors()[-1]
        widget._device.value = "cpu"
    assert widget.worker is None and widget._run.enabled
    # A damaged model file fails inside the worker: one line, nothing added.
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a model")
    widget._model.value = FROM_FILE
    widget._model_file.value = damaged
    widget.run()
    wait_for(qtbot, widget)
    assert "damaged.safetensors" in errors()[-1]
    assert "la_016 left atrium" not in viewer.layers
    widget._model.value = widget._model.choices[0]
    widget._current_slice.value = True
    widget.run()
    wait_for(qtbot, widget)
    assert "la_016 left atrium" in viewer.layers


# --------------------------------------------------------------------------- compare


def test_compare_widget_equals_lasc_evaluate(make_napari_viewer, qtbot, tmp_path):
    from src_monai.cli import main as lasc

    viewer = make_napari_viewer()
    _image, truth = open_sample(viewer)
    predicted = truth.data.copy()
    predicted[:, :, :10] = 0  # a plausible miss ...
    predicted[40, 5:15, 200:210] = 1  # ... and a false island
    prediction = viewer.add_labels(
        predicted,
        name="edited",
        scale=truth.scale,
        translate=truth.translate,
        units=truth.units,
        metadata=dict(truth.metadata),
    )
    widget = dock(viewer, "Compare with ground truth")
    widget._prediction.value = prediction
    widget._truth.value = truth
    widget.compare()
    wait_for(qtbot, widget)
    errors_layer = viewer.layers["edited vs la_016 ground truth errors"]
    fp = (predicted == 1) & (truth.data == 0)
    fn = (truth.data == 1) & (predicted == 0)
    np.testing.assert_array_equal(errors_layer.data == 1, fp)
    np.testing.assert_array_equal(errors_layer.data == 2, fn)
    # The same pair through files and the CLI gives the same numbers.
    (tmp_path / "pred").mkdir()
    prediction.save(str(tmp_path / "pred" / "la_016.nii.gz"), plugin=PLUGIN)
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "la_016.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    report = tmp_path / "report"
    command = ["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")]
    assert lasc([*command, "--out", str(report)]) == 0
    import csv

    with open(tmp_path / "report" / "per_case.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    metrics = widget.metrics
    assert metrics["dice"] == pytest.approx(float(row["dice"]), abs=1e-4)
    assert metrics["hd95_mm"] == pytest.approx(float(row["hd95_mm"]), abs=1e-3)
    assert metrics["volume_pred_ml"] == pytest.approx(float(row["volume_pred_ml"]), abs=1e-3)
    assert f"Dice {metrics['dice']:.3f}" in widget._result.value
    difference = metrics["volume_pred_ml"] - metrics["volume_truth_ml"]
    assert f"{difference:+.1f} mL" in widget._volumes.value


@pytest.mark.parametrize("name", ["la_016", "my patient"])
def test_compare_says_when_the_model_had_learnt_from_the_scan(make_napari_viewer, qtbot, name):
    """la_016 is a training case of the bundled model: its score is marked as such, in the
    words lasc evaluate and lasc demo use, with the model's cross-validated figure (or that
    it has none) beside it; also
    when the layer is renamed (recognised by its voxels, in file order)."""
    from src_monai.model.files import BUNDLED_MODEL, load_spec

    viewer = make_napari_viewer()
    image, truth = open_sample(viewer)
    image.name = name
    segment(viewer, qtbot, image)
    compare = dock(viewer, "Compare with ground truth")
    compare._prediction.value = viewer.layers[f"{name} left atrium"]
    compare._truth.value = truth
    compare.compare()
    wait_for(qtbot, compare)
    spec = load_spec(BUNDLED_MODEL)
    note = spec.seen_note({name: "training"})
    assert f"{name} is a training case of this model" in note
    accuracy = spec.cross_validation.text() if spec.cross_validation else "no cross-validated"
    assert accuracy in note
    assert note in " ".join(compare._result.value.split()), compare._result.value  # wrapped


def test_compare_refuses_mismatched_layers(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    a = viewer.add_labels(np.zeros((4, 5, 6), dtype=np.uint8), name="a")
    b = viewer.add_labels(np.zeros((4, 5, 7), dtype=np.uint8), name="b")
    widget = dock(viewer, "Compare with ground truth")
    widget._prediction.value, widget._truth.value = a, b
    widget.compare()
    widget._truth.value = a
    widget.compare()
    first, second = errors()
    assert "shape" in first and "a" in first
    assert "both" in second
    assert widget.worker is None and len(viewer.layers) == 2


# --------------------------------------------------------------------------- train


def test_train_widget_fine_tunes_and_the_model_is_offered_for_segmentation(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_lasc._models import MODELS

    viewer = make_napari_viewer()
    image, truth = open_sample(viewer)
    train = dock(viewer, "Train model")
    segment = dock(viewer, "Segment left atrium")
    train._image.value, train._labels_layer.value = image, truth
    train.add_pair()
    train._epochs.value, train._steps.value, train._batch_size.value = 2, 2, 2
    train._device.value = "cpu"
    train._runs_dir.value = tmp_path / "runs"
    train.start()
    wait_for(qtbot, train)
    result = train.result
    assert result is not None and result.epochs_done == 2 and result.stopped == "completed"
    assert result.best_model.is_file()
    assert [row["epoch"] for row in train.history] == [1, 2]
    assert all(np.isfinite(row["train_loss"]) for row in train.history)
    # The layers were saved as a dataset with the scan's geometry.
    saved = next((tmp_path / "runs").glob("layers-dataset*/data/imagesTr/la_016.nii.gz"))
    np.testing.assert_allclose(nib.load(saved).affine, nib.load(SAMPLE_SCAN).affine, atol=1e-6)
    # The new model is listed in the Segment widget and segments with it.
    assert train.model_name in segment._model.choices
    assert MODELS.path(train.model_name) == result.best_model
    segment._image.value = image
    segment._model.value = train.model_name
    segment._current_slice.value = True
    segment.run()
    wait_for(qtbot, segment)
    assert "la_016 left atrium" in viewer.layers


def test_uncertainty_layer_and_go_to_the_most_uncertain_slice(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    image, _ = open_sample(viewer)
    # 16 slices through the atrium keep the five-view run short on a CPU.
    part = viewer.add_image(
        image.data[30:46], name="la_016 part", scale=image.scale, translate=image.translate
    )
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = part
    widget._uncertainty.value = True
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == []
    layer = viewer.layers["la_016 part uncertainty"]
    assert layer.data.shape == part.data.shape
    np.testing.assert_allclose(layer.scale, part.scale)
    np.testing.assert_allclose(layer.translate, part.translate)
    assert layer.data.min() >= 0.0 and layer.data.max() <= 1.0 + 1e-6
    # The per-slice score is the map summed per napari slice (axis 0) times the pixel area.
    scores = widget.uncertainty
    areas = layer.data.sum(axis=(1, 2)) * np.prod(part.scale[1:])
    np.testing.assert_allclose(scores.slice_uncertain_area_mm2, areas, rtol=1e-4)
    assert scores.most_uncertain_slice == int(np.argmax(areas))
    assert f"most uncertain slice {scores.most_uncertain_slice}" in widget._result.value
    assert widget._go_uncertain.enabled
    viewer.dims.set_point(0, part.data_to_world([0, 0, 0])[0])
    widget._go_uncertain.native.click()
    assert round(part.world_to_data(viewer.dims.point)[0]) == scores.most_uncertain_slice


@pytest.mark.slow
def test_correction_round_trip_add_to_training_set_then_fine_tune(
    make_napari_viewer, qtbot, tmp_path, errors
):
    """Segment, correct with napari's own brush, save as an MSD case, fine-tune from the
    current model on it, and get a model that started from the current model's weights."""
    from src_monai.model.files import BUNDLED_MODEL, load_model

    viewer = make_napari_viewer()
    image, _ = open_sample(viewer)
    segment = dock(viewer, "Segment left atrium")
    segment._image.value = image
    segment._current_slice.value = True  # quick: the correction is what matters here
    viewer.dims.set_point(0, image.data_to_world([40, 0, 0])[0])
    segment.run()
    wait_for(qtbot, segment)
    labels = viewer.layers["la_016 left atrium"]
    assert np.any(labels.data[40] == 1)
    # The brush: add LA on slice 41, erase a spot on slice 40.
    labels.brush_size = 9
    labels.paint((41, 128, 128), 1)
    erase_at = tuple(int(v) for v in np.argwhere(labels.data[40] == 1)[0])
    labels.paint((40, *erase_at), 0)
    assert labels.data[41, 128, 128] == 1 and labels.data[40][erase_at] == 0
    folder = tmp_path / "training set"
    segment._training_set.value = folder
    segment._add_case.native.click()
    wait_for(qtbot, segment)
    assert errors() == []
    assert segment.added_case == "la_016"
    saved_image = nib.load(folder / "imagesTr" / "la_016.nii.gz")
    saved_labels = nib.load(folder / "labelsTr" / "la_016.nii.gz")
    scan = nib.load(SAMPLE_SCAN)
    np.testing.assert_allclose(saved_image.affine, scan.affine, atol=1e-6)
    np.testing.assert_allclose(saved_labels.affine, scan.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(saved_image.dataobj), np.asarray(scan.dataobj))
    # The corrected layer, in the file's axis order (napari shows them reversed).
    np.testing.assert_array_equal(np.asarray(saved_labels.dataobj), labels.data.transpose(2, 1, 0))
    # A second add keeps the first: a new case id, both listed.
    segment._add_case.native.click()
    wait_for(qtbot, segment)
    assert segment.added_case == "la_016_2"
    listed = json.loads((folder / "dataset.json").read_text())["training"]
    assert [entry["label"] for entry in listed] == [
        "./labelsTr/la_016.nii.gz",
        "./labelsTr/la_016_2.nii.gz",
    ]
    # Fine-tune: the Train widget opens on that folder, starting from the current model.
    segment._fine_tune.native.click()
    train = segment.train_widget
    assert train._source.value.startswith("dataset folder")
    assert Path(train._dataset.value) == folder
    assert train._base.value == segment._model.value
    train._epochs.value, train._steps.value, train._batch_size.value = 1, 1, 2
    train._device.value = "cpu"
    train._runs_dir.value = tmp_path / "runs"
    train.start()
    wait_for(qtbot, train)
    assert errors() == []
    assert train.result is not None and train.result.best_model.is_file()
    tuned, _ = load_model(train.result.best_model)
    base, _ = load_model(BUNDLED_MODEL)
    # One AdamW step at lr 1e-3 moves each weight by about 1e-3; fresh weights differ by far more.
    change = max(
        (a - b).abs().max().item()
        for a, b in zip(tuned.state_dict().values(), base.state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    assert change < 0.05


def test_fine_tune_without_a_training_set_says_so(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    segment = dock(viewer, "Segment left atrium")
    segment._training_set.value = tmp_path / "empty"
    segment._fine_tune.native.click()
    assert segment.train_widget is None
    assert any("no training set yet" in message for message in errors())
    segment._add_case.native.click()  # no scan layer at all
    assert segment.worker is None and len(errors()) == 2


def test_train_widget_stop_saves_the_run(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, truth = open_sample(viewer)
    train = dock(viewer, "Train model")
    train._image.value, train._labels_layer.value = image, truth
    train.add_pair()
    train._base.value = train._base.choices[-1]  # random initial weights
    train._epochs.value, train._steps.value, train._batch_size.value = 100, 4, 2
    train._device.value = "cpu"
    train._runs_dir.value = tmp_path / "runs"
    started = time.perf_counter()
    train.start()
    wait_for_progress(qtbot, train)
    train._stop.native.click()
    wait_for(qtbot, train)
    result = train.result
    assert result.stopped == "stopped"
    assert result.epochs_done <= 2  # of 100: it ended at the step after Stop
    # The bundled recipe has two stages: from random weights both train, and Stop came in the
    # first; its run is saved (`lasc train --resume RUN` continues), there is no model yet.
    assert list(result.stages) == ["localiser"]
    assert (result.run_dir / "localiser" / "checkpoints" / "last.safetensors").is_file()
    assert (result.run_dir / "stages.toml").is_file()
    assert result.best_model is None and "no model yet" in train._status.value
    assert train.model_name is None
    assert time.perf_counter() - started < WORKER_TIMEOUT_MS / 1000


# --------------------------------------------------------------------------- screenshot


def test_screenshot_shows_the_atrium_over_the_scan(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    _image, truth = open_sample(viewer)
    truth.visible = True
    truth.opacity = 1.0
    slice_with_most = int(np.argmax(np.count_nonzero(truth.data, axis=(1, 2))))
    viewer.dims.set_current_step(0, slice_with_most)
    colour = np.asarray(truth.get_color(1))[:3] * 255  # the truth's own colour (green)

    def in_colour(shot: np.ndarray) -> np.ndarray:
        return np.abs(shot[..., :3].astype(int) - colour).max(axis=-1) < 40

    shot = viewer.screenshot(canvas_only=True, flash=False)
    rgb = shot[..., :3].astype(int)
    grey = (np.abs(rgb[..., 0] - rgb[..., 1]) < 8) & (rgb[..., 0] > 40)
    assert in_colour(shot).sum() > 200  # the labels are drawn ...
    assert grey.sum() > 10 * in_colour(shot).sum()  # ... over a visible scan
    truth.visible = False
    assert in_colour(viewer.screenshot(canvas_only=True, flash=False)).sum() == 0


# --------------------------------------------------------------------------- DICOM


def test_napari_opens_a_dicom_folder_in_place_of_its_nifti(make_napari_viewer, tmp_path):
    """A DICOM series' folder opens like the NIfTI it was made from (same voxels, scale and
    placement); a folder with two series opens each as its own layer, named by its
    description, for the user to pick."""
    from test_dicom import write_dicom_series

    viewer = make_napari_viewer()
    series = write_dicom_series(
        SAMPLE_SCAN, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.7", "LA MRI"
    )
    (nifti,) = viewer.open(str(SAMPLE_SCAN), plugin=PLUGIN)
    (dicom,) = viewer.open(str(series), plugin=PLUGIN)
    np.testing.assert_array_equal(dicom.data, np.asarray(nifti.data).astype(np.int16))
    np.testing.assert_allclose(dicom.scale, nifti.scale, atol=1e-4)
    np.testing.assert_allclose(dicom.translate, nifti.translate, atol=1e-3)
    write_dicom_series(SAMPLE_SCAN, series, "1.2.826.0.1.3680043.2.1125.8", "second copy")
    layers = viewer.open(str(series), plugin=PLUGIN)
    assert sorted(layer.name for layer in layers) == ["series LA MRI", "series second copy"]


# --------------------------------------------------------------------------- the atrium box


def test_the_atrium_box_is_shown_and_a_moved_box_steers_stage_2(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    image, _truth = open_sample(viewer)
    widget = segment(viewer, qtbot, image)
    boxes = viewer.layers["la_016 atrium box"]
    assert "box: found by the model" in widget._result.value
    first, last = widget._box_first.value, widget._box_last.value
    assert len(boxes.data) == last - first + 1  # one rectangle on each of its slices
    # One convention for slice numbers (napari's indices, first-last inclusive), said in the
    # spin boxes' tooltip, for the LA's slices and the box's alike.
    labels = np.asarray(viewer.layers["la_016 left atrium"].data)
    occupied = np.flatnonzero(np.count_nonzero(labels, axis=(1, 2)))
    expected = f"LA volume {widget.summary.volume_ml:.1f} mL on slices {occupied[0]}-{occupied[-1]}"
    assert expected in widget._result.value, widget._result.value
    assert f"slices {first}-{last}" in widget._result.value
    assert "first to last inclusive" in widget._box_first.tooltip
    assert 0 <= first < last < image.data.shape[0]
    untouched = np.asarray(boxes.data[0]).copy()
    widget.run()  # the model's box, not touched: still the model's, not "yours"
    wait_for(qtbot, widget)
    assert "box: found by the model" in widget._result.value
    assert np.allclose(boxes.data[0], untouched)
    assert (widget._box_first.value, widget._box_last.value) == (first, last)
    # Move the rectangle 40 voxels along napari's last axis with napari's own Shapes API.
    moved = np.asarray(boxes.data[0]) + np.array([0.0, 0.0, 40.0])
    boxes.data = [moved]
    qtbot.waitUntil(lambda: len(boxes.data) == last - first + 1)  # again on every slice
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == [] and "box: yours" in widget._result.value
    labels = np.asarray(viewer.layers["la_016 left atrium"].data)
    occupied = np.nonzero(labels)
    centre = moved[:, 2].mean()
    half = 64  # the bundled segmenter's 128x128 crop, centred on the box
    assert occupied[2].min() >= centre - half - 1 and occupied[2].max() <= centre + half + 1
    margin = 5
    assert occupied[0].min() >= first - margin and occupied[0].max() <= last + margin


def test_the_box_is_seen_on_every_slice_of_its_range_and_an_edit_moves_it_there(
    make_napari_viewer, qtbot, errors
):
    """The viewer opens on the middle slice, not necessarily the box's: the box is drawn on
    each slice of its range and on none outside it; a rectangle moved on one slice (as
    napari's select tool reports it), or a changed range, moves the box on every slice."""
    from napari.layers.base import ActionType

    viewer = make_napari_viewer(show=True)
    image, truth = open_sample(viewer)
    truth.visible = False
    widget = segment(viewer, qtbot, image)
    viewer.layers[f"{image.name} left atrium"].visible = False
    boxes = viewer.layers["la_016 atrium box"]
    first, last = widget._box_first.value, widget._box_last.value
    assert sorted({int(r[0, 0]) for r in boxes.data}) == list(range(first, last + 1))
    yellow = np.array([255, 255, 0])

    def box_pixels(step: int) -> int:
        viewer.dims.set_current_step(0, step)
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
        return int((np.abs(shot - yellow).max(axis=-1) < 60).sum())

    assert box_pixels(first) > 50 and box_pixels(last) > 50 and box_pixels((first + last) // 2) > 50
    outside = [s for s in (first - 3, last + 3) if 0 <= s < image.data.shape[0]]
    assert outside and all(box_pixels(s) == 0 for s in outside)
    # Drag one rectangle 30 voxels along napari's last axis, on the box's first slice.
    index = next(i for i, r in enumerate(boxes.data) if int(r[0, 0]) == first)
    edited = [np.asarray(r).copy() for r in boxes.data]
    edited[index][:, 2] += 30.0
    with boxes.events.data.blocker():  # napari's mouse code edits quietly, then reports once
        boxes.data = edited
    boxes.events.data(
        value=boxes.data, action=ActionType.CHANGED, data_indices=(index,), vertex_indices=((),)
    )
    expected = edited[index][:, 2]
    qtbot.waitUntil(lambda: all(np.allclose(r[:, 2], expected) for r in boxes.data))
    assert len(boxes.data) == last - first + 1
    widget._box_last.value = last - 5  # a shorter range: the box leaves those slices
    assert sorted({int(r[0, 0]) for r in boxes.data}) == list(range(first, last - 4))
    assert all(np.allclose(r[:, 2], expected) for r in boxes.data)
    assert errors() == []


def test_a_box_that_misses_the_atrium_gives_a_flag_not_a_crash(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    image, _truth = open_sample(viewer)
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    corner = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 20.0], [5.0, 20.0, 20.0], [5.0, 20.0, 0.0]])
    viewer.add_shapes([corner], shape_type="rectangle", name="la_016 atrium box",
                      scale=image.scale, translate=image.translate)  # fmt: skip
    widget._box_first.value, widget._box_last.value = 0, 10
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == []
    assert "box: yours, slices 0-10" in widget._result.value
    assert "QC: ok" not in widget._result.value


@pytest.mark.parametrize("kind", ["2D shapes", "points"])
def test_a_layer_named_like_the_box_but_not_a_3d_shapes_layer_is_a_notification(
    kind, make_napari_viewer, errors
):
    viewer = make_napari_viewer()
    image, _truth = open_sample(viewer)
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    name = "la_016 atrium box"
    if kind == "points":
        viewer.add_points([[5.0, 10.0, 10.0]], name=name)
    else:
        square = np.array([[0.0, 0.0], [0.0, 20.0], [20.0, 20.0], [20.0, 0.0]])
        viewer.add_shapes([square], shape_type="rectangle", name=name)
    widget.run()
    widget._box_last.value = 10  # the range's spin box looks the layer up as well
    assert not widget._controller.running  # refused before any work
    messages = errors()
    assert len(messages) == 2
    assert all(name in m and "rename or delete it" in m for m in messages)
    assert f"{image.name} left atrium" not in viewer.layers


def test_when_the_model_finds_no_atrium_the_widget_asks_for_a_box(make_napari_viewer, qtbot):
    """A phantom (a bright bar at the edge, faint noise) where the bundled localiser finds no
    atrium: an empty box layer waits in rectangle mode and the result asks for a box; a box
    drawn there is then used."""
    viewer = make_napari_viewer()
    grid = np.indices((256, 256, 40))[0]
    noise = 0.01 * np.random.default_rng(0).random((256, 256, 40))
    phantom = (((grid - 20) ** 2 < 100) + noise).astype(np.float32)
    image = viewer.add_image(phantom.transpose(2, 1, 0), name="phantom", scale=(1.37, 1.25, 1.25))
    widget = segment(viewer, qtbot, image)
    boxes = viewer.layers["phantom atrium box"]
    assert len(boxes.data) == 0 and boxes.mode == "add_rectangle"
    assert "box: none found: draw one and press Segment" in widget._result.value
    drawn = np.array(
        [[20.0, 100.0, 100.0], [20.0, 100.0, 160.0], [20.0, 160.0, 160.0], [20.0, 160.0, 100.0]]
    )
    boxes.add_rectangles(drawn)
    widget._box_first.value, widget._box_last.value = 10, 30
    widget.run()
    wait_for(qtbot, widget)
    assert "box: yours, slices 10-30" in widget._result.value


def test_a_3d_two_stage_model_in_the_widget_volume_slice_box_and_uncertainty(
    make_napari_viewer, qtbot, errors, tmp_path
):
    """A two-stage model whose stage 2 is 3D (tiny, trained here) wherever the widget uses a
    model: the whole volume, the current slice, the box it shows, and the uncertainty map."""
    from conftest import make_msd_dataset, tiny_config, train_tiny_localiser

    from napari_lasc._models import FROM_FILE
    from src_monai.model.files import combine_stages
    from src_monai.training.trainer import run_training

    dataset = make_msd_dataset(tmp_path / "data", cases=4)
    localiser = train_tiny_localiser(dataset, tmp_path / "runs").best_model
    windows = {"crop_size": 16, "crop_depth": 4, "context_slices": 1, "crop_jitter": 2}
    training = {"epochs": 8, "steps_per_epoch": 10, "batch_size": 2, "learning_rate": 0.01}
    config = tiny_config(dataset, tmp_path / "runs", data=windows, train=training)
    segmenter = run_to_end(run_training(config)).best_model
    model = combine_stages(localiser, segmenter, tmp_path / "two_3d.safetensors")

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(dataset / "imagesTr" / "case_002.nii.gz"), plugin=PLUGIN)
    widget = dock(viewer, "Segment left atrium")
    widget._image.value = image
    widget._model.value = FROM_FILE
    widget._model_file.value = model
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == []
    name = f"{image.name} left atrium"
    whole = np.asarray(viewer.layers[name].data).copy()
    assert whole.shape == image.data.shape and np.count_nonzero(whole == 1) > 20
    assert f"{image.name} atrium box" in viewer.layers

    widget._current_slice.value = True
    index = int(np.flatnonzero(np.any(whole == 1, axis=(1, 2)))[0]) + 1
    viewer.dims.set_current_step(0, index)
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == []
    one = np.asarray(viewer.layers[name].data)  # that slice repainted, the rest kept
    np.testing.assert_array_equal(np.delete(one, index, axis=0), np.delete(whole, index, axis=0))
    assert np.count_nonzero(one[index] == 1) > 0
    assert widget.summary.slice_index == index

    widget._current_slice.value = False
    widget._uncertainty.value = True
    widget.run()
    wait_for(qtbot, widget)
    assert errors() == []
    uncertainty = viewer.layers[f"{image.name} uncertainty"].data
    assert uncertainty.shape == image.data.shape
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0 + 1e-6
    assert uncertainty.max() > 0.0


def test_compare_starts_on_prediction_and_truth_in_two_colours_and_clears_on_error(
    make_napari_viewer, qtbot
):
    """After Segment, Compare's pickers hold the prediction and the ground truth (not one
    layer twice), the two are drawn in different colours, the error layer is opaque over
    them, and an error clears the scores shown before instead of leaving them beside it."""
    viewer = make_napari_viewer()
    image, truth = open_sample(viewer)
    segment(viewer, qtbot, image)
    prediction = viewer.layers["la_016 left atrium"]
    compare = dock(viewer, "Compare with ground truth")
    assert compare._prediction.value is prediction and compare._truth.value is truth
    assert not np.allclose(prediction.get_color(1), truth.get_color(1))
    compare.compare()
    wait_for(qtbot, compare)
    assert compare._result.value.startswith("Dice ")
    assert viewer.layers["la_016 left atrium vs la_016 ground truth errors"].opacity == 1.0
    compare._truth.value = prediction
    compare.compare()
    assert compare._result.value == "" and compare._volumes.value == ""


# --------------------------------------------------------------------------- look and feel


def test_the_three_docks_fit_a_1280x800_screen_and_scroll(make_napari_viewer, qtbot):
    """All three widgets docked, as napari's plugin menu docks them (stacked on the right):
    the window still fits a 1280x800 screen, every control stays reachable (each dock's body
    scrolls when it is shorter than its controls), and the result text is never clipped."""
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    names = ("Segment left atrium", "Compare with ground truth", "Train model")
    widgets = [dock(viewer, name) for name in names]
    window = viewer.window._qt_window
    window.resize(1280, 800)
    qtbot.wait(50)
    assert window.minimumSizeHint().height() <= 800 and window.minimumSize().height() <= 800
    assert window.height() <= 800, window.height()
    last_controls = (widgets[0]._fine_tune, widgets[1]._volumes, widgets[2]._status)
    for name, widget, last in zip(names, widgets, last_controls, strict=True):
        scroll = widget.native.findChild(QScrollArea)
        assert scroll is not None, f"{name}: no scroll area"
        scroll.ensureWidgetVisible(last.native)  # scrolled to its last control ...
        qtbot.wait(20)
        assert not last.native.visibleRegion().isEmpty(), f"{name}: {last.label} unreachable"
    segment_widget = widgets[0]
    long_text = "a result line far wider than the dock " * 6
    segment_widget._show(long_text)  # ... and a long result wraps, not cut at the edge
    label = segment_widget._result.native
    assert label.wordWrap() and label.heightForWidth(label.width()) > label.fontMetrics().height()


def test_the_bundled_models_name_in_the_widget_says_what_the_file_holds():
    """The model picker's words for the bundled model come from a constant: checked against
    the shipped file, so a new bundled model cannot keep an old description."""
    from napari_lasc._models import BUNDLED
    from src_monai.model.files import BUNDLED_MODEL, load_spec

    spec = load_spec(BUNDLED_MODEL)
    assert ("two-stage" in BUNDLED) == (spec.localiser is not None)
    assert ("3D" in BUNDLED) == (spec.input.spatial_dims == 3)
    assert ("LGE" in BUNDLED) == ("atriaseg" in spec.record.source.lower())
