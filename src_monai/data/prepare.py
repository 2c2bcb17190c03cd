"""Dataset statistics, k-fold split files (``lasc prepare``), and new MSD cases added from
napari (the correction loop).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from src_monai.data.datasets import MsdDataset, discover_msd
from src_monai.data.splits import kfold_split, save_split
from src_monai.errors import DatasetError
from src_monai.io.files import ensure_empty_folder, write_json
from src_monai.io.scans import Scan, read_labels, read_scan
from src_monai.io.tables import new_figure, save_figure, write_csv
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


# The earlier tool sliced along the third array axis (axial for the LASC'13 volumes).
DEFAULT_SLICE_AXIS = 2


@dataclass(frozen=True)
class CaseStats:
    """What ``lasc prepare --stats`` reports for one case."""

    case_id: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    slices: int
    slices_with_la: int
    la_voxels: int
    la_volume_ml: float


def slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def case_stats_of(case_id: str, labels: Scan, label_slices: np.ndarray) -> CaseStats:
    """Statistics of one case; ``label_slices`` is ``labels.array`` with slices first."""
    spacing = labels.geometry.spacing
    voxels = int(np.count_nonzero(label_slices))
    return CaseStats(
        case_id=case_id,
        shape=labels.geometry.shape,
        spacing_mm=tuple(round(float(s), 4) for s in spacing),  # type: ignore[arg-type]
        slices=int(label_slices.shape[0]),
        slices_with_la=int(label_slices.any(axis=(1, 2)).sum()),
        la_voxels=voxels,
        la_volume_ml=round(voxels * float(np.prod(spacing)) / 1000.0, 3),
    )


def compute_stats(
    dataset: MsdDataset, *, slice_axis: int = DEFAULT_SLICE_AXIS
) -> Job[list[CaseStats]]:
    """Per-case statistics of the label volumes. Every image is read too: a damaged scan
    is reported now, naming it, rather than when training reaches it."""
    stats = []
    total = len(dataset.training)
    for done, case in enumerate(dataset.training, start=1):
        assert case.label is not None
        read_scan(case.image)
        labels = read_labels(case.label, dataset.num_classes)
        stats.append(case_stats_of(case.case_id, labels, slices_first(labels.array, slice_axis)))
        yield Progress(case.case_id, done, total)
    return stats


def stats_summary_line(stats: Sequence[CaseStats]) -> str:
    """One line over all cases: counts and the LA volume's mean, spread and range."""
    volumes = np.array([s.la_volume_ml for s in stats])
    spread = volumes.std(ddof=1) if len(stats) > 1 else 0.0
    return (
        f"{len(stats)} case{'' if len(stats) == 1 else 's'}, {sum(s.slices for s in stats)} "
        f"slices, {sum(s.slices_with_la for s in stats)} with LA; LA volume "
        f"{volumes.mean():.1f} ± {spread:.1f} mL (range {volumes.min():.1f}-{volumes.max():.1f})"
    )


def format_stats_table(stats: Sequence[CaseStats]) -> str:
    """A plain-text table of the statistics with a summary line."""
    header = (
        f"{'case':<10} {'shape':<13} {'spacing (mm)':<20} {'slices':>6} {'LA slices':>9} "
        f"{'LA volume (mL)':>14}"
    )
    lines = [header, "-" * len(header)]
    for s in stats:
        spacing = "x".join(f"{v:.3g}" for v in s.spacing_mm)
        shape = "x".join(str(n) for n in s.shape)
        lines.append(
            f"{s.case_id:<10} {shape:<13} {spacing:<20} {s.slices:>6} "
            f"{s.slices_with_la:>9} {s.la_volume_ml:>14.2f}"
        )
    lines.append("-" * len(header))
    lines.append(stats_summary_line(stats))
    return "\n".join(lines)


def write_stats(out: Path, stats: Sequence[CaseStats], *, overwrite: bool = False) -> None:
    """``stats.json``, ``stats.csv`` and the ``stats.png`` chart into ``out``."""
    rows = [asdict(s) for s in stats]
    write_json(out / "stats.json", rows, overwrite=overwrite)
    write_csv(out / "stats.csv", rows, list(rows[0]), overwrite=overwrite)
    save_figure(out / "stats.png", _stats_figure(stats), overwrite=overwrite)


def _stats_figure(stats: Sequence[CaseStats]):
    ids = [s.case_id for s in stats]
    x = np.arange(len(ids))
    figure = new_figure(max(6.0, 0.5 * len(ids) + 2), 6)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.bar(x, [s.la_volume_ml for s in stats], color="#b03fb0")
    top.set_ylabel("LA volume (mL)")
    top.set_title(f"{len(ids)} cases")
    bottom.bar(x, [s.slices for s in stats], color="#bbbbbb", label="slices")
    bottom.bar(x, [s.slices_with_la for s in stats], color="#b03fb0", label="slices with LA")
    bottom.set_ylabel("slices")
    bottom.legend(loc="lower right")
    bottom.set_xticks(x, ids, rotation=60, ha="right")
    return figure


