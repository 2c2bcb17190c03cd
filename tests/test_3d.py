"""The 3D crop segmenter (stage 2 in 3D): config, training windows, model file, inference."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest
import torch
from conftest import make_msd_dataset, tiny_config, train_tiny_localiser

from src_monai.config import ConfigError, Stage
from src_monai.data.crops import AtriumBox
from src_monai.data.patches import WindowSampler, make_window_batch, window_at
from src_monai.data.sampling import VolumeCase
from src_monai.inference.in_box_3d import IN_PLANE_MARGIN
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import load_model, load_spec
from src_monai.progress import run_to_end
from src_monai.training.trainer import run_training

WINDOWS = {"crop_size": 16, "crop_depth": 4, "context_slices": 1, "crop_jitter": 2}


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_d")
    dataset = make_msd_dataset(root / "dataset", cases=4)
    config = tiny_config(
        dataset, root / "runs", data={**WINDOWS, "crop_slice_margin": 1}, train={"batch_size": 2}
    )
    return dataset, run_to_end(run_training(config))


def test_config_refuses_what_a_3d_window_model_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="crop_depth needs data.crop_size"):
        tiny_config(tmp_path, tmp_path, data={"crop_depth": 4, "context_slices": 1})
    with pytest.raises(ConfigError, match="context_slices = 1"):
        tiny_config(tmp_path, tmp_path, data={**WINDOWS, "context_slices": 3})
    with pytest.raises(ConfigError, match="elastic is not applied to 3D crop windows"):
        tiny_config(tmp_path, tmp_path, data=WINDOWS, augment={"elastic": True})
    with pytest.raises(ConfigError, match="divisible by 4"):
        tiny_config(tmp_path, tmp_path, data={**WINDOWS, "crop_depth": 6})
    assert tiny_config(tmp_path, tmp_path, data=WINDOWS).data.stage is Stage.CROP_SEGMENTER_3D


def test_windows_are_centred_inside_the_grown_box_and_zero_padded_outside_the_scan():
    labels = torch.zeros((10, 30, 30), dtype=torch.uint8)
    labels[4:6, 10:15, 12:20] = 1
    case = VolumeCase("c", labels.float(), labels, (1.0, 1.0, 1.0))
    picks = WindowSampler([case], jitter=3, rng=np.random.default_rng(0)).draw(500)
    centres = np.array([centre for _, centre in picks])
    assert centres.min(0) == pytest.approx([1, 7, 9], abs=0.2)
    assert centres.max(0) == pytest.approx([9, 18, 23], abs=0.2)
    corner = window_at(case.slices, (0.0, 0.0, 0.0), (4, 8, 8))
    assert corner.shape == (4, 8, 8) and not corner[:2].any() and not corner[:, :4].any()
    images, truth = make_window_batch([case], [(0, (5.0, 12.0, 16.0))], (4, 8, 8))
    assert images.shape == truth.shape == (1, 1, 4, 8, 8)
    assert torch.equal(images[0, 0], labels[3:7, 8:16, 12:20].float())


def test_a_3d_model_file_states_its_stage_and_round_trips(trained_3d):
    _, result = trained_3d
    network, spec = load_model(result.best_model)
    assert spec.stage is Stage.CROP_SEGMENTER_3D and spec.input.window == (4, 16, 16)
    assert spec.input.spatial_dims == 3 and spec.in_channels == 1
    assert any(isinstance(m, torch.nn.Conv3d) for m in network.modules())
    assert load_spec(result.best_model) == spec
    assert np.isfinite(result.best_dice) and 0.0 <= result.best_dice <= 1.0


def test_3d_prediction_keeps_the_scan_grid_and_stays_inside_the_region(trained_3d):
    dataset, result = trained_3d
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    scan = read_scan(dataset / "imagesTr" / "case_002.nii.gz")
    options = predictor.options(postprocess=False, probabilities=True)
    whole = run_to_end(predictor.predict_volume(scan.array, options))
    assert whole.labels.shape == scan.array.shape
    assert whole.probabilities.shape == (2, *scan.array.shape)
    np.testing.assert_allclose(whole.probabilities.sum(0), 1.0, atol=1e-5)
    box = AtriumBox(2, 5, 6, 12, 5, 11)  # the scan's slices-first voxels (slices along k)
    inside = run_to_end(predictor.predict_volume(scan.array, options, box=box))
    outside = np.ones(scan.array.shape, bool)
    # region = box + margin (1 slice) + M voxels in-plane; slices-first (k, i, j) -> (i, j, k)
    m = IN_PLANE_MARGIN
    outside[max(6 - m, 0) : 12 + m, max(5 - m, 0) : 11 + m, 1:6] = False
    assert not inside.labels[outside].any()
    assert inside.box == box and inside.box_from_user


@pytest.mark.parametrize("whole_region", [False, True])
def test_one_slice_of_a_3d_model_is_that_slice_of_the_whole_volume(trained_3d, whole_region):
    """The current-slice mode shows what the whole volume gives the slice (before
    post-processing), with windows or with the region in one pass."""
    from src_monai.inference.steps import segment_one_slice

    dataset, result = trained_3d
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    scan = read_scan(dataset / "imagesTr" / "case_001.nii.gz")
    prepared = predictor.prepare(scan.array, spacing=scan.geometry.spacing)
    options = predictor.options(postprocess=False, whole_region=whole_region)
    volume = run_to_end(predictor.predict_volume(scan.array, options)).labels
    slice_axis = prepared.grid.scan_slice_axis
    for index in (0, 3):
        one = segment_one_slice(
            predictor.segmenter, prepared, index, None, tta=False, whole_region=whole_region
        )
        assert one.shape == prepared.slices.shape[1:]
        np.testing.assert_array_equal(one, np.take(volume, index, axis=slice_axis))
    assert np.count_nonzero(volume) > 0


def test_a_3d_models_uncertainty_map_covers_its_region_and_leaves_the_labels(trained_3d):
    """The 2.5D models' map (entropy of the mean over rotated and gamma views), from the 3D
    windows: on the scan's grid, 0..1, certain outside the region, and the labels are the
    same as without it."""
    dataset, result = trained_3d
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    scan = read_scan(dataset / "imagesTr" / "case_002.nii.gz")
    box = AtriumBox(2, 5, 6, 12, 5, 11)
    plain = run_to_end(predictor.predict_volume(scan.array, predictor.options(), box=box))
    mapped = run_to_end(
        predictor.predict_volume(scan.array, predictor.options(uncertainty=True), box=box)
    )
    assert np.array_equal(mapped.labels, plain.labels)
    uncertainty = mapped.uncertainty
    assert uncertainty.shape == scan.array.shape
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0 + 1e-6
    outside = np.ones(scan.array.shape, bool)
    m = IN_PLANE_MARGIN
    outside[max(6 - m, 0) : 12 + m, max(5 - m, 0) : 11 + m, 1:6] = False
    assert not uncertainty[outside].any() and uncertainty[~outside].max() > 0.01


def test_window_augmentation_moves_labels_with_images_and_fields_in_3d():
    from src_monai.config import AugmentConfig
    from src_monai.data.patches import augment_windows

    images = torch.zeros((2, 1, 4, 16, 16))
    images[:, :, 1:3, 4:12, 6:10] = 1.0
    labels = (images > 0.5).long()
    generator = torch.Generator().manual_seed(0)
    rotated = AugmentConfig(
        probability=1.0, bias_field=False, gamma=[1.0, 1.0], contrast=0.0, noise_std=0.0
    )
    out_images, out_labels = augment_windows(images, labels, rotated, generator)
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    moved = (out_images > 0.5).long()  # one grid for both (bilinear vs nearest at the edges)
    overlap = 2 * (moved * out_labels).sum() / (moved.sum() + out_labels.sum())
    assert overlap > 0.9
    assert not torch.equal(out_images, images)  # rotated and scaled
    fielded = AugmentConfig(probability=1.0, bias_field=True, rotate_degrees=0.0, scale=0.0)
    fielded_images, fielded_labels = augment_windows(images + 1.0, labels, fielded, generator)
    assert torch.equal(fielded_labels, labels)
    assert not torch.allclose(fielded_images, images + 1.0)  # a smooth multiplicative field


def test_a_localiser_and_a_3d_segmenter_make_one_two_stage_model(trained_3d, tmp_path):
    from src_monai.model.files import combine_stages

    dataset, segmenter = trained_3d
    localiser = train_tiny_localiser(dataset, tmp_path / "runs", epochs=2, steps=5)
    model = combine_stages(localiser.best_model, segmenter.best_model, tmp_path / "two.safetensors")
    spec = load_spec(model)
    assert (spec.stage, spec.localiser.stage) == (Stage.CROP_SEGMENTER_3D, Stage.LOCALISER)
    predictor = Predictor.from_checkpoint(model, "cpu")
    scan = read_scan(dataset / "imagesTr" / "case_003.nii.gz")
    prediction = run_to_end(predictor.predict_volume(scan.array))
    assert prediction.labels.shape == scan.array.shape and prediction.localised is not None


def test_atrium_outside_the_3d_region_is_counted_beyond_its_margins():
    """A 3D stage 2 segments the box grown by its slice margin and IN_PLANE_MARGIN voxels
    in-plane; the localiser check counts the atrium voxels outside that region, and only
    those."""
    from src_monai.evaluation.boxes import atrium_outside_region

    m = IN_PLANE_MARGIN
    truth = np.zeros((40, 30 + m + 10, 60), np.uint8)
    truth[10:20, 20:30, 20:30] = 1  # the box itself
    box = AtriumBox(10, 20, 20, 30, 20, 30)
    assert atrium_outside_region(truth, box, slice_margin=5) == 0
    truth[24, 25, 25] = 1  # 4 slices past the box: inside the margin
    truth[12:18, 30 + m - 1, 25] = 1  # the last row of the margin
    assert atrium_outside_region(truth, box, slice_margin=5) == 0
    truth[26, 25, 25] = 1  # the 7th slice past the box
    truth[15, 30 + m + 1, 25] = 1  # past the margin's rows
    assert atrium_outside_region(truth, box, slice_margin=5) == 2
    assert atrium_outside_region(truth, box, slice_margin=7) == 1


def test_the_region_grows_past_the_faces_its_labels_reach_but_not_past_the_scan():
    """Where a localiser's box stops short, stage 2's labels reach the region's face: the
    region grows there by GROWTH, and stays inside the scan."""
    from src_monai.inference.in_box_3d import GROWTH, grown_region

    shape = (60, 100, 100)
    region = AtriumBox(10, 30, 0, 50, 40, 80)
    labels = np.zeros((20, 50, 40), np.uint8)
    labels[5:10, 10:20, 10:20] = 1  # inside: nothing grows
    assert grown_region(region, labels, shape) == region
    labels[-1, 20, 20] = 1  # reaches the last slice
    labels[10, 0, 20] = 1  # reaches row 0, which is the scan's edge: no growth there
    labels[10, 20, 0] = 1  # reaches the first column
    grown = grown_region(region, labels, shape)
    assert grown == AtriumBox(10, 30 + GROWTH[0], 0, 50, 40 - GROWTH[2], 80)


def test_a_localisers_box_grows_where_the_atrium_reaches_its_faces_a_users_never(trained_3d):
    """The same short box: given by a user it bounds the labels; found by the localiser it
    grows (the region's labels touch its faces on the synthetic atrium)."""
    from src_monai.inference.options import PredictOptions
    from src_monai.inference.steps import prepare, segment_in_box

    dataset, result = trained_3d
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    scan = read_scan(dataset / "imagesTr" / "case_003.nii.gz")
    prepared = prepare(scan.array, predictor.spec, spacing=scan.geometry.spacing)
    truth = np.moveaxis(read_labels(dataset / "labelsTr" / "case_003.nii.gz").array, 2, 0)
    true_box = AtriumBox.around(truth)
    short = AtriumBox(true_box.z0, true_box.z0 + 1, *astuple(true_box)[2:])
    options = PredictOptions()
    fixed = run_to_end(segment_in_box(predictor.segmenter, prepared, short, options)).labels
    grown = run_to_end(
        segment_in_box(predictor.segmenter, prepared, short, options, grow=True)
    ).labels
    last_fixed = np.flatnonzero(np.moveaxis(fixed, 2, 0).any(axis=(1, 2)))[-1]
    last_grown = np.flatnonzero(np.moveaxis(grown, 2, 0).any(axis=(1, 2)))[-1]
    assert last_fixed < short.z1 + predictor.spec.crop_slice_margin
    assert last_grown > last_fixed


def test_a_whole_region_pass_equals_one_window_and_crops_its_padding(trained_3d):
    """One pass over a region pads each axis, centred, to the network's total stride and cuts
    the padding off: on a region smaller than the window it equals MONAI's one padded
    window; a region larger than the limit (or a limit of 0) is tiled in windows."""
    from src_monai.inference.stage import StageNetwork
    from src_monai.model.bundle_pipeline import fits_whole, whole_region_logits

    _, result = trained_3d
    network, spec = load_model(result.best_model)
    stage = StageNetwork(network, spec, torch.device("cpu"), precision="float32")
    assert spec.input.window == (4, 16, 16) and stage.total_stride == 2 ** (spec.network.levels - 1)
    region = torch.randn(1, 1, 3, 13, 15, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        windows = stage.scores(region, tta=False, overlap=0.5, softmax=False)
        whole = stage.scores(
            region, tta=False, overlap=0.5, softmax=False, whole_region_voxels=10_000
        )
        direct = whole_region_logits(network, region, stage.total_stride)
    assert whole.shape == windows.shape == (1, 2, 3, 13, 15)
    torch.testing.assert_close(whole, direct.float())
    if stage.total_stride == 4:  # the window (4, 16, 16) is the stride's multiple above
        torch.testing.assert_close(whole, windows, atol=1e-4, rtol=1e-4)
    large = torch.randn(1, 1, 9, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tiled = stage.scores(large, tta=False, overlap=0.5, softmax=False)
        over_limit = stage.scores(
            large, tta=False, overlap=0.5, softmax=False, whole_region_voxels=9 * 40 * 40 - 1
        )
        passed = stage.scores(
            large, tta=False, overlap=0.5, softmax=False, whole_region_voxels=9 * 40 * 40
        )
    torch.testing.assert_close(over_limit, tiled)
    assert not torch.allclose(passed, tiled, atol=1e-3)  # the option did change the pass
    assert fits_whole((9, 40, 40), 14_400) and not fits_whole((9, 40, 40), 0)


def test_a_scan_less_than_half_a_window_thick_takes_one_pass_whatever_the_model_chose():
    """Windows along an axis the scan fills less than half would be mostly zero padding: such
    a scan's regions pass whole (up to the thin-scan limit); a thicker scan keeps the model's
    choice (0: windows), as the cross-validated LGE scans (down to 44 x 66 x 74) did."""
    from src_monai.model.bundle_pipeline import one_pass_limit

    stage = {"window": [48, 80, 80], "whole_region_voxels": 0, "thin_scan_voxels": 4_000_000}
    assert one_pass_limit((130, 256, 256), stage) == 0
    assert one_pass_limit((48, 80, 80), stage) == 0  # the window fits exactly
    assert one_pass_limit((44, 66, 74), stage) == 0  # the thinnest CV scan: windows, as in CV
    assert one_pass_limit((24, 256, 256), stage) == 0  # half the window: still windows
    assert one_pass_limit((23, 256, 256), stage) == 4_000_000
    assert one_pass_limit((16, 256, 256), stage) == 4_000_000
    assert one_pass_limit((130, 256, 39), stage) == 4_000_000  # thin in-plane, too
    chosen = {**stage, "whole_region_voxels": 1_000_000}
    assert one_pass_limit((130, 256, 256), chosen) == 1_000_000
    assert one_pass_limit((16, 256, 256), chosen) == 4_000_000
    older = {"window": [48, 80, 80], "whole_region_voxels": 0}  # a bundle before the key
    assert one_pass_limit((16, 256, 256), older) == 0


@pytest.mark.slow
def test_a_real_scan_a_third_of_the_window_thick_segments_under_the_defaults():
    """A 16-slice excerpt of the sample (the shipped model's window is 48 slices): the default
    prediction is the one-pass one and finds the atrium (Dice 0.05 in padded windows)."""
    from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN

    predictor = Predictor.from_checkpoint(None, "cpu")
    assert predictor.spec.input.window[0] > 16 and not predictor.options().whole_region
    scan = read_scan(SAMPLE_SCAN).array[:, :, 30:46]
    truth = read_labels(SAMPLE_LABEL, 2).array[:, :, 30:46] == 1
    default, whole = (
        run_to_end(predictor.predict_volume(scan, predictor.options(**o)))
        for o in ({}, {"whole_region": True})
    )
    np.testing.assert_array_equal(default.labels, whole.labels)
    found = default.labels == 1
    assert 2 * np.count_nonzero(found & truth) / (found.sum() + truth.sum()) > 0.9


def test_the_whole_region_choice_is_recorded_in_the_model_and_can_be_overridden(
    trained_3d, tmp_path
):
    """What cross-validation chose travels in the file (an older file's table without the key
    means windows), the prediction follows it, and the caller can still say otherwise."""
    from src_monai.model.files import save_model
    from src_monai.model.spec import InferenceDefaults, ModelSpec

    dataset, result = trained_3d
    network, spec = load_model(result.best_model)
    chosen = save_model(
        tmp_path / "whole.safetensors",
        network,
        spec.with_inference(InferenceDefaults(postprocess=False, whole_region=True)),
    )
    older = ModelSpec.from_metadata({**spec.to_metadata(), "inference": {"tta": False}})
    assert not older.defaults.whole_region
    predictor = Predictor.from_checkpoint(chosen, "cpu")
    assert (
        predictor.options().whole_region and not predictor.options(whole_region=False).whole_region
    )
    scan = read_scan(dataset / "imagesTr" / "case_002.nii.gz")
    box = AtriumBox(1, 6, 4, 14, 3, 13)  # region with the margins: larger than one window
    whole, windows = (
        run_to_end(predictor.predict_volume(scan.array, predictor.options(**o), box=box))
        for o in ({}, {"whole_region": False})
    )
    plain = Predictor.from_checkpoint(result.best_model, "cpu")
    as_before = run_to_end(plain.predict_volume(scan.array, plain.options(), box=box))
    assert np.array_equal(windows.labels, as_before.labels)
    assert whole.labels.shape == scan.array.shape
    assert whole.labels.any() and not np.array_equal(whole.labels, windows.labels)
