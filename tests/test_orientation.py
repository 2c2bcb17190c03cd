"""Orientation: the same anatomy at the same world place gets the same labels, whatever
voxel order the file stores it in (the networks see the training orientation, RAS)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_dicom import write_dicom_series

from src_monai.cli import main as lasc
from src_monai.data.crops import AtriumBox
from src_monai.inference.grid import ModelGrid
from src_monai.io.scans import read_labels
from src_monai.model.files import SAMPLE_SCAN

VARIANTS = {
    "RAS": ("R", "A", "S"),
    "LPS": ("L", "P", "S"),  # the voxel order of an axial DICOM series (IOP 1\0\0\0\1\0)
    "slices-first": ("S", "R", "A"),
    "i-j-swapped": ("A", "R", "S"),
}


def reoriented(image: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    """The same voxels at the same world places, stored in another voxel order."""
    start = nib.orientations.io_orientation(image.affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(axcodes))
    data = nib.orientations.apply_orientation(np.asanyarray(image.dataobj), transform)
    affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    return out


def in_ras(path: Path) -> np.ndarray:
    """A label file's voxels in RAS order (world space compared voxel by voxel)."""
    image = nib.load(str(path))
    return np.asarray(nib.as_closest_canonical(image).dataobj, dtype=np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return (
        2.0
        * np.count_nonzero((a == 1) & (b == 1))
        / (np.count_nonzero(a == 1) + np.count_nonzero(b == 1))
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict[str, Path]:
    """The bundled real scan in each voxel order, and the LPS one as an axial DICOM series."""
    root = tmp_path_factory.mktemp("orientations")
    image = nib.load(str(SAMPLE_SCAN))
    paths = {}
    for name, axcodes in VARIANTS.items():
        paths[name] = root / f"la_016_{name}.nii.gz"
        nib.save(reoriented(image, axcodes), str(paths[name]))
    paths["DICOM"] = write_dicom_series(
        paths["LPS"], root / "la_016_dicom", "1.2.826.0.1.3680043.2.1125.9", "axial LPS"
    )
    return paths


def test_every_voxel_order_gets_the_same_labels_in_world_space(stored, tmp_path):
    out = tmp_path / "seg"
    inputs = [str(p) for p in stored.values()]
    assert lasc(["infer", *inputs, "--out", str(out), "--device", "cpu"]) == 0
    reference = in_ras(out / "la_016_RAS.nii.gz")
    assert reference.sum() > 1000
    for name in VARIANTS:
        labels = read_labels(out / f"la_016_{name}.nii.gz")
        np.testing.assert_allclose(labels.geometry.affine, nib.load(str(stored[name])).affine)
        np.testing.assert_array_equal(
            in_ras(out / f"la_016_{name}.nii.gz"), reference, err_msg=name
        )
    # The DICOM series' voxels are the NIfTI's cast to int16 and its affine is rebuilt from
    # the slice positions, so agreement rather than identity.
    assert nib.aff2axcodes(nib.load(str(out / "la_016_dicom.nii.gz")).affine) == ("L", "P", "S")
    assert dice(in_ras(out / "la_016_dicom.nii.gz"), reference) > 0.99


@pytest.mark.parametrize("axcodes", list(VARIANTS.values()))
def test_a_box_maps_to_the_model_grid_and_back(axcodes):
    shape = (20, 30, 12)
    affine = nib.orientations.inv_ornt_aff(
        nib.orientations.axcodes2ornt(axcodes), shape
    )  # some affine whose axes point along axcodes
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) @ affine
    assert nib.aff2axcodes(affine) != () and len(nib.aff2axcodes(affine)) == 3
    grid = ModelGrid.for_scan(shape, 2, affine=affine, training_axcodes=("R", "A", "S"))
    along = grid.scan_slice_axis
    count = shape[along]
    box = AtriumBox(1, count - 2, 2, 7, 3, 9)
    on_model = grid.box_to_model(box)
    assert grid.box_to_scan(on_model) == box
    # The box's voxels are the same voxels on both grids.
    mask = np.zeros(shape, bool)
    ranges = iter([(box.y0, box.y1), (box.x0, box.x1)])
    region = [slice(box.z0, box.z1) if a == along else slice(*next(ranges)) for a in range(3)]
    mask[tuple(region)] = True
    assert AtriumBox.around(np.ascontiguousarray(np.moveaxis(grid.orient(mask), 2, 0))) == on_model
