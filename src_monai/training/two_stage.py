"""Both stages of the two-stage model from one config: the localiser, then the segmenter, each
a normal run (run folder, curves, previews, checkpoints) inside one parent folder, then the
two joined into ``model.safetensors``.

    RUN/                       (train.runs_dir / train.run_name)
      stages.toml              both stages' resolved configs (what --resume reads)
      stages.json              the stages that have finished (or were kept from a model file)
      localiser/ segmenter/    ordinary run folders (see run_folder)
      model.safetensors        both stages in one model file: what ``lasc infer --model`` takes

A STOP file in RUN (or in the running stage's folder) stops after the current epoch;
``lasc train --resume RUN`` continues where it stopped, finished stages are not trained again.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from src_monai.config import STAGES, Config, config_from_dict
from src_monai.errors import LascError
from src_monai.io.files import write_text
from src_monai.model.files import combine_stages
from src_monai.progress import Job, Progress
from src_monai.training.distributed import init_distributed
from src_monai.training.run_folder import STOP_FILE, new_run_dir
from src_monai.training.trainer import Trainer, TrainResult

logger = logging.getLogger(__name__)

MODEL_NAME = "model.safetensors"
# A stage that ends for one of these reasons is done; any other (STOP, Ctrl+C) is resumed.
FINISHED = ("completed", "early stopping", "time limit")


@dataclass(frozen=True)
class TwoStageResult:
    run_dir: Path
    stages: dict[str, TrainResult]
    stopped: str
    """``completed`` when both stages finished, else why the running stage ended."""

    @property
    def model(self) -> Path | None:
        """The joined model file, once both stages have finished."""
        path = self.run_dir / MODEL_NAME
        return path if path.is_file() else None

    # As a TrainResult reads, for front ends that show either: the joined model, and the
    # last stage trained (stage 2 whenever it ran).
    @property
    def best_model(self) -> Path | None:
        return self.model

    @property
    def epochs_done(self) -> int:
        return list(self.stages.values())[-1].epochs_done if self.stages else 0

    @property
    def best_dice(self) -> float:
        return list(self.stages.values())[-1].best_dice if self.stages else -1.0


def run_two_stage_training(
    configs: dict[str, Config] | None = None,
    *,
    resume: str | Path | None = None,
    stop=None,
    kept: dict[str, Path] | None = None,
) -> Job[TwoStageResult]:
    """Train the stages that have not finished, in order, then join them.

    ``kept``: stages not trained but taken from a model file (one-stage, or two-stage whose
    stage of that name is used): fine-tuning stage 2 alone keeps the base model's stage 1."""
    if resume is not None:
        parent = Path(resume)
        configs = _read_stage_configs(parent)
        (parent / STOP_FILE).unlink(missing_ok=True)
    assert configs is not None
    kept = dict(kept or {})
    assert set(configs) | set(kept) == set(STAGES) and not set(configs) & set(kept)
    from src_monai.inference.predictor import resolve_device

    shared = next(iter(configs.values())).train  # runs_dir and run_name: the same in all
    dist = init_distributed(resolve_device(shared.device))
    if resume is None:
        made = new_run_dir(Path(shared.runs_dir), shared.run_name) if dist.main else None
        parent = dist.share(made)
        if dist.main:
            _write_stage_configs(parent, configs)
    finished = _finished_stages(parent)
    if kept and dist.main:
        finished.update(
            {stage: {"kept": str(Path(path).resolve())} for stage, path in kept.items()}
        )
        write_text(parent / "stages.json", json.dumps(finished, indent=1), overwrite=True)
    results: dict[str, TrainResult] = {}
    for number, stage in enumerate(STAGES, start=1):
        if stage in finished:
            kept_from = finished[stage].get("kept")
            logger.info(
                "%s: %s, not trained",
                stage,
                f"kept from {kept_from}" if kept_from else "finished in an earlier run",
            )
            continue
        result = yield from _train_stage(parent, stage, number, configs[stage], stop)
        results[stage] = result
        if result.stopped not in FINISHED:
            return TwoStageResult(parent, results, result.stopped)
        finished[stage] = {"stopped": result.stopped}
        if dist.main:
            write_text(parent / "stages.json", json.dumps(finished, indent=1), overwrite=True)
    if dist.main:
        models = [
            Path(finished[stage]["kept"])
            if "kept" in finished[stage]
            else _stage_model(parent, stage)
            for stage in STAGES
        ]
        combine_stages(*models, parent / MODEL_NAME)
        logger.info("both stages joined in %s", parent / MODEL_NAME)
    return TwoStageResult(parent, results, "completed")


def _train_stage(parent: Path, stage: str, number: int, config: Config, stop) -> Job[TrainResult]:
    """One stage as an ordinary run in ``parent/stage`` (resumed when it has a checkpoint; a
    folder left before its first epoch ended is kept, and the stage starts in ``stage-2``)."""
    folder = _resumable_folder(parent, stage)
    if folder is not None:
        trainer = Trainer(config, resume=folder, stop=lambda: _stop(parent, stop))
    else:
        staged = config_from_dict(
            {
                **config.to_dict(),
                "train": {**config.to_dict()["train"], "runs_dir": str(parent), "run_name": stage},
            }
        )
        trainer = Trainer(staged, stop=lambda: _stop(parent, stop))
    job = trainer.run()
    while True:
        try:
            progress = next(job)
        except StopIteration as end:
            return end.value
        yield Progress(
            f"stage {number}/{len(STAGES)} ({stage}): {progress.message}",
            progress.done,
            progress.total,
            progress.metrics,
        )


def _resumable_folder(parent: Path, stage: str) -> Path | None:
    """The latest folder of ``stage`` with a checkpoint to continue from, if any."""
    folders = sorted(
        (p for p in parent.glob(f"{stage}*") if (p / "checkpoints" / "last_state.pt").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return folders[-1] if folders else None


def _stage_model(parent: Path, stage: str) -> Path:
    folder = _resumable_folder(parent, stage)
    if folder is None:
        raise LascError(parent, f"no {stage} run with a checkpoint to join")
    return folder / "checkpoints" / "best.safetensors"


def _stop(parent: Path, stop) -> bool:
    return (parent / STOP_FILE).exists() or (stop is not None and bool(stop()))


def _write_stage_configs(parent: Path, configs: dict[str, Config]) -> None:
    text = tomli_w.dumps({stage: config.to_dict() for stage, config in configs.items()})
    write_text(parent / "stages.toml", text, overwrite=False)


def _read_stage_configs(parent: Path) -> dict[str, Config]:
    path = parent / "stages.toml"
    if not path.is_file():
        raise LascError(parent, "no stages.toml: not the run folder of a two-stage training")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LascError(path, f"unreadable ({exc})") from exc
    return {stage: config_from_dict(raw[stage], path, saved=True) for stage in raw}


def _finished_stages(parent: Path) -> dict[str, Any]:
    path = parent / "stages.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise LascError(path, f"unreadable ({exc})") from exc
