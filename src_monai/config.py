"""One configuration for training: ``data``, ``augment``, ``model``, ``train``.

A tree of dataclasses read from TOML, or from the earlier Keras tool's INI
``train_eval_infer.config`` (:mod:`src_monai.legacy.ini`). Unknown keys and values of the
wrong type are errors that name the key. Relative paths are taken relative to the config
file's folder. ``--set section.key=value`` overrides any value. Inference options are command
line options of ``lasc infer``, not config keys.
"""

from __future__ import annotations

import logging
import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import tomli_w

from src_monai.errors import LascError

logger = logging.getLogger(__name__)


class ConfigError(LascError):
    """A config file or value is invalid; the message names the file or key."""


class Stage(StrEnum):
    """What a trained network does: a model file states it for each network it holds."""

    LOCALISER = "localiser"
    """Stage 1: finds the atrium's box on slices shrunk by ``data.downsample``."""
    CROP_SEGMENTER = "crop_segmenter"
    """Stage 2: segments a ``data.crop_size`` square around a box."""
    CROP_SEGMENTER_3D = "crop_segmenter_3d"
    """Stage 2 in 3D: a 3D network segments inside a box at full resolution, in
    ``data.crop_depth`` x ``data.crop_size`` x ``data.crop_size`` windows."""
    WHOLE_SLICE = "whole_slice"
    """One stage: segments whole slices."""

    @property
    def in_box(self) -> bool:
        """Stage 2 of a two-stage model: it segments inside a box (2.5D crops or 3D)."""
        return self in (Stage.CROP_SEGMENTER, Stage.CROP_SEGMENTER_3D)

    @property
    def spatial_dims(self) -> int:
        """3 for the network of volumes (a 3D crop segmenter), 2 for networks of slices."""
        return 3 if self is Stage.CROP_SEGMENTER_3D else 2


@dataclass
class DataConfig:
    dataset: str = ""
    """MSD-layout folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``) or a PNG-layout folder."""
    extra_datasets: list[str] = field(default_factory=list)
    """More MSD-layout folders whose cases train alongside ``dataset``'s (another sequence:
    LGE-MRI beside bSSFP): case ids must differ across folders, and every scan is turned to
    the orientation of ``dataset``'s first case so that the networks see one voxel order."""
    balance_datasets: bool = True
    """With ``extra_datasets``: each dataset gives an equal share of the training samples
    (a small dataset is not drowned by a large one); false: every case is equally likely."""
    layout: str = "auto"
    """``auto``, ``msd`` or ``png``."""
    split: str = ""
    """A split JSON (``lasc prepare --folds``); empty: a seeded patient-level split is made."""
    fold: int = 0
    """Which partition of a k-fold split file to train on."""
    val_fraction: float = 0.25
    """Share of patients held out for validation when no split file is given; 0 trains on
    all of them without validation (the last epoch becomes the model)."""
    split_seed: int = 0
    slice_axis: int = 2
    """Array axis the 2D model slices along (the earlier tool's: the third)."""
    tri_planar: bool = False
    """Train one model on slices along all three array axes (3D scans only); inference then
    predicts along each axis and averages the three probability maps, so neighbouring slices
    agree. ``slice_axis`` stays the axis used for single-slice (interactive) prediction."""
    context_slices: int = 1
    """Neighbouring slices given as channels (odd; 1 is plain 2D, 3 or 5 is 2.5D)."""
    patch_size: list[int] = field(default_factory=lambda: [256, 256])
    """Training crop; slices are padded to it when smaller."""
    downsample: int = 1
    """Shrink slices in-plane by this factor before the network sees them (a localiser: stage
    1 of the two-stage model finds the atrium at low resolution); 1: full resolution."""
    crop_size: int = 0
    """Train on square crops of this size around the atrium instead of whole slices (0: whole
    slices). Such a model segments the box a localiser (or the user) gives it."""
    crop_depth: int = 0
    """A 3D crop segmenter's window depth in slices (with ``crop_size`` its in-plane size);
    0: 2.5D crops."""
    crop_jitter: int = 20
    """Crop centres are drawn up to this many voxels from the atrium's box centre."""
    crop_slice_margin: int = 5
    """Crops come from the atrium's slice range widened by this many slices each side; at
    inference the same margin around the box is segmented, the rest is background."""
    foreground_oversample: float = 0.67
    """Probability that a training slice is drawn from slices holding a foreground class."""
    normalisation: str = "zscore"
    """Per-volume intensity normalisation: ``zscore`` (after 0.5-99.5 percentile clipping),
    ``minmax`` (percentiles to 0..1) or ``none``."""
    num_classes: int = 2
    class_names: list[str] = field(default_factory=lambda: ["background", "left atrium"])
    rgb_map: str = "{(0,0,0):0, (255,0,255):1}"
    """Colour of each class in PNG masks (the earlier tool's ``rgb_map``)."""

    @property
    def stage(self) -> Stage:
        """The stage a config with these keys trains (``downsample`` > 1: a localiser;
        ``crop_size``: a crop segmenter; else whole slices): the one place that reads it."""
        if self.downsample > 1:
            return Stage.LOCALISER
        if self.crop_size:
            return Stage.CROP_SEGMENTER_3D if self.crop_depth else Stage.CROP_SEGMENTER
        return Stage.WHOLE_SLICE


