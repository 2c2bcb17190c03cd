"""The typed model spec: what a model file says about its network and how to apply it.

A model file's metadata is JSON (see :mod:`src_monai.model.files`); this is the one place that
reads and writes its keys, in the manner of nnU-Net's ``PlansManager``. Training makes a spec
(:meth:`ModelSpec.for_training`), the model file stores it (:meth:`ModelSpec.to_metadata`),
and the predictor, bundle export, the Train widget and the cross-validation script read it
(:meth:`ModelSpec.from_metadata`) as typed fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from src_monai.config import Config, ConfigError, DataConfig, ModelConfig, Stage, config_from_dict
from src_monai.errors import LascError

# Default class colours (RGB), background first; the earlier tool's LA magenta.
DEFAULT_COLOURS = [(0, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0)]


@dataclass(frozen=True)
class InferenceDefaults:
    """How to apply the model when the user does not say: chosen by cross-validation."""

    tta: bool = False
    postprocess: bool = False
    whole_region: bool = False
    """A 3D segmenter: one pass over its region (where it fits), not sliding windows."""


@dataclass(frozen=True)
class DatasetAccuracy:
    """One dataset's share of a joint cross-validation: a model trained on two MRI sequences
    is quoted per sequence, since a mean over both says little about either."""

    name: str
    cases: int
    dice_mean: float
    dice_sd: float
    dice_min: float
    hd95_mean: float
    hd95_sd: float

    def text(self, spread: bool = False) -> str:
        return f"{self.name}: {_scores_text(self, spread)}"


@dataclass(frozen=True)
class CrossValidation:
    """The cross-validated accuracy recorded with a model (``scripts/cross_validate.py``)."""

    folds: int
    cases: int
    chosen: str
    dice_mean: float
    dice_sd: float
    hd95_mean: float
    hd95_sd: float
    hd95_undefined: int = 0
    datasets: tuple[DatasetAccuracy, ...] = ()
    """Per dataset, where folds held out cases of several (joint folds)."""

    def text(self, spread: bool = False) -> str:
        """The figures a user quotes: ``Dice 0.899, HD95 8.2 mm`` (per-case means; with
        ``spread``, ± their sd), per dataset where there are several."""
        if self.datasets:
            return "; ".join(part.text(spread) for part in self.datasets)
        return _scores_text(self, spread)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CrossValidation:
        """From the metadata's table (as :func:`dataclasses.asdict` wrote it), checked."""
        return _cross_validation(values)


def _scores_text(scores: DatasetAccuracy | CrossValidation, spread: bool) -> str:
    if not spread:
        return f"Dice {scores.dice_mean:.3f}, HD95 {scores.hd95_mean:.1f} mm"
    return (
        f"Dice {scores.dice_mean:.3f} ± {scores.dice_sd:.3f}, "
        f"HD95 {scores.hd95_mean:.1f} ± {scores.hd95_sd:.1f} mm"
    )


@dataclass(frozen=True)
class InputSpec:
    """How a network's input is cut from a scan: its stage, the slices it sees and their
    size and intensities. The one record of these facts (the saved recipe must agree)."""

    slice_axis: int
    context_slices: int
    normalisation: str
    patch_size: tuple[int, int]
    stage: Stage = Stage.WHOLE_SLICE
    """What this network does; the model file states it (older files: read from the
    ``downsample`` and ``crop_size`` they record)."""
    tri_planar: bool = False
    downsample: int = 1
    """A localiser (stage 1): sees slices shrunk in-plane by this factor."""
    crop_size: int = 0
    """A crop model (stage 2): segments a ``crop_size`` square around the atrium's box."""
    crop_slice_margin: int = 0
    """Slices segmented beyond the box's range on each side (a crop model)."""
    crop_depth: int = 0
    """A 3D crop model: its window's depth in slices (0: a 2D network)."""

    @property
    def spatial_dims(self) -> int:
        """2 for a network of slices, 3 for one of volumes."""
        return self.stage.spatial_dims

    @property
    def window(self) -> tuple[int, ...]:
        """The sliding window's size: the training patch, or a 3D model's depth x crop."""
        if self.spatial_dims == 3:
            return (self.crop_depth, self.crop_size, self.crop_size)
        return self.patch_size

    @classmethod
    def of(cls, data: DataConfig) -> InputSpec:
        """What a network trained with these data keys is fed."""
        crop = data.crop_size
        return cls(
            slice_axis=data.slice_axis,
            context_slices=data.context_slices,
            normalisation=data.normalisation,
            patch_size=(crop, crop) if crop else (int(data.patch_size[0]), int(data.patch_size[1])),
            stage=data.stage,
            tri_planar=data.tri_planar,
            downsample=data.downsample,
            crop_size=crop,
            crop_slice_margin=data.crop_slice_margin if crop else 0,
            crop_depth=data.crop_depth if crop else 0,
        )


