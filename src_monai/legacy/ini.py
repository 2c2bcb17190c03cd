"""The earlier Keras tool's ``train_eval_infer.config`` (INI) read into a :class:`Config`.

Values are Python literals read with :func:`ast.literal_eval` (never ``eval``); each known
``(section, key)`` maps to one of our keys, and a key with no equivalent is an error naming it.
"""

from __future__ import annotations

import ast
import configparser
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

from src_monai.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_number,
    config_from_dict,
    load_config,
    read_config_text,
    resolve_paths,
)

logger = logging.getLogger(__name__)


# (section, key) of the earlier tool -> our "section.key", with a value converter.
def _first(value):
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


_LOSSES = {
    "categorical_crossentropy": "ce",
    "sparse_categorical_crossentropy": "ce",
    "binary_crossentropy": "ce",
    "dice": "dice",
    "dice_coef": "dice",
    "dice_loss": "dice",
    "bce_dice": "dice_ce",
    "bce_dice_loss": "dice_ce",
}
_MODELS = {
    "TensorFlowFlexUNet": "UNet",
    "TensorflowFlexUNet": "UNet",
    "AttentionUNet": "AttentionUnet",
}


def _lookup(table: dict[str, str], what: str):
    def convert(value):
        if value not in table:
            raise ValueError(f"{value!r} has no equivalent here (known: {', '.join(table)})")
        return table[value]

    convert.__name__ = what
    return convert


INI_KEYS: dict[tuple[str, str], tuple[str, Any]] = {
    ("model", "model"): ("model.name", _lookup(_MODELS, "model")),
    ("model", "num_classes"): ("data.num_classes", int),
    ("model", "base_filters"): ("model.base_filters", int),
    ("model", "base_kernels"): ("model.first_kernel_size", _first),
    ("model", "num_layers"): ("model.levels", int),
    ("model", "dilation"): ("model.dilation", _first),
    ("model", "dropout_rate"): ("model.dropout", float),
    ("model", "normalization"): ("model.norm", lambda on: "batch" if on else "none"),
    ("model", "optimizer"): ("train.optimizer", lambda name: str(name).lower()),
    ("model", "learning_rate"): ("train.learning_rate", float),
    ("model", "clipvalue"): ("train.clip_value", float),
    ("model", "loss"): ("train.loss", _lookup(_LOSSES, "loss")),
    ("train", "epochs"): ("train.epochs", int),
    ("train", "batch_size"): ("train.batch_size", int),
    ("train", "patience"): ("train.early_stopping_patience", int),
    ("train", "learning_rate_reducer"): ("train.scheduler", lambda on: "plateau" if on else "none"),
    ("train", "reducer_factor"): ("train.reducer_factor", float),
    ("train", "reducer_patience"): ("train.reducer_patience", int),
    ("train", "reducer_patinece"): ("train.reducer_patience", int),  # its own misspelling
    ("train", "model_dir"): ("train.runs_dir", str),
    ("train", "num_infer_images"): ("train.preview_slices", int),
    ("mask", "rgb_map"): ("data.rgb_map", lambda m: repr(dict(m))),
}
# Keys whose meaning is covered otherwise: image size and folders are handled below.
_INI_HANDLED = {
    ("model", "image_width"),
    ("model", "image_height"),
    ("train", "images_dir"),
    ("train", "masks_dir"),
    ("valid", "images_dir"),
    ("valid", "masks_dir"),
    ("test", "images_dir"),
    ("test", "masks_dir"),
    ("train", "epoch_change_infer"),
    ("train", "epoch_change_infer_dir"),
    ("infer", "images_dir"),
    ("infer", "output_dir"),
}


