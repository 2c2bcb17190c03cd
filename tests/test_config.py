"""Config: TOML with strict keys and types, --set overrides, the earlier tool's INI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from src_monai.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
)
from src_monai.legacy.ini import load_any_config

EARLIER_TOOL_INI = """\
[model]
model          = "TensorFlowFlexUNet"
generator      = False
image_width    = 512
image_height   = 512
image_channels = 3
input_normalize = True
normalization  = False
num_classes    = 2
base_filters   = 16
base_kernels   = (11,11)
num_layers     = 8
dilation       = (1,1)
dropout_rate   = 0.04
optimizer      = "Adam"
learning_rate  = 0.00007
clipvalue      = 0.5
loss           = "categorical_crossentropy"
metrics        = ["dice_coef_multiclass"]

[dataset]
class_name    = "ImageCategorizedMaskDataset"

[train]
epochs        = 100
batch_size    = 2
patience      = 10
model_dir     = "./models/"
eval_dir      = "./eval/"
images_dir    = "./dataset/train/images/"
masks_dir     = "./dataset/train/masks/"
learning_rate_reducer = True
reducer_factor     = 0.5
reducer_patience   = 4
epoch_change_infer     = True
epoch_change_infer_dir = "./epoch_change_infer"
num_infer_images       = 6
save_weights_only      = True
create_backup          = False

[valid]
images_dir = "./dataset/valid/images/"
masks_dir  = "./dataset/valid/masks/"

[infer]
images_dir = "./mini_test/images/"
output_dir = "./mini_test_output/"

[mask]
mask_file_format = ".png"
rgb_map = {(0,0,0):0, (255,0,255):1}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_values_and_relative_paths(tmp_path):
    path = write(
        tmp_path,
        "c.toml",
        '[data]\ndataset = "ds"\ncontext_slices = 3\n[train]\nepochs = 5\nlearning_rate = 1\n',
    )
    config = load_config(path)
    assert config.data.dataset == str(tmp_path / "ds")
    assert config.data.context_slices == 3 and config.train.epochs == 5
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model == Config().model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nepoch = 5\n", "unknown key train.epoch"),
        ("[trian]\nepochs = 5\n", "unknown key trian"),
        ('[train]\nepochs = "5"\n', "train.epochs must be int"),
        ("[train]\nepochs = 2.5\n", "train.epochs must be int"),
        ("[augment]\nflip = 1\n", "augment.flip must be true or false"),
        ("[data]\npatch_size = 256\n", "data.patch_size must be a list"),
        ('[train]\nloss = "iou"\n', "train.loss = 'iou' is not one of"),
        ("[data]\ncontext_slices = 2\n", "data.context_slices must be an odd number"),
        ("[data]\npatch_size = [100, 100]\n", "must be divisible by 16"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as raised:
        load_config(write(tmp_path, "bad.toml", text))
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / "bad.toml"))


def test_overrides(tmp_path):
    config = apply_overrides(
        Config(),
        ["train.epochs=3", "model.name=BasicUNet", "data.patch_size=[64, 64]", "augment.flip=true"],
    )
    assert config.train.epochs == 3 and config.model.name == "BasicUNet"
    assert config.data.patch_size == [64, 64] and config.augment.flip is True
    with pytest.raises(ConfigError, match="unknown key train.epoch$"):
        apply_overrides(Config(), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        apply_overrides(Config(), ["train.epochs=three"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(Config(), ["epochs"])


def test_earlier_tool_ini_is_mapped(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        config = load_any_config(write(tmp_path, "train_eval_infer.config", EARLIER_TOOL_INI))
    assert config.model.name == "UNet"
    assert (config.model.base_filters, config.model.first_kernel_size, config.model.levels) == (
        16,
        11,
        8,
    )
    assert config.model.dropout == 0.04 and config.model.norm == "none"
    assert (config.train.optimizer, config.train.learning_rate, config.train.clip_value) == (
        "adam",
        0.00007,
        0.5,
    )
    assert config.train.loss == "ce" and config.train.epochs == 100
    assert config.train.batch_size == 2 and config.train.early_stopping_patience == 10
    assert (config.train.scheduler, config.train.reducer_factor, config.train.reducer_patience) == (
        "plateau",
        0.5,
        4,
    )
    assert config.train.preview_slices == 6
    assert config.data.patch_size == [512, 512] and config.data.layout == "png"
    assert config.data.dataset == str(tmp_path / "dataset")
    assert config.train.runs_dir == str(tmp_path / "models")
    images, output = tmp_path / "mini_test" / "images", tmp_path / "mini_test_output"
    assert f"lasc infer {images} --out {output}" in caplog.text
    assert "(255, 0, 255): 1" in config.data.rgb_map
    warnings = [r.getMessage() for r in caplog.records if "no equivalent" in r.getMessage()]
    assert len(warnings) == 1
    for key in ("model.generator", "model.metrics", "train.eval_dir", "dataset.class_name"):
        assert key in warnings[0]


def test_code_in_ini_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    text = EARLIER_TOOL_INI.replace(
        '"categorical_crossentropy"', f"__import__('os').system('touch {marker}')"
    )
    with pytest.raises(ConfigError, match="model.loss = .* is not a literal value"):
        load_any_config(write(tmp_path, "train_eval_infer.config", text))
    assert not marker.exists()


def test_ini_value_without_equivalent_is_an_error(tmp_path):
    text = EARLIER_TOOL_INI.replace('"TensorFlowFlexUNet"', '"SwinUNet"')
    with pytest.raises(ConfigError, match="model.model: 'SwinUNet' has no equivalent"):
        load_any_config(write(tmp_path, "train_eval_infer.config", text))


@pytest.mark.parametrize("count", ["1000000000000", "1", "1e400"])
def test_an_absurd_class_count_in_an_ini_is_refused_in_one_line(count, tmp_path):
    assert "num_classes    = 2" in EARLIER_TOOL_INI
    text = EARLIER_TOOL_INI.replace("num_classes    = 2", f"num_classes    = {count}")
    path = write(tmp_path, "train_eval_infer.config", text)
    with pytest.raises(
        ConfigError,
        match=r"model.num_classes(: | = .* )(outside its range 2..255|cannot convert float inf)",
    ):
        load_any_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_config_round_trips_through_toml(tmp_path):
    config = apply_overrides(
        Config(),
        [
            "train.epochs=7",
            "data.class_names=['bg', 'la']",
            f"train.runs_dir='{tmp_path / 'runs'}'",
        ],
    )
    path = tmp_path / "saved.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


@pytest.mark.parametrize("section", ["eval", "infer"])
def test_removed_section_in_a_config_file_says_what_to_do(tmp_path, section):
    path = write(tmp_path, "old.toml", f"[{section}]\nbatch_size = 4\n")
    with pytest.raises(ConfigError, match=rf"old.toml: \[{section}\] is no longer read.*delete"):
        load_config(path)


def test_removed_sections_of_a_saved_config_are_dropped():
    """Run folders and model files of earlier versions still resume and fine-tune."""
    raw = {"train": {"epochs": 3}, "eval": {"hd_percentile": 95.0}, "infer": {"tta": False}}
    config = config_from_dict(raw, "last_state.pt", saved=True)
    assert config.train.epochs == 3 and set(config.to_dict()) == {
        "data",
        "augment",
        "model",
        "train",
    }
