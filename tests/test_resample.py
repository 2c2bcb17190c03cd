"""Scans at another voxel size: resampled to the training spacing for the network, and back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Resize

from src_monai.data.crops import AtriumBox
from src_monai.evaluation.metrics import case_metrics
from src_monai.inference.files import predict_files
from src_monai.inference.predictor import Predictor
from src_monai.inference.resample import (
    RESAMPLE_TOLERANCE,
    resample_labels,
    resample_volume,
    resampled_shape,
)
from src_monai.io.scans import read_scan
from src_monai.progress import run_to_end


def test_voxel_sizes_near_the_training_spacing_are_left_alone():
    trained = (1.25, 1.25, 1.37)
    assert resampled_shape((256, 256, 100), trained, None) is None
    near = [s * (1 + RESAMPLE_TOLERANCE * 0.9) for s in trained]
    assert resampled_shape((256, 256, 100), near, trained) is None
    assert resampled_shape((640, 640, 88), (0.625, 0.625, 0.625), trained) == (320, 320, 40)


def test_labels_survive_a_round_trip_through_a_coarser_grid():
    z, y, x = np.mgrid[:40, :64, :64]
    ball = ((z - 20) / 12.0) ** 2 + ((y - 30) / 20.0) ** 2 + ((x - 34) / 16.0) ** 2 <= 1
    labels = ball.astype(np.uint8)
    coarse = resample_labels(labels, 2, (20, 32, 32))
    back = resample_labels(coarse, 2, labels.shape)
    assert back.shape == labels.shape and back.dtype == np.uint8
    overlap = 2 * np.logical_and(back, labels).sum() / (back.sum() + labels.sum())
    assert overlap > 0.95
    # A volume keeps its field of view: the ball's centre stays where it was.
    assert np.allclose(np.argwhere(back).mean(0), np.argwhere(labels).mean(0), atol=0.6)
    assert resample_volume(labels.astype(np.float32), (20, 32, 32)).shape == (20, 32, 32)


def test_a_box_scaled_to_a_finer_grid_and_back_still_holds_the_region():
    box = AtriumBox(10, 21, 30, 61, 40, 77)
    fine = box.scaled((2.0, 2.0, 2.0), (100, 256, 256))
    assert fine == AtriumBox(20, 42, 60, 122, 80, 154)
    assert fine.scaled((0.5, 0.5, 0.5), (50, 128, 128)).contains(box)
    assert box.scaled((3.0, 3.0, 3.0), (40, 100, 100)).z1 == 40  # clipped to the grid


@pytest.mark.slow
def test_a_half_voxel_scan_is_segmented_at_the_training_spacing_in_its_own_geometry(
    lasc13, tmp_path
):
    """la_016 upsampled to 0.625 mm in-plane (as an AtriaSeg scan): the labels come back in
    the fine grid with its affine, and match the native-resolution prediction."""
    native = read_scan(lasc13 / "imagesTr" / "la_016.nii.gz")
    predictor = Predictor.from_checkpoint(None, "cpu")
    expected = run_to_end(
        predictor.predict_volume(native.array, spacing=native.geometry.spacing)
    ).labels
    fine_shape = (512, 512, native.array.shape[2])
    fine = Resize(fine_shape, mode="trilinear")(
        torch.from_numpy(native.array[None].astype(np.float32))
    )
    affine = native.geometry.affine.copy()
    affine[:3, :2] /= 2.0  # half the voxel size in-plane; the corner voxel's centre moves
    affine[:3, 3] -= (affine[:3, 0] + affine[:3, 1]) / 2.0  # by a quarter voxel, kept in place
    source = tmp_path / "fine.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(fine[0]).astype(np.float32), affine), source)

    out = tmp_path / "out"
    run_to_end(predict_files(predictor, [source], out))
    written = nib.load(out / "fine.nii.gz")
    assert written.shape == fine_shape
    assert np.allclose(written.affine, nib.load(source).affine, atol=1e-6)
    labels = np.asarray(written.dataobj)
    in_native_grid = resample_labels(labels, 2, native.array.shape)
    dice = case_metrics(in_native_grid, expected, native.geometry.spacing, 2)["dice"]
    assert dice > 0.97