class Exporter(Protocol):
    """Writes a dataset in another layout and returns its statistics (the earlier tool's
    PNG slices: :func:`src_monai.legacy.png_export.png_exporter`)."""

    def __call__(
        self,
        dataset: MsdDataset,
        out: Path,
        *,
        split_seed: int | None,
        slice_axis: int,
        overwrite: bool,
    ) -> Job[list[CaseStats]]: ...


def prepare(
    data: str | Path,
    out: str | Path,
    *,
    export: Exporter | None = None,
    stats: bool = False,
    folds: int = 0,
    split_seed: int | None = None,
    slice_axis: int = DEFAULT_SLICE_AXIS,
    overwrite: bool = False,
) -> Job[list[CaseStats]]:
    """Prepare ``data`` (MSD layout) into ``out``: see the module docstring. ``export``
    also writes the dataset in another layout (else only its statistics are written).

    Checks every input (dataset layout, image/label pairs) and the output folder before
    writing anything.
    """
    if slice_axis not in (0, 1, 2):
        raise DatasetError(None, f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    dataset = discover_msd(data, verify=True)
    root, target = Path(dataset.root).resolve(), Path(out).resolve()
    if target == root or root in target.parents:
        # Its files would mix with (and with --overwrite could replace) the dataset's own.
        raise DatasetError(out, f"is inside the dataset {dataset.root}: write it elsewhere")
    out = ensure_empty_folder(out, overwrite=overwrite)
    if export is not None:
        case_stats = yield from export(
            dataset, out, split_seed=split_seed, slice_axis=slice_axis, overwrite=overwrite
        )
    else:
        case_stats = yield from compute_stats(dataset, slice_axis=slice_axis)
    if folds:
        plan = kfold_split(dataset.case_ids(), folds, seed=0 if split_seed is None else split_seed)
        save_split(out / "folds.json", plan, overwrite=overwrite)
    if stats or export is None:
        write_stats(out, case_stats, overwrite=overwrite)
    return case_stats


def add_msd_case(
    root: str | Path,
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    geometry,
    class_names: Sequence[str] = ("background", "left atrium"),
) -> str:
    """Add one scan and its labels (file axis order, the scan's geometry) to the MSD-layout
    dataset at ``root``, creating it if needed; returns the case id.

    Nothing is replaced: a name already taken gets ``_2``, ``_3``... The scan and labels are
    written before ``dataset.json`` lists them, so an interrupted call leaves a dataset that
    still reads correctly. A dataset with other classes is refused.
    """
    from src_monai.io.scans import as_label_array, write_labels, write_volume

    root = Path(root)
    if image.ndim != 3 or labels.shape != image.shape:
        raise DatasetError(
            root, f"scan {image.shape} and labels {labels.shape} must be one 3D shape"
        )
    labels = as_label_array(labels, len(class_names), source=f"labels of {name}")
    manifest = root / "dataset.json"
    content, entries, taken = _training_set_manifest(root, class_names)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "case"
    case_id, number = stem, 1
    while case_id in taken or (root / "imagesTr" / f"{case_id}.nii.gz").exists():
        number += 1
        case_id = f"{stem}_{number}"
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    write_volume(root / "imagesTr" / f"{case_id}.nii.gz", image, geometry)
    write_labels(root / "labelsTr" / f"{case_id}.nii.gz", labels, geometry)
    entries.append(
        {"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"}
    )
    write_json(
        manifest, {**content, "numTraining": len(entries), "training": entries}, overwrite=True
    )
    logger.info("added %s to %s (%d cases)", case_id, root, len(entries))
    return case_id


def _training_set_manifest(
    root: Path, class_names: Sequence[str]
) -> tuple[dict, list[dict], set[str]]:
    """The ``dataset.json`` of the training set at ``root``, its cases and their ids (a new
    one for an empty or absent folder); refused when it is unreadable, has other classes,
    or the folder holds something else."""
    manifest = root / "dataset.json"
    if manifest.exists():
        try:
            content = json.loads(manifest.read_text(encoding="utf-8"))
            entries = list(content.get("training", []))
            taken = {Path(entry["image"]).name.split(".nii")[0] for entry in entries}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DatasetError(manifest, f"is not a readable MSD dataset.json ({exc})") from exc
        declared = content.get("labels", {})
        if [declared.get(str(i)) for i in range(len(declared))] != list(class_names):
            raise DatasetError(manifest, f"declares classes {declared}, not {list(class_names)}")
        return content, entries, taken
    if root.exists() and any(root.iterdir()):
        raise DatasetError(root, "is neither empty nor an MSD dataset (no dataset.json)")
    content = {
        "name": "napari-lasc training set",
        "description": "scans and corrected labels saved from napari-lasc",
        "labels": {str(i): n for i, n in enumerate(class_names)},
        "modality": {"0": "MRI"},
        "training": [],
    }
    return content, [], set()
