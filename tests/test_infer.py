"""Inference: Predictor API, geometry-exact outputs, PNG input, batching, TTA, windows."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import LASC
from PIL import Image

from src_monai.config import config_from_dict
from src_monai.errors import LascError
from src_monai.inference.files import predict_files
from src_monai.inference.options import PredictOptions
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_scan
from src_monai.io.tables import read_csv
from src_monai.progress import run_to_end


@pytest.fixture(scope="module")
def predictor(tiny_run):
    _, result = tiny_run
    return Predictor.from_checkpoint(result.best_model, device="cpu")


def test_predict_volume_yields_progress_and_returns_labels(predictor, tiny_run):
    dataset, _ = tiny_run
    volume = read_scan(dataset / "imagesTr" / "case_002.nii.gz").array
    job = predictor.predict_volume(volume, predictor.options(batch_size=4, probabilities=True))
    progress = []
    while True:
        try:
            progress.append(next(job))
        except StopIteration as stop:
            prediction = stop.value
            break
    assert [p.done for p in progress] == [4, 8, 9]  # 9 slices along axis 2, batches of 4
    assert prediction.labels.shape == volume.shape and prediction.labels.dtype == np.uint8
    assert prediction.probabilities.shape == (2, *volume.shape)
    assert np.allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(prediction.probabilities.argmax(axis=0), prediction.labels)


def test_batch_size_does_not_change_the_labels(predictor, tiny_run):
    dataset, _ = tiny_run
    volume = read_scan(dataset / "imagesTr" / "case_001.nii.gz").array
    one = run_to_end(predictor.predict_volume(volume, predictor.options(batch_size=1))).labels
    many = run_to_end(predictor.predict_volume(volume, predictor.options(batch_size=16))).labels
    assert np.array_equal(one, many)


def test_sliding_window_for_slices_larger_than_the_patch(predictor):
    volume = np.random.default_rng(0).normal(size=(80, 40, 5)).astype(np.float32)
    # 80x40 slices are larger than the 32x32 training patch: Gaussian sliding windows.
    labels = run_to_end(predictor.predict_volume(volume)).labels
    assert labels.shape == volume.shape and set(np.unique(labels)) <= {0, 1}


def test_tta_is_skipped_for_a_model_trained_without_flips(predictor, tiny_run, caplog):
    dataset, _ = tiny_run
    volume = read_scan(dataset / "imagesTr" / "case_001.nii.gz").array
    plain = run_to_end(predictor.predict_volume(volume, predictor.options(tta=False))).labels
    with caplog.at_level("WARNING"):
        tta = run_to_end(predictor.predict_volume(volume, predictor.options(tta=True))).labels
    assert np.array_equal(plain, tta)
    assert "trained without flips" in caplog.text


def test_tta_averages_the_flip_the_model_was_trained_with(predictor, tiny_run):
    dataset, _ = tiny_run
    volume = read_scan(dataset / "imagesTr" / "case_001.nii.gz").array
    recipe = config_from_dict({"augment": {"flip": True}})
    spec = replace(predictor.spec, record=replace(predictor.spec.record, recipe=recipe))
    flipping = Predictor(predictor.network, spec, predictor.device)
    averaged = run_to_end(
        flipping.predict_volume(volume, flipping.options(tta=True, probabilities=True))
    )
    plain = run_to_end(
        predictor.predict_volume(volume, predictor.options(probabilities=True))
    ).probabilities
    # Slices run along volume axis 2, so a slice's (H, W) are volume axes (0, 1): the
    # flipped W is volume axis 1.
    mirrored = run_to_end(
        predictor.predict_volume(
            np.ascontiguousarray(volume[:, ::-1]), predictor.options(probabilities=True)
        )
    ).probabilities[:, :, ::-1]
    assert np.allclose(averaged.probabilities, (plain + mirrored) / 2, atol=1e-5)


def test_files_are_written_with_the_scans_geometry(predictor, tiny_run, tmp_path):
    dataset, _ = tiny_run
    rows = run_to_end(
        predict_files(predictor, [dataset / "imagesTr"], tmp_path / "out", save_probabilities=True)
    )
    assert len(rows) == 4
    for source in sorted((dataset / "imagesTr").glob("*.nii.gz")):
        written = nib.load(tmp_path / "out" / source.name)
        original = nib.load(source)
        assert np.array_equal(written.affine, original.affine)
        assert written.shape == original.shape and written.get_data_dtype() == np.uint8
        assert int(written.header["sform_code"]) == int(original.header["sform_code"])
        assert (tmp_path / "out" / source.name.replace(".nii.gz", "_probability.nii.gz")).is_file()
        curve = (tmp_path / "out" / source.name.replace(".nii.gz", "_area_curve.csv")).read_text()
        lines = curve.splitlines()
        assert lines[0] == "slice,position_mm,area_mm2" and len(lines) == original.shape[2] + 1
        labels = np.asanyarray(written.dataobj)
        pixel_mm2 = float(np.prod(original.header.get_zooms()[:2]))
        areas = [float(line.split(",")[2]) for line in lines[1:]]
        np.testing.assert_allclose(
            areas, np.count_nonzero(labels == 1, axis=(0, 1)) * pixel_mm2, atol=0.01
        )
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert summary[0] == (
        "input,output,left atrium volume (mL),surface (mm²),sphericity,"
        "largest in-plane diameter (mm),width across it (mm),QC flags,seen by model"
    )
    assert len(summary) == 5


def test_existing_outputs_are_kept_unless_asked(predictor, tiny_run, tmp_path):
    """A complete earlier result (labels and area curve) is kept by --skip-existing, and
    gets its summary row even when summary.csv lost it (an interruption between the labels
    and the row, or a deleted table); one with its area curve missing is segmented again."""
    dataset, _ = tiny_run
    out = tmp_path / "out"
    scans = sorted((dataset / "imagesTr").glob("*.nii.gz"))
    (first,) = run_to_end(predict_files(predictor, [scans[0]], out))
    kept = (out / "case_000.nii.gz").read_bytes()
    (out / "summary.csv").unlink()
    (out / "case_001.nii.gz").write_bytes(b"incomplete result")
    with pytest.raises(LascError, match="already exists"):
        run_to_end(predict_files(predictor, [dataset / "imagesTr"], out))
    rows = run_to_end(predict_files(predictor, [dataset / "imagesTr"], out, skip_existing=True))
    assert [Path(row["input"]).name for row in rows] == [
        "case_001.nii.gz",
        "case_002.nii.gz",
        "case_003.nii.gz",
    ]
    assert (out / "case_000.nii.gz").read_bytes() == kept  # kept, not segmented again
    assert nib.load(out / "case_001.nii.gz").shape and (out / "case_001_area_curve.csv").is_file()
    summary = {Path(r["input"]).name: r for r in read_csv(out / "summary.csv")}
    assert sorted(summary) == [p.name for p in scans]
    volume = "left atrium volume (mL)"
    assert float(summary["case_000.nii.gz"][volume]) == pytest.approx(float(first[volume]))
    assert summary["case_000.nii.gz"]["QC flags"] == first["QC flags"]
    (out / "case_000.nii.gz").write_bytes(b"not a NIfTI any more")
    (out / "summary.csv").unlink()
    with pytest.raises(LascError, match="an earlier result kept by --skip-existing"):
        run_to_end(predict_files(predictor, [dataset / "imagesTr"], out, skip_existing=True))


def test_png_input_gives_coloured_masks_of_the_input_size(predictor, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 40), dtype=np.uint8)).save(
        folder / "10001_5.png"
    )
    run_to_end(predict_files(predictor, [folder], tmp_path / "out"))
    mask = np.asarray(Image.open(tmp_path / "out" / "10001_5.png"))
    assert mask.shape == (48, 40, 3)
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {(0, 0, 0), (255, 0, 255)}


def test_cli_infer(tiny_run, tmp_path):
    dataset, result = tiny_run
    command = [
        LASC,
        "infer",
        str(dataset / "imagesTr" / "case_000.nii.gz"),
        "--out",
        str(tmp_path / "o"),
        "--model",
        str(result.best_model),
        "--device",
        "cpu",
        "--batch-size",
        "2",  # several batches: the first progress line comes within the scan
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "left atrium volume (mL)" in done.stdout
    # Not a terminal: plain progress lines instead of a bar, the first one within the scan
    # (its batches of slices move the count), the last one at the end.
    lines = [line for line in done.stderr.splitlines() if line.startswith("infer: ")]
    assert re.match(r"infer: 0\.\d\d/1 file \(\d+ %\), .* files/s: case_000", lines[0])
    assert lines[-1].startswith("infer: 1/1 file (100 %)")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert "already exists" in again.stderr


def test_cli_infer_errors(tiny_run, tmp_path):
    dataset, result = tiny_run
    missing_model = subprocess.run(
        [
            LASC,
            "infer",
            str(dataset / "imagesTr"),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "none.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing_model.returncode == 2
    assert (
        missing_model.stderr.strip() == f"error: {tmp_path / 'none.safetensors'}: model "
        "file not found"
    )
    no_input = subprocess.run(
        [
            LASC,
            "infer",
            str(tmp_path / "nothing.nii.gz"),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(result.best_model),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert no_input.returncode == 2 and "input not found" in no_input.stderr


def test_a_suspended_or_abandoned_prediction_leaves_grad_mode_alone(predictor):
    """Grad mode is thread-local: a generator paused (or dropped, as on Cancel) between
    batches must not leave the thread in inference mode for whatever runs next there."""
    volume = np.random.default_rng(0).normal(size=(32, 32, 6)).astype(np.float32)
    job = predictor.predict_volume(volume, predictor.options(batch_size=1))
    next(job)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    del job
    weight = torch.ones(2, requires_grad=True)
    (weight * 2).sum().backward()  # would fail inside inference mode
    assert weight.grad is not None


def test_one_slice_equals_the_whole_volume_slice(predictor):
    from src_monai.inference.steps import segment_one_slice

    volume = np.random.default_rng(1).normal(size=(32, 32, 7)).astype(np.float32)
    whole = run_to_end(
        predictor.predict_volume(volume, predictor.options(postprocess=False))
    ).labels
    prepared = predictor.prepare(volume)
    for index in (0, 3, 6):  # edges repeat their slice as context, as in training
        np.testing.assert_array_equal(
            segment_one_slice(predictor.segmenter, prepared, index, None, tta=False),
            np.take(whole, index, axis=2),
        )
    with pytest.raises(LascError, match="outside"):
        segment_one_slice(predictor.segmenter, prepared, 7, None, tta=False)


def test_a_blank_scan_is_refused_naming_the_file(predictor, tmp_path):
    from conftest import save_nifti

    blank = save_nifti(tmp_path / "blank.nii.gz", np.zeros((16, 16, 5), dtype=np.int16))
    with pytest.raises(LascError, match="blank.nii.gz: the scan is blank"):
        run_to_end(predict_files(predictor, [blank], tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def _monai_postprocess(labels: np.ndarray, num_classes: int) -> np.ndarray:
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    classes = list(range(1, num_classes))
    channel_first = torch.from_numpy(np.ascontiguousarray(labels))[None]
    kept = KeepLargestConnectedComponent(applied_labels=classes, independent=True)(channel_first)
    return np.asarray(FillHoles(applied_labels=classes)(kept)[0], dtype=np.uint8)


def test_postprocessing_equals_monais_transforms():
    from src_monai.inference.postprocess import postprocess_labels

    rng = np.random.default_rng(3)
    labels = np.zeros((40, 40, 20), dtype=np.uint8)
    labels[5:30, 5:30, 3:15] = 1
    labels[12:18, 12:18, 6:10] = 0  # an enclosed hole
    labels[20, 20, 3] = 0  # a dent open to the outside of the blob
    labels[35:38, 35:38, 16:18] = 1  # an island
    labels[0:3, 0:3, 0:2] = 1  # an island touching the border
    labels[rng.random(labels.shape) < 0.01] = 1  # speckle
    np.testing.assert_array_equal(postprocess_labels(labels, 2), _monai_postprocess(labels, 2))
    three = labels.copy()
    three[30:34, 2:6, 2:6] = 2
    three[31:33, 3:5, 3:5] = 0  # a class-2 hole
    np.testing.assert_array_equal(postprocess_labels(three, 3), _monai_postprocess(three, 3))


@pytest.mark.slow
def test_postprocessing_equals_monais_on_real_predictions(lasc13):
    from src_monai.inference.postprocess import postprocess_labels

    predictor = Predictor.from_checkpoint(device="cpu")
    for case in ("la_004", "la_011"):
        volume = read_scan(lasc13 / "imagesTr" / f"{case}.nii.gz").array
        raw = run_to_end(
            predictor.predict_volume(volume, predictor.options(postprocess=False))
        ).labels
        np.testing.assert_array_equal(postprocess_labels(raw, 2), _monai_postprocess(raw, 2))


def test_bfloat16_moves_few_voxels_of_the_bundled_model_and_float32_repeats_exactly():
    """The default precision (bfloat16 where the CPU computes it natively) is a speed choice,
    not a different segmentation: on the real sample scan its labels are those of float32
    but for a few boundary voxels, and float32 (the reference checks') repeats voxel for
    voxel."""
    from src_monai.model.files import SAMPLE_SCAN

    volume = read_scan(SAMPLE_SCAN).array
    labels = {}
    for precision in ("float32", "bfloat16"):
        predictor = Predictor.from_checkpoint(None, "cpu", precision=precision)
        labels[precision] = run_to_end(predictor.predict_volume(volume, predictor.options())).labels
    again = run_to_end(predictor.predict_volume(volume, predictor.options())).labels
    assert np.array_equal(again, labels["bfloat16"])
    full, half = labels["float32"] > 0, labels["bfloat16"] > 0
    dice = 2 * (full & half).sum() / (full.sum() + half.sum())
    assert full.sum() > 10_000 and dice > 0.995
    assert (full != half).sum() > 0  # bfloat16 was applied: rounding moves some voxel
    float32 = Predictor.from_checkpoint(None, "cpu", precision="float32")
    repeated = run_to_end(float32.predict_volume(volume, float32.options())).labels
    assert np.array_equal(repeated, labels["float32"])


def test_an_unknown_precision_is_refused_in_one_line(tiny_run, tmp_path):
    dataset, result = tiny_run
    with pytest.raises(LascError, match="unknown precision 'half'"):
        Predictor.from_checkpoint(result.best_model, "cpu", precision="half")
    refused = subprocess.run(
        [
            *[LASC, "infer", str(dataset / "imagesTr"), "--out", str(tmp_path / "o")],
            *["--model", str(result.best_model), "--precision", "half"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "invalid choice: 'half'" in refused.stderr
    assert not (tmp_path / "o").exists()


def test_a_label_file_given_as_the_scan_is_flagged_and_a_real_scan_is_not(tmp_path, caplog):
    import logging

    from src_monai.inference.steps import scan_notes
    from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN

    assert scan_notes(read_scan(SAMPLE_SCAN).array) == []
    out = tmp_path / "seg"
    predictor = Predictor.from_checkpoint("bundled", "cpu")
    with caplog.at_level(logging.WARNING):
        rows = run_to_end(predict_files(predictor, [SAMPLE_LABEL], out))
    assert "the scan holds only 2 values (0, 1): is it a label file?" in rows[0]["QC flags"]
    warned = [r.getMessage() for r in caplog.records if "is it a label file?" in r.getMessage()]
    assert len(warned) == 1 and SAMPLE_LABEL.name in warned[0]


def test_the_bundled_models_progress_names_both_passes():
    """Every progress report says which stage is working (the log shows one every 10 s)."""
    from src_monai.model.files import SAMPLE_SCAN

    predictor = Predictor.from_checkpoint("bundled", "cpu")
    job = predictor.predict_volume(read_scan(SAMPLE_SCAN).array)
    messages = []
    while True:
        try:
            messages.append(next(job).message)
        except StopIteration:
            break
    assert any(m.startswith("localiser: slices") for m in messages), messages
    assert any("segmenter" in m for m in messages), messages
    assert all(m for m in messages)


def test_the_localiser_takes_as_many_shrunk_slices_per_batch_as_fit_the_users_batch():
    """Stage 1's slices are shrunk ``downsample``-fold per side, so its batch holds
    ``downsample``² times the slices of the user's batch (the memory of that many full
    slices): the bundled model's 130-slice sample goes through in one pass, and its box is
    the one batches of the user's size find."""
    from src_monai.inference.steps import localise
    from src_monai.model.files import SAMPLE_SCAN

    predictor = Predictor.from_checkpoint("bundled", "cpu")
    spec = predictor.localiser.spec
    assert spec.downsample == 4
    options = predictor.options(batch_size=16)
    assert options.for_localiser(spec).batch_size == 256
    assert predictor.options(batch_size=1).for_localiser(spec).batch_size == 16
    prepared = predictor.prepare(read_scan(SAMPLE_SCAN).array)
    job = predictor.find_box(prepared, options)
    reports = []
    while True:
        try:
            reports.append(next(job))
        except StopIteration as stop:
            box = stop.value
            break
    assert len(reports) == 1 and reports[0].done == prepared.slices.shape[0]  # one pass
    in_sixteens = PredictOptions.for_model(spec, postprocess=True, batch_size=16)
    assert run_to_end(localise(predictor.localiser, prepared.slices, in_sixteens)) == box
