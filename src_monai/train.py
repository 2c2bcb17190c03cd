"""Training: ``lasc train CONFIG`` and ``torchrun --nproc_per_node N -m src_monai.train CONFIG``.

:func:`run_training` is a generator: it yields :class:`~src_monai.progress.Progress` per step
and returns a :class:`TrainResult`; the CLI, napari and tests drive the same code.

Each run gets a new folder ``<runs_dir>/<name>`` (an existing one is never reused) holding
``config.toml``, ``split.json``, ``metrics.csv``, ``validation.csv`` (per-case Dice),
``curves.png``, ``previews/epoch_NNN.png`` (image | truth | prediction) and ``checkpoints/``:
``best.safetensors`` (the model file, chosen on mean per-case 3D foreground Dice),
``last.safetensors`` and ``last_state.pt`` (optimiser, scheduler, epoch: for ``--resume``).

Randomness is re-seeded at each epoch from (seed, epoch, rank), so a run resumed from its
last checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, ConfigError, config_from_dict, load_config, save_config
from .errors import DatasetError, LascError
from .fileutil import atomic_destination, writable_folder, write_json, write_text
from .model import DEFAULT_COLOURS, build_network, count_parameters, plain_state_dict, save_model
from .progress import Job, Progress
from .transforms import context_stack, normalise_volume, training_transforms

logger = logging.getLogger(__name__)

STOP_FILE = "STOP"
METRIC_COLUMNS = ["epoch", "train_loss", "val_dice", "lr", "seconds"]


# --------------------------------------------------------------------------- data


@dataclass
class VolumeCase:
    """A case held in memory: normalised slices first ``(S, H, W)`` and labels."""

    case_id: str
    slices: torch.Tensor
    labels: torch.Tensor
    spacing: tuple[float, float, float]
    extra_plane: bool = False
    """A tri-planar model's second or third view of a scan (not a case of its own)."""
    axcodes: tuple[str, ...] | None = None
    """Voxel-axis orientation of the scan (``RAS``...), when its file records one."""
    foreground_slices: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.foreground_slices = np.flatnonzero(self.labels.flatten(1).any(dim=1).numpy())


@dataclass
class TrainingData:
    train: list[VolumeCase]
    val: list[VolumeCase]
    source: str
    layout: str


def detect_layout(root: Path) -> str:
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    if (root / "images").is_dir() or any(
        (root / s / "images").is_dir() for s in ("train", "valid", "test")
    ):
        return "png"
    raise DatasetError(root, "neither an MSD dataset (imagesTr/) nor a PNG dataset (images/)")


def load_training_data(config: Config) -> TrainingData:
    """Read, check and normalise the training and validation cases (once: kept in memory)."""
    data = config.data
    if not data.dataset:
        raise ConfigError(None, "data.dataset is not set")
    root = Path(data.dataset)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found (data.dataset)")
    layout = detect_layout(root) if data.layout == "auto" else data.layout
    if layout == "msd":
        train, val = _msd_cases(config, root)
    else:
        train, val = _png_cases(config, root)
    if not train:
        raise DatasetError(root, "no training cases")
    if not val:
        if not data.split and data.val_fraction > 0:
            raise DatasetError(root, "no validation cases")
        logger.warning(
            "%s: no validation cases: training on all cases; the last epoch is saved as the model",
            data.split or "data.val_fraction = 0",
        )
    logger.info(
        "data: %d training and %d validation cases (%s layout%s)",
        sum(not c.extra_plane for c in train),
        len(val),
        layout,
        ", each training scan along 3 axes" if config.data.tri_planar else "",
    )
    return TrainingData(train=train, val=val, source=str(root), layout=layout)


def _partition(config: Config, case_ids: list[str], source: Path) -> tuple[list[str], list[str]]:
    from .data import holdout_split, load_split

    data = config.data
    if data.split:
        plan = load_split(data.split, known_cases=case_ids)
        if not 0 <= data.fold < len(plan.partitions):
            raise ConfigError(
                data.split,
                f"data.fold = {data.fold}: the split has {len(plan.partitions)} partition(s)",
            )
        partition = plan.partitions[data.fold]
        val_key = "val" if "val" in partition else "valid"
        return list(partition["train"]), list(partition[val_key])
    plan = holdout_split(
        case_ids, (1.0 - data.val_fraction, data.val_fraction, 0.0), seed=data.split_seed
    )
    return plan.partitions[0]["train"], plan.partitions[0]["valid"]


