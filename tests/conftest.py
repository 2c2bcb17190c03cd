"""Shared fixtures: paths to the real data in ../shared and small synthetic volumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

# The `lasc` command of the environment running the tests (subprocess tests call it).
LASC = str(Path(sys.executable).with_name("lasc"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LASC13 = SHARED_DATA / "lasc13"
SEED_MINI_TEST = SHARED_DATA / "seed_mini_test"
ATRIASEG2018 = SHARED_DATA / "atriaseg2018"


def _oblique_affine() -> np.ndarray:
    # A rotation (so ITK's direction matrix can hold it exactly) with anisotropic voxels and
    # an off-centre origin: catches axis, sign and LPS/RAS mix-ups that the diagonal LASC'13
    # affines would not.
    angle = np.deg2rad(25.0)
    about_z = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    about_x = np.array(
        [
            [1, 0, 0],
            [0, np.cos(angle / 2), -np.sin(angle / 2)],
            [0, np.sin(angle / 2), np.cos(angle / 2)],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = about_x @ about_z @ np.diag([1.25, 0.9, 1.37])
    affine[:3, 3] = [30.5, -12.0, 7.25]
    return affine


OBLIQUE_AFFINE = _oblique_affine()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not present at {path} (CI provides ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def lasc13() -> Path:
    return _need(LASC13)


@pytest.fixture(scope="session")
def seed_mini_test() -> Path:
    return _need(SEED_MINI_TEST)


@pytest.fixture(scope="session")
def atriaseg2018() -> Path:
    return _need(ATRIASEG2018)


def synthetic_case(shape=(24, 20, 9), seed=0, affine=OBLIQUE_AFFINE):
    """A small int16 'scan' with a blob labelled 1, in the given geometry."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 800, size=shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    x, y, z = shape
    labels[x // 4 : x // 2 + 2, y // 3 : y // 2 + 3, 2 : z - 2] = 1
    image[labels == 1] += 600
    return image, labels, affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = OBLIQUE_AFFINE) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def make_msd_dataset(
    root: Path, cases: int = 3, with_manifest: bool = True, prefix: str = "case"
) -> Path:
    """A tiny MSD-layout dataset of synthetic cases ``case_000`` ... (``prefix``) with varying
    depth."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for index in range(cases):
        case_id = f"{prefix}_{index:03d}"
        image, labels, affine = synthetic_case(shape=(24, 20, 7 + index), seed=index)
        save_nifti(root / "imagesTr" / f"{case_id}.nii.gz", image, affine)
        save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", labels, affine)
        training.append(
            {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
        )
    if with_manifest:
        manifest = {
            "name": "synthetic",
            "labels": {"0": "background", "1": "left atrium"},
            "numTraining": cases,
            "training": training,
        }
        (root / "dataset.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    return make_msd_dataset(tmp_path / "dataset")


TINY_TRAINING = {
    "data": {"patch_size": [32, 32], "context_slices": 3, "val_fraction": 0.25},
    "model": {"base_filters": 4, "levels": 3, "residual_units": 1},
    "train": {
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "preview_slices": 2,
        "early_stopping_patience": 0,
    },
    "augment": {"probability": 0.5},
}


def tiny_config(dataset: Path, runs: Path, **sections):
    """A seconds-long CPU training config on a synthetic dataset."""
    from src_monai.config import config_from_dict

    raw = {name: dict(values) for name, values in TINY_TRAINING.items()}
    raw["data"]["dataset"] = str(dataset)
    raw["train"]["runs_dir"] = str(runs)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def train_tiny_localiser(dataset: Path, runs: Path, *, epochs: int = 6, steps: int = 10):
    """A localiser (stage 1, slices shrunk 2x) trained for seconds on a synthetic dataset;
    its TrainResult."""
    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    config = tiny_config(
        dataset,
        runs,
        data={"downsample": 2, "patch_size": [16, 16]},
        train={"epochs": epochs, "steps_per_epoch": steps, "learning_rate": 0.01},
    )
    return run_to_end(run_training(config))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A model trained for two short epochs on four synthetic cases (shared by tests)."""
    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    root = tmp_path_factory.mktemp("tiny")
    dataset = make_msd_dataset(root / "dataset", cases=4)
    result = run_to_end(run_training(tiny_config(dataset, root / "runs")))
    return dataset, result


def model_metadata(model) -> dict:
    """Metadata of a small 2D model file with ``model``'s architecture (a ModelConfig)."""
    return {
        "format": "napari-lasc-model",
        "model": {**model.__dict__},
        "in_channels": 1,
        "num_classes": 2,
        "data": {
            "slice_axis": 2,
            "context_slices": 1,
            "normalisation": "zscore",
            "patch_size": [32, 32],
            "class_names": ["background", "la"],
        },
    }


def model_spec(model):
    """The :class:`ModelSpec` of :func:`model_metadata` (what ``save_model`` takes)."""
    from src_monai.model.spec import ModelSpec

    return ModelSpec.from_metadata(model_metadata(model))


class CodeRunningPickle:
    """Unpickling this runs ``touch marker``: a model file that must never be loaded."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def errors():
    """The error notifications napari showed since the test began (napari's own record)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    before = len(notification_manager.records)

    def shown() -> list[str]:
        return [
            str(n.message)
            for n in notification_manager.records[before:]
            if n.severity == NotificationSeverity.ERROR
        ]

    return shown


def torchrun_train(config: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``lasc train CONFIG ARGUMENTS`` as two CPU processes under ``torchrun`` (one thread
    each, so the two share this machine's cores)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "src_monai.cli"]
    return subprocess.run(
        [*command, "train", str(config), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
