"""``lasc export-bundle``: the MONAI bundle runs with MONAI alone and equals ``lasc infer``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LASC

from src_monai.model.files import SAMPLE_SCAN

# A one-stage model (the bundled model until the two-stage one, which cannot be exported).
SINGLE_STAGE = Path(__file__).parent / "data" / "single_stage_2d5_v1.safetensors"


def _scans(folder: Path) -> list[Path]:
    """The sample scan, plus a smaller crop (padded slices) and a larger padded copy
    (tiled slices), both with the sample's affine shifted to keep the geometry exact."""
    folder.mkdir()
    image = nib.load(SAMPLE_SCAN)
    data = np.asarray(image.dataobj)
    small = data[30:230, 40:236]
    small_affine = image.affine.copy()
    small_affine[:3, 3] += image.affine[:3, :3] @ np.array([30, 40, 0])
    large = np.pad(data, ((20, 24), (8, 30), (0, 0)), mode="edge")
    large_affine = image.affine.copy()
    large_affine[:3, 3] -= image.affine[:3, :3] @ np.array([20, 8, 0])
    paths = []
    for name, array, affine in (
        ("la_016", data, image.affine),
        ("la_016_small", small, small_affine),
        ("la_016_large", large, large_affine),
    ):
        paths.append(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine), paths[-1])
    return paths


@pytest.mark.slow
def test_bundle_runs_with_monai_alone_and_equals_lasc_infer(tmp_path):
    bundle = tmp_path / "bundle"
    done = subprocess.run(
        [LASC, "export-bundle", str(SINGLE_STAGE), str(bundle)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for name in (
        "configs/metadata.json",
        "configs/inference.json",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
    ):
        assert (bundle / name).is_file(), name
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert "CC-BY-SA 4.0" in (bundle / "LICENSE").read_text()

    scans = _scans(tmp_path / "scans")
    # MONAI's own runner, from the bundle folder, with our packages made unimportable: the
    # bundle must not need them.
    script = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("src_monai", "napari_lasc"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__")
"""
    ran = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(scans[0].parent),
            "--output_dir",
            str(tmp_path / "bundle_out"),
        ],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    ours = subprocess.run(
        [
            LASC,
            "infer",
            str(scans[0].parent),
            "--out",
            str(tmp_path / "lasc_out"),
            "--model",
            str(SINGLE_STAGE),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ours.returncode == 0, ours.stderr
    for scan in scans:
        name = scan.name.removesuffix(".nii.gz")
        theirs = nib.load(tmp_path / "bundle_out" / f"{name}_seg.nii.gz")
        mine = nib.load(tmp_path / "lasc_out" / scan.name)
        np.testing.assert_allclose(theirs.affine, mine.affine, atol=1e-4)
        labels = np.asarray(theirs.dataobj)
        expected = np.asarray(mine.dataobj)
        assert labels.shape == expected.shape
        assert np.count_nonzero(expected == 1) > 10_000, name  # a real atrium, not two blanks
        assert np.array_equal(labels, expected), (
            f"{name}: {np.count_nonzero(labels != expected)} voxels differ"
        )


def test_export_refuses_what_it_cannot_write_faithfully(tmp_path, tiny_run):
    from src_monai.model.files import load_model, save_model

    network, spec = load_model(tiny_run[1].best_model)
    tri = save_model(tmp_path / "tri.safetensors", network, spec.with_input(tri_planar=True))
    done = subprocess.run(
        [LASC, "export-bundle", str(tri), str(tmp_path / "b")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {tri}: tri-planar models cannot be exported")
    assert not (tmp_path / "b").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    done = subprocess.run(
        [LASC, "export-bundle", str(SINGLE_STAGE), str(occupied)], capture_output=True, text=True
    )
    assert done.returncode == 2 and (occupied / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in occupied.iterdir()) == ["keep.txt"]
