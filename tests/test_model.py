"""Networks by name and model files that never run code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import CodeRunningPickle, model_metadata, model_spec

from src_monai.config import ModelConfig
from src_monai.model.files import ModelFileError, load_model, save_model
from src_monai.model.networks import build_network


@pytest.mark.parametrize("name", ["UNet", "BasicUNet", "DynUNet", "AttentionUnet", "SegResNet"])
def test_networks_by_name_map_2d_slices_to_class_logits(name):
    network = build_network(ModelConfig(name=name, base_filters=8, levels=3), 3, 4)
    assert network(torch.zeros(2, 3, 32, 48)).shape == (2, 4, 32, 48)


def test_unet_takes_the_earlier_tools_first_kernel_and_dilation():
    network = build_network(
        ModelConfig(
            first_kernel_size=11, dilation=2, base_filters=4, levels=3, dropout=0.1, norm="batch"
        ),
        1,
        2,
    )
    stem = network[0].conv
    assert stem.kernel_size == (11, 11) and stem.dilation == (2, 2)
    assert network(torch.zeros(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_model_file_round_trip(tmp_path):
    model = ModelConfig(base_filters=4, levels=3)
    network = build_network(model, 1, 2)
    path = save_model(tmp_path / "m.safetensors", network, model_spec(model))
    loaded, spec = load_model(path)
    assert spec.package_version and spec.slice_axis == 2
    for (name, a), (_, b) in zip(
        network.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_metadata_that_disagrees_with_the_weights_is_refused(tmp_path):
    model = ModelConfig(base_filters=4, levels=3)
    wrong = model_spec(ModelConfig(base_filters=8, levels=3))
    path = save_model(tmp_path / "m.safetensors", build_network(model, 1, 2), wrong)
    with pytest.raises(ModelFileError, match="weights do not match the architecture"):
        load_model(path)


def test_truncated_model_file_is_refused(tmp_path):
    model = ModelConfig(base_filters=4, levels=3)
    path = save_model(tmp_path / "m.safetensors", build_network(model, 1, 2), model_spec(model))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(path)


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": CodeRunningPickle(marker)}, f)
    torch.save({"weight": CodeRunningPickle(marker)}, tmp_path / "model2.pt")
    (tmp_path / "model.json").write_text(json.dumps({}))
    (tmp_path / "model2.json").write_text(json.dumps({}))
    for candidate in (path, tmp_path / "model2.pt"):
        with pytest.raises(ModelFileError, match="refused"):
            load_model(candidate)
    assert not marker.exists()


def test_a_renamed_model_file_loads_and_other_files_are_named_for_what_they_are(tmp_path):
    import shutil

    from src_monai.model.files import SAMPLE_SCAN

    model = ModelConfig(base_filters=4, levels=3)
    network = build_network(model, 1, 2)
    saved = save_model(tmp_path / "m.safetensors", network, model_spec(model))
    renamed = tmp_path / "m.pt"
    shutil.copy(saved, renamed)
    loaded, _ = load_model(renamed)
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), network.state_dict().values(), strict=True)
    )
    (tmp_path / "notes.pt").write_text("weights are elsewhere")
    shutil.copy(SAMPLE_SCAN, tmp_path / "scan.pt")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, what in (
        ("notes.pt", "a text file"),
        ("scan.pt", "gzip-compressed data"),
        ("empty.pth", "an empty file"),
    ):
        with pytest.raises(ModelFileError, match=f"not a model file: {what}"):
            load_model(tmp_path / name)


def test_plain_state_dict_with_sidecarmodel_metadata(tmp_path):
    model = ModelConfig(base_filters=4, levels=3)
    network = build_network(model, 1, 2)
    torch.save(network.state_dict(), tmp_path / "weights.pt")
    metadata = model_metadata(model)
    (tmp_path / "weights.json").write_text(json.dumps(metadata))
    loaded, _ = load_model(tmp_path / "weights.pt")
    assert torch.equal(
        loaded.state_dict()["model.0.conv.unit0.conv.weight"],
        network.state_dict()["model.0.conv.unit0.conv.weight"],
    )


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "none.safetensors")


def test_stages_are_stated_in_the_file_and_round_trip(tmp_path):
    """Each network's stage is written to the model file and read back as its type; a file
    that states a stage its keys contradict is refused; files older than the key (the
    2.5D model bundled until 2026-12-02) take the stage their keys make."""
    from dataclasses import replace

    from safetensors import safe_open

    from src_monai.config import Stage
    from src_monai.model.files import load_spec

    # the 2.5D model bundled until 2026-12-02, written before the stage key existed
    earlier = Path(__file__).parent / "data" / "two_stage_2d5_v2.safetensors"
    old = json.loads(safe_open(str(earlier), "pt").metadata()["napari_lasc"])
    assert "stage" not in old and "stage" not in old["localiser"]
    network, spec = load_model(earlier)
    assert (spec.stage, spec.localiser.stage) == (Stage.CROP_SEGMENTER, Stage.LOCALISER)
    assert load_spec(earlier) == spec  # the header alone: no weights read
    path = save_model(tmp_path / "again.safetensors", network, spec)
    written = json.loads(safe_open(str(path), "pt").metadata()["napari_lasc"])
    assert (written["stage"], written["localiser"]["stage"]) == ("crop_segmenter", "localiser")
    assert load_spec(path).stage is Stage.CROP_SEGMENTER
    lying = save_model(
        tmp_path / "lying.safetensors",
        network,
        replace(spec, input=replace(spec.input, stage=Stage.WHOLE_SLICE)),
    )
    with pytest.raises(ModelFileError, match="disagrees with its data keys"):
        load_model(lying)


def test_the_spec_keeps_each_fact_once_and_its_recipe_must_agree_with_it():
    """Input, classes and training record are typed sections; the saved training recipe is a
    typed Config (flips are read from it) and may not contradict the sections."""
    from dataclasses import fields, replace

    from src_monai.model.files import BUNDLED_MODEL, load_spec
    from src_monai.model.spec import ModelSpec

    assert [f.name for f in fields(ModelSpec)] == [
        "network",
        "input",
        "classes",
        "record",
        "inference",
        "cross_validation",
        "package_version",
        "localiser",
    ]
    spec = load_spec(BUNDLED_MODEL)
    assert spec.record.recipe.data.crop_size == spec.input.crop_size == 80
    assert spec.record.recipe.data.crop_depth == spec.input.crop_depth == 48
    assert spec.trained_with_flips is spec.record.recipe.augment.flip
    metadata = spec.to_metadata()  # the file adds the package version that writes it
    assert ModelSpec.from_metadata(metadata) == replace(spec, package_version="")
    metadata["config"]["data"]["slice_axis"] = 0  # the recipe now says another axis
    with pytest.raises(ValueError, match="feeds the network unlike data says"):
        ModelSpec.from_metadata(metadata)
    metadata = spec.to_metadata()
    metadata["config"]["model"]["base_filters"] = 8
    with pytest.raises(ValueError, match="another network"):
        ModelSpec.from_metadata(metadata)
    metadata = spec.to_metadata()
    metadata["config"]["train"]["epochs"] = "many"
    with pytest.raises(ValueError, match="training recipe.*train.epochs"):
        ModelSpec.from_metadata(metadata)
    turned = spec.with_input(slice_axis=0)  # both copies change together
    assert turned.slice_axis == turned.record.recipe.data.slice_axis == 0
    assert ModelSpec.from_metadata(turned.to_metadata()) == replace(turned, package_version="")


def test_a_saved_model_file_is_readable_as_the_umask_allows(tmp_path):
    """safetensors writes owner-only files; a model on a shared server must not be."""
    import os

    model = ModelConfig(base_filters=4, levels=3)
    mask = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.safetensors", build_network(model, 1, 2), model_spec(model))
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        private = save_model(
            tmp_path / "p.safetensors", build_network(model, 1, 2), model_spec(model)
        )
        assert private.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)
