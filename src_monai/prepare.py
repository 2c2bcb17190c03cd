"""Turn an MSD-layout NIfTI dataset into what training and the earlier tool's users need.

* a slice cache: one ``.npy`` pair per case, slices first, memory-mappable, plus
  ``cache.json`` with each case's geometry and the slices that contain each class;
* the earlier Keras tool's 512x512 PNG dataset (``100NN_z.png``, RGB masks), split by patient,
  keeping empty slices unless asked and resizing masks with nearest neighbour;
* dataset statistics: a table, ``stats.csv``/``stats.json`` and a ``stats.png`` chart.

Run as ``lasc prepare`` or ``python -m src_monai.prepare``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .data import (
    DEFAULT_RGB_MAP,
    PNG_SUBSETS,
    MsdDataset,
    RgbMap,
    colour_mask,
    discover_msd,
    holdout_split,
    kfold_split,
    parse_rgb_map,
    save_split,
)
from .errors import DatasetError
from .fileutil import atomic_destination, ensure_empty_folder, write_json, write_text
from .progress import Job, Progress
from .scan_io import Scan, read_labels, read_scan

logger = logging.getLogger(__name__)

CACHE_FORMAT = "lasc-slice-cache"
CACHE_VERSION = 1
# The earlier tool sliced along the third array axis (axial for the LASC'13 volumes).
DEFAULT_SLICE_AXIS = 2

PngIntensity = Literal["slice-max", "volume"]


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


def _slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(volume, axis, 0))


def _case_stats(case_id: str, labels: Scan, label_slices: np.ndarray) -> CaseStats:
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


# --------------------------------------------------------------------------- slice cache


def build_slice_cache(
    dataset: MsdDataset, out: Path, *, slice_axis: int = DEFAULT_SLICE_AXIS, overwrite: bool = False
) -> Job[list[CaseStats]]:
    """Write every case as ``images/<case>.npy`` and ``labels/<case>.npy``, slices first."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    entries, stats = [], []
    total = len(dataset.training)
    for done, case in enumerate(dataset.training, start=1):
        assert case.label is not None
        scan = read_scan(case.image)
        labels = read_labels(case.label, dataset.num_classes)
        label_slices = _slices_first(labels.array, slice_axis)
        image_file, label_file = f"images/{case.case_id}.npy", f"labels/{case.case_id}.npy"
        _save_npy(out / image_file, _slices_first(scan.array, slice_axis), overwrite)
        _save_npy(out / label_file, label_slices, overwrite)
        entries.append(
            {
                "case_id": case.case_id,
                "image": image_file,
                "label": label_file,
                "source_image": str(case.image),
                "source_label": str(case.label),
                "shape": list(scan.geometry.shape),
                "spacing_mm": list(scan.geometry.spacing),
                "affine": scan.geometry.affine.tolist(),
                "dtype": scan.geometry.dtype,
                "slices_with_class": {
                    str(c): np.flatnonzero((label_slices == c).any(axis=(1, 2))).tolist()
                    for c in range(1, dataset.num_classes)
                },
            }
        )
        stats.append(_case_stats(case.case_id, labels, label_slices))
        yield Progress(case.case_id, done, total)
    write_json(
        out / "cache.json",
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "slice_axis": slice_axis,
            "source": str(dataset.root),
            "class_names": {str(k): v for k, v in dataset.class_names.items()},
            "cases": entries,
        },
        overwrite=overwrite,
    )
    return stats


def _save_npy(path: Path, array: np.ndarray, overwrite: bool) -> None:
    with atomic_destination(path, overwrite=overwrite) as temporary, open(temporary, "wb") as f:
        np.save(f, array)