def _msd_cases(config: Config, root: Path) -> tuple[list[VolumeCase], list[VolumeCase]]:
    from .data import discover_msd
    from .scan_io import check_pair, read_labels, read_scan

    dataset = discover_msd(root)
    if dataset.num_classes != config.data.num_classes:
        raise ConfigError(
            None,
            f"data.num_classes = {config.data.num_classes}, but "
            f"{root}/dataset.json declares {dataset.num_classes} classes",
        )
    train_ids, val_ids = _partition(config, dataset.case_ids(), root)
    by_id = {case.case_id: case for case in dataset.training}
    axis = config.data.slice_axis
    # Tri-planar: each training scan is seen along all three axes (one VolumeCase per axis);
    # validation scans once, along the slice axis (their Dice comes from the fused prediction).
    train_axes = (axis, *[a for a in range(3) if a != axis]) if config.data.tri_planar else (axis,)

    def load(case_id: str, axes: tuple[int, ...]) -> list[VolumeCase]:
        case = by_id[case_id]
        scan, labels = read_scan(case.image), read_labels(case.label, dataset.num_classes)
        check_pair(scan.geometry, labels.geometry, case.image, case.label)
        values = normalise_volume(scan.array, config.data.normalisation)
        spacing = scan.geometry.spacing
        return [
            VolumeCase(
                case_id if along == axis else f"{case_id} axis {along}",
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, along, 0))),
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(labels.array, along, 0))),
                (spacing[along], *[s for i, s in enumerate(spacing) if i != along]),
                extra_plane=along != axis,
                axcodes=scan.geometry.axcodes if scan.geometry.orientation_known else None,
            )
            for along in axes
        ]

    train = [v for c in train_ids for v in load(c, train_axes)]
    return train, [v for c in val_ids for v in load(c, (axis,))]


def _png_cases(config: Config, root: Path) -> tuple[list[VolumeCase], list[VolumeCase]]:
    """PNG slices grouped into one pseudo-volume per patient and subset."""
    if config.data.tri_planar:
        raise ConfigError(
            None, f"data.tri_planar needs 3D scans; {root} holds 2D PNG slices (set it false)"
        )
    from .data import discover_png, parse_rgb_map, read_png_image, read_png_mask

    rgb_map = parse_rgb_map(config.data.rgb_map)
    slices = discover_png(root)
    groups: dict[tuple[str | None, str], list] = {}
    for item in slices:
        groups.setdefault((item.subset, item.case_id), []).append(item)

    def load(items: list, subset: str | None) -> VolumeCase:
        items = sorted(items, key=lambda s: (s.slice_index is None, s.slice_index or 0))
        images = [read_png_image(s.image) for s in items]
        masks = [read_png_mask(s.mask, rgb_map) for s in items]
        if len({im.shape for im in images}) != 1:
            raise DatasetError(
                items[0].image.parent, f"slices of {items[0].case_id} differ in size"
            )
        volume = normalise_volume(np.stack(images), config.data.normalisation)
        name = items[0].case_id if subset is None else f"{subset}/{items[0].case_id}"
        return VolumeCase(
            name, torch.from_numpy(volume), torch.from_numpy(np.stack(masks)), (1.0, 1.0, 1.0)
        )

    subsets = {subset for subset, _ in groups}
    if "train" in subsets and "valid" in subsets:
        train = [load(v, s) for (s, _), v in sorted(groups.items()) if s == "train"]
        val = [load(v, s) for (s, _), v in sorted(groups.items()) if s == "valid"]
        return train, val
    patients = sorted({cid for _, cid in groups})
    train_ids, val_ids = _partition(config, patients, root)
    merged: dict[str, list] = {}
    for (_, cid), items in groups.items():
        merged.setdefault(cid, []).extend(items)
    return [load(merged[c], None) for c in train_ids], [load(merged[c], None) for c in val_ids]


