"""How well a localiser (stage 1) finds the atrium: its box against the true one.

What matters to stage 2 is that the crop it segments (the box's centre, the crop size, the
box's slices plus the model's margin) holds every atrium voxel; the box itself is reported
too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from src_monai.data.crops import AtriumBox, crop_origin
from src_monai.evaluation.report import EvalPair
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import check_pair, read_labels, read_scan
from src_monai.progress import Job, Progress


def atrium_outside_crop(
    truth: np.ndarray, box: AtriumBox, crop_size: int, slice_margin: int
) -> int:
    """Atrium voxels of a slices-first ``truth`` that the crop around ``box`` leaves out."""
    count = truth.shape[0]
    first, stop = box.slice_range(slice_margin, count)
    top, left = crop_origin(box.centre, crop_size)
    inside = np.zeros(truth.shape, bool)
    inside[first:stop, max(top, 0) : top + crop_size, max(left, 0) : left + crop_size] = True
    return int(np.count_nonzero((truth != 0) & ~inside))


def atrium_outside_region(
    truth: np.ndarray, box: AtriumBox, slice_margin: int, *, in_plane_margin: int | None = None
) -> int:
    """Atrium voxels of a slices-first ``truth`` outside the region a 3D stage 2 segments
    around ``box`` (:func:`~src_monai.inference.in_box_3d.region_around`; its in-plane
    margin unless ``in_plane_margin`` is given)."""
    from src_monai.inference.in_box_3d import region_around

    region = region_around(box, slice_margin, truth.shape, in_plane_margin=in_plane_margin)
    inside = np.zeros(truth.shape, bool)
    inside[region.z0 : region.z1, region.y0 : region.y1, region.x0 : region.x1] = True
    return int(np.count_nonzero((truth != 0) & ~inside))


def atrium_outside_grown_region(truth: np.ndarray, box: AtriumBox, slice_margin: int) -> int:
    """Atrium voxels of a slices-first ``truth`` outside the region around ``box`` once it
    has grown as a perfect 3D stage 2 would grow it: the region's labels are the truth inside
    it, and it grows past each face they reach (:func:`~src_monai.inference.in_box_3d.
    grown_region`, at most ``GROWTH_ROUNDS`` times). What the localiser's box leaves to the
    segmenter, apart from the segmenter's own errors."""
    from src_monai.inference.in_box_3d import GROWTH_ROUNDS, grown_region, region_around

    region = region_around(box, slice_margin, truth.shape)
    for _ in range(GROWTH_ROUNDS):
        inside = truth[region.z0 : region.z1, region.y0 : region.y1, region.x0 : region.x1]
        larger = grown_region(region, inside, truth.shape)
        if larger == region:
            break
        region = larger
    return atrium_outside_region(truth, region, 0, in_plane_margin=0)


def box_rows(
    localiser: Predictor,
    pairs: Sequence[EvalPair],
    *,
    crop_size: int,
    slice_margin: int,
    region_3d: bool = False,
) -> Job[list[dict[str, Any]]]:
    """Per case: the localiser's box, whether it holds the true box, and the atrium voxels
    the stage-2 crop around it would miss (``region_3d``: the region a 3D stage 2 segments,
    whose windows tile the whole box, instead of one ``crop_size`` crop per slice)."""
    rows = []
    for done, pair in enumerate(pairs, start=1):
        assert pair.image is not None
        scan, truth = read_scan(pair.image), read_labels(pair.truth)
        check_pair(scan.geometry, truth.geometry, pair.image, pair.truth, roles=("scan", "truth"))
        geometry = scan.geometry
        prepared = localiser.prepare(
            scan.array, spacing=geometry.spacing, affine=geometry.stated_affine
        )
        box = yield from localiser.localise(prepared)
        true = np.moveaxis(truth.array, prepared.grid.scan_slice_axis, 0)
        true_box = AtriumBox.around(true)
        row: dict[str, Any] = {"case": pair.case_id, "found": box is not None}
        if box is not None and true_box is not None:
            row["box"], row["true_box"] = box.text(), true_box.text()
            row["box_holds_atrium"] = box.contains(true_box)
            row["voxels_outside_crop"] = (
                atrium_outside_region(true, box, slice_margin)
                if region_3d
                else atrium_outside_crop(true, box, crop_size, slice_margin)
            )
            if region_3d:
                row["voxels_outside_grown_region"] = atrium_outside_grown_region(
                    true, box, slice_margin
                )
        rows.append(row)
        yield Progress(pair.case_id, done, len(pairs))
    return rows