def config_from_ini(text: str, source: str | Path) -> Config:
    """Map the earlier tool's INI config onto ours.

    Values are Python literals read with :func:`ast.literal_eval` (never ``eval``); a value
    that is not a literal is an error naming ``section.key``. Keys without an equivalent are
    listed in one warning.
    """
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive there
    try:
        parser.read_string(text, source=str(source))
    except configparser.Error as exc:
        raise ConfigError(source, f"not an INI config ({str(exc).splitlines()[0]})") from exc
    values: dict[tuple[str, str], Any] = {}
    for section in parser.sections():
        for key, raw in parser.items(section):
            try:
                values[(section, key)] = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError) as exc:
                raise ConfigError(
                    source,
                    f"{section}.{key} = {raw.strip()!r} is not a literal value "
                    "(strings need quotes; code is never run)",
                ) from exc
    raw_config: dict[str, dict[str, Any]] = {f.name: {} for f in fields(Config)}
    ignored = []
    for (section, key), value in values.items():
        if (section, key) in INI_KEYS:
            target, convert = INI_KEYS[(section, key)]
            try:
                converted = convert(value)
            except (ValueError, TypeError, OverflowError) as exc:  # int(1e400): overflow
                raise ConfigError(source, f"{section}.{key}: {exc}") from exc
            ours_section, ours_key = target.split(".")
            raw_config[ours_section][ours_key] = converted
        elif (section, key) not in _INI_HANDLED:
            ignored.append(f"{section}.{key}")
    width, height = values.get(("model", "image_width")), values.get(("model", "image_height"))
    if width and height:
        raw_config["data"]["patch_size"] = [int(height), int(width)]
    if values.get(("train", "epoch_change_infer")) is False:
        raw_config["train"]["preview_slices"] = 0
    images_dir = values.get(("train", "images_dir"))
    if images_dir:
        raw_config["data"]["dataset"] = _png_root(str(images_dir), source)
        raw_config["data"]["layout"] = "png"
    if raw_config["data"].get("num_classes") and "class_names" not in raw_config["data"]:
        count = raw_config["data"]["num_classes"]
        # before the class names are made: a typo's 10**12 names would fill the memory
        check_number("data.num_classes", count, source, written_as="model.num_classes")
        raw_config["data"]["class_names"] = ["background"] + [f"class {i}" for i in range(1, count)]
    _point_to_lasc_infer(values, source)
    if ignored:
        logger.warning(
            "%s: keys with no equivalent, ignored: %s", source, ", ".join(sorted(ignored))
        )
    raw_config = {k: v for k, v in raw_config.items() if v}
    return config_from_dict(raw_config, source)


def _png_root(images_dir: str, source) -> str:
    # The earlier tool names ./dataset/train/images/; our PNG reader takes ./dataset.
    path = Path(images_dir)
    if path.name != "images" or path.parent.name not in ("train", "valid", "test"):
        raise ConfigError(
            source, f"train.images_dir = {images_dir!r}: expected <dataset>/train/images"
        )
    return str(path.parent.parent)


def _point_to_lasc_infer(values: dict[tuple[str, str], Any], source: str | Path) -> None:
    """The earlier tool's [infer] folders are arguments of ``lasc infer`` here: say how."""
    images, output = values.get(("infer", "images_dir")), values.get(("infer", "output_dir"))
    if not images:
        return
    base = Path(source).parent
    command = f"lasc infer {(base / str(images)).resolve()}"
    if output:
        command += f" --out {(base / str(output)).resolve()}"
    logger.info("%s: [infer] of the earlier tool: run `%s --model MODEL`", source, command)


def load_any_config(
    path: str | Path, overrides: list[str] | None = None, *, stage: str | None = None
) -> Config:
    """A TOML config (:func:`~src_monai.config.load_config`) or, by any other suffix, the
    earlier tool's INI ``train_eval_infer.config``; ``overrides`` apply to either."""
    path = Path(path)
    if path.suffix.lower() == ".toml" or not path.is_file():
        return load_config(path, overrides, stage=stage)
    config = resolve_paths(config_from_ini(read_config_text(path), path), path.parent)
    return apply_overrides(config, overrides) if overrides else config
