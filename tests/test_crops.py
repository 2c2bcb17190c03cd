"""Crops around the atrium: boxes, training crops, batched augmentation, a crop model's box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_msd_dataset, tiny_config, train_tiny_localiser

from src_monai.config import AugmentConfig
from src_monai.data.crops import (
    AtriumBox,
    CropSampler,
    augment_batch,
    crop_at,
    make_crop_batch,
)
from src_monai.data.sampling import VolumeCase
from src_monai.errors import LascError
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.progress import run_to_end
from src_monai.training.trainer import run_training


def _case(shape=(12, 40, 50), box=(3, 8, 10, 20, 25, 40)) -> VolumeCase:
    z0, z1, y0, y1, x0, x1 = box
    labels = torch.zeros(shape, dtype=torch.uint8)
    labels[z0:z1, y0:y1, x0:x1] = 1
    slices = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
    return VolumeCase("c", slices, labels, (1.0, 1.0, 1.0))


def test_box_is_the_bounding_box_of_the_mask():
    case = _case()
    assert AtriumBox.around(case.labels) == AtriumBox(3, 8, 10, 20, 25, 40)
    assert AtriumBox.around(torch.zeros(3, 4, 5)) is None
    box = AtriumBox(3, 8, 10, 20, 25, 40)
    assert box.centre == (15.0, 32.5)
    assert box.contains(box) and box.contains(AtriumBox(4, 8, 10, 19, 25, 40))
    assert not box.contains(AtriumBox(2, 8, 10, 20, 25, 40))
    assert not box.contains(AtriumBox(3, 8, 10, 20, 25, 41))
    assert box.slice_range(5, 12) == (0, 12) and box.slice_range(2, 12) == (1, 10)


def test_crops_are_windows_of_the_slices_zero_padded_outside():
    case = _case()
    crop = crop_at(case.slices, [5], (2.0, 45.0), 16, 3)  # reaches past the top and right
    assert crop.shape == (1, 3, 16, 16)
    top, left = round(2.0 - 8), round(45.0 - 8)
    for channel, z in enumerate((4, 5, 6)):
        inside = case.slices[z, 0 : top + 16, left:50]
        np.testing.assert_array_equal(crop[0, channel, -top:, : 50 - left], inside)
        assert not crop[0, channel, :-top].any() and not crop[0, channel, :, 50 - left :].any()


def test_sampler_draws_near_the_atrium_within_its_slices_plus_margin():
    case = _case()
    sampler = CropSampler([case], jitter=4, slice_margin=1, rng=np.random.default_rng(0))
    picks = sampler.draw(200)
    zs = [z for _, z, _ in picks]
    assert min(zs) == 2 and max(zs) == 8  # box slices 3..7 widened by one
    for _, _, (y, x) in picks:
        assert abs(y - 15.0) <= 4 and abs(x - 32.5) <= 4
    images, labels = make_crop_batch([case], picks[:5], 16, 3)
    assert images.shape == (5, 3, 16, 16) and labels.shape == (5, 1, 16, 16)
    assert labels.dtype == torch.long and set(labels.unique().tolist()) <= {0, 1}


def test_batched_augmentation_keeps_labels_on_the_image():
    """Rotating and scaling move image and labels together: a bright square stays labelled."""
    images = torch.zeros(8, 3, 32, 32)
    images[:, :, 10:22, 12:24] = 1.0
    labels = (images[:, :1] > 0).long()
    augment = AugmentConfig(probability=1.0, gamma=[1.0, 1.0], contrast=0.0, noise_std=0.0)
    moved, moved_labels = augment_batch(images, labels, augment, torch.Generator().manual_seed(3))
    assert moved.shape == images.shape and moved_labels.dtype == torch.long
    assert not torch.equal(moved_labels, labels)  # the transforms did something
    bright = moved[:, 0] > 0.5
    agreement = (bright == (moved_labels[:, 0] == 1)).float().mean()
    assert agreement > 0.97
    same, same_labels = augment_batch(images, labels, AugmentConfig(enabled=False), None)
    assert same is images and same_labels is labels


def test_batched_augmentation_runs_the_bias_field_and_elastic_deformation():
    """The crop path honours every [augment] key: the bias field scales intensities smoothly
    and leaves labels alone; elastic deformation moves image and labels together."""
    images = torch.zeros(6, 3, 64, 64)
    images[:, :, 20:44, 18:46] = 1.0
    labels = (images[:, :1] > 0).long()
    still = {"rotate_degrees": 0.0, "scale": 0.0, "gamma": [1.0, 1.0], "contrast": 0.0}
    biased_only = AugmentConfig(probability=1.0, noise_std=0.0, bias_field=True, **still)
    biased, same_labels = augment_batch(
        images, labels, biased_only, torch.Generator().manual_seed(1)
    )
    assert torch.equal(same_labels, labels)
    ratio = biased[:, 0, 20:44, 18:46] / images[:, 0, 20:44, 18:46]
    assert float(ratio.std()) > 1e-3 and float(ratio.min()) > 0.7 and float(ratio.max()) < 1.4
    assert not torch.equal(biased, images)
    elastic_only = AugmentConfig(
        probability=1.0, noise_std=0.0, bias_field=False, elastic=True, **still
    )
    bent, bent_labels = augment_batch(
        images, labels, elastic_only, torch.Generator().manual_seed(2)
    )
    assert not torch.equal(bent_labels, labels) and bent_labels.dtype == torch.long
    agreement = ((bent[:, 0] > 0.5) == (bent_labels[:, 0] == 1)).float().mean()
    assert agreement > 0.97


def test_crop_model_trains_and_segments_only_the_box(tmp_path):
    dataset = make_msd_dataset(tmp_path / "data", cases=4)
    config = tiny_config(
        dataset,
        tmp_path / "runs",
        data={"crop_size": 16, "crop_jitter": 2, "crop_slice_margin": 1},
    )
    result = run_to_end(run_training(config))
    predictor = Predictor.from_checkpoint(result.best_model, "cpu")
    assert predictor.spec.crop_size == 16 and predictor.spec.patch_size == (16, 16)
    scan = read_scan(dataset / "imagesTr" / "case_001.nii.gz").array
    truth = read_labels(dataset / "labelsTr" / "case_001.nii.gz").array
    slices_first = np.moveaxis(truth, 2, 0)
    box = AtriumBox.around(slices_first)
    boxed = run_to_end(
        predictor.predict_volume(
            scan, predictor.options(probabilities=True, postprocess=False), box=box
        )
    )
    assert boxed.labels.shape == scan.shape
    first, stop = box.slice_range(1, scan.shape[2])
    outside = np.ones(scan.shape, bool)
    outside[:, :, first:stop] = False
    assert not boxed.labels[outside].any()  # slices beyond the box and margin: background
    np.testing.assert_allclose(boxed.probabilities[0][outside], 1.0)
    np.testing.assert_allclose(boxed.probabilities.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(boxed.labels, boxed.probabilities.argmax(0))


@pytest.mark.parametrize("crop_size", [15, 8])
def test_bad_crop_sizes_are_refused(tmp_path, crop_size):
    from src_monai.config import ConfigError

    with pytest.raises(ConfigError, match="crop_size"):
        tiny_config(tmp_path, tmp_path / "runs", data={"crop_size": crop_size})


def test_localiser_box_holds_the_atrium_of_held_out_cases(tmp_path):
    """Stage 1 trained at half resolution: its box of each validation case holds the atrium."""
    dataset = make_msd_dataset(tmp_path / "data", cases=4)
    result = train_tiny_localiser(dataset, tmp_path / "runs")
    localiser = Predictor.from_checkpoint(result.best_model, "cpu")
    assert localiser.spec.downsample == 2
    for case_id in localiser.spec.split["val"]:
        scan = read_scan(dataset / "imagesTr" / f"{case_id}.nii.gz").array
        truth = np.moveaxis(read_labels(dataset / "labelsTr" / f"{case_id}.nii.gz").array, 2, 0)
        box = run_to_end(localiser.localise(localiser.prepare(scan)))
        true_box = AtriumBox.around(truth)
        assert box is not None and box.contains(true_box), (box, true_box)
    with pytest.raises(LascError, match="localiser"):
        run_to_end(localiser.predict_volume(scan))


def test_shrunk_labels_cover_every_block_the_atrium_touches():
    from src_monai.data.sampling import shrink_labels, shrink_slices

    labels = torch.zeros(2, 9, 9, dtype=torch.uint8)
    labels[:, 3, 4] = 1
    small = shrink_labels(labels, 4)
    assert small.shape == (2, 3, 3) and small.dtype == torch.uint8
    assert small[:, 0, 1].all() and small.sum() == 2
    slices = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    np.testing.assert_allclose(shrink_slices(slices, 4)[0, 0, 0], slices[0, :4, :4].mean())
