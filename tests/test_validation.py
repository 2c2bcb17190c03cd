"""Every field a user can give is validated before any work: each config key and each
model-metadata field, fed a wrong type and an out-of-range value, ends in exit 2 with one
line naming it, and leaves no file or folder behind (``internal error`` is unreachable)."""

from __future__ import annotations

import copy
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
