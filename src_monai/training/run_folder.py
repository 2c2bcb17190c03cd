"""A run folder and everything written into it.

``<runs_dir>/<name>`` (an existing one is never reused) holds ``config.toml``, ``split.json``,
``train.log``, ``metrics.csv``, ``validation.csv`` (per-case Dice), ``curves.png``,
``previews/epoch_NNN.png`` (image | truth | prediction) and ``checkpoints/``:
``best.safetensors`` (the model file), ``last.safetensors`` and ``last_state.pt`` (optimiser,
scheduler, epoch: for ``--resume``). A ``STOP`` file dropped in asks the run to stop.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src_monai.config import Config, ConfigError, save_config
from src_monai.data.sampling import VolumeCase
from src_monai.errors import LascError
from src_monai.io.files import (
    atomic_destination,
    remove_stale_partials,
    writable_folder,
    write_json,
)
from src_monai.io.tables import new_figure, read_csv, save_figure, write_csv
from src_monai.model.files import save_model
from src_monai.model.spec import ModelSpec

logger = logging.getLogger(__name__)

STOP_FILE = "STOP"
METRIC_COLUMNS = ["epoch", "train_loss", "val_dice", "lr", "seconds"]


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """A new folder under ``runs_dir``; a taken name gets ``-2``, ``-3``, ...: never reused."""
    writable_folder(runs_dir)
    base = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise LascError(runs_dir, f"no free run folder name for {base!r}")


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run; only rank 0 writes them."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def stop_requested(self) -> bool:
        return (self.path / STOP_FILE).exists()

    def clear_stop_request(self) -> None:
        """Remove a STOP file an interrupted run left (a resumed run would stop at once)."""
        if self.stop_requested:
            (self.path / STOP_FILE).unlink()
            logger.info("removed %s left by the interrupted run", self.path / STOP_FILE)

    def clear_interrupted_writes(self) -> None:
        """Remove the temporary files of writes a killed run (SIGKILL) could not finish:
        metrics, curves, previews or checkpoints it was writing when it died."""
        for folder in (self.path, self.checkpoints, self.path / "previews"):
            for stale in remove_stale_partials(folder):
                logger.info("removed %s, an unfinished write of the interrupted run", stale)

    def start(self, config: Config, split: dict[str, list[str]]) -> None:
        """Write what the run is: its config and split; send the log here too."""
        self.checkpoints.mkdir(exist_ok=True)
        save_config(config, self.path / "config.toml")
        write_json(self.path / "split.json", split, overwrite=True)
        handler = logging.FileHandler(self.path / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("src_monai").addHandler(handler)

    def close(self) -> None:
        """Stop sending the log here: a process that trains again (napari, tests) would
        otherwise write every later run's log into this run's ``train.log`` as well."""
        log = str((self.path / "train.log").absolute())
        package = logging.getLogger("src_monai")
        for handler in list(package.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == log:
                package.removeHandler(handler)
                handler.close()

    # ------------------------------------------------------------------ checkpoints

    def save_model(self, name: str, network: torch.nn.Module, spec: ModelSpec) -> Path:
        return save_model(self.checkpoints / f"{name}.safetensors", network, spec)

    def save_resume_state(self, state: dict[str, Any]) -> None:
        with atomic_destination(self.checkpoints / "last_state.pt", overwrite=True) as temporary:
            torch.save(state, temporary)

    def load_resume_state(self) -> dict[str, Any]:
        path = self.checkpoints / "last_state.pt"
        if not path.is_file():
            raise LascError(self.path, "no checkpoints/last_state.pt to resume from")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise LascError(path, f"unreadable checkpoint ({first[:160]})") from exc

    # ------------------------------------------------------------------ records

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.csv`` and ``curves.png`` from every epoch so far."""
        write_csv(self.path / "metrics.csv", history, METRIC_COLUMNS)
        save_figure(self.path / "curves.png", _curves(history), dpi=90)

    def append_validation(self, epoch: int, scores: dict[str, float]) -> None:
        """Add one validation's per-case Dice to ``validation.csv``. Rows of this epoch or
        later are replaced, not repeated: a run killed after validating but before its
        checkpoint validates that epoch again when resumed."""
        path = self.path / "validation.csv"
        rows = [row for row in read_csv(path) if int(row["epoch"]) < epoch]
        rows += [{"epoch": epoch, "case": case, "dice": f"{d:.6f}"} for case, d in scores.items()]
        write_csv(path, rows, ["epoch", "case", "dice"])

    def write_preview(self, epoch: int, rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
        """The earlier tool's "epoch change inference": (title, image, truth, prediction) rows."""
        figure = new_figure(6, 2 * len(rows))
        axes = figure.subplots(len(rows), 3, squeeze=False)
        for row, (title, image, truth, predicted) in enumerate(rows):
            panels = (
                (image, title, "gray"),
                (truth, "truth", "magma"),
                (predicted, "prediction", "magma"),
            )
            for axis, (picture, name, colours) in zip(axes[row], panels, strict=True):
                axis.imshow(picture, cmap=colours, interpolation="nearest")
                axis.set_title(name, fontsize=8)
                axis.axis("off")
        (self.path / "previews").mkdir(exist_ok=True)
        save_figure(self.path / "previews" / f"epoch_{epoch:03d}.png", figure, dpi=70)

    def tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                None,
                "train.tensorboard = true needs the tensorboard package "
                '(pip install "napari-lasc[tensorboard]")',
            ) from exc
        return SummaryWriter(str(self.path / "tensorboard"))


def log_tensorboard(writer, row: dict[str, Any]) -> None:
    for key in ("train_loss", "val_dice", "lr"):
        if row[key] != "" and not (isinstance(row[key], float) and math.isnan(row[key])):
            writer.add_scalar(key, row[key], row["epoch"])


def _curves(history: list[dict[str, Any]]):
    figure = new_figure(9, 3.5)
    left, right = figure.subplots(1, 2)
    left.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], marker=".")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    validated = [r for r in history if r["val_dice"] != ""]
    right.plot(
        [r["epoch"] for r in validated],
        [r["val_dice"] for r in validated],
        marker=".",
        color="#b03fb0",
    )
    right.set_xlabel("epoch")
    right.set_ylabel("validation Dice (per-case 3D, mean)")
    return figure


def preview_picks(cases: list[VolumeCase], count: int) -> list[tuple[int, int]]:
    """``count`` fixed validation slices with foreground, spread over cases and depth."""
    candidates = [(i, int(z)) for i, c in enumerate(cases) for z in c.foreground_slices]
    if not candidates or count <= 0:
        return []
    positions = np.linspace(0, len(candidates) - 1, num=min(count, len(candidates)))
    return [candidates[round(p)] for p in positions]
