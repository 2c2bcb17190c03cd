"""LA measurements against shapes whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src_monai.inference.measure import measure_atrium


def ball(radius_mm: float, spacing: tuple[float, float, float], size: int = 64) -> np.ndarray:
    axes = [(np.arange(size) - size / 2 + 0.5) * s for s in spacing]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return (x**2 + y**2 + z**2 <= radius_mm**2).astype(np.uint8)


def test_a_ball_measures_as_a_ball_with_anisotropic_voxels():
    spacing = (0.8, 0.8, 1.6)
    radius = 20.0
    result = measure_atrium(ball(radius, spacing), spacing)
    assert result.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.02)
    assert result.surface_mm2 == pytest.approx(4 * math.pi * radius**2, rel=0.02)
    assert result.sphericity == pytest.approx(1.0, abs=0.03)
    # The equator slice: the diameter (pixel corners) is 2r plus at most a pixel diagonal.
    assert 2 * radius <= result.max_diameter_mm <= 2 * radius + 0.8 * math.sqrt(2) + 1e-6
    assert result.width_across_mm == pytest.approx(result.max_diameter_mm, rel=0.05)
    areas = np.array(result.slice_areas_mm2)
    assert areas.sum() * spacing[2] / 1000 == pytest.approx(result.volume_ml)
    assert np.argmax(areas) in (31, 32)  # the middle slices
    assert result.slice_positions_mm[1] - result.slice_positions_mm[0] == pytest.approx(1.6)


def test_a_box_has_exact_volume_diameter_and_width():
    labels = np.zeros((40, 30, 10), dtype=np.uint8)
    labels[5:25, 10:16, 2:7] = 1  # 20 x 6 voxels in plane, 5 slices
    spacing = (1.0, 2.0, 3.0)
    result = measure_atrium(labels, spacing)
    assert result.volume_ml == pytest.approx(20 * 6 * 5 * 6 / 1000)
    # In mm the slice's region is 20 x 12: diagonal 23.32, width across it 2*20*12/23.32.
    assert result.max_diameter_mm == pytest.approx(math.hypot(20, 12))
    assert result.width_across_mm == pytest.approx(2 * 20 * 12 / math.hypot(20, 12))
    assert result.sphericity < 0.9  # a flat box is far from a sphere


def test_empty_labels_and_other_classes():
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    empty = measure_atrium(labels, (1, 1, 1))
    assert empty.volume_ml == 0 and math.isnan(empty.sphericity) and empty.diameter_slice == -1
    labels[2:4, 2:4, 2:4] = 2
    assert measure_atrium(labels, (1, 1, 1)).volume_ml == 0
    assert measure_atrium(labels, (1, 1, 1), label=2).volume_ml == pytest.approx(0.008)


def test_quality_flags_name_each_problem():
    from src_monai.inference.measure import quality_flags

    spacing = (1.25, 1.25, 1.37)
    good = ball(22.0, spacing)  # ~45 mL, one component, away from the edges
    assert quality_flags(good, spacing, training_spacing=spacing) == []
    assert quality_flags(np.zeros_like(good), spacing) == ["empty prediction"]
    two = good.copy()
    two[0:3, 0:3, 30:33] = 1  # an island that also touches the edge
    flags = quality_flags(two, spacing)
    assert "2 separate 3D components" in flags
    assert "touches the edge of the field of view" in flags
    small = ball(8.0, spacing)  # about 2.7 mL
    assert any("outside the plausible 15-250 mL" in f for f in quality_flags(small, spacing))
    medium = ball(17.0, spacing)  # about 21 mL: an LGE atrium, too small for bSSFP
    assert quality_flags(medium, spacing, sequence="lge") == []
    (bssfp,) = quality_flags(medium, spacing, sequence="bssfp")
    assert bssfp.endswith("mL outside the plausible 30-250 mL for bSSFP")
    coarse = quality_flags(good, spacing, training_spacing=(0.6, 0.6, 1.37))
    assert any("coarser than the training data" in f for f in coarse)
    fine = quality_flags(good, spacing, training_spacing=(2.5, 2.5, 1.37))
    assert fine == []  # finer voxels are resampled to the training size without loss
    # A stated orientation is turned to the training one; an unstated one cannot be.
    assert quality_flags(good, spacing, axcodes="LPS", training_axcodes=("R", "A", "S")) == []
    assert quality_flags(good, spacing, axcodes="RAS", training_axcodes="RAS") == []
    unstated = quality_flags(good, spacing, axcodes=None, training_axcodes="RAS")
    assert unstated == [
        "the file states no orientation: its axes were taken as the training data's (RAS)"
    ]


def test_a_scan_stored_mirrored_is_turned_back_not_flagged_by_lasc_infer(tmp_path):
    """The same anatomy stored with its first axis reversed (LAS, geometry exact): the
    pipeline turns it to the training orientation, so it measures as the original and
    raises no flag (the flag used to warn of a mirrored heart, when slices were fed as
    stored)."""
    import csv
    import subprocess

    import nibabel as nib
    from conftest import LASC

    from src_monai.model.files import SAMPLE_SCAN

    scan = nib.load(SAMPLE_SCAN)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = scan.shape[0] - 1
    mirrored = nib.Nifti1Image(np.asarray(scan.dataobj)[::-1], scan.affine @ flip)
    (tmp_path / "in").mkdir()
    nib.save(mirrored, tmp_path / "in" / "las.nii.gz")
    nib.save(scan, tmp_path / "in" / "ras.nii.gz")
    done = subprocess.run(
        [LASC, "infer", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out" / "summary.csv") as handle:
        rows = {row["input"].split("/")[-1]: row for row in csv.DictReader(handle)}
    las, ras = rows["las.nii.gz"], rows["ras.nii.gz"]
    assert "orientation" not in las["QC flags"]
    volume = "left atrium volume (mL)"
    assert float(las[volume]) == pytest.approx(float(ras[volume]), rel=1e-3)
    assert float(ras[volume]) > 50