@dataclass(frozen=True)
class ClassSpec:
    """The classes a network predicts, background first, and their display colours."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] = ()

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class TrainingRecord:
    """What a model learnt from and how: the facts a user checks before trusting it.

    ``spacing_mm`` is the median voxel size of the training scans with the slice axis first
    (as the trainer sees them). ``recipe`` is the training config as resolved (typed; the
    training recipe is read from here, e.g. whether it flipped)."""

    spacing_mm: tuple[float, float, float] | None = None
    orientation_axcodes: tuple[str, str, str] | None = None
    layout: str = ""
    source: str = ""
    split: dict[str, list[str]] = field(default_factory=dict)
    """Case ids the model was trained (``train``) and validated (``val``) on."""
    digests: tuple[str, ...] = ()
    """:func:`~src_monai.io.scans.image_digest` of each training scan."""
    recipe: Config | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    """Where training stood when saved (epoch, validation Dice)."""


def _view(section: str, name: str) -> property:
    """A read-only shortcut to one field of a section (the fact is stored there once)."""
    return property(lambda self: getattr(getattr(self, section), name), doc=f"``{section}.{name}``")


@dataclass(frozen=True)
class ModelSpec:
    """A 2D (2.5D) segmentation model: its network, its input, its classes, its training,
    each a typed section; the shortcuts below read them."""

    network: ModelConfig
    input: InputSpec
    classes: ClassSpec
    record: TrainingRecord = field(default_factory=TrainingRecord)
    inference: InferenceDefaults | None = None
    cross_validation: CrossValidation | None = None
    package_version: str = ""
    localiser: ModelSpec | None = None
    """Stage 1 of a two-stage model (this spec is then stage 2, a crop model)."""

    slice_axis = _view("input", "slice_axis")
    context_slices = _view("input", "context_slices")
    normalisation = _view("input", "normalisation")
    patch_size = _view("input", "patch_size")
    stage = _view("input", "stage")
    tri_planar = _view("input", "tri_planar")
    downsample = _view("input", "downsample")
    crop_size = _view("input", "crop_size")
    crop_slice_margin = _view("input", "crop_slice_margin")
    crop_depth = _view("input", "crop_depth")
    num_classes = _view("classes", "count")
    class_names = _view("classes", "names")
    spacing_mm = _view("record", "spacing_mm")
    orientation_axcodes = _view("record", "orientation_axcodes")
    split = _view("record", "split")

    # ------------------------------------------------------------------ derived

    @property
    def in_channels(self) -> int:
        """Input channels: the slice and its neighbours (2.5D context)."""
        return self.context_slices

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        """One RGB colour per class, background first."""
        return list(self.classes.colours or DEFAULT_COLOURS)[: self.num_classes]

    @property
    def defaults(self) -> InferenceDefaults:
        """What to apply by default: the recorded choice, else neither TTA nor
        post-processing."""
        return self.inference or InferenceDefaults()

    @property
    def trained_with_flips(self) -> bool:
        """Left-right flips were among the training augmentations (TTA may use them)."""
        recipe = self.record.recipe
        return recipe is not None and recipe.augment.flip

    @property
    def training_spacing(self) -> tuple[float, float, float] | None:
        """Median voxel size (mm) of the training scans in file axis order, if recorded."""
        if self.spacing_mm is None:
            return None
        in_plane = list(self.spacing_mm[1:])
        in_plane.insert(self.slice_axis, self.spacing_mm[0])
        return tuple(in_plane)  # type: ignore[return-value]

    def training_role(self, case_id: str, digest: str | None = None) -> str | None:
        """``"training"`` when the model (either stage) was trained on this case, recognised by
        its name or by its voxels' digest; ``"validation"`` when it chose its checkpoint on
        it; else ``None`` (unseen)."""
        specs = [self, *([self.localiser] if self.localiser is not None else [])]
        if any(
            case_id in s.split.get("train", ()) or (digest and digest in s.record.digests)
            for s in specs
        ):
            return "training"
        if any(case_id in s.split.get("val", ()) for s in specs):
            return "validation"
        return None

    def seen_note(self, roles: dict[str, str], total: int | None = None) -> str:
        """:func:`seen_note` for this model, pointing to its cross-validated accuracy."""
        accuracy = (
            f"cross-validated on unseen patients: {self.cross_validation.text()}"
            if self.cross_validation is not None
            else "no cross-validated accuracy is recorded for this model"
        )
        return seen_note(roles, total, accuracy)

    def planes(self, tri_planar: bool | None = None) -> tuple[int, ...]:
        """The axes to predict along: the slice axis, and the other two for tri-planar."""
        tri_planar = self.tri_planar if tri_planar is None else tri_planar
        if tri_planar and not self.tri_planar:
            raise LascError(
                None,
                "tri-planar prediction needs a model trained on all three axes "
                "(data.tri_planar = true); this one saw slices along one axis",
            )
        axis = self.slice_axis
        return (axis, *[a for a in range(3) if a != axis]) if tri_planar else (axis,)

    def with_progress(self, progress: dict[str, Any]) -> ModelSpec:
        """This spec saying where training stood (epoch, validation Dice)."""
        return replace(self, record=replace(self.record, progress=progress))

    def with_input(self, **changes: Any) -> ModelSpec:
        """This spec with its input section changed (e.g. another slice axis); the recipe's
        data keys change with it, so the two still agree."""
        recipe = self.record.recipe
        if recipe is not None:
            recipe = replace(recipe, data=replace(recipe.data, **changes))
        return replace(
            self,
            input=replace(self.input, **changes),
            record=replace(self.record, recipe=recipe),
        )

    def with_inference(
        self, defaults: InferenceDefaults, cross_validation: CrossValidation | None = None
    ) -> ModelSpec:
        """This spec with the defaults (and accuracy) that cross-validation chose."""
        return replace(self, inference=defaults, cross_validation=cross_validation)

    # ------------------------------------------------------------------ making

    @classmethod
    def for_training(
        cls,
        config: Config,
        *,
        layout: str,
        source: str,
        spacing_mm: Sequence[float] | None,
        orientation_axcodes: Sequence[str] | None,
        split: dict[str, list[str]],
        training_digests: Sequence[str] = (),
    ) -> ModelSpec:
        """The spec of a model trained as ``config`` says, on the data described."""
        data = config.data
        return cls(
            network=config.model,
            input=InputSpec.of(data),
            classes=ClassSpec(tuple(data.class_names), tuple(DEFAULT_COLOURS[: data.num_classes])),
            record=TrainingRecord(
                spacing_mm=_floats(spacing_mm),
                orientation_axcodes=_axcodes(orientation_axcodes),
                layout=layout,
                source=source,
                split=split,
                digests=tuple(training_digests),
                recipe=config,
            ),
        )

    # ------------------------------------------------------------------ the file's JSON

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ModelSpec:
        """Read a model file's metadata, every field checked for type and range (the network
        and data fields as the config's keys are); ``ValueError`` (or a :class:`LascError`)
        names the first bad field."""
        data = _table(metadata, "data")
        known = (
            "slice_axis",
            "tri_planar",
            "downsample",
            "crop_size",
            "crop_slice_margin",
            "crop_depth",
        )
        as_config = {
            "model": _table(metadata, "model"),
            "data": {
                **{key: data[key] for key in known if key in data},
                **{key: data[key] for key in ("context_slices", "normalisation", "patch_size")},
                "class_names": data["class_names"],
                "num_classes": metadata["num_classes"],
            },
        }
        config = config_from_dict(as_config, "metadata", saved=True)
        checked = config.data
        in_channels = metadata.get("in_channels", checked.context_slices)
        if type(in_channels) is not int or in_channels != checked.context_slices:
            raise ValueError(f"in_channels = {in_channels!r} differs from data.context_slices")
        inference = _optional_table(metadata, "inference")
        cross_validation = _optional_table(metadata, "cross_validation")
        localiser = _optional_table(metadata, "localiser")
        data_input = InputSpec.of(checked)
        _stage(metadata.get("stage"), checked.stage)  # a stated stage must agree
        classes = ClassSpec(tuple(checked.class_names), _colours(metadata.get("class_colours")))
        spec = cls(
            network=config.model,
            input=data_input,
            classes=classes,
            record=TrainingRecord(
                spacing_mm=_spacing(metadata.get("spacing_mm")),
                orientation_axcodes=_checked_axcodes(metadata.get("orientation_axcodes")),
                layout=_text(data.get("layout", ""), "data.layout"),
                source=_text(data.get("source", ""), "data.source"),
                split=_split(metadata.get("split")),
                digests=_digests(metadata.get("training_image_sha256")),
                recipe=_recipe(_optional_table(metadata, "config"), config.model, data_input),
                progress=dict(_optional_table(metadata, "training") or {}),
            ),
            inference=_inference(inference) if inference else None,
            cross_validation=_cross_validation(cross_validation) if cross_validation else None,
            package_version=_text(metadata.get("package_version", ""), "package_version"),
            localiser=cls.from_metadata(localiser) if localiser is not None else None,
        )
        if spec.localiser is not None and (
            spec.localiser.stage is not Stage.LOCALISER or not spec.stage.in_box
        ):
            raise ValueError("localiser: a two-stage model is a localiser and a crop segmenter")
        return spec

    def to_metadata(self) -> dict[str, Any]:
        """The model file's JSON (the keys :meth:`from_metadata` reads)."""
        metadata: dict[str, Any] = {
            "model": asdict(self.network),
            "data": {
                "slice_axis": self.slice_axis,
                "tri_planar": self.tri_planar,
                **({"downsample": self.downsample} if self.downsample > 1 else {}),
                **(
                    {"crop_size": self.crop_size, "crop_slice_margin": self.crop_slice_margin}
                    if self.crop_size
                    else {}
                ),
                **({"crop_depth": self.crop_depth} if self.crop_depth else {}),
                "context_slices": self.context_slices,
                "normalisation": self.normalisation,
                "patch_size": list(self.patch_size),
                "class_names": list(self.class_names),
                "layout": self.record.layout,
                "source": self.record.source,
            },
            "stage": self.stage.value,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "class_colours": [list(c) for c in self.classes.colours],
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "orientation_axcodes": list(self.orientation_axcodes)
            if self.orientation_axcodes
            else None,
            "split": self.split,
            "training_image_sha256": list(self.record.digests),
            "config": self.record.recipe.to_dict() if self.record.recipe is not None else {},
            "training": self.record.progress,
        }
        if self.inference is not None:
            metadata["inference"] = asdict(self.inference)
        if self.cross_validation is not None:
            metadata["cross_validation"] = asdict(self.cross_validation)
        if self.localiser is not None:
            metadata["localiser"] = self.localiser.to_metadata()
        return metadata