class SliceSampler:
    """Draws training slices: foreground slices with probability ``p``, else any slice."""

    def __init__(
        self, cases: list[VolumeCase], foreground_probability: float, rng: np.random.Generator
    ) -> None:
        self.cases = cases
        self.p = foreground_probability
        self.rng = rng
        self.with_foreground = [i for i, c in enumerate(cases) if c.foreground_slices.size]

    def draw(self, count: int) -> list[tuple[int, int]]:
        picks = []
        for _ in range(count):
            if self.with_foreground and self.rng.random() < self.p:
                index = int(self.rng.choice(self.with_foreground))
                z = int(self.rng.choice(self.cases[index].foreground_slices))
            else:
                index = int(self.rng.integers(len(self.cases)))
                z = int(self.rng.integers(self.cases[index].slices.shape[0]))
            picks.append((index, z))
        return picks


def make_batch(
    cases: list[VolumeCase], picks: list[tuple[int, int]], context: int, transform
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for index, z in picks:
        case = cases[index]
        sample = transform(
            {
                "image": context_stack(case.slices, [z], context)[0],
                "label": case.labels[z][None].float(),
            }
        )
        images.append(torch.as_tensor(sample["image"]).float())
        labels.append(torch.as_tensor(sample["label"]).round().long())
    return torch.stack(images), torch.stack(labels)


# --------------------------------------------------------------------------- pieces


def build_loss(name: str, num_classes: int):
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True, include_background=False)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice_focal":
        return DiceFocalLoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss {name!r}")


def build_optimiser(config: Config, parameters):
    train = config.train
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.learning_rate, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(
            parameters, lr=train.learning_rate, weight_decay=train.weight_decay
        )
    return torch.optim.SGD(
        parameters,
        lr=train.learning_rate,
        momentum=train.momentum,
        nesterov=True,
        weight_decay=train.weight_decay,
    )


def build_scheduler(config: Config, optimiser):
    train = config.train
    if train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode="max", factor=train.reducer_factor, patience=train.reducer_patience
        )
    if train.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=train.epochs)
    if train.scheduler == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimiser, total_iters=train.epochs, power=0.9)
    return None


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


def model_metadata(config: Config, data: TrainingData, **training: Any) -> dict[str, Any]:
    scans = [c for c in data.train if not c.extra_plane]
    spacings = np.array([c.spacing for c in scans])
    return {
        "model": config.to_dict()["model"],
        "data": {
            "slice_axis": config.data.slice_axis,
            "tri_planar": config.data.tri_planar,
            "context_slices": config.data.context_slices,
            "normalisation": config.data.normalisation,
            "patch_size": config.data.patch_size,
            "class_names": config.data.class_names,
            "layout": data.layout,
            "source": data.source,
        },
        "in_channels": config.data.context_slices,
        "num_classes": config.data.num_classes,
        "class_colours": DEFAULT_COLOURS[: config.data.num_classes],
        "spacing_mm": np.median(spacings, axis=0).tolist() if len(spacings) else None,
        "orientation_axcodes": _common_axcodes(scans),
        "split": {"train": [c.case_id for c in scans], "val": [c.case_id for c in data.val]},
        "config": config.to_dict(),
        "training": training,
    }


def _common_axcodes(scans: list[VolumeCase]) -> list[str] | None:
    """The training scans' orientation when they share one (else ``None``: no check)."""
    codes = {c.axcodes for c in scans}
    only = codes.pop() if len(codes) == 1 else None
    return list(only) if only else None


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size())


# --------------------------------------------------------------------------- the loop


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


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


