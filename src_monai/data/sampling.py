"""Training data in memory: cases read, checked and normalised once; slices drawn and batched."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src_monai.config import Config, ConfigError, Stage
from src_monai.data.transforms import context_stack, normalise_volume
from src_monai.errors import DatasetError

logger = logging.getLogger(__name__)


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
    digest: str = ""
    """:func:`~src_monai.io.scans.image_digest` of the scan as read (recorded in the model so
    that a training case is recognised under another name)."""
    dataset: str = ""
    """The dataset folder it came from, where several train together."""
    foreground_slices: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.foreground_slices = np.flatnonzero(self.labels.flatten(1).any(dim=1).numpy())


@dataclass
class TrainingData:
    train: list[VolumeCase]
    val: list[VolumeCase]
    source: str
    layout: str


def shrink_slices(slices: torch.Tensor, factor: int) -> torch.Tensor:
    """``(S, H, W)`` intensities averaged over ``factor`` x ``factor`` blocks (edges padded by
    repetition to a multiple of ``factor``)."""
    padded = _pad_to_multiple(slices.float()[:, None], factor)
    return torch.nn.functional.avg_pool2d(padded, factor)[:, 0]


def shrink_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """``(S, H, W)`` labels, a block taking the largest class in it: a shrunk atrium still
    covers every block it touches (its box then holds the whole atrium)."""
    padded = _pad_to_multiple(labels.float()[:, None], factor)
    return torch.nn.functional.max_pool2d(padded, factor)[:, 0].to(labels.dtype)


def _pad_to_multiple(batch: torch.Tensor, factor: int) -> torch.Tensor:
    height, width = batch.shape[-2:]
    pad = (0, -width % factor, 0, -height % factor)
    return torch.nn.functional.pad(batch, pad, mode="replicate") if any(pad) else batch


def shrink_case(case: VolumeCase, factor: int) -> None:
    """A case at a localiser's resolution (its ``spacing`` stays the scan's)."""
    case.slices = shrink_slices(case.slices, factor)
    case.labels = shrink_labels(case.labels, factor)


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
    for extra in data.extra_datasets:
        if layout != "msd" or not Path(extra).is_dir() or detect_layout(Path(extra)) != "msd":
            raise DatasetError(
                extra, "data.extra_datasets must be MSD-layout folders, beside an MSD dataset"
            )
    if layout == "msd":
        train, val = _msd_cases(config, [root, *map(Path, data.extra_datasets)])
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
    warn_about_cases([c for c in train + val if not c.extra_plane])
    if data.stage is Stage.LOCALISER:
        for case in train + val:
            shrink_case(case, data.downsample)
    logger.info(
        "data: %d training and %d validation cases (%s layout%s)",
        sum(not c.extra_plane for c in train),
        len(val),
        layout,
        ", each training scan along 3 axes" if config.data.tri_planar else "",
    )
    source = " + ".join([str(root), *data.extra_datasets])
    return TrainingData(train=train, val=val, source=source, layout=layout)


def warn_about_cases(cases: list[VolumeCase]) -> None:
    """Warn, naming the cases, about labels without foreground (they teach background only)
    and scans whose voxel size differs from the median of all: the networks learn each at
    its own size, where inference resamples every scan to the median."""
    from src_monai.inference.resample import RESAMPLE_TOLERANCE, resampled_shape

    empty = [c.case_id for c in cases if not len(c.foreground_slices)]
    if empty:
        logger.warning(
            "%d training case(s) with no foreground in their label (check them: they teach "
            "background only): %s",
            len(empty),
            ", ".join(empty),
        )
    spacings = np.array([c.spacing for c in cases], dtype=float)
    median = np.median(spacings, axis=0)
    off = [  # those inference would resample to the median: its own rule
        f"{c.case_id} ({' x '.join(f'{v:.2f}' for v in c.spacing)})"
        for c in cases
        if resampled_shape(c.slices.shape, c.spacing, median) is not None
    ]
    if off:
        logger.warning(
            "%d training case(s) whose voxel size (mm, slices first) is more than %d %% off the "
            "median %s: the network learns them at their own scale, while inference resamples "
            "every scan to the median; resample them first for one scale: %s",
            len(off),
            round(100 * RESAMPLE_TOLERANCE),
            " x ".join(f"{v:.2f}" for v in median),
            ", ".join(off[:5]) + (", ..." if len(off) > 5 else ""),
        )


def _partition(
    config: Config, case_ids: list[str], source: Path, groups: list[list[str]] | None = None
) -> tuple[list[str], list[str]]:
    """Training and validation case ids: the split file's fold, else a seeded hold-out of
    ``data.val_fraction``, taken from each of ``groups`` (several datasets) alike."""
    from src_monai.data.splits import holdout_split, load_split

    data = config.data
    if data.split:
        plan = load_split(data.split, known_cases=case_ids)
        if not 0 <= data.fold < len(plan.partitions):
            raise ConfigError(
                data.split,
                f"data.fold = {data.fold}: the split has {len(plan.partitions)} partition(s)",
            )
        return plan.train_and_validation(data.fold)
    train: list[str] = []
    val: list[str] = []
    for group in groups or [case_ids]:
        plan = holdout_split(
            group, (1.0 - data.val_fraction, data.val_fraction, 0.0), seed=data.split_seed
        )
        group_train, group_val = plan.train_and_validation()
        train, val = train + group_train, val + group_val
    return train, val


def _msd_cases(config: Config, roots: list[Path]) -> tuple[list[VolumeCase], list[VolumeCase]]:
    from src_monai.data.datasets import discover_datasets
    from src_monai.io.scans import check_pair, image_digest, read_geometry, read_labels, read_scan

    dataset = discover_datasets(roots)
    if dataset.num_classes != config.data.num_classes:
        raise ConfigError(
            None,
            f"data.num_classes = {config.data.num_classes}, but "
            f"{dataset.root}/dataset.json declares {dataset.num_classes} classes",
        )
    groups: dict[str, list[str]] = {}
    for case in dataset.training:
        groups.setdefault(case.dataset, []).append(case.case_id)
    train_ids, val_ids = _partition(config, dataset.case_ids(), dataset.root, list(groups.values()))
    by_id = {case.case_id: case for case in dataset.training}
    # One voxel order for the networks: every scan turned to the first case's orientation
    # (exact: axes permuted and flipped); the model records it and inference does the same.
    first = read_geometry(dataset.training[0].image)
    target = first.axcodes if first.orientation_known else None
    axis = config.data.slice_axis
    # Tri-planar: each training scan is seen along all three axes (one VolumeCase per axis);
    # validation scans once, along the slice axis (their Dice comes from the fused prediction).
    train_axes = (axis, *[a for a in range(3) if a != axis]) if config.data.tri_planar else (axis,)

    def load(case_id: str, axes: tuple[int, ...]) -> list[VolumeCase]:
        case = by_id[case_id]
        scan, labels = read_scan(case.image), read_labels(case.label, dataset.num_classes)
        check_pair(scan.geometry, labels.geometry, case.image, case.label)
        digest = image_digest(scan.array)  # of the file as read: how a scan is recognised
        image, label, spacing, axcodes = scan.array, labels.array, scan.geometry.spacing, None
        if target is not None and scan.geometry.orientation_known:
            image, label, spacing = to_orientation(
                (image, label), scan.geometry.affine, spacing, target
            )
            axcodes = target
        values = normalise_volume(image, config.data.normalisation)
        return [
            VolumeCase(
                case_id if along == axis else f"{case_id} axis {along}",
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(values, along, 0))),
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, along, 0))),
                (spacing[along], *[s for i, s in enumerate(spacing) if i != along]),
                extra_plane=along != axis,
                axcodes=axcodes,
                digest=digest,
                dataset=case.dataset,
            )
            for along in axes
        ]

    train = [v for c in train_ids for v in load(c, train_axes)]
    return train, [v for c in val_ids for v in load(c, (axis,))]


def to_orientation(
    volumes: tuple[np.ndarray, ...],
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    axcodes: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Image and labels of a scan with voxel-to-RAS ``affine`` turned to ``axcodes`` (axes
    permuted and flipped, as :class:`~src_monai.inference.grid.ModelGrid` does at inference),
    and their voxel size in the new axis order."""
    import nibabel as nib

    start = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(axcodes))
    image, label = (nib.orientations.apply_orientation(v, transform) for v in volumes)
    turned = [0.0, 0.0, 0.0]
    for old_axis, (new_axis, _) in enumerate(transform):
        turned[int(new_axis)] = float(spacing[old_axis])
    return image, label, (turned[0], turned[1], turned[2])