def seen_note(roles: dict[str, str], total: int | None, accuracy: str) -> str:
    """The one line every front end (``lasc evaluate``, ``lasc demo``, napari's Compare)
    gives scores of cases the model learnt from. ``roles`` maps each such case to its
    :meth:`ModelSpec.training_role`; ``total``: the cases scored, when there were several;
    ``accuracy``: which figures apply to new patients instead."""
    if len(roles) == 1 and total in (None, 1):  # one case: the same words everywhere
        ((case, role),) = roles.items()
        what = (
            "training case" if role == "training" else "validation case (it chose the checkpoint)"
        )
        return (
            f"{case} is a {what} of this model: its score overstates the accuracy on new "
            f"patients ({accuracy})"
        )
    count = total if total is not None else len(roles)
    cases = "; ".join(
        f"{case}: {'training' if role == 'training' else 'validation, it chose the checkpoint'}"
        for case, role in roles.items()
    )
    were = "was" if len(roles) == 1 else "were"
    return (
        f"{len(roles)} of {count} case{'' if count == 1 else 's'} {were} seen by the model "
        f"({cases}): the scores overstate its accuracy on new patients ({accuracy})"
    )


def _stage(value: Any, from_data: Stage) -> Stage:
    """The stated stage, which must agree with the data keys that make it; ``None`` (a file
    older than the key) takes theirs."""
    if value is None:
        return from_data
    names = [s.value for s in Stage]
    if value not in names:
        raise ValueError(f"stage = {value!r} must be one of {', '.join(names)}")
    if Stage(value) is not from_data:
        raise ValueError(f"stage = {value!r} disagrees with its data keys ({from_data.value})")
    return Stage(value)