def validate_cases(
    network, cases: list[VolumeCase], config: Config, device: torch.device, metadata: dict[str, Any]
) -> dict[str, float]:
    """Mean foreground 3D Dice per validation case (MONAI's Dice, background excluded).

    ``compute_dice`` rather than ``DiceMetric``: the latter all-gathers across ranks when a
    process group exists, and only rank 0 validates.
    """
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    from .infer import Predictor
    from .progress import run_to_end

    inner = network.module if hasattr(network, "module") else network
    # The cached cases are normalised and slices-first: put the slice axis back, so a
    # tri-planar model's other two planes are cut exactly as in training and inference.
    axis = int(metadata["data"]["slice_axis"])
    predictor = Predictor(inner, metadata, device)
    scores = {}
    for case in cases:
        labels = run_to_end(
            predictor.predict_volume(
                np.moveaxis(case.slices.cpu().numpy(), 0, axis),
                batch_size=config.infer.batch_size,
                normalised=True,
            )
        ).labels
        truth = np.moveaxis(case.labels.cpu().numpy(), 0, axis)
        pred = one_hot(torch.from_numpy(labels).long()[None, None], config.data.num_classes)
        true = one_hot(torch.from_numpy(truth).long()[None, None], config.data.num_classes)
        dice = compute_dice(pred, true, include_background=False, ignore_empty=False)
        scores[case.case_id] = float(dice.mean())
    network.train()
    return scores


