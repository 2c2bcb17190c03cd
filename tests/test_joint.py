"""Two datasets trained together (bSSFP beside LGE-MRI): one voxel order, balanced samples,
joint folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from src_monai.config import load_config
from src_monai.data.datasets import discover_datasets
from src_monai.data.sampling import CaseChooser, VolumeCase, load_training_data
from src_monai.data.splits import joint_kfold_split, kfold_split
from src_monai.errors import DatasetError
from tests.conftest import save_nifti, synthetic_case, tiny_config

RAS_AFFINE = np.diag([1.25, 1.5, 2.0, 1.0])


def _write_dataset(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case_id, (image, labels, affine) in cases.items():
        save_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", labels, affine)
    training = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases
    ]
    manifest = {"name": root.name, "labels": {"0": "background", "1": "left atrium"}}
    (root / "dataset.json").write_text(json.dumps({**manifest, "training": training}))
    return root


def _stored_otherwise(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in the same place, stored with the first two axes swapped and both
    reversed (``PLS`` for a ``RAS`` original): ``B[i, j, k] = A[n0-1-j, n1-1-i, k]``."""
    n0, n1 = array.shape[:2]
    stored = np.ascontiguousarray(array[::-1, ::-1, :].transpose(1, 0, 2))
    index_map = np.array([[0, -1, 0, n0 - 1], [-1, 0, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    return stored, affine @ index_map


@pytest.fixture
def two_datasets(tmp_path):
    """``bssfp`` (3 cases, RAS) and ``lge`` (the same 3 scans stored PLS, other ids)."""
    originals = {f"la_{i:03d}": synthetic_case((24, 20, 7 + i), i, RAS_AFFINE) for i in range(3)}
    turned = {}
    for case_id, (image, labels, affine) in originals.items():
        stored_image, stored_affine = _stored_otherwise(image, affine)
        stored_labels, _ = _stored_otherwise(labels, affine)
        turned[case_id.replace("la_", "lge_")] = (stored_image, stored_labels, stored_affine)
    return _write_dataset(tmp_path / "bssfp", originals), _write_dataset(tmp_path / "lge", turned)


def test_two_datasets_train_in_the_first_cases_voxel_order(two_datasets, tmp_path):
    """An LGE copy stored in another axis order reaches the networks as the same voxels, at the
    same voxel size, as its bSSFP original; each case knows its dataset."""
    bssfp, lge = two_datasets
    config = tiny_config(
        bssfp, tmp_path / "runs", data={"extra_datasets": [str(lge)], "val_fraction": 0.0}
    )
    cases = {case.case_id: case for case in load_training_data(config).train}
    assert sorted(cases) == ["la_000", "la_001", "la_002", "lge_000", "lge_001", "lge_002"]
    for index in range(3):
        original, copy = cases[f"la_{index:03d}"], cases[f"lge_{index:03d}"]
        assert copy.slices.shape == original.slices.shape
        assert np.array_equal(copy.slices.numpy(), original.slices.numpy())
        assert np.array_equal(copy.labels.numpy(), original.labels.numpy())
        assert copy.spacing == pytest.approx(original.spacing)
        assert copy.axcodes == original.axcodes == ("R", "A", "S")
        assert (original.dataset, copy.dataset) == ("bssfp", "lge")
        assert copy.digest != original.digest  # of each file as stored: how it is recognised


def test_a_joint_model_records_every_training_case_and_one_orientation(two_datasets, tmp_path):
    from src_monai.model.files import load_spec
    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    bssfp, lge = two_datasets
    config = tiny_config(
        bssfp, tmp_path / "runs", data={"extra_datasets": [str(lge)], "val_fraction": 0.0}
    )
    result = run_to_end(run_training(config))
    record = load_spec(result.run_dir / "checkpoints" / "last.safetensors").record
    assert tuple(record.orientation_axcodes) == ("R", "A", "S")
    assert len(set(record.digests)) == 6
    assert str(lge) in record.source and str(bssfp) in record.source


def test_each_dataset_gives_half_the_samples_when_balanced():
    def case(name: str, dataset: str) -> VolumeCase:
        import torch

        return VolumeCase(
            name, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), (1, 1, 1), dataset=dataset
        )

    cases = [case("a", "big"), case("b", "big"), case("c", "big"), case("d", "small")]
    rng = np.random.default_rng(0)
    balanced = CaseChooser(cases, [0, 1, 2, 3], balance=True)
    share = np.mean([balanced.choose(rng) == 3 for _ in range(4000)])
    assert share == pytest.approx(0.5, abs=0.03)
    plain = CaseChooser(cases, [0, 1, 2, 3], balance=False)
    share = np.mean([plain.choose(rng) == 3 for _ in range(4000)])
    assert share == pytest.approx(0.25, abs=0.03)


def test_joint_folds_hold_out_a_share_of_each_dataset_as_its_own_folds_would():
    first = [f"la_{i:03d}" for i in range(16)]
    second = [f"lge_{i:03d}" for i in range(80)]
    joint = joint_kfold_split([first, second], 4, seed=0)
    alone = [kfold_split(group, 4, seed=0) for group in (first, second)]
    validated = [c for partition in joint.partitions for c in partition["val"]]
    assert sorted(validated) == sorted(first + second)  # each case held out exactly once
    for k, partition in enumerate(joint.partitions):
        for plan, group in zip(alone, (first, second), strict=True):
            held_out = [c for c in partition["val"] if c in group]
            assert held_out == plan.partitions[k]["val"]
        assert not set(partition["train"]) & set(partition["val"])
    with pytest.raises(DatasetError, match="more than one dataset"):
        joint_kfold_split([first[:4], first[:4]], 2)


def test_datasets_that_share_a_case_id_or_differ_in_classes_are_refused(two_datasets, tmp_path):
    bssfp, lge = two_datasets
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in ("imagesTr", "labelsTr", "dataset.json"):
        (twin / name).symlink_to(bssfp / name)
    with pytest.raises(DatasetError, match="la_000 is also a case of"):
        discover_datasets([bssfp, twin])
    manifest = json.loads((lge / "dataset.json").read_text())
    manifest["labels"]["2"] = "left ventricle"
    (lge / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="declares classes"):
        discover_datasets([bssfp, lge])


def test_extra_datasets_are_read_relative_to_the_config_and_must_be_msd(two_datasets, tmp_path):
    bssfp, lge = two_datasets
    config_file = tmp_path / "joint.toml"
    config_file.write_text(
        f'[data]\ndataset = "{bssfp.name}"\nextra_datasets = ["{lge.name}"]\n'
        f'[train]\nruns_dir = "runs"\n'
    )
    config = load_config(config_file)
    assert config.data.extra_datasets == [str(lge.resolve())]
    config.data.extra_datasets = [str(tmp_path / "missing")]
    with pytest.raises(DatasetError, match="missing: data.extra_datasets must be MSD"):
        load_training_data(config)


def test_fine_tuning_a_joint_model_trains_on_the_users_data_alone(two_datasets, tmp_path):
    """The recipe of a model trained on two datasets names both; fine-tuning it (napari's
    correction loop) on a user's folder must not need the other one."""
    import shutil

    from src_monai.progress import run_to_end
    from src_monai.training.plan import training_plan
    from src_monai.training.trainer import run_training

    bssfp, lge = two_datasets
    config = tiny_config(
        bssfp, tmp_path / "runs", data={"extra_datasets": [str(lge)], "val_fraction": 0.0}
    )
    joint = run_to_end(run_training(config)).best_model
    shutil.rmtree(lge)  # the user has never had it
    plan = training_plan(
        joint,
        bssfp,
        tmp_path / "tuned",
        epochs=1,
        steps_per_epoch=2,
        batch_size=2,
        device="cpu",
        cases=3,
    )
    assert plan.configs["model"].data.extra_datasets == []
    result = run_to_end(plan.run())
    assert result.stopped == "completed" and result.best_model.is_file()


def test_a_hold_out_split_takes_its_share_from_each_dataset(tmp_path):
    """No split file: data.val_fraction of each dataset is held out, so a small dataset is
    validated on too (one random draw over the merged ids could miss it)."""
    from tests.conftest import make_msd_dataset

    first = make_msd_dataset(tmp_path / "bssfp", cases=4, prefix="la")
    second = make_msd_dataset(tmp_path / "lge", cases=8, prefix="lge")
    config = tiny_config(
        first, tmp_path / "runs", data={"extra_datasets": [str(second)], "val_fraction": 0.25}
    )
    data = load_training_data(config)
    held_out = [case.case_id for case in data.val]
    assert sum(c.startswith("la_") for c in held_out) == 1
    assert sum(c.startswith("lge_") for c in held_out) == 2
    assert len(data.train) == 9