def _recipe(raw: dict[str, Any] | None, network: ModelConfig, fed: InputSpec) -> Config | None:
    """The saved training config, typed and checked like a config file; it must agree with
    the file's own network and input keys (two copies of one fact may not differ)."""
    if not raw:
        return None
    try:
        recipe = config_from_dict(raw, "metadata", saved=True)
    except ConfigError as exc:
        raise ValueError(f"config (the training recipe): {exc.problem}") from exc
    if recipe.model != network:
        raise ValueError("config (the training recipe) has another network than model")
    if InputSpec.of(recipe.data) != fed:
        raise ValueError("config (the training recipe) feeds the network unlike data says")
    return recipe


def _floats(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    if not values or len(values) != 3:
        return None
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _axcodes(codes: Sequence[str] | None) -> tuple[str, str, str] | None:
    if not codes or len(codes) != 3:
        return None
    return tuple(str(c) for c in codes)  # type: ignore[return-value]


# --------------------------------------------------------------------------- checked reading


def _table(metadata: dict[str, Any], key: str) -> dict[str, Any]:
    value = metadata[key]
    if not isinstance(value, dict):
        raise ValueError(f"{key} = {value!r} must be a table")
    return value


def _optional_table(metadata: dict[str, Any], key: str) -> dict[str, Any] | None:
    return None if metadata.get(key) is None else _table(metadata, key)


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} = {value!r} must be text")
    return value