def run_training(
    config: Config,
    *,
    resume: str | Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> Job[TrainResult]:
    """Train a 2D network as ``config`` says; see the module docstring for the run folder.

    ``stop`` is asked after every step, like the run folder's STOP file: once it answers
    True the epoch ends early, is validated and saved, and the run returns (napari's *Stop*).
    """
    from .infer import resolve_device

    device = resolve_device(config.train.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = _load_state(run_dir)
        config = config_from_dict(state["config"])
        stop_file = run_dir / STOP_FILE
        if dist.main and stop_file.exists():
            stop_file.unlink()
            logger.info("removed %s left by the interrupted run", stop_file)
    elif dist.main:
        writable_folder(Path(config.train.runs_dir))  # fail before reading any data
    # The data is read and checked before a run folder exists: a bad dataset leaves nothing.
    data = load_training_data(config)
    if resume is None:
        run_dir = dist.share(
            new_run_dir(Path(config.train.runs_dir), config.train.run_name) if dist.main else None
        )
    if device.type == "cuda" and config.train.augment_on_device:
        # Augmentation then runs on the GPU: MONAI's transforms follow their input's device.
        for case in data.train + data.val:
            case.slices, case.labels = case.slices.to(device), case.labels.to(device)
    torch.manual_seed(config.train.seed)
    network = build_network(config.model, config.data.context_slices, config.data.num_classes).to(
        device
    )
    optimiser = build_optimiser(config, network.parameters())
    scheduler = build_scheduler(config, optimiser)
    loss_function = build_loss(config.train.loss, config.data.num_classes)
    history: list[dict[str, Any]] = []
    start_epoch, best_dice, best_epoch, stale = 0, -1.0, -1, 0
    if state is not None:
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_dice = int(state["epoch"]) + 1, float(state["best_dice"])
        best_epoch, stale, history = int(state["best_epoch"]), int(state["stale"]), state["history"]
        logger.info("resuming %s after epoch %d", run_dir, start_epoch)
    elif config.train.init_model:
        _load_initial_weights(network, config)
    if dist.enabled:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(None, f"train.precision = {precision!r} needs a CUDA device")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    metadata = model_metadata(config, data)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    writer = None
    if dist.main:
        save_config(config, run_dir / "config.toml")
        write_json(run_dir / "split.json", metadata["split"], overwrite=True)
        _attach_log_file(run_dir)
        logger.info(
            "run folder %s; %s with %d parameters on %s (%s)",
            run_dir,
            config.model.name,
            count_parameters(network),
            device,
            precision,
        )
        if config.train.tensorboard:
            writer = _tensorboard(run_dir)
    previews = _preview_picks(data.val, config.train.preview_slices)
    steps = config.train.steps_per_epoch
    total_steps = config.train.epochs * steps
    stopped = "completed"
    epoch = start_epoch - 1
    run_started = time.perf_counter()
    network.train()
    try:
        for epoch in range(start_epoch, config.train.epochs):
            started = time.perf_counter()
            seed = _epoch_seed(config.train.seed, epoch, dist.rank)
            torch.manual_seed(seed)
            sampler = SliceSampler(
                data.train, config.data.foreground_oversample, np.random.default_rng(seed)
            )
            transform = training_transforms(config.augment, config.data.patch_size, seed)
            losses = []
            for step in range(steps):
                images, labels = make_batch(
                    data.train,
                    sampler.draw(config.train.batch_size),
                    config.data.context_slices,
                    transform,
                )
                images, labels = images.to(device), labels.to(device)
                optimiser.zero_grad(set_to_none=True)
                with torch.autocast(
                    device.type,
                    dtype=autocast_dtype or torch.float32,
                    enabled=autocast_dtype is not None,
                ):
                    loss = loss_function(network(images), labels)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimiser)
                else:
                    loss.backward()
                _clip(network, config)
                if scaler is not None:
                    scaler.step(optimiser)
                    scaler.update()
                else:
                    optimiser.step()
                losses.append(float(loss.detach()))
                done = epoch * steps + step + 1
                yield Progress(
                    f"epoch {epoch + 1}/{config.train.epochs} loss {losses[-1]:.4f}",
                    done,
                    total_steps,
                )
                if dist.share((run_dir / STOP_FILE).exists() if dist.main else None):
                    stopped = "STOP file"
                    break
                if stop is not None and stop():
                    stopped = "stopped"
                    break
            row = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_dice": "",
                "lr": optimiser.param_groups[0]["lr"],
            }
            limit = config.train.time_limit_minutes * 60
            time_up = dist.share(bool(limit) and time.perf_counter() - run_started >= limit)
            validated = bool(data.val) and (
                (epoch + 1) % config.train.val_every == 0
                or epoch + 1 == config.train.epochs
                or stopped != "completed"
                or time_up
            )
            mean_dice = None
            if validated:
                if dist.main:
                    scores = validate_cases(network, data.val, config, device, metadata)
                    mean_dice = float(np.mean(list(scores.values())))
                    _append_validation(run_dir, epoch + 1, scores)
                    if previews:
                        _write_preview(
                            run_dir, epoch + 1, network, data.val, previews, config, device
                        )
                mean_dice = dist.share(mean_dice)
                row["val_dice"] = mean_dice
                if mean_dice > best_dice:
                    best_dice, best_epoch, stale = mean_dice, epoch + 1, 0
                    if dist.main:
                        save_model(
                            run_dir / "checkpoints" / "best.safetensors",
                            network,
                            {**metadata, "training": {"epoch": best_epoch, "val_dice": best_dice}},
                        )
                else:
                    stale += 1
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    if mean_dice is not None:
                        scheduler.step(mean_dice)
                else:
                    scheduler.step()
            row["seconds"] = round(time.perf_counter() - started, 3)
            history.append(row)
            if dist.main:
                _save_last(
                    run_dir,
                    network,
                    optimiser,
                    scheduler,
                    config,
                    metadata,
                    epoch,
                    best_dice,
                    best_epoch,
                    stale,
                    history,
                )
                _write_metrics(run_dir, history)
                if not data.val:  # nothing to choose on: the latest epoch is the model
                    best_epoch = epoch + 1
                    save_model(
                        run_dir / "checkpoints" / "best.safetensors",
                        network,
                        {**metadata, "training": {"epoch": best_epoch, "val_dice": None}},
                    )
                if writer is not None:
                    _log_tensorboard(writer, row)
            logger.info(
                "epoch %d: loss %.4f%s",
                epoch + 1,
                row["train_loss"],
                f", val Dice {mean_dice:.4f}" if mean_dice is not None else "",
            )
            epoch_metrics = {"epoch": epoch + 1, "train_loss": row["train_loss"]}
            if mean_dice is not None:
                epoch_metrics["val_dice"] = mean_dice
            yield Progress(
                f"epoch {epoch + 1}/{config.train.epochs} done",
                done,
                total_steps,
                metrics=epoch_metrics,
            )
            if stopped != "completed":
                break
            if time_up:
                stopped = "time limit"
                break
            patience = config.train.early_stopping_patience
            if patience and validated and stale >= patience:
                stopped = "early stopping"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
        logger.warning(
            "interrupted: the last completed epoch is saved; continue with "
            "`lasc train --resume %s`",
            run_dir,
        )
    finally:
        if writer is not None:
            writer.close()
    if dist.enabled:
        _write_rank_checksum(run_dir, network, dist)
    return TrainResult(run_dir, best_dice, best_epoch, epoch + 1, stopped)