@dataclass(frozen=True)
class CachedCase:
    """A case of the slice cache; arrays are memory-mapped, shape ``(slices, H, W)``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    slices_with_class: dict[int, list[int]]


def load_slice_cache(folder: str | Path) -> tuple[dict, list[CachedCase]]:
    """Open a cache written by :func:`build_slice_cache`: its index and memory-mapped cases."""
    folder = Path(folder)
    index_path = folder / "cache.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(index_path, "no slice cache here (run `lasc prepare` first)") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(index_path, f"unreadable cache index ({exc})") from exc
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise DatasetError(index_path, "not a slice cache of this version (run `lasc prepare`)")
    cases = []
    for entry in index["cases"]:
        try:
            image = np.load(folder / entry["image"], mmap_mode="r")
            label = np.load(folder / entry["label"], mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DatasetError(folder / entry["image"], f"unreadable cache file ({exc})") from exc
        if image.shape != label.shape:
            raise DatasetError(folder / entry["label"], "cached image and label differ in shape")
        cases.append(
            CachedCase(
                case_id=entry["case_id"],
                image=image,
                label=label,
                spacing_mm=tuple(entry["spacing_mm"]),  # type: ignore[arg-type]
                affine=np.array(entry["affine"]),
                slices_with_class={int(k): v for k, v in entry["slices_with_class"].items()},
            )
        )
    return index, cases


# --------------------------------------------------------------------------- PNG dataset


def png_case_name(position: int) -> str:
    """The earlier tool's volume name: the 1st case in sorted order is ``10001``."""
    return str(10000 + position)


def slice_to_png_image(image_slice: np.ndarray, size: int, scale_max: float) -> np.ndarray:
    """Greyscale slice -> the earlier tool's ``uint8`` PNG array (resized, rotated 90 CCW)."""
    scaled = (
        np.clip(image_slice.astype(np.float32) / scale_max, 0, 1) * 255
        if scale_max > 0
        else np.zeros(image_slice.shape, np.float32)
    )
    resized = Image.fromarray(scaled.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.rot90(np.clip(np.asarray(resized) + 0.5, 0, 255).astype(np.uint8))


def slice_to_png_mask(label_slice: np.ndarray, size: int, rgb_map: RgbMap) -> np.ndarray:
    """Class slice -> RGB mask (resized with nearest neighbour, rotated 90 CCW)."""
    resized = Image.fromarray(label_slice.astype(np.uint8)).resize(
        (size, size), Image.Resampling.NEAREST
    )
    return np.rot90(colour_mask(np.asarray(resized), rgb_map))


def export_png_dataset(
    dataset: MsdDataset,
    out: Path,
    *,
    size: int = 512,
    rgb_map: RgbMap = DEFAULT_RGB_MAP,
    fractions: Sequence[float] = (0.8, 0.15, 0.05),
    seed: int = 137,
    keep_empty: bool = True,
    intensity: PngIntensity = "slice-max",
    slice_axis: int = DEFAULT_SLICE_AXIS,
    overwrite: bool = False,
) -> Job[list[CaseStats]]:
    """Write the earlier tool's PNG dataset, split by patient into train/valid/test.

    ``intensity="slice-max"`` scales each slice by its own maximum, as the earlier tool did,
    so its trained models see what they were trained on; ``"volume"`` scales by the volume's
    99.5th percentile, which keeps contrast comparable between slices.
    """
    names = {case.case_id: png_case_name(i) for i, case in enumerate(dataset.training, start=1)}
    plan = holdout_split(list(names), fractions, seed)
    subset_of = {cid: subset for subset, ids in plan.partitions[0].items() for cid in ids}
    for subset in PNG_SUBSETS:
        for kind in ("images", "masks"):
            (out / subset / kind).mkdir(parents=True, exist_ok=True)
    stats, written = [], 0
    total = len(dataset.training)
    for done, case in enumerate(dataset.training, start=1):
        assert case.label is not None
        volume = read_scan(case.image).array
        labels = read_labels(case.label, dataset.num_classes)
        volume_max = float(np.percentile(volume, 99.5)) if intensity == "volume" else 0.0
        folder = out / subset_of[case.case_id]
        # One contiguous copy, slices first: taking strided slices one by one is ~100x slower.
        image_slices = _slices_first(volume, slice_axis)
        label_slices = _slices_first(labels.array, slice_axis)
        for z, (image_slice, label_slice) in enumerate(
            zip(image_slices, label_slices, strict=True)
        ):
            if not keep_empty and not label_slice.any():
                continue
            scale = float(image_slice.max()) if intensity == "slice-max" else volume_max
            name = f"{names[case.case_id]}_{z}.png"
            _save_png(
                folder / "images" / name, slice_to_png_image(image_slice, size, scale), overwrite
            )
            _save_png(
                folder / "masks" / name, slice_to_png_mask(label_slice, size, rgb_map), overwrite
            )
            written += 1
        stats.append(_case_stats(case.case_id, labels, label_slices))
        yield Progress(case.case_id, done, total)
    save_split(out / "split.json", plan, overwrite=overwrite)
    write_json(
        out / "png_dataset.json",
        {
            "source": str(dataset.root),
            "size": size,
            "slice_axis": slice_axis,
            "rotation": "90 degrees counter-clockwise (numpy.rot90)",
            "intensity": intensity,
            "keep_empty_slices": keep_empty,
            "rgb_map": repr(dict(rgb_map)),
            "volume_names": names,
            "slices_written": written,
        },
        overwrite=overwrite,
    )
    return stats


def _save_png(path: Path, array: np.ndarray, overwrite: bool) -> None:
    with atomic_destination(path, overwrite=overwrite) as temporary:
        Image.fromarray(np.ascontiguousarray(array)).save(temporary, format="PNG")


# --------------------------------------------------------------------------- statistics


def compute_stats(
    dataset: MsdDataset, *, slice_axis: int = DEFAULT_SLICE_AXIS
) -> Job[list[CaseStats]]:
    """Per-case statistics from the label volumes alone (no image voxels read)."""
    stats = []
    total = len(dataset.training)
    for done, case in enumerate(dataset.training, start=1):
        assert case.label is not None
        labels = read_labels(case.label, dataset.num_classes)
        stats.append(_case_stats(case.case_id, labels, _slices_first(labels.array, slice_axis)))
        yield Progress(case.case_id, done, total)
    return stats


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
    volumes = np.array([s.la_volume_ml for s in stats])
    lines.append("-" * len(header))
    lines.append(
        f"{len(stats)} cases, {sum(s.slices for s in stats)} slices, "
        f"{sum(s.slices_with_la for s in stats)} with LA; LA volume "
        f"{volumes.mean():.1f} ± {volumes.std(ddof=1) if len(stats) > 1 else 0.0:.1f} mL "
        f"(range {volumes.min():.1f}-{volumes.max():.1f})"
    )
    return "\n".join(lines)


def write_stats(out: Path, stats: Sequence[CaseStats], *, overwrite: bool = False) -> None:
    """``stats.json``, ``stats.csv`` and the ``stats.png`` chart into ``out``."""
    rows = [asdict(s) for s in stats]
    write_json(out / "stats.json", rows, overwrite=overwrite)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "stats.csv", buffer.getvalue(), overwrite=overwrite)
    with atomic_destination(out / "stats.png", overwrite=overwrite) as temporary:
        _stats_figure(stats).savefig(temporary, format="png", dpi=100)