def _whole(value: Any, key: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{key} = {value!r} must be a whole number in {low}..{high}")
    return value


def _real(value: Any, key: str, low: float, high: float, *, nan: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} = {value!r} must be a number")
    if nan and math.isnan(value):
        return float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{key} = {value!r} must be a finite number in {low:g}..{high:g}")
    return float(value)


def _colours(values: Any) -> tuple[tuple[int, int, int], ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or not all(isinstance(c, list) and len(c) == 3 for c in values):
        raise ValueError(f"class_colours = {values!r} must be a list of [r, g, b]")
    return tuple(
        tuple(_whole(v, "class_colours", 0, 255) for v in colour)  # type: ignore[misc]
        for colour in values
    )


def _spacing(values: Any) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"spacing_mm = {values!r} must be three voxel sizes")
    return tuple(_real(v, "spacing_mm", 1e-3, 100.0) for v in values)  # type: ignore[return-value]


def _checked_axcodes(codes: Any) -> tuple[str, str, str] | None:
    if codes is None:
        return None
    if (
        not isinstance(codes, list)
        or len(codes) != 3
        or not all(isinstance(c, str) and c in ("L", "R", "A", "P", "S", "I") for c in codes)
    ):
        raise ValueError(f"orientation_axcodes = {codes!r} must be three of L R A P S I")
    return tuple(codes)  # type: ignore[return-value]


def _split(split: Any) -> dict[str, list[str]]:
    if split is None:
        return {}
    if not isinstance(split, dict) or not all(
        isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in split.values()
    ):
        raise ValueError("split must map subset names to lists of case ids")
    return dict(split)


def _digests(values: Any) -> tuple[str, ...]:
    if values is None:
        return ()
    if not isinstance(values, list) or not all(
        isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
        for v in values
    ):
        raise ValueError("training_image_sha256 must be a list of SHA-256 hex digests")
    return tuple(values)


def _inference(values: dict[str, Any]) -> InferenceDefaults:
    names = [f.name for f in fields(InferenceDefaults)]
    unknown = set(values) - set(names)
    if unknown or not all(isinstance(values.get(k, False), bool) for k in names):
        raise ValueError(f"inference = {values!r} must hold {', '.join(names)}, true or false")
    return InferenceDefaults(**values)


def _cross_validation(values: dict[str, Any]) -> CrossValidation:
    unknown = set(values) - {f.name for f in fields(CrossValidation)}
    if unknown:
        raise ValueError(f"cross_validation: unknown key {sorted(unknown)[0]}")
    key = "cross_validation."
    return CrossValidation(
        folds=_whole(values["folds"], key + "folds", 2, 1000),
        cases=_whole(values["cases"], key + "cases", 1, 10**6),
        chosen=_text(values["chosen"], key + "chosen"),
        dice_mean=_real(values["dice_mean"], key + "dice_mean", 0.0, 1.0),
        dice_sd=_real(values["dice_sd"], key + "dice_sd", 0.0, 1.0),
        hd95_mean=_real(values["hd95_mean"], key + "hd95_mean", 0.0, 1e6, nan=True),
        hd95_sd=_real(values["hd95_sd"], key + "hd95_sd", 0.0, 1e6, nan=True),
        hd95_undefined=_whole(values.get("hd95_undefined", 0), key + "hd95_undefined", 0, 10**6),
        datasets=_dataset_accuracies(values.get("datasets", []), key + "datasets"),
    )


def _dataset_accuracies(values: Any, key: str) -> tuple[DatasetAccuracy, ...]:
    names = [f.name for f in fields(DatasetAccuracy)]
    if not isinstance(values, list | tuple) or not all(  # a tuple: asdict, not yet JSON
        isinstance(v, dict) and set(v) == set(names) for v in values
    ):
        raise ValueError(f"{key} = {values!r} must be a list of tables of {', '.join(names)}")
    if len({v["name"] for v in values}) != len(values):
        raise ValueError(f"{key}: a dataset named twice")
    return tuple(
        DatasetAccuracy(
            name=_text(v["name"], f"{key}.name"),
            cases=_whole(v["cases"], f"{key}.cases", 1, 10**6),
            **{
                name: _real(v[name], f"{key}.{name}", 0.0, 1.0)
                for name in ("dice_mean", "dice_sd", "dice_min")
            },
            **{
                name: _real(v[name], f"{key}.{name}", 0.0, 1e6, nan=True)
                for name in ("hd95_mean", "hd95_sd")
            },
        )
        for v in values
    )
