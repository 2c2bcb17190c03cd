"""Training: the :class:`Trainer` and :func:`run_training`, its generator.

``run_training(config)`` yields :class:`~src_monai.progress.Progress` per step and returns a
:class:`TrainResult`; the CLI (``lasc train``, ``torchrun ... -m src_monai.cli train``),
napari's Train widget and the tests drive this same code. The trainer is a sequence of small
hook methods, in the manner of nnU-Net's ``nnUNetTrainer``: :meth:`Trainer.on_train_start`,
:meth:`~Trainer.train_step`, :meth:`~Trainer.validate`, :meth:`~Trainer.on_epoch_end`,
:meth:`~Trainer.save_checkpoint` / :meth:`~Trainer.load_checkpoint`. A subclass changes one
of them without copying the loop. The run folder is described in
:mod:`src_monai.training.run_folder`.

Randomness is re-seeded at each epoch from (seed, epoch, rank), so a run resumed from its
last checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src_monai.config import Config, config_from_dict
from src_monai.data.sampling import TrainingData, load_training_data
from src_monai.errors import TrainingDivergedError
from src_monai.io.files import creatable_folder
from src_monai.model.networks import count_parameters
from src_monai.model.spec import ModelSpec
from src_monai.progress import Job, Progress
from src_monai.training.batches import batch_maker
from src_monai.training.distributed import init_distributed, write_rank_checksum
from src_monai.training.optimisation import Optimisation, load_initial_weights
from src_monai.training.run_folder import RunFolder, log_tensorboard, new_run_dir, preview_picks
from src_monai.training.validation import preview_rows, validate_cases

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_dice: float
    best_epoch: int
    epochs_done: int
    stopped: str
    """``completed``, ``early stopping``, ``time limit``, ``STOP file``, ``stopped`` (the
    ``stop`` callback) or ``interrupted``."""

    @property
    def best_model(self) -> Path:
        return self.run_dir / "checkpoints" / "best.safetensors"


@dataclass
class Progression:
    """Where a run stands; saved with each checkpoint, so a resumed run continues it."""

    next_epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    stale: int = 0
    """Validations since the best one (early stopping)."""
    history: list[dict[str, Any]] = field(default_factory=list)


def run_training(
    config: Config,
    *,
    resume: str | Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> Job[TrainResult]:
    """Train a 2D network as ``config`` says, or continue the run folder ``resume``.

    ``stop`` is asked after every step, like the run folder's STOP file: once it answers
    True the epoch ends early, is validated and saved, and the run returns (napari's *Stop*).
    """
    return (yield from Trainer(config, resume=resume, stop=stop).run())


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


class Trainer:
    """One training run. :meth:`run` is the loop; the other methods are its hooks."""

    def __init__(
        self,
        config: Config,
        *,
        resume: str | Path | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.resume = None if resume is None else Path(resume)
        self.stop = stop
        self.progression = Progression()
        self.stopped = "completed"

    # ------------------------------------------------------------------ the loop

    def run(self) -> Job[TrainResult]:
        self.on_train_start()
        epoch = self.progression.next_epoch - 1
        try:
            for epoch in range(self.progression.next_epoch, self.config.train.epochs):
                losses = yield from self.train_epoch(epoch)
                row = self.on_epoch_end(epoch, losses)
                yield epoch_progress(self.config, epoch, row, self.steps_done)
                if self._should_end(row):
                    break
        except KeyboardInterrupt:
            self.stopped = "interrupted"
            logger.warning(
                "interrupted: the last completed epoch is saved; continue with "
                "`lasc train --resume %s`",
                self.run_folder.path,
            )
        finally:
            self.on_train_end()
        progression = self.progression
        return TrainResult(
            self.run_folder.path,
            progression.best_dice,
            progression.best_epoch,
            epoch + 1,
            self.stopped,
        )

    # ------------------------------------------------------------------ set-up

    def on_train_start(self) -> None:
        """Devices and ranks, the data, the network and its optimiser (and the weights to
        fine-tune from), all before the run folder exists: bad input leaves nothing."""
        from src_monai.inference.predictor import resolve_device

        self.device = resolve_device(self.config.train.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        state = self._open_run_folder_or_resume()
        self.data = load_training_data(self.config)
        move_to_device(self.data, self.config, self.device)
        self.spec = run_spec(self.config, self.data)
        self.optimisation = Optimisation(self.config, self.device)
        if state is None and self.config.train.init_model:
            load_initial_weights(self.network, self.config)  # a bad file: no run folder yet
        if self.resume is None:
            runs_dir, name = Path(self.config.train.runs_dir), self.config.train.run_name
            path = self.dist.share(new_run_dir(runs_dir, name) if self.dist.main else None)
            self.run_folder = RunFolder(path)
        if state is not None:
            self.load_checkpoint(state)
        if self.dist.enabled:
            self.optimisation.network = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.writer = None
        if self.dist.main:
            self.run_folder.start(self.config, self.spec.split)
            logger.info(
                "run folder %s; %s with %d parameters on %s (%s)",
                self.run_folder.path,
                self.config.model.name,
                count_parameters(self.network),
                self.device,
                self.optimisation.precision,
            )
            if self.config.train.tensorboard:
                self.writer = self.run_folder.tensorboard()
        self.previews = preview_picks(self.data.val, self.config.train.preview_slices)
        self.started = time.perf_counter()
        self.network.train()

    def _open_run_folder_or_resume(self) -> dict[str, Any] | None:
        """A resumed run's saved state (its config replaces ours); else check that the runs
        folder is writable before any data is read."""
        if self.resume is None:
            if self.dist.main:
                creatable_folder(Path(self.config.train.runs_dir))
            return None
        self.run_folder = RunFolder(self.resume)
        state = self.run_folder.load_resume_state()
        self.config = config_from_dict(state["config"], self.resume, saved=True)
        if self.dist.main:
            self.run_folder.clear_stop_request()
            self.run_folder.clear_interrupted_writes()
        return state

    @property
    def network(self) -> torch.nn.Module:
        """The network being trained (wrapped in DistributedDataParallel under torchrun)."""
        return self.optimisation.network

    def model_to_use(self) -> torch.nn.Module:
        """The weights validated and saved: the moving average when there is one."""
        return self.optimisation.model_to_use()

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> Job[list[float]]:
        """The epoch's steps, each yielding progress; returns their losses."""
        config = self.config
        seed = epoch_seed(config.train.seed, epoch, self.dist.rank)
        torch.manual_seed(seed)
        next_batch = batch_maker(config, self.data.train, seed)
        steps, losses = config.train.steps_per_epoch, []
        self.epoch_started = time.perf_counter()
        for step in range(steps):
            images, labels = next_batch()
            losses.append(self.train_step(images.to(self.device), labels.to(self.device)))
            self.steps_done = epoch * steps + step + 1
            seconds = time.perf_counter() - self.epoch_started
            rate = (step + 1) * config.train.batch_size / seconds if seconds > 0 else 0.0
            unit = "windows" if config.data.stage.spatial_dims == 3 else "slices"
            yield Progress(
                f"epoch {epoch + 1}/{config.train.epochs} step {step + 1}/{steps} loss "
                f"{losses[-1]:.4f}, {rate:.1f} {unit}/s",
                self.steps_done,
                config.train.epochs * steps,
            )
            if self._stop_asked():
                break
        return losses

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on a batch; returns its loss."""
        loss = self.optimisation.loss(images, labels)
        # A non-finite loss would make every later weight NaN and a broken "best" model: stop
        # before the step, every rank together, keeping the checkpoints saved so far.
        if not self.dist.all_true(bool(torch.isfinite(loss.detach())), self.device):
            raise TrainingDivergedError(
                self.run_folder.path,
                f"training diverged: the loss became {float(loss.detach())} at step "
                f"{getattr(self, 'steps_done', 0) + 1}; the run's earlier checkpoints are "
                "kept (try a lower train.learning_rate or train.clip_norm)",
            )
        self.optimisation.apply()
        return float(loss.detach())

    def _stop_asked(self) -> bool:
        """The STOP file (rank 0 looks, every rank learns) or the ``stop`` callback."""
        if self.dist.share(self.run_folder.stop_requested if self.dist.main else None):
            self.stopped = "STOP file"
        elif self.stop is not None and self.stop():
            self.stopped = "stopped"
        return self.stopped != "completed"

    # ------------------------------------------------------------------ end of an epoch

    def on_epoch_end(self, epoch: int, losses: list[float]) -> dict[str, Any]:
        """Validate when due, keep the best model, step the schedule, save the checkpoint;
        returns the epoch's row of ``metrics.csv``."""
        train = self.config.train
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_dice": "",
            "lr": self.optimisation.learning_rate,
        }
        limit = train.time_limit_minutes * 60
        self.time_up = self.dist.share(bool(limit) and time.perf_counter() - self.started >= limit)
        self.validated = bool(self.data.val) and (
            (epoch + 1) % train.val_every == 0
            or epoch + 1 == train.epochs
            or self.stopped != "completed"
            or self.time_up
        )
        mean_dice = self.validate_and_keep_best(epoch) if self.validated else None
        row["val_dice"] = "" if mean_dice is None else mean_dice
        self.optimisation.step_scheduler(mean_dice)
        row["seconds"] = round(time.perf_counter() - self.epoch_started, 3)
        self.progression.history.append(row)
        self.progression.next_epoch = epoch + 1
        if self.dist.main:
            self.save_checkpoint(epoch)
        return row

    def validate_and_keep_best(self, epoch: int) -> float:
        """Validate (rank 0; every rank learns the mean Dice) and save a new best model."""
        progression = self.progression
        mean_dice = None
        if self.dist.main:
            scores = self.validate()
            mean_dice = float(np.mean(list(scores.values())))
            self.run_folder.append_validation(epoch + 1, scores)
            if self.previews:
                self.run_folder.write_preview(epoch + 1, self.preview_rows())
        mean_dice = self.dist.share(mean_dice)
        if mean_dice > progression.best_dice:
            progression.best_dice, progression.best_epoch = mean_dice, epoch + 1
            progression.stale = 0
            if self.dist.main:
                self.save_best({"epoch": epoch + 1, "val_dice": mean_dice})
        else:
            progression.stale += 1
        return mean_dice

    def save_best(self, training: dict[str, Any]) -> None:
        spec = self.spec.with_progress(training)
        self.run_folder.save_model("best", self.model_to_use(), spec)

    def _should_end(self, row: dict[str, Any]) -> bool:
        if self.stopped != "completed":
            return True
        if self.time_up:
            self.stopped = "time limit"
            return True
        patience = self.config.train.early_stopping_patience
        if patience and self.validated and self.progression.stale >= patience:
            self.stopped = "early stopping"
            return True
        return False

    def on_train_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.dist.enabled:
            write_rank_checksum(self.run_folder.path, self.network, self.dist)
        self.run_folder.close()

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict[str, float]:
        """Mean foreground 3D Dice per validation case (MONAI's Dice, background excluded),
        from the pipeline steps ``lasc infer`` runs, on the cached (prepared) cases."""
        scores = validate_cases(self.stage_network(), self.data.val, self.config)
        self.network.train()
        return scores

    def stage_network(self):
        """The live network as the pipeline's stage (no file written or read)."""
        from src_monai.inference.stage import StageNetwork

        return StageNetwork(self.model_to_use(), self.spec, self.device)

    def preview_rows(self) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """(title, image, truth, prediction) of the fixed preview slices."""
        rows = preview_rows(self.stage_network(), self.data.val, self.previews)
        self.network.train()
        return rows

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, epoch: int) -> None:
        """``last.safetensors`` and the resume state; with no validation cases, the latest
        epoch is the model (nothing to choose on)."""
        progression = self.progression
        last = {"epoch": epoch + 1, "best_val_dice": progression.best_dice}
        self.run_folder.save_model("last", self.model_to_use(), self.spec.with_progress(last))
        self.run_folder.save_resume_state(
            {
                **self.optimisation.state_dict(),
                "epoch": epoch,
                "best_dice": progression.best_dice,
                "best_epoch": progression.best_epoch,
                "stale": progression.stale,
                "history": progression.history,
                "config": self.config.to_dict(),
            }
        )
        self.run_folder.write_metrics(progression.history)
        if not self.data.val:
            progression.best_epoch = epoch + 1
            self.save_best({"epoch": progression.best_epoch, "val_dice": None})
        if self.writer is not None:
            log_tensorboard(self.writer, progression.history[-1])

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Continue from a saved state: weights, optimiser, schedule and the progression."""
        self.optimisation.load_state_dict(state)
        self.progression = Progression(
            next_epoch=int(state["epoch"]) + 1,
            best_dice=float(state["best_dice"]),
            best_epoch=int(state["best_epoch"]),
            stale=int(state["stale"]),
            history=state["history"],
        )
        logger.info("resuming %s after epoch %d", self.run_folder.path, state["epoch"] + 1)


def run_spec(config: Config, data: TrainingData) -> ModelSpec:
    """The spec saved with every model file of this run."""
    scans = [c for c in data.train if not c.extra_plane]
    spacings = np.array([c.spacing for c in scans])
    codes = {c.axcodes for c in scans}  # checked at inference only when all agree
    return ModelSpec.for_training(
        config,
        layout=data.layout,
        source=data.source,
        spacing_mm=np.median(spacings, axis=0).tolist() if len(spacings) else None,
        orientation_axcodes=codes.pop() if len(codes) == 1 else None,
        split={"train": [c.case_id for c in scans], "val": [c.case_id for c in data.val]},
        training_digests=[c.digest for c in scans if c.digest],
    )


def move_to_device(data: TrainingData, config: Config, device: torch.device) -> None:
    """On a GPU with ``train.augment_on_device`` the cached cases move there: MONAI's
    transforms follow their input's device, so augmentation then runs on the GPU."""
    if device.type == "cuda" and config.train.augment_on_device:
        for case in data.train + data.val:
            case.slices, case.labels = case.slices.to(device), case.labels.to(device)


def epoch_progress(config: Config, epoch: int, row: dict[str, Any], steps_done: int) -> Progress:
    """The epoch's last report: its loss and validation Dice (logged, and as metrics)."""
    dice = row["val_dice"]
    logger.info(
        "epoch %d: loss %.4f%s",
        epoch + 1,
        row["train_loss"],
        f", val Dice {dice:.4f}" if dice != "" else "",
    )
    metrics = {"epoch": epoch + 1, "train_loss": row["train_loss"]}
    if dice != "":
        metrics["val_dice"] = dice
    return Progress(
        f"epoch {epoch + 1}/{config.train.epochs} done",
        steps_done,
        config.train.epochs * config.train.steps_per_epoch,
        metrics=metrics,
    )