@dataclass
class AugmentConfig:
    enabled: bool = True
    probability: float = 0.3
    """Probability of each random transform."""
    rotate_degrees: float = 15.0
    scale: float = 0.15
    flip: bool = False
    """Left-right flips: off by default, the atrium's anatomy is not mirror-symmetric."""
    elastic: bool = False
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    contrast: float = 0.25
    bias_field: bool = True
    noise_std: float = 0.05


@dataclass
class ModelConfig:
    name: str = "UNet"
    """``UNet`` (MONAI UNet with the earlier tool's knobs), ``BasicUNet``, ``DynUNet``,
    ``AttentionUnet`` or ``SegResNet``."""
    base_filters: int = 16
    levels: int = 5
    """Resolution levels including the bottom one; filters double per level."""
    first_kernel_size: int = 3
    dilation: int = 1
    dropout: float = 0.0
    norm: str = "instance"
    """``instance``, ``batch`` or ``none``."""
    residual_units: int = 2


@dataclass
class TrainConfig:
    epochs: int = 50
    steps_per_epoch: int = 100
    batch_size: int = 16
    loss: str = "dice_ce"
    """``ce``, ``dice``, ``dice_ce`` or ``dice_focal``."""
    optimizer: str = "adamw"
    """``adam``, ``adamw`` or ``sgd``."""
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    clip_value: float = 0.0
    """Clip each gradient value to +-clip_value (the earlier tool's ``clipvalue``); 0: off."""
    clip_norm: float = 0.0
    """Clip the gradient norm; 0: off."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights (torch's ``AveragedModel``) with this
    decay per step, and validate and save the average instead of the last step's weights
    (steadier from one checkpoint to the next); 0: off. 0.995 averages about 200 steps."""
    scheduler: str = "plateau"
    """``plateau`` (ReduceLROnPlateau on validation Dice), ``cosine``, ``poly`` or ``none``."""
    reducer_factor: float = 0.5
    reducer_patience: int = 4
    early_stopping_patience: int = 10
    """Validations without improvement before stopping; 0: never stop early."""
    val_every: int = 1
    preview_slices: int = 6
    """Validation slices drawn as image | truth | prediction after each validation; 0: none."""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    """``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``."""
    tensorboard: bool = False
    time_limit_minutes: float = 0.0
    """Stop (after validating and saving) once an epoch ends past this wall time; 0: none."""
    augment_on_device: bool = True
    """On CUDA, keep the cached volumes on the GPU and augment there (no host round trips)."""
    init_model: str = ""
    """Fine-tune: start from this model file's weights (``bundled``: the shipped model).
    Its architecture must match [model] and [data]; empty: random initial weights."""
    runs_dir: str = "runs"
    run_name: str = ""
    """Run folder name; empty: ``<date>-<time>``. An existing run folder is never reused."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


CHOICES = {
    "data.layout": ("auto", "msd", "png"),
    "data.normalisation": ("zscore", "minmax", "none"),
    "model.name": ("UNet", "BasicUNet", "DynUNet", "AttentionUnet", "SegResNet"),
    "model.norm": ("instance", "batch", "none"),
    "train.loss": ("ce", "dice", "dice_ce", "dice_focal"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("plateau", "cosine", "poly", "none"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
}
PATH_KEYS = (
    "data.dataset",
    "data.extra_datasets",
    "data.split",
    "train.runs_dir",
    "train.init_model",
)

# Sections that earlier versions accepted but nothing read. A config file that still has one
# is refused with what to do instead; a config saved inside a run folder or a model file by
# an earlier version just loses them (they never changed anything).
REMOVED_SECTIONS = {
    "eval": "[eval] is no longer read (lasc evaluate always reports HD95): delete the section",
    "infer": "[infer] is no longer read: `lasc infer` takes its inputs, --out, --batch-size, "
    "--tta, --device and --probabilities on its command line; delete the section",
}


# --------------------------------------------------------------------------- building


def config_from_dict(
    raw: dict[str, Any], source: str | Path | None = None, *, saved: bool = False
) -> Config:
    """Build a :class:`Config` from nested dicts, rejecting unknown keys and wrong types.

    ``saved``: the dicts come from a run folder or a model file (perhaps written by an earlier
    version), whose :data:`REMOVED_SECTIONS` are dropped instead of refused.
    """
    removed = [name for name in REMOVED_SECTIONS if name in raw]
    if removed and not saved:
        raise ConfigError(source, REMOVED_SECTIONS[removed[0]])
    raw = {name: value for name, value in raw.items() if name not in REMOVED_SECTIONS}
    config = _build(Config, raw, "", source)
    validate(config, source)
    return config


def _build(cls: type, raw: Any, prefix: str, source) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(source, f"{prefix.rstrip('.') or 'config'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            source, f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        key = f"{prefix}{name}"
        if is_dataclass(hint):
            values[name] = _build(hint, value, f"{key}.", source)
        else:
            values[name] = _coerce(value, hint, key, source)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(source, f"{key} must be a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")  # not used by the dataclasses
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(source, f"{key} must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(source, f"{key} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(source, f"{key} must be {hint.__name__}, got {value!r}")
    return value


# The valid range of every numeric key, both ends included: a value outside it (or a NaN or
# infinite float anywhere) is refused before any folder is made. The upper ends are far above
# any sensible use; they stop a typo from allocating without bound.
RANGES: dict[str, tuple[float, float]] = {
    "data.fold": (0, 1000),
    "data.val_fraction": (0.0, 0.99),
    "data.split_seed": (0, 2**32 - 1),
    "data.context_slices": (1, 31),
    "data.patch_size": (16, 4096),
    "data.downsample": (1, 16),
    "data.crop_depth": (0, 1024),
    "data.crop_jitter": (0, 1024),
    "data.crop_slice_margin": (0, 1024),
    "data.foreground_oversample": (0.0, 1.0),
    "data.num_classes": (2, 255),
    "augment.probability": (0.0, 1.0),
    "augment.rotate_degrees": (0.0, 180.0),
    "augment.scale": (0.0, 0.9),
    "augment.gamma": (0.05, 20.0),
    "augment.contrast": (0.0, 0.99),
    "augment.noise_std": (0.0, 10.0),
    "model.base_filters": (1, 1024),
    "model.levels": (2, 8),
    "model.first_kernel_size": (1, 15),
    "model.dilation": (1, 16),
    "model.dropout": (0.0, 0.99),
    "model.residual_units": (0, 16),
    "train.epochs": (1, 1_000_000),
    "train.steps_per_epoch": (1, 10_000_000),
    "train.batch_size": (1, 4096),
    "train.learning_rate": (1e-300, 10.0),  # any positive rate (tests freeze with 1e-30)
    "train.weight_decay": (0.0, 1.0),
    "train.momentum": (0.0, 0.999),
    "train.clip_value": (0.0, 1e6),
    "train.clip_norm": (0.0, 1e6),
    "train.ema_decay": (0.0, 0.99999),
    "train.reducer_factor": (0.01, 0.99),
    "train.reducer_patience": (0, 10_000),
    "train.early_stopping_patience": (0, 10_000),
    "train.val_every": (1, 100_000),
    "train.preview_slices": (0, 64),
    "train.seed": (0, 2**32 - 1),
    "train.time_limit_minutes": (0.0, 1e6),
}


def _numbers(config: Config):
    """Every numeric value of ``config`` as ``(key, value)``, list items one by one."""
    for section in fields(config):
        part = getattr(config, section.name)
        for item in fields(part):
            value = getattr(part, item.name)
            for number in value if isinstance(value, list) else [value]:
                if isinstance(number, int | float) and not isinstance(number, bool):
                    yield f"{section.name}.{item.name}", number


def check_number(
    key: str, value: float, source: str | Path | None, written_as: str | None = None
) -> None:
    """``value`` of ``key`` is finite and inside ``RANGES``; ``written_as``: the key's name
    in the file the user wrote, when that is not ours (a legacy INI's)."""
    name = written_as or key
    if not math.isfinite(value):
        raise ConfigError(source, f"{name} = {value} is not a finite number")
    low, high = RANGES.get(key, (-math.inf, math.inf))
    if not low <= value <= high:
        raise ConfigError(source, f"{name} = {value!r} is outside its range {low:g}..{high:g}")


def validate(config: Config, source: str | Path | None = None) -> None:
    """Check values beyond their types: finiteness, ranges, choices, consistency."""
    for key, value in _numbers(config):
        check_number(key, value, source)
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(source, f"{key} = {value!r} is not one of {', '.join(allowed)}")
    for ok, message in _consistency(config):
        if not ok:
            raise ConfigError(source, message)
    _check_rgb_map(config.data, source)
    _check_sizes(config, source)


def _consistency(config: Config) -> list[tuple[bool, str]]:
    """(holds, the message when it does not) for each rule between keys."""
    data, model, train = config.data, config.model, config.train
    return [
        (data.slice_axis in (0, 1, 2), "data.slice_axis must be 0, 1 or 2"),
        (data.context_slices % 2 == 1, "data.context_slices must be an odd number >= 1"),
        (len(data.patch_size) == 2, "data.patch_size must be two sizes >= 16"),
        (
            len(data.class_names) == data.num_classes,
            "data.class_names must name each of data.num_classes classes",
        ),
        (
            data.crop_size == 0 or (16 <= data.crop_size <= 4096 and not data.tri_planar),
            "data.crop_size must be 0 or 16..4096, and crops are for single-axis models",
        ),
        (
            data.downsample == 1 or not data.crop_size,
            "data.downsample must be >= 1, and 1 for a crop model",
        ),
        (
            data.crop_depth == 0 or (data.crop_size and data.context_slices == 1),
            "data.crop_depth needs data.crop_size, and data.context_slices = 1 (a 3D network "
            "sees the neighbouring slices itself)",
        ),
        (
            data.crop_depth == 0 or (model.first_kernel_size == 3 and model.dilation == 1),
            "a 3D crop model takes MONAI's UNet as it is (model.first_kernel_size = 3, "
            "model.dilation = 1)",
        ),
        (
            data.crop_depth == 0 or not config.augment.elastic,
            "augment.elastic is not applied to 3D crop windows: set it false for a model "
            "with data.crop_depth",
        ),
        (model.first_kernel_size % 2 == 1, "model.first_kernel_size must be odd"),
        (
            len(config.augment.gamma) == 2 and config.augment.gamma[0] <= config.augment.gamma[1],
            "augment.gamma must be [low, high] with low <= high",
        ),
        (
            _plain_name(train.run_name),
            f"train.run_name = {train.run_name!r} must be a plain "
            "folder name (no / or \\, not . or ..): the run folder stays inside train.runs_dir",
        ),
    ]


def _check_sizes(config: Config, source) -> None:
    """Windows must halve cleanly at every level of the network."""
    data = config.data
    patch_divisor = 2 ** (config.model.levels - 1)
    sizes = [*data.patch_size, *([data.crop_size] if data.crop_size else [])]
    sizes += [data.crop_depth] if data.crop_depth else []
    if any(size % patch_divisor for size in sizes):
        raise ConfigError(
            source,
            f"data.patch_size {data.patch_size}, data.crop_size {data.crop_size} and "
            f"data.crop_depth {data.crop_depth} must be "
            f"divisible by {patch_divisor} "
            f"(2 ** (model.levels - 1))",
        )


def _check_rgb_map(data: DataConfig, source) -> None:
    from src_monai.io.png import parse_rgb_map

    try:
        rgb_map = parse_rgb_map(data.rgb_map)
    except LascError as exc:
        raise ConfigError(source, f"data.{exc.problem}") from exc
    outside = sorted({c for c in rgb_map.values() if not 0 <= c < data.num_classes})
    if outside:
        raise ConfigError(
            source,
            f"data.rgb_map = {data.rgb_map!r} maps colours to class {outside[0]}, outside "
            f"0..{data.num_classes - 1} (data.num_classes)",
        )


def _plain_name(name: str) -> bool:
    return name == "" or (
        name not in (".", "..") and not any(c in name for c in "/\\\0") and name.strip() == name
    )


def apply_overrides(config: Config, overrides: list[str], source: str = "--set") -> Config:
    """Apply ``section.key=value`` overrides; values are TOML literals, else plain strings."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(source, f"{item!r} is not of the form section.key=value")
        section, name = parts
        if section not in raw:
            raise ConfigError(source, f"unknown section {section!r} in {item!r}")
        if name not in raw[section]:
            raise ConfigError(source, f"unknown key {section}.{name}")
        raw[section][name] = _parse_literal(text.strip())
    return config_from_dict(raw, source)


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


# --------------------------------------------------------------------------- files


# A two-stage config: what both stages share at the top, each stage's own values in a table of
# its name (``[localiser.data]``, ``[segmenter.train]``, ...) merged over the shared ones.
STAGES = ("localiser", "segmenter")
# The run folder holds both stages' folders: it is named once, for both.
SHARED_ONLY_KEYS = ("train.runs_dir", "train.run_name")


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, stage: str | None = None
) -> Config:
    """Read a TOML config (the earlier tool's INI ``train_eval_infer.config``: see
    :func:`src_monai.legacy.ini.load_any_config`).

    A two-stage TOML (with ``[localiser]`` and ``[segmenter]`` tables) gives the config of
    ``stage``; overrides then read ``section.key=value`` (both stages) or
    ``stage.section.key=value`` (that stage alone)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file not found")
    if path.suffix.lower() != ".toml":
        raise ConfigError(path, "is not a TOML config (.toml); INI configs: lasc train")
    raw = _read_toml(read_config_text(path), path)
    stages = [name for name in STAGES if name in raw]
    if stages and stage is None:
        raise ConfigError(
            path,
            "is a two-stage config ([localiser] and [segmenter]): `lasc train` trains both "
            "stages; elsewhere pick one stage",
        )
    overrides = list(overrides or [])
    if stage is not None:
        raw = stage_dict(raw, stage, path)
        overrides = _stage_overrides(overrides, stage)
    config = resolve_paths(config_from_dict(raw, path), path.parent)
    return apply_overrides(config, overrides) if overrides else config


def is_two_stage_config(path: str | Path) -> bool:
    """Whether ``path`` is a TOML config with stage tables (see :data:`STAGES`)."""
    path = Path(path)
    if path.suffix.lower() != ".toml" or not path.is_file():
        return False
    raw = _read_toml(read_config_text(path), path)
    return any(name in raw for name in STAGES)


def stage_dict(raw: dict[str, Any], stage: str, source: str | Path | None) -> dict[str, Any]:
    """One stage's config dicts: the shared sections with the stage's table merged over."""
    missing = [name for name in STAGES if not isinstance(raw.get(name), dict)]
    if missing:
        raise ConfigError(source, f"a two-stage config needs a [{missing[0]}] table")
    if stage not in STAGES:
        raise ConfigError(source, f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
    merged = {name: dict(value) for name, value in raw.items() if name not in STAGES}
    for section, values in raw[stage].items():
        if not isinstance(values, dict):
            raise ConfigError(source, f"{stage}.{section} must be a table")
        for name in values:
            if f"{section}.{name}" in SHARED_ONLY_KEYS:
                raise ConfigError(
                    source, f"{stage}.{section}.{name}: set {section}.{name} once, for both stages"
                )
        merged[section] = {**merged.get(section, {}), **values}
    return merged


def _stage_overrides(overrides: list[str], stage: str) -> list[str]:
    """``stage.section.key=value`` for this stage as ``section.key=value``; other stages'
    dropped; ``section.key=value`` kept (both stages)."""
    kept = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        parts = key.split(".")
        if len(parts) == 3:
            if parts[0] not in STAGES:
                raise ConfigError("--set", f"unknown stage {parts[0]!r} in {item!r}")
            if ".".join(parts[1:]) in SHARED_ONLY_KEYS:
                raise ConfigError("--set", f"{key}: set {'.'.join(parts[1:])} for both stages")
            if parts[0] == stage:
                kept.append(item.strip()[len(stage) + 1 :])
        else:
            kept.append(item)
    return kept


def _read_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML ({exc})") from exc


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"unreadable config file ({exc})") from exc


def resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths of the config's path keys, read relative to ``base`` (its folder)."""
    raw = config.to_dict()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = raw[section][name]
        if isinstance(value, list):
            raw[section][name] = [_resolved(item, base) for item in value]
        else:
            raw[section][name] = _resolved(value, base)
    return config_from_dict(raw)


def _resolved(value: str, base: Path) -> str:
    if value and value != "bundled" and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def save_config(config: Config, path: str | Path) -> Path:
    from src_monai.io.files import write_text

    return write_text(path, config.to_toml(), overwrite=True)
