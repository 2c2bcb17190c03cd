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
    _run_bundle(bundle, scans[0].parent, tmp_path / "bundle_out")
    # A one-stage bundle is MONAI's plain SliceInferer config: float32 arithmetic.
    _lasc_infer(scans[0].parent, tmp_path / "lasc_out", SINGLE_STAGE, "--precision", "float32")
    _assert_same_labels(scans, tmp_path / "bundle_out", tmp_path / "lasc_out", atrium=10_000)


def _run_bundle(bundle: Path, scans: Path, out: Path) -> None:
    """MONAI's own runner, from the bundle folder, with our packages made unimportable: the
    bundle must not need them."""
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
    command = [sys.executable, "-c", script, "run", "--config_file", "configs/inference.json"]
    command += ["--dataset_dir", str(scans), "--output_dir", str(out)]
    ran = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]


def _lasc_infer(scans: Path, out: Path, model: Path | str, *extra: str) -> None:
    command = [LASC, "infer", str(scans), "--out", str(out), "--model", str(model), *extra]
    ours = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert ours.returncode == 0, ours.stderr


def _assert_same_labels(scans: list[Path], bundle_out: Path, lasc_out: Path, atrium: int) -> None:
    for scan in scans:
        name = scan.name.removesuffix(".nii.gz")
        theirs = nib.load(bundle_out / f"{name}_seg.nii.gz")
        mine = nib.load(lasc_out / scan.name)
        np.testing.assert_allclose(theirs.affine, mine.affine, atol=1e-4)
        labels = np.asarray(theirs.dataobj)
        expected = np.asarray(mine.dataobj)
        assert labels.shape == expected.shape
        assert np.count_nonzero(expected == 1) > atrium, name  # a real atrium, not two blanks
        assert np.array_equal(labels, expected), (
            f"{name}: {np.count_nonzero(labels != expected)} voxels differ"
        )


def _other_grids(source: Path, folder: Path) -> list[Path]:
    """``source`` as it is, stored with its first two axes reversed (another orientation: the
    pipeline turns it), and at half its voxel size in-plane (resampled there and back)."""
    folder.mkdir()
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    stem = source.name.removesuffix(".nii.gz")
    flipped_affine = image.affine @ np.diag([-1.0, -1.0, 1.0, 1.0])
    flipped_affine[:3, 3] = image.affine[:3, :3] @ np.array(
        [data.shape[0] - 1, data.shape[1] - 1, 0]
    )
    flipped_affine[:3, 3] += image.affine[:3, 3]
    fine = np.repeat(np.repeat(data, 2, 0), 2, 1)
    fine_affine = image.affine @ np.diag([0.5, 0.5, 1.0, 1.0])
    fine_affine[:3, 3] -= fine_affine[:3, :3] @ np.array([0.5, 0.5, 0.0])
    paths = []
    for name, array, affine in (
        (stem, data, image.affine),
        (f"{stem}_flipped", np.ascontiguousarray(data[::-1, ::-1]), flipped_affine),
        (f"{stem}_fine", fine, fine_affine),
    ):
        paths.append(folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine), paths[-1])
    return paths


