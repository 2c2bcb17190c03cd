"""Every field a user can give is validated before any work: each config key and each
model-metadata field, fed a wrong type and an out-of-range value, ends in exit 2 with one
line naming it, and leaves no file or folder behind (``internal error`` is unreachable)."""

from __future__ import annotations

import copy
import json
import math
import typing
from dataclasses import fields

import pytest
import tomli_w
from conftest import make_msd_dataset, tiny_config
from test_reliability import one_error_line, tree_state

from src_monai.cli import main as lasc
from src_monai.config import CHOICES, RANGES, Config

WRONG_TYPE = {int: "many", float: "much", bool: 3, str: 5, list: 7}


def _config_keys() -> list[tuple[str, str, type]]:
    keys = []
    for section in fields(Config):
        hints = typing.get_type_hints(typing.get_type_hints(Config)[section.name])
        for name, kind in hints.items():
            keys.append((section.name, name, typing.get_origin(kind) or kind))
    return keys


def _out_of_range(section: str, name: str, kind: type):
    key = f"{section}.{name}"
    if key in RANGES:
        low, high = RANGES[key]
        value = high * 10 + 1 if high > 0 else low - 1
        value = int(value) if isinstance(low, int) and kind is not float else float(value)
        return [value] * 2 if kind is list else value
    if key in CHOICES:
        return "no-such-choice"
    special = {
        "data.dataset": "/nowhere/at/all",
        "data.split": "/nowhere/split.json",
        "data.slice_axis": 3,
        "data.crop_size": 8,
        "data.class_names": ["only one"],
        "data.rgb_map": "{(0,0,0):0, (255,0,255):7}",
        "train.init_model": "/nowhere/model.safetensors",
        "train.run_name": "../escaped",
        "train.runs_dir": "/proc/not-writable",
    }
    if key in special:
        return special[key]
    if kind is float:
        return math.nan
    return None  # a bool or a free text has no out-of-range value


CASES = [
    pytest.param(section, name, problem, id=f"{section}.{name}-{problem}")
    for section, name, kind in _config_keys()
    for problem in ("type", "range")
    if problem == "type" or _out_of_range(section, name, kind) is not None
]


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("validation")
    dataset = make_msd_dataset(root / "dataset", cases=3)
    return tiny_config(dataset, root / "unused").to_dict()


@pytest.mark.parametrize(("section", "name", "problem"), CASES)
def test_every_config_field_is_validated_before_any_file(
    section, name, problem, base_config, tmp_path, capsys
):
    kinds = {(s, n): k for s, n, k in _config_keys()}
    kind = kinds[(section, name)]
    raw = copy.deepcopy(base_config)
    raw["train"]["runs_dir"] = str(tmp_path / "runs")
    value = WRONG_TYPE[kind] if problem == "type" else _out_of_range(section, name, kind)
    raw[section][name] = value
    config = tmp_path / "bad.toml"
    config.write_text(tomli_w.dumps(raw))
    before = tree_state(tmp_path)
    assert lasc(["train", str(config)]) == 2
    line = one_error_line(capsys)
    assert "internal error" not in line
    assert f"{section}.{name}" in line or str(value) in line, line
    assert tree_state(tmp_path) == before
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- model metadata

FREE_TEXT = {
    "data.layout",
    "data.source",
    "package_version",
    "cross_validation.chosen",
    "cross_validation.datasets.0.name",
}
RECORDS = {"config", "training", "format", "format_version", "split"}


