"""napari's session and ``lasc infer`` are one pipeline: identical labels, also on a scan
that is resampled to the training voxel size."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Resize

from src_monai.cli import main as lasc
from src_monai.inference.predictor import Predictor
from src_monai.inference.resample import resampled_shape
from src_monai.inference.session import InteractiveSession
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import SAMPLE_SCAN
from src_monai.progress import run_to_end


@pytest.fixture(scope="module")
def fine_scan(tmp_path_factory):
    """The bundled real scan at 0.625 mm in-plane (half the training voxel size)."""
    image = nib.load(str(SAMPLE_SCAN))
    data = np.asarray(image.dataobj, dtype=np.float32)
    x, y, z = data.shape
    fine = Resize((2 * x, 2 * y, z), mode="trilinear")(torch.from_numpy(data)[None])[0].numpy()
    affine = image.affine @ np.diag([0.5, 0.5, 1.0, 1.0])
    path = tmp_path_factory.mktemp("fine") / "la_016_fine.nii.gz"
    out = nib.Nifti1Image(fine, affine)
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    nib.save(out, str(path))
    return path


@pytest.mark.slow
def test_session_labels_equal_lasc_infer_on_a_resampled_scan(fine_scan, tmp_path):
    out = tmp_path / "seg"
    assert lasc(["infer", str(fine_scan), "--out", str(out), "--device", "cpu"]) == 0
    by_cli = read_labels(out / fine_scan.name).array
    scan = read_scan(fine_scan)
    predictor = Predictor.from_checkpoint(None, "cpu")
    geometry = scan.geometry
    session = InteractiveSession(
        predictor, scan.array, geometry.spacing, affine=geometry.stated_affine
    )
    result = run_to_end(session.segment_volume())
    # 0.625 mm in-plane is resampled; then every axis goes to the training voxel size
    target = predictor.spec.training_spacing
    assert result.prediction.resampled_to == resampled_shape(
        scan.array.shape, geometry.spacing, target
    )
    assert result.prediction.resampled_to[:2] == (256, 256)
    np.testing.assert_array_equal(result.prediction.labels, by_cli)
    assert by_cli.sum() * np.prod(geometry.spacing) / 1000 > 50  # mL: the atrium, not noise
    # Slice after slice, the session agrees with its volume (3D post-processing aside).
    index = int(np.argmax(by_cli.sum(axis=(0, 1))))
    one = run_to_end(session.segment_slice(index))
    agreement = (one == by_cli[:, :, index]).mean()
    assert agreement > 0.99