def test_a_two_stage_model_exports_with_its_steps_and_equals_lasc_infer(tmp_path):
    """Both stages in the bundle (a 2.5D and a 3D stage 2, the latter also with the
    whole-region pass chosen), the steps between them in scripts/: the labels of lasc infer
    on a scan, on the same scan stored in another axis order, and at half the voxel size."""
    from conftest import make_msd_dataset, tiny_config, train_tiny_localiser

    from src_monai.model.files import combine_stages, load_model, save_model
    from src_monai.model.spec import InferenceDefaults
    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    dataset = make_msd_dataset(tmp_path / "data", cases=4)
    localiser = train_tiny_localiser(dataset, tmp_path / "runs").best_model
    scans = _other_grids(dataset / "imagesTr" / "case_001.nii.gz", tmp_path / "scans")
    windows = {"crop_size": 16, "crop_jitter": 2, "crop_slice_margin": 1}
    three_d = {**windows, "crop_depth": 4, "context_slices": 1}
    for name, data in (("crop", windows), ("3d", three_d), ("3d-whole", three_d)):
        training = {"epochs": 8, "steps_per_epoch": 10, "batch_size": 2, "learning_rate": 0.01}
        if name != "3d-whole":
            config = tiny_config(dataset, tmp_path / "runs", data=data, train=training)
            segmenter = run_to_end(run_training(config)).best_model
        model = combine_stages(localiser, segmenter, tmp_path / f"{name}.safetensors")
        if name == "3d-whole":
            network, spec = load_model(model)
            chosen = InferenceDefaults(postprocess=spec.defaults.postprocess, whole_region=True)
            save_model(model, network, spec.with_inference(chosen))
        bundle = tmp_path / f"bundle_{name}"
        done = subprocess.run(
            [LASC, "export-bundle", str(model), str(bundle)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert (bundle / "models" / "localiser.pt").is_file()
        assert (bundle / "scripts" / "lasc_pipeline.py").is_file()
        _run_bundle(bundle, scans[0].parent, tmp_path / f"bundle_out_{name}")
        _lasc_infer(scans[0].parent, tmp_path / f"lasc_out_{name}", model)
        _assert_same_labels(
            scans, tmp_path / f"bundle_out_{name}", tmp_path / f"lasc_out_{name}", atrium=20
        )
    # the whole-region pass is a different computation: a bundle that ignored it would differ
    first = scans[0].name
    whole, windows = (
        np.asarray(nib.load(tmp_path / f"lasc_out_{n}" / first).dataobj) for n in ("3d-whole", "3d")
    )
    assert not np.array_equal(whole, windows)


@pytest.mark.slow
def _excerpt(source: Path, folder: Path, slices: slice) -> Path:
    """Some of ``source``'s slices (last axis), the affine shifted to keep the geometry."""
    image = nib.load(source)
    affine = image.affine.copy()
    affine[:3, 3] += image.affine[:3, :3] @ np.array([0, 0, slices.start])
    path = folder / source.name.replace(".nii.gz", "_thin.nii.gz")
    data = np.ascontiguousarray(np.asarray(image.dataobj)[:, :, slices])
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_the_shipped_model_exports_and_equals_lasc_infer_on_a_real_scan(tmp_path):
    """``lasc export-bundle bundled`` (the --help example): the bundled sample scan, stored
    in another axis order, at half its voxel size in-plane, and 16 of its slices (thinner
    than the 3D window: one pass)."""
    bundle = tmp_path / "bundle"
    done = subprocess.run(
        [LASC, "export-bundle", "bundled", str(bundle)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    scans = _other_grids(SAMPLE_SCAN, tmp_path / "scans")
    scans.append(_excerpt(SAMPLE_SCAN, tmp_path / "scans", slice(30, 46)))
    _run_bundle(bundle, scans[0].parent, tmp_path / "bundle_out")
    _lasc_infer(scans[0].parent, tmp_path / "lasc_out", "bundled")
    _assert_same_labels(scans, tmp_path / "bundle_out", tmp_path / "lasc_out", atrium=10_000)


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


def test_the_licence_attributes_the_lge_data_when_the_weights_learnt_from_it():
    from dataclasses import replace

    from conftest import model_spec

    from src_monai.config import ModelConfig
    from src_monai.model.bundle import licence_text

    spec = model_spec(ModelConfig())
    bssfp = replace(spec, record=replace(spec.record, source="/data/lasc13"))
    joint = replace(spec, record=replace(spec.record, source="/data/lasc13 + /data/atriaseg2018"))
    assert "CC-BY-SA 4.0" in licence_text(bssfp) and "Xiong" not in licence_text(bssfp)
    assert "Xiong et al." in licence_text(joint) and "CC-BY-SA 4.0" in licence_text(joint)
    from src_monai.model.bundle import data_source

    named = data_source(joint)  # by name, without the local folders
    assert "Task02_Heart" in named and "Atrial Segmentation Challenge" in named
    assert "/data" not in named