def _leaves(table: dict, prefix: str = ""):
    for key, value in table.items():
        path = f"{prefix}{key}"
        if path in RECORDS:
            continue
        if isinstance(value, dict):
            yield from _leaves(value, f"{path}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, item in enumerate(value):  # a list of tables: each field on its own
                yield from _leaves(item, f"{path}.{index}.")
        else:
            yield path, value


def _wrong_values(value):
    """A value of the wrong type and one of the right type out of range."""
    if isinstance(value, bool):
        return ["yes", None]
    if isinstance(value, int):
        return ["3", -7 if value >= 0 else 10**9]
    if isinstance(value, float):
        return ["0.5", math.nan]
    if isinstance(value, str):
        return [5, "no-such-value"]
    if isinstance(value, list):
        return [7, [*value, *value] if value and not isinstance(value[0], list) else [[999]]]
    raise AssertionError(value)


def _set(table: dict, path: str, value) -> dict:
    changed = copy.deepcopy(table)
    *parents, last = path.split(".")
    target = changed
    for name in parents:
        target = target[int(name) if name.isdigit() else name]
    target[last] = value
    return changed


@pytest.fixture(scope="module")
def model_parts(tiny_run):
    from src_monai.model.files import _read_safetensors

    state, metadata = _read_safetensors(tiny_run[1].best_model)
    metadata["inference"] = {"tta": False, "postprocess": True}
    metadata["cross_validation"] = {
        "folds": 4,
        "cases": 16,
        "chosen": "post",
        "dice_mean": 0.9,
        "dice_sd": 0.04,
        "hd95_mean": 8.2,
        "hd95_sd": 6.6,
        "hd95_undefined": 0,
        "datasets": [
            {
                "name": "lasc13",
                "cases": 16,
                "dice_mean": 0.9,
                "dice_sd": 0.04,
                "dice_min": 0.74,
                "hd95_mean": 8.2,
                "hd95_sd": 6.6,
            }
        ],
    }
    return state, metadata


def _metadata_cases():
    # The leaves of the metadata a training run writes, plus the optional inference and
    # cross-validation tables (added by the fixture); the test checks the list is current.
    leaves = [
        "model.name", "model.base_filters", "model.levels", "model.first_kernel_size",
        "model.dilation", "model.dropout", "model.norm", "model.residual_units",
        "data.slice_axis", "data.tri_planar", "data.context_slices", "data.normalisation",
        "data.patch_size", "data.class_names", "in_channels", "num_classes", "class_colours",
        "spacing_mm", "orientation_axcodes", "inference.tta", "inference.postprocess",
        "cross_validation.folds", "cross_validation.cases", "cross_validation.dice_mean",
        "cross_validation.dice_sd", "cross_validation.hd95_mean", "cross_validation.hd95_sd",
        "cross_validation.hd95_undefined", "data.layout", "data.source", "package_version",
        "cross_validation.chosen", "cross_validation.datasets.0.name",
        "cross_validation.datasets.0.cases", "cross_validation.datasets.0.dice_mean",
        "cross_validation.datasets.0.dice_sd", "cross_validation.datasets.0.dice_min",
        "cross_validation.datasets.0.hd95_mean", "cross_validation.datasets.0.hd95_sd",
    ]  # fmt: skip
    return [
        pytest.param(path, which, id=f"{path}-{'type' if which == 0 else 'range'}")
        for path in leaves
        for which in (0, 1)
        if not (which == 1 and path in FREE_TEXT)
    ]


@pytest.mark.parametrize(("path", "which"), _metadata_cases())
def test_every_model_metadata_field_is_validated_before_any_file(
    path, which, model_parts, tiny_run, tmp_path, capsys
):
    from safetensors.torch import save_file

    from src_monai.model.files import METADATA_KEY

    state, metadata = model_parts
    leaves = dict(_leaves(metadata))
    assert path in leaves, sorted(leaves)  # the list above follows what training writes
    value = _wrong_values(leaves[path])[which]
    if which == 1 and path.startswith("cross_validation.") and "hd95" in path:
        value = -1.0  # NaN is valid there: no case had a defined HD95
    model = tmp_path / "model.safetensors"
    save_file(state, model, metadata={METADATA_KEY: json.dumps(_set(metadata, path, value))})
    scan = tiny_run[0] / "imagesTr" / "case_000.nii.gz"
    before = tree_state(tmp_path)
    out = tmp_path / "out"
    code = lasc(["infer", str(scan), "--out", str(out), "--model", str(model), "--device", "cpu"])
    line = one_error_line(capsys, model.name)
    assert code == 2 and "internal error" not in line
    assert path.split(".")[-1] in line, line
    assert tree_state(tmp_path) == before and not out.exists()


def test_a_missing_split_file_says_how_to_make_one(base_config, tmp_path, capsys):
    raw = copy.deepcopy(base_config)
    raw["train"]["runs_dir"] = str(tmp_path / "runs")
    raw["data"]["split"] = str(tmp_path / "lasc13" / "folds.json")
    config = tmp_path / "train.toml"
    config.write_text(tomli_w.dumps(raw))
    assert lasc(["train", str(config)]) == 2
    line = one_error_line(capsys, "folds.json: split file not found")
    assert f"lasc prepare DATASET {tmp_path / 'lasc13'} --folds 4" in line
    assert "data.split=''" in line
    assert not (tmp_path / "runs").exists()
