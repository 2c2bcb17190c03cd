"""Data layer: MSD and PNG discovery, RGB mask decoding, patient-level splits."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import make_msd_dataset, save_nifti, synthetic_case
from PIL import Image
from scipy import ndimage

from src_monai.data.datasets import discover_msd
from src_monai.data.splits import holdout_split, kfold_split, load_split, save_split
from src_monai.errors import DatasetError, MaskColourError, PairMismatchError
from src_monai.io.png import (
    DEFAULT_RGB_MAP,
    colour_mask,
    decode_rgb_mask,
    discover_png,
    parse_rgb_map,
    read_png_mask,
)

# --------------------------------------------------------------------------- MSD layout


@pytest.mark.parametrize("with_manifest", [True, False])
def test_msd_cases_are_found_sorted_and_paired(tmp_path, with_manifest):
    root = make_msd_dataset(tmp_path / "ds", cases=3, with_manifest=with_manifest)
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"macOS resource fork")
    dataset = discover_msd(root)
    assert dataset.case_ids() == ["case_000", "case_001", "case_002"]
    assert all(
        c.image.parent.name == "imagesTr" and c.label.parent.name == "labelsTr"
        for c in dataset.training
    )
    assert dataset.num_classes == 2


def test_real_msd_dataset_has_sixteen_verified_cases(lasc13):
    dataset = discover_msd(lasc13)
    assert len(dataset.training) == 16
    assert dataset.case_ids() == sorted(dataset.case_ids())
    assert dataset.class_names == {0: "background", 1: "left atrium"}


def test_image_without_label_is_named(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", cases=2, with_manifest=False)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"no label for case.*case_001"):
        discover_msd(root)


def test_manifest_listing_a_missing_file_is_named(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", cases=2)
    (root / "imagesTr" / "case_000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"dataset.json: lists imagesTr/case_000.nii.gz"):
        discover_msd(root)


def test_broken_manifest_is_reported(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", cases=1)
    (root / "dataset.json").write_text("{ not json")
    with pytest.raises(DatasetError, match=r"not a valid MSD dataset\.json"):
        discover_msd(root)


def test_mismatched_pair_is_refused(tmp_path):
    root = make_msd_dataset(tmp_path / "ds", cases=2)
    _, labels, affine = synthetic_case(shape=(24, 20, 8))  # case_001 has 8 slices: shift it
    moved = affine.copy()
    moved[2, 3] += 5.0
    save_nifti(root / "labelsTr" / "case_001.nii.gz", labels, moved)
    with pytest.raises(PairMismatchError, match="case_001"):
        discover_msd(root)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        discover_msd(tmp_path / "nowhere")


# --------------------------------------------------------------------------- PNG layout


def test_seed_masks_decode_to_the_magenta_regions(seed_mini_test):
    slices = discover_png(seed_mini_test)
    assert len(slices) == 36
    eight_connected = np.ones((3, 3))
    for item in slices:
        rgb = np.asarray(Image.open(item.mask).convert("RGB"))
        classes = read_png_mask(item.mask)
        assert set(np.unique(classes)) == {0, 1}, item.mask.name
        magenta = (rgb[..., 0] > 127) & (rgb[..., 2] > 127)
        assert abs(int(classes.sum()) - int(magenta.sum())) <= 0.01 * magenta.sum(), item.mask.name
        # Same regions, none dropped or merged. (Slices often hold several: the atrium body
        # and pulmonary-vein cross-sections are separate in 2D.)
        _, ours = ndimage.label(classes == 1, structure=eight_connected)
        _, reference = ndimage.label(magenta, structure=eight_connected)
        assert ours == reference >= 1, item.mask.name


def test_seed_slice_names_give_patients_and_slices(seed_mini_test):
    slices = discover_png(seed_mini_test)
    assert {s.case_id for s in slices} == {str(10001 + i) for i in range(11)}
    first = next(s for s in slices if s.image.name == "10001_104.png")
    assert (first.case_id, first.slice_index, first.subset) == ("10001", 104, None)


def test_blended_edges_go_to_the_nearest_colour():
    rgb = np.array(
        [[[0, 0, 0], [100, 0, 100], [140, 0, 140], [255, 0, 255], [250, 3, 251]]], np.uint8
    )
    assert decode_rgb_mask(rgb).tolist() == [[0, 0, 1, 1, 1]]


def test_unknown_mask_colour_is_an_error_naming_the_file():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :2] = (0, 255, 0)
    with pytest.raises(MaskColourError, match=r"mask.png: 2 pixels .*\(0, 255, 0\)"):
        decode_rgb_mask(rgb, DEFAULT_RGB_MAP, source="mask.png")


def test_three_class_map():
    rgb_map = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2}
    rgb = np.array([[[0, 0, 0], [250, 0, 0], [0, 0, 200], [60, 0, 0]]], np.uint8)
    assert decode_rgb_mask(rgb, rgb_map).tolist() == [[0, 1, 2, 0]]


def test_rgb_map_is_parsed_without_eval(tmp_path):
    assert parse_rgb_map("{(0,0,0):0, (255,0,255):1}") == DEFAULT_RGB_MAP
    marker = tmp_path / "pwned"
    with pytest.raises(DatasetError):
        parse_rgb_map(f"__import__('os').system('touch {marker}')")
    assert not marker.exists()
    with pytest.raises(DatasetError, match=r"0\.\.255"):
        parse_rgb_map("{(0,0,300):1}")


def _png_slice(folder, name, value):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(folder / "images" / name)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "masks" / name)


def test_slice_level_split_of_the_earlier_tool_is_flagged(tmp_path, caplog):
    _png_slice(tmp_path / "train", "10001_5.png", 10)
    _png_slice(tmp_path / "valid", "10001_6.png", 20)
    _png_slice(tmp_path / "test", "10002_1.png", 30)
    with caplog.at_level(logging.WARNING):
        slices = discover_png(tmp_path)
    assert [(s.subset, s.case_id) for s in slices] == [
        ("train", "10001"),
        ("valid", "10001"),
        ("test", "10002"),
    ]
    assert "1 patient(s) have slices in more than one subset (e.g. 10001)" in caplog.text


def test_png_image_without_mask_is_named(tmp_path):
    _png_slice(tmp_path, "10001_5.png", 10)
    (tmp_path / "masks" / "10001_5.png").unlink()
    with pytest.raises(DatasetError, match=r"10001_5\.png: no mask"):
        discover_png(tmp_path)


# --------------------------------------------------------------------------- splits

CASES = [f"la_{i:03d}" for i in range(3, 35, 2)]  # 16 ids


def test_kfold_is_a_patient_level_partition():
    plan = kfold_split(list(reversed(CASES)), folds=4, seed=0)
    validated = [c for fold in plan.partitions for c in fold["val"]]
    assert sorted(validated) == sorted(CASES)  # each case validated exactly once
    for fold in plan.partitions:
        assert len(fold["val"]) == 4 and len(fold["train"]) == 12
        assert not set(fold["train"]) & set(fold["val"])


def test_splits_depend_on_seed_not_on_input_order():
    assert kfold_split(CASES, 4, seed=3) == kfold_split(list(reversed(CASES)), 4, seed=3)
    assert kfold_split(CASES, 4, seed=3).partitions != kfold_split(CASES, 4, seed=4).partitions
    plan = holdout_split(CASES, (0.8, 0.15, 0.05), seed=137)
    sizes = {k: len(v) for k, v in plan.partitions[0].items()}
    assert sizes == {"train": 13, "valid": 2, "test": 1}


def test_split_round_trips_through_json(tmp_path):
    plan = kfold_split(CASES, 4, seed=1)
    path = save_split(tmp_path / "folds.json", plan)
    assert load_split(path, known_cases=CASES) == plan


def test_loading_a_leaky_or_foreign_split_fails(tmp_path):
    path = tmp_path / "split.json"
    leaky = {
        "kind": "holdout",
        "seed": 0,
        "cases": ["a", "b"],
        "partitions": [{"train": ["a", "b"], "valid": ["b"], "test": []}],
    }
    path.write_text(json.dumps(leaky))
    with pytest.raises(DatasetError, match="case b is in both train and valid"):
        load_split(path)
    leaky["partitions"] = [{"train": ["a"], "valid": ["b"], "test": []}]
    path.write_text(json.dumps(leaky))
    with pytest.raises(DatasetError, match="not in the dataset: b"):
        load_split(path, known_cases=["a"])


def test_too_few_cases_for_a_split():
    with pytest.raises(DatasetError, match="too few for a test fraction"):
        holdout_split(CASES[:5], (0.8, 0.15, 0.05))
    with pytest.raises(DatasetError, match="cannot make 4 folds from 3 cases"):
        kfold_split(CASES[:3], 4)
    with pytest.raises(DatasetError, match="duplicate case ids: la_003"):
        kfold_split([CASES[0], *CASES], 4)


def test_png_mask_of_another_size_is_named(tmp_path):
    _png_slice(tmp_path, "10001_5.png", 10)
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / "masks" / "10001_5.png")
    with pytest.raises(DatasetError, match=r"10001_5\.png: mask is 8x4, its image 8x8"):
        discover_png(tmp_path)


def test_unreadable_png_is_named(tmp_path):
    _png_slice(tmp_path, "10001_5.png", 10)
    (tmp_path / "masks" / "10001_5.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable image"):
        discover_png(tmp_path)


def test_colour_mask_is_the_inverse_of_decoding():
    rgb_map = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2}
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    assert decode_rgb_mask(colour_mask(labels, rgb_map), rgb_map).tolist() == labels.tolist()
    with pytest.raises(DatasetError, match=r"no colour for class\(es\) \[3\]"):
        colour_mask(np.array([[3]], np.uint8), rgb_map)


@pytest.mark.parametrize("with_manifest", [True, False])
def test_an_msd_task_folder_as_its_archive_unpacks_is_read(tmp_path, with_manifest):
    """``Task02_Heart.tar`` unpacks to ``Task02_Heart/`` with ``dataset.json`` (paths as
    ``./imagesTr/...``, a ``test`` list), ``imagesTr``, ``labelsTr``, ``imagesTs`` and macOS
    ``._*`` resource forks beside every scan: ``lasc prepare`` reads it as it is, and the
    folder it was unpacked into is refused naming the task folder."""
    from src_monai.cli import main

    task = make_msd_dataset(tmp_path / "downloads" / "Task02_Heart", cases=3)
    (task / "imagesTs").mkdir()
    image, _, affine = synthetic_case(shape=(24, 20, 7), seed=9)
    save_nifti(task / "imagesTs" / "case_100.nii.gz", image, affine)
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for scan in list((task / folder).glob("*.nii.gz")):
            (task / folder / f"._{scan.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    manifest = json.loads((task / "dataset.json").read_text())
    manifest["test"] = ["./imagesTs/case_100.nii.gz"]
    (task / "dataset.json").write_text(json.dumps(manifest))
    if not with_manifest:
        (task / "dataset.json").unlink()
    dataset = discover_msd(task)
    assert dataset.case_ids() == ["case_000", "case_001", "case_002"]
    assert [c.case_id for c in dataset.test] == ["case_100"]
    assert main(["prepare", str(task), str(tmp_path / "prepared"), "--folds", "3"]) == 0
    assert (tmp_path / "prepared" / "folds.json").is_file()
    if with_manifest:
        with pytest.raises(DatasetError, match="holds Task02_Heart: give that folder"):
            discover_msd(tmp_path / "downloads")


def test_training_warns_of_empty_labels_and_scans_of_another_voxel_size(tmp_path, caplog):
    """Both are accepted (a case may truly hold no atrium; a user may mix scanners), but
    named: an all-zero label teaches background only, and a scan of another voxel size is
    learnt at its own scale while inference resamples to the median."""
    from conftest import tiny_config

    from src_monai.data.sampling import load_training_data

    dataset = make_msd_dataset(tmp_path / "data", cases=4)
    image, labels, affine = synthetic_case(shape=(24, 20, 8), seed=1)
    save_nifti(dataset / "labelsTr" / "case_001.nii.gz", np.zeros_like(labels), affine)
    coarse = affine.copy()
    coarse[:3, :3] *= 2.0
    image, labels, _ = synthetic_case(shape=(24, 20, 9), seed=2)
    save_nifti(dataset / "imagesTr" / "case_002.nii.gz", image, coarse)
    save_nifti(dataset / "labelsTr" / "case_002.nii.gz", labels, coarse)
    config = tiny_config(dataset, tmp_path / "runs", data={"val_fraction": 0.0})
    with caplog.at_level(logging.WARNING, logger="src_monai"):
        load_training_data(config)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    empty = [m for m in messages if "no foreground" in m]
    assert len(empty) == 1 and "case_001" in empty[0] and "case_000" not in empty[0]
    scale = [m for m in messages if "voxel size" in m]
    assert len(scale) == 1 and "case_002" in scale[0] and "case_003" not in scale[0]


def test_training_cases_alike_give_no_warning(tmp_path, caplog):
    from conftest import tiny_config

    from src_monai.data.sampling import load_training_data

    dataset = make_msd_dataset(tmp_path / "data", cases=3)
    config = tiny_config(dataset, tmp_path / "runs", data={"val_fraction": 0.0})
    with caplog.at_level(logging.WARNING, logger="src_monai"):
        load_training_data(config)
    assert not [r for r in caplog.records if "voxel size" in r.getMessage()]
    assert not [r for r in caplog.records if "no foreground" in r.getMessage()]