def _load_initial_weights(network: torch.nn.Module, config: Config) -> None:
    """Start from a trained model's weights (fine-tuning); its architecture must match."""
    from .model import BUNDLED_MODEL, load_model

    source = config.train.init_model
    path = BUNDLED_MODEL if source == "bundled" else Path(source)
    trained, metadata = load_model(path)
    if (
        int(metadata["in_channels"]) != config.data.context_slices
        or int(metadata["num_classes"]) != config.data.num_classes
    ):
        raise ConfigError(
            path,
            f"train.init_model has {metadata['in_channels']} input channels and "
            f"{metadata['num_classes']} classes; the config asks for "
            f"{config.data.context_slices} and {config.data.num_classes}",
        )
    try:
        network.load_state_dict(trained.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            path,
            "train.init_model's architecture differs from [model] in the config "
            f"({str(exc).splitlines()[0]})",
        ) from exc
    logger.info("initial weights from %s", path)


def _clip(network, config: Config) -> None:
    if config.train.clip_value > 0:
        torch.nn.utils.clip_grad_value_(network.parameters(), config.train.clip_value)
    if config.train.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.train.clip_norm)


def _save_last(
    run_dir,
    network,
    optimiser,
    scheduler,
    config,
    metadata,
    epoch,
    best_dice,
    best_epoch,
    stale,
    history,
) -> None:
    save_model(
        run_dir / "checkpoints" / "last.safetensors",
        network,
        {**metadata, "training": {"epoch": epoch + 1, "best_val_dice": best_dice}},
    )
    state = {
        "model": plain_state_dict(network),
        "optimiser": optimiser.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "best_dice": best_dice,
        "best_epoch": best_epoch,
        "stale": stale,
        "history": history,
        "config": config.to_dict(),
    }
    with atomic_destination(run_dir / "checkpoints" / "last_state.pt", overwrite=True) as tmp:
        torch.save(state, tmp)


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "checkpoints" / "last_state.pt"
    if not path.is_file():
        raise LascError(run_dir, "no checkpoints/last_state.pt to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LascError(path, f"unreadable checkpoint ({first[:160]})") from exc


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    lines = [",".join(METRIC_COLUMNS)]
    lines += [",".join(str(row.get(c, "")) for c in METRIC_COLUMNS) for row in history]
    write_text(run_dir / "metrics.csv", "\n".join(lines) + "\n", overwrite=True)
    with atomic_destination(run_dir / "curves.png", overwrite=True) as temporary:
        _curves(history).savefig(temporary, format="png", dpi=90)


def _append_validation(run_dir: Path, epoch: int, scores: dict[str, float]) -> None:
    path = run_dir / "validation.csv"
    rows = [] if not path.exists() else list(csv.reader(path.read_text().splitlines()))[1:]
    rows += [[str(epoch), case, f"{dice:.6f}"] for case, dice in scores.items()]
    write_text(
        path, "epoch,case,dice\n" + "\n".join(",".join(r) for r in rows) + "\n", overwrite=True
    )


def _curves(history: list[dict[str, Any]]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    left.plot(epochs, [r["train_loss"] for r in history], marker=".")
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


def _preview_picks(cases: list[VolumeCase], count: int) -> list[tuple[int, int]]:
    """``count`` fixed validation slices with foreground, spread over cases and depth."""
    picks = []
    candidates = [(i, z) for i, c in enumerate(cases) for z in c.foreground_slices]
    if not candidates or count <= 0:
        return picks
    for position in np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))):
        picks.append(candidates[round(position)])
    return picks