def _stats_figure(stats: Sequence[CaseStats]):
    # The object API with an Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ids = [s.case_id for s in stats]
    x = np.arange(len(ids))
    figure = Figure(figsize=(max(6.0, 0.5 * len(ids) + 2), 6), layout="constrained")
    FigureCanvasAgg(figure)
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


# --------------------------------------------------------------------------- entry


def prepare(
    data: str | Path,
    out: str | Path,
    *,
    output_format: str = "cache",
    stats: bool = False,
    folds: int = 0,
    split_seed: int | None = None,
    size: int = 512,
    rgb_map: RgbMap = DEFAULT_RGB_MAP,
    fractions: Sequence[float] = (0.8, 0.15, 0.05),
    keep_empty: bool = True,
    intensity: PngIntensity = "slice-max",
    slice_axis: int = DEFAULT_SLICE_AXIS,
    overwrite: bool = False,
) -> Job[list[CaseStats]]:
    """Prepare ``data`` (MSD layout) into ``out``: see the module docstring.

    Checks every input (dataset layout, image/label pairs) and the output folder before
    writing anything.
    """
    if output_format not in ("cache", "png", "none"):
        raise ValueError(f"unknown output format {output_format!r}")
    if slice_axis not in (0, 1, 2):
        raise DatasetError(None, f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    dataset = discover_msd(data, verify=True)
    out = ensure_empty_folder(out, overwrite=overwrite)
    if output_format == "cache":
        case_stats = yield from build_slice_cache(
            dataset, out, slice_axis=slice_axis, overwrite=overwrite
        )
    elif output_format == "png":
        seed = 137 if split_seed is None else split_seed
        case_stats = yield from export_png_dataset(
            dataset,
            out,
            size=size,
            rgb_map=rgb_map,
            fractions=fractions,
            seed=seed,
            keep_empty=keep_empty,
            intensity=intensity,
            slice_axis=slice_axis,
            overwrite=overwrite,
        )
    else:
        case_stats = yield from compute_stats(dataset, slice_axis=slice_axis)
    if folds:
        plan = kfold_split(dataset.case_ids(), folds, seed=0 if split_seed is None else split_seed)
        save_split(out / "folds.json", plan, overwrite=overwrite)
    if stats or output_format == "none":
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
    from .scan_io import as_label_array, write_labels, write_volume

    root = Path(root)
    if image.ndim != 3 or labels.shape != image.shape:
        raise DatasetError(
            root, f"scan {image.shape} and labels {labels.shape} must be one 3D shape"
        )
    labels = as_label_array(labels, len(class_names), source=f"labels of {name}")
    manifest = root / "dataset.json"
    content: dict = {
        "name": "napari-lasc training set",
        "description": "scans and corrected labels saved from napari-lasc",
        "labels": {str(i): n for i, n in enumerate(class_names)},
        "modality": {"0": "MRI"},
        "training": [],
    }
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
    elif root.exists() and any(root.iterdir()):
        raise DatasetError(root, "is neither empty nor an MSD dataset (no dataset.json)")
    else:
        taken, entries = set(), []
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc prepare`` options."""
    from .cli_support import argument_type

    parser.add_argument(
        "data",
        type=Path,
        help="dataset folder in the MSD layout (dataset.json, imagesTr/, labelsTr/)",
    )
    parser.add_argument(
        "out", type=Path, help="output folder (created; must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=("cache", "png", "none"),
        default="cache",
        help="cache: .npy slice cache for `lasc train` "
        "(default); png: the earlier Keras tool's 512x512 PNG dataset; "
        "none: statistics only",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print a statistics table and write stats.csv, stats.json and the stats.png chart",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also write folds.json: K-fold patient-level cross-validation",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the patient-level split (default 137 for --format png "
        "as the earlier tool, 0 for --folds)",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.15, 0.05),
        metavar=("TRAIN", "VALID", "TEST"),
        help="png: share of patients in train/valid/test (default 0.8 0.15 0.05)",
    )
    parser.add_argument("--size", type=int, default=512, help="png: slice size (default 512)")
    parser.add_argument(
        "--rgb-map",
        type=argument_type(parse_rgb_map),
        default=DEFAULT_RGB_MAP,
        help='png: colour of each class, e.g. "{(0,0,0):0, (255,0,255):1}"',
    )
    parser.add_argument(
        "--drop-empty",
        action="store_true",
        help="png: leave out slices without any label (the earlier tool did; "
        "a model trained so has never seen an empty slice)",
    )
    parser.add_argument(
        "--intensity",
        choices=("slice-max", "volume"),
        default="slice-max",
        help="png: scale each slice by its own maximum (earlier tool) or by "
        "the volume's 99.5th percentile",
    )
    parser.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        default=DEFAULT_SLICE_AXIS,
        help="array axis to slice along (default 2, as the earlier tool)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty output folder (replaces same-named files, deletes nothing)",
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc prepare`` with parsed arguments."""
    from .cli_support import drive

    stats = drive(
        prepare(
            args.data,
            args.out,
            output_format=args.output_format,
            stats=args.stats,
            folds=args.folds,
            split_seed=args.split_seed,
            size=args.size,
            rgb_map=args.rgb_map,
            fractions=args.fractions,
            keep_empty=not args.drop_empty,
            intensity=args.intensity,
            slice_axis=args.slice_axis,
            overwrite=args.overwrite,
        ),
        description="prepare",
    )
    if args.stats or args.output_format == "none":
        print(format_stats_table(stats))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from .cli_support import module_main

    raise SystemExit(
        module_main(add_arguments, run, prog="python -m src_monai.prepare", description=__doc__)
    )
