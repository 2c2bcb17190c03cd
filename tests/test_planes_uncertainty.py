"""Tri-planar training and fused prediction; the uncertainty map and its scores."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from conftest import LASC, make_msd_dataset, tiny_config

from src_monai.data.sampling import load_training_data
from src_monai.errors import LascError
from src_monai.inference.measure import uncertainty_scores
from src_monai.inference.predictor import Predictor
from src_monai.inference.stage import normalised_entropy
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN
from src_monai.progress import Progress, run_to_end
from src_monai.training.trainer import run_training


@pytest.fixture(scope="module")
def tri_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tri")
    dataset = make_msd_dataset(root / "dataset", cases=4)
    config = tiny_config(dataset, root / "runs", data={"tri_planar": True})
    return dataset, config, run_to_end(run_training(config))


def test_tri_planar_training_sees_each_scan_along_three_axes(tri_run):
    _, config, result = tri_run
    data = load_training_data(config)
    scans = [c for c in data.train if not c.extra_plane]
    assert len(data.train) == 3 * len(scans)
    # Every view holds the same voxels, slices first along its own axis.
    first = [c for c in data.train if c.case_id.startswith(scans[0].case_id)]
    volume = scans[0].slices.permute(1, 2, 0)  # back to file axes (slice axis 2)
    assert len(first) == 3
    for axis in range(3):
        assert any(torch.equal(c.slices, volume.movedim(axis, 0)) for c in first)
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    assert predictor.spec.tri_planar
    assert predictor.spec.split["train"] == [c.case_id for c in scans]  # no view names
    assert predictor.spec.planes() == (2, 0, 1)


def test_fused_prediction_is_the_mean_of_the_three_planes(tri_run):
    dataset, _, result = tri_run
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    volume = read_scan(dataset / "imagesTr" / "case_001.nii.gz").array
    job = predictor.predict_volume(volume, predictor.options(probabilities=True))
    steps = []
    try:
        while True:
            steps.append(next(job))
    except StopIteration as stop:
        fused = stop.value
    assert isinstance(steps[-1], Progress) and steps[-1].total == sum(volume.shape)
    per_plane = []
    for axis in range(3):
        spec = predictor.spec.with_input(slice_axis=axis, tri_planar=False)
        one = Predictor(predictor.network, spec, predictor.device)
        per_plane.append(
            run_to_end(one.predict_volume(volume, one.options(probabilities=True))).probabilities
        )
    mean = np.mean(per_plane, axis=0)
    np.testing.assert_allclose(fused.probabilities, mean, atol=1e-5)
    np.testing.assert_array_equal(fused.labels, mean.argmax(0))
    single = run_to_end(
        predictor.predict_volume(volume, predictor.options(tri_planar=False, probabilities=True))
    )
    np.testing.assert_allclose(single.probabilities, per_plane[2], atol=1e-5)


@pytest.fixture(scope="module")
def predictor(tiny_run):
    # float32: these tests compare with a plain float32 forward pass, not the precision rule
    return Predictor.from_checkpoint(tiny_run[1].best_model, device="cpu", precision="float32")


def test_tri_planar_needs_a_tri_planar_model(predictor):
    volume = np.random.default_rng(0).normal(size=(24, 20, 8)).astype(np.float32)
    with pytest.raises(LascError, match="trained on all three axes"):
        run_to_end(predictor.predict_volume(volume, predictor.options(tri_planar=True)))


def test_tri_planar_refuses_png_datasets(seed_mini_test, tmp_path):
    config = tiny_config(seed_mini_test, tmp_path / "runs", data={"tri_planar": True})
    with pytest.raises(LascError, match="needs 3D scans"):
        load_training_data(config)


def test_small_slices_are_padded_to_the_patch_as_in_training(predictor):
    """Inference pads like MONAI's SpatialPad did in training (centred zeros)."""
    from monai.transforms import SpatialPad

    batch = torch.randn(2, predictor.spec.context_slices, 13, 21)
    with torch.inference_mode():
        ours = predictor.segmenter.scores(batch, tta=False, overlap=0.25, softmax=False)
        padded = torch.stack([SpatialPad(predictor.spec.patch_size)(x) for x in batch])
        theirs = predictor.network(torch.as_tensor(padded))
    height, width = predictor.spec.patch_size
    top, left = (height - 13) // 2, (width - 21) // 2
    torch.testing.assert_close(ours, theirs[..., top : top + 13, left : left + 21])


