"""What the napari Train widget (and any other front end) trains: a model's own recipe pointed
at a new dataset, from its weights (fine-tuning) or from random ones.

A one-stage recipe is one run. A two-stage recipe trains stage 2 (the segmenter), and stage 1
(the localiser) too when asked or when starting from random weights; a stage not trained is
kept from the base model, so the result is again one two-stage model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src_monai.config import Config, config_from_dict
from src_monai.errors import LascError
from src_monai.model.files import BUNDLED_MODEL, load_model
from src_monai.model.spec import ModelSpec
from src_monai.progress import Job
from src_monai.training.trainer import run_training
from src_monai.training.two_stage import run_two_stage_training

# Below this many cases a held-out validation case would leave too little to train on.
MIN_CASES_FOR_VALIDATION = 4


@dataclass(frozen=True)
class TrainingPlan:
    configs: dict[str, Config]
    """``{"model": config}`` for a one-stage recipe, else one config per trained stage."""
    kept: dict[str, Path] = field(default_factory=dict)
    """Two-stage stages taken unchanged from the base model file."""

    @property
    def two_stage(self) -> bool:
        return "model" not in self.configs

    def run(self, stop=None) -> Job[Any]:
        """The training job: a ``TrainResult`` or a ``TwoStageResult`` (both have
        ``best_model``, ``stopped``, ``epochs_done`` and ``best_dice``)."""
        if not self.two_stage:
            return (yield from run_training(self.configs["model"], stop=stop))
        return (yield from run_two_stage_training(self.configs, kept=self.kept, stop=stop))


def training_plan(
    base_model: Path | None,
    dataset: Path,
    runs_dir: Path,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    device: str,
    cases: int | None,
    localiser_too: bool = False,
) -> TrainingPlan:
    """The bundled model's recipe (or a base model's own), pointed at ``dataset``.

    ``base_model`` given: its weights are the starting point (fine-tuning) and its recipe is
    kept so the architecture matches; of a two-stage base, stage 2 is fine-tuned and stage 1
    kept unless ``localiser_too``. ``cases`` known and few: no validation split."""
    source = base_model or BUNDLED_MODEL
    _, spec = load_model(source)
    options = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "device": device,
        "runs_dir": str(runs_dir),
        "init_model": str(base_model) if base_model is not None else "",
    }
    if spec.localiser is None:
        return TrainingPlan({"model": _pointed(spec, source, dataset, cases, options)})
    configs = {"segmenter": _pointed(spec, source, dataset, cases, options)}
    kept = {}
    if base_model is None or localiser_too:
        configs = {
            "localiser": _pointed(spec.localiser, source, dataset, cases, options),
            **configs,
        }
    else:
        kept["localiser"] = base_model
    return TrainingPlan(configs, kept)


def _pointed(
    spec: ModelSpec, source: Path, dataset: Path, cases: int | None, options: dict[str, Any]
) -> Config:
    if spec.record.recipe is None:
        raise LascError(source, "records no training recipe (config): train it from a config")
    raw = spec.record.recipe.to_dict()
    # The user's dataset alone: the recipe's other datasets (a joint model's) are not theirs.
    raw["data"].update(dataset=str(dataset), extra_datasets=[], split="", fold=0, layout="auto")
    if cases is not None and cases < MIN_CASES_FOR_VALIDATION:
        raw["data"]["val_fraction"] = 0.0
    raw["train"].update(run_name="", time_limit_minutes=0.0, tensorboard=False, **options)
    return config_from_dict(raw, source, saved=True)
