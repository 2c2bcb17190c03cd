"""An MSD dataset exported as the earlier Keras tool's 512x512 PNG dataset (``100NN_z.png``, RGB
masks), split by patient.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from src_monai.data.datasets import MsdDataset
from src_monai.data.prepare import (
    DEFAULT_SLICE_AXIS,
    CaseStats,
    Exporter,
    case_stats_of,
    slices_first,
)
from src_monai.data.splits import holdout_split, save_split
from src_monai.io.files import atomic_destination, write_json
from src_monai.io.png import DEFAULT_RGB_MAP, PNG_SUBSETS, RgbMap, colour_mask
from src_monai.io.scans import read_labels, read_scan
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


PngIntensity = Literal["slice-max", "volume"]


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


def png_exporter(
    *,
    size: int = 512,
    rgb_map: RgbMap = DEFAULT_RGB_MAP,
    fractions: Sequence[float] = (0.8, 0.15, 0.05),
    keep_empty: bool = True,
    intensity: PngIntensity = "slice-max",
) -> Exporter:
    """An :class:`~src_monai.data.prepare.Exporter` for ``prepare`` writing the earlier
    tool's PNG dataset with these settings (see :func:`export_png_dataset`)."""

    def export(
        dataset: MsdDataset, out: Path, *, split_seed: int | None, slice_axis: int, overwrite: bool
    ) -> Job[list[CaseStats]]:
        return export_png_dataset(
            dataset,
            out,
            size=size,
            rgb_map=rgb_map,
            fractions=fractions,
            seed=137 if split_seed is None else split_seed,
            keep_empty=keep_empty,
            intensity=intensity,
            slice_axis=slice_axis,
            overwrite=overwrite,
        )

    return export


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
    for subset, kind in itertools.product(PNG_SUBSETS, ("images", "masks")):
        (out / subset / kind).mkdir(parents=True, exist_ok=True)
    stats, written = [], 0
    for done, case in enumerate(dataset.training, start=1):
        assert case.label is not None
        labels = read_labels(case.label, dataset.num_classes)
        # One contiguous copy, slices first: taking strided slices one by one is ~100x slower.
        label_slices = slices_first(labels.array, slice_axis)
        written += _write_case_slices(
            slices_first(read_scan(case.image).array, slice_axis),
            label_slices,
            out / subset_of[case.case_id],
            names[case.case_id],
            size=size,
            rgb_map=rgb_map,
            keep_empty=keep_empty,
            intensity=intensity,
            overwrite=overwrite,
        )
        stats.append(case_stats_of(case.case_id, labels, label_slices))
        yield Progress(case.case_id, done, len(dataset.training))
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


def _write_case_slices(
    image_slices: np.ndarray,
    label_slices: np.ndarray,
    folder: Path,
    name: str,
    *,
    size: int,
    rgb_map: RgbMap,
    keep_empty: bool,
    intensity: PngIntensity,
    overwrite: bool,
) -> int:
    """One volume's slices (slices first) as ``images/<name>_<z>.png`` and
    ``masks/<name>_<z>.png`` in ``folder``; returns how many were written."""
    volume_max = float(np.percentile(image_slices, 99.5)) if intensity == "volume" else 0.0
    written = 0
    for z, (image_slice, label_slice) in enumerate(zip(image_slices, label_slices, strict=True)):
        if not keep_empty and not label_slice.any():
            continue
        scale = float(image_slice.max()) if intensity == "slice-max" else volume_max
        png = f"{name}_{z}.png"
        _save_png(folder / "images" / png, slice_to_png_image(image_slice, size, scale), overwrite)
        _save_png(folder / "masks" / png, slice_to_png_mask(label_slice, size, rgb_map), overwrite)
        written += 1
    return written


def _save_png(path: Path, array: np.ndarray, overwrite: bool) -> None:
    with atomic_destination(path, overwrite=overwrite) as temporary:
        Image.fromarray(np.ascontiguousarray(array)).save(temporary, format="PNG")