def test_normalised_entropy_bounds():
    certain = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    even = torch.full((2, 2), 0.5)
    torch.testing.assert_close(normalised_entropy(certain), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(normalised_entropy(even), torch.ones(2))
    three = normalised_entropy(torch.full((3, 1), 1 / 3))
    torch.testing.assert_close(three, torch.ones(1))


def test_uncertainty_scores_by_hand():
    labels = np.zeros((4, 4, 3), np.uint8)
    labels[1:3, 1:3, 1] = 1  # 4 voxels
    uncertainty = np.zeros(labels.shape, np.float32)
    uncertainty[0, 0, 2] = 1.0
    uncertainty[1, 1, 1] = 0.5
    uncertainty[2, 2, 2] = 0.5
    scores = uncertainty_scores(uncertainty, labels, (2.0, 1.0, 3.0), slice_axis=2)
    np.testing.assert_allclose(scores.slice_uncertain_area_mm2, [0.0, 1.0, 3.0])
    assert scores.most_uncertain_slice == 2
    assert scores.uncertain_volume_pct == pytest.approx(100 * 2.0 / 4)
    empty = uncertainty_scores(uncertainty, np.zeros_like(labels), (1, 1, 1))
    assert empty.uncertain_volume_pct == float("inf")


@pytest.mark.slow
def test_uncertainty_on_the_sample_lies_at_the_atrium_border():  # reads only bundled files
    """Real scan, bundled model: the views disagree at the atrium's border, not inside it
    or far from it; the labels are those of the plain prediction."""
    from scipy import ndimage

    predictor = Predictor.from_checkpoint(None, "cpu")
    scan = read_scan(SAMPLE_SCAN).array[:, :, 30:46]  # 16 slices through the atrium
    options = {"postprocess": False}
    plain = run_to_end(predictor.predict_volume(scan, predictor.options(**options)))
    result = run_to_end(
        predictor.predict_volume(scan, predictor.options(**options, uncertainty=True))
    )
    np.testing.assert_array_equal(result.labels, plain.labels)
    u = result.uncertainty
    assert u.shape == scan.shape and u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() <= 1.0 + 1e-6
    atrium = result.labels == 1
    border = ndimage.binary_dilation(atrium, iterations=2) & ~ndimage.binary_erosion(
        atrium, iterations=2
    )
    inside = ndimage.binary_erosion(atrium, iterations=4)
    far = ~ndimage.binary_dilation(atrium, iterations=20)
    assert u[border].mean() > 5 * u[inside].mean()
    assert u[border].mean() > 5 * u[far].mean()
    # Where the prediction is wrong, the views disagree more than where it is right.
    wrong = result.labels != read_labels(SAMPLE_LABEL, 2).array[:, :, 30:46]
    assert u[wrong].mean() > 5 * u[~wrong].mean()


def test_cli_infer_writes_the_uncertainty_map_and_its_scores(tri_run, tmp_path):
    """A tri-planar model by default predicts along three axes; --uncertainty adds the map
    (scan geometry kept) and its scores to summary.csv."""
    import csv

    import nibabel as nib

    dataset, _, result = tri_run
    scan_path = dataset / "imagesTr" / "case_002.nii.gz"
    command = [LASC, "infer", str(scan_path), "--out", str(tmp_path / "o")]
    command += ["--model", str(result.best_model), "--device", "cpu", "--uncertainty"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = nib.load(tmp_path / "o" / "case_002_uncertainty.nii.gz")
    scan = nib.load(scan_path)
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-5)
    values = np.asarray(written.dataobj)
    assert values.shape == scan.shape and values.min() >= 0 and values.max() <= 1 + 1e-6
    with open(tmp_path / "o" / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    area = values.sum(axis=(0, 1))
    assert int(row["most uncertain slice"]) == int(np.argmax(area))
    labels = np.asarray(nib.load(tmp_path / "o" / "case_002.nii.gz").dataobj)
    expected = 100 * values.sum() / max(np.count_nonzero(labels == 1), 1)
    assert float(row["uncertain volume (% of LA)"]) == pytest.approx(expected, rel=1e-3, abs=0.01)


def test_cli_refuses_tri_planar_with_a_single_axis_model(tiny_run, tmp_path):
    dataset, result = tiny_run
    command = [LASC, "infer", str(dataset / "imagesTr"), "--out", str(tmp_path / "o")]
    command += ["--model", str(result.best_model), "--tri-planar"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {result.best_model}: tri-planar prediction needs")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_tri_planar_validation_dice_is_that_of_the_saved_model_on_the_file(tri_run):
    """Validation during training cuts the other two planes as inference on the file does
    (a slices-first cache would transpose them)."""
    from src_monai.evaluation.metrics import case_metrics

    dataset, _, result = tri_run
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    (val_case,) = predictor.spec.split["val"]
    scan = read_scan(dataset / "imagesTr" / f"{val_case}.nii.gz")
    truth = read_labels(dataset / "labelsTr" / f"{val_case}.nii.gz", 2).array
    labels = run_to_end(
        predictor.predict_volume(scan.array, predictor.options(postprocess=False))
    ).labels
    dice = case_metrics(labels, truth, scan.geometry.spacing, 2)["dice"]
    assert result.best_dice == pytest.approx(dice, abs=1e-3)