def _png_cases(config: Config, root: Path) -> tuple[list[VolumeCase], list[VolumeCase]]:
    """PNG slices grouped into one pseudo-volume per patient and subset."""
    if config.data.tri_planar:
        raise ConfigError(
            None, f"data.tri_planar needs 3D scans; {root} holds 2D PNG slices (set it false)"
        )
    from src_monai.io.png import discover_png, parse_rgb_map, read_png_image, read_png_mask

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


class CaseChooser:
    """Draws case indices uniformly among ``candidates``; where the cases come from several
    datasets and ``balance``, each dataset first with equal probability, then a case of it."""

    def __init__(
        self, cases: list[VolumeCase], candidates: list[int], *, balance: bool = True
    ) -> None:
        self.candidates = candidates
        groups: dict[str, list[int]] = {}
        for index in candidates:
            groups.setdefault(cases[index].dataset, []).append(index)
        self.groups = list(groups.values()) if balance and len(groups) > 1 else None

    def choose(self, rng: np.random.Generator) -> int:
        if self.groups is None:
            return int(rng.choice(self.candidates))
        group = self.groups[int(rng.integers(len(self.groups)))]
        return int(rng.choice(group))


class SliceSampler:
    """Draws training slices: foreground slices with probability ``p``, else any slice."""

    def __init__(
        self,
        cases: list[VolumeCase],
        foreground_probability: float,
        rng: np.random.Generator,
        *,
        balance: bool = True,
    ) -> None:
        self.cases = cases
        self.p = foreground_probability
        self.rng = rng
        with_foreground = [i for i, c in enumerate(cases) if c.foreground_slices.size]
        self.with_foreground = CaseChooser(cases, with_foreground, balance=balance)
        self.any_case = CaseChooser(cases, list(range(len(cases))), balance=balance)

    def draw(self, count: int) -> list[tuple[int, int]]:
        picks = []
        for _ in range(count):
            if self.with_foreground.candidates and self.rng.random() < self.p:
                index = self.with_foreground.choose(self.rng)
                z = int(self.rng.choice(self.cases[index].foreground_slices))
            else:
                index = self.any_case.choose(self.rng)
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