def _write_preview(run_dir, epoch, network, cases, picks, config, device) -> None:
    """The earlier tool's "epoch change inference": image | truth | prediction per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .infer import Predictor

    inner = network.module if hasattr(network, "module") else network
    metadata = {
        "data": {
            "slice_axis": 0,
            "context_slices": config.data.context_slices,
            "normalisation": "none",
            "patch_size": config.data.patch_size,
        },
        "model": {"levels": config.model.levels},
        "num_classes": config.data.num_classes,
    }
    predictor = Predictor(inner, metadata, device)
    figure = Figure(figsize=(6, 2 * len(picks)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(picks), 3, squeeze=False)
    with torch.inference_mode():
        for row, (index, z) in enumerate(picks):
            case = cases[index]
            batch = context_stack(case.slices.to(device), [z], config.data.context_slices)
            predicted = predictor._logits(batch, overlap=0.25).max(1).indices[0].cpu().numpy()
            for axis, (image, title) in zip(
                axes[row],
                (
                    (case.slices[z].cpu().numpy(), f"{case.case_id} z={z}"),
                    (case.labels[z].cpu().numpy(), "truth"),
                    (predicted, "prediction"),
                ),
                strict=True,
            ):
                axis.imshow(
                    image,
                    cmap="gray" if title not in ("truth", "prediction") else "magma",
                    interpolation="nearest",
                )
                axis.set_title(title, fontsize=8)
                axis.axis("off")
    network.train()
    (run_dir / "previews").mkdir(exist_ok=True)
    with atomic_destination(
        run_dir / "previews" / f"epoch_{epoch:03d}.png", overwrite=True
    ) as temporary:
        figure.savefig(temporary, format="png", dpi=70)


def _attach_log_file(run_dir: Path) -> None:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("src_monai").addHandler(handler)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            None,
            "train.tensorboard = true needs the tensorboard package "
            '(pip install "napari-lasc[tensorboard]")',
        ) from exc
    return SummaryWriter(str(run_dir / "tensorboard"))


def _log_tensorboard(writer, row: dict[str, Any]) -> None:
    for key in ("train_loss", "val_dice", "lr"):
        if row[key] != "" and not (isinstance(row[key], float) and math.isnan(row[key])):
            writer.add_scalar(key, row[key], row["epoch"])


def _write_rank_checksum(run_dir: Path, network, dist: Distributed) -> None:
    digest = hashlib.sha256()
    for name, tensor in sorted(plain_state_dict(network).items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    (run_dir / "ranks").mkdir(exist_ok=True)
    write_text(
        run_dir / "ranks" / f"rank{dist.rank}.sha256", digest.hexdigest() + "\n", overwrite=True
    )


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc train`` options."""
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="config file: TOML, or the earlier tool's train_eval_infer.config",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint",
    )
    parser.add_argument("--seed", type=int, help="shortcut for --set train.seed=N")


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc train`` with parsed arguments."""
    from .cli_support import EXIT_INTERRUPTED, drive

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("src_monai").setLevel(logging.WARNING)  # rank 0 speaks for all
    if args.resume is not None:
        if args.config or args.overrides or args.seed is not None:
            raise LascError(
                None,
                "--resume continues a run with its own config: give no CONFIG, --set or --seed",
            )
        config = Config()
    elif args.config is None:
        raise LascError(None, "give a CONFIG file (or --resume RUN_DIR)")
    else:
        overrides = list(args.overrides) + (
            [f"train.seed={args.seed}"] if args.seed is not None else []
        )
        config = load_config(args.config, overrides)
    result = drive(run_training(config, resume=args.resume), description="train")
    if int(os.environ.get("RANK", "0")) == 0:
        quality = (
            f"best validation Dice {result.best_dice:.4f} at epoch {result.best_epoch}"
            if result.best_dice >= 0
            else "no validation cases: the model is the last epoch"
        )
        print(f"{result.stopped} after {result.epochs_done} epoch(s); {quality}")
        print(f"run folder: {result.run_dir}")
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0


if __name__ == "__main__":
    from .cli_support import module_main

    raise SystemExit(
        module_main(add_arguments, run, prog="python -m src_monai.train", description=__doc__)
    )
