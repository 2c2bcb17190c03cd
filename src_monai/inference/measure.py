"""Left-atrium measurements from a label volume and its voxel spacing.

Volume (mL), surface area and sphericity of the 3D shape, the per-slice area curve (mm²
against slice position in mm) along the acquisition axis, and the largest in-plane diameter
with the width across it, as reported in LA remodelling studies. Everything is computed in
millimetres from the voxel spacing, so anisotropic voxels are handled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AtriumMeasurements:
    """Measurements of one label class; distances in mm, areas in mm², volume in mL."""

    volume_ml: float
    surface_mm2: float
    sphericity: float
    max_diameter_mm: float
    """Largest in-plane diameter (maximum Feret diameter) over all slices."""
    width_across_mm: float
    """Extent of that slice's region perpendicular to the largest diameter."""
    diameter_slice: int
    """Slice (along ``slice_axis``) where the largest diameter lies; -1 if empty."""
    slice_positions_mm: list[float] = field(repr=False)
    slice_areas_mm2: list[float] = field(repr=False)

    def row(self) -> dict[str, float]:
        """The scalar measurements, for a summary CSV."""
        return {
            "volume_ml": round(self.volume_ml, 3),
            "surface_mm2": round(self.surface_mm2, 1),
            "sphericity": round(self.sphericity, 4),
            "max_diameter_mm": round(self.max_diameter_mm, 2),
            "width_across_mm": round(self.width_across_mm, 2),
        }


def measure_atrium(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    label: int = 1,
    slice_axis: int = 2,
) -> AtriumMeasurements:
    """Measure the voxels equal to ``label`` in a 3D volume with voxel size ``spacing``."""
    if labels.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"need a 3D volume and three spacings, got {labels.shape}, {spacing}")
    spacing = tuple(float(s) for s in spacing)
    mask = np.asarray(labels) == label
    in_plane = [s for axis, s in enumerate(spacing) if axis != slice_axis]
    pixel_mm2 = in_plane[0] * in_plane[1]
    per_slice = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != slice_axis))
    positions = [i * spacing[slice_axis] for i in range(mask.shape[slice_axis])]
    areas = [float(n) * pixel_mm2 for n in per_slice]
    voxels = int(per_slice.sum())
    volume_mm3 = voxels * float(np.prod(spacing))
    if voxels == 0:
        return AtriumMeasurements(0.0, 0.0, math.nan, 0.0, 0.0, -1, positions, areas)
    surface = _surface_area(mask, spacing)
    sphericity = math.pi ** (1 / 3) * (6 * volume_mm3) ** (2 / 3) / surface if surface else math.nan
    best = (0.0, 0.0, -1)
    # One contiguous copy with slices first: np.take along a strided axis per slice is slow.
    planes = np.ascontiguousarray(np.moveaxis(mask, slice_axis, 0))
    for index in np.flatnonzero(per_slice):
        plane = planes[index]
        diameter, width = _diameters(plane, in_plane)
        if diameter > best[0]:
            best = (diameter, width, int(index))
    return AtriumMeasurements(
        volume_ml=volume_mm3 / 1000.0,
        surface_mm2=surface,
        sphericity=sphericity,
        max_diameter_mm=best[0],
        width_across_mm=best[1],
        diameter_slice=best[2],
        slice_positions_mm=positions,
        slice_areas_mm2=areas,
    )


def _surface_area(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Area of the mask's boundary surface, in mm².

    Marching cubes on the raw voxels follows their staircase and overestimates a ball's
    area by about 10 %; smoothing first with a Gaussian of one finest-voxel width (in mm,
    the same on every axis) brings it within 1 % (tests/test_measure.py).
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes, mesh_surface_area

    # Only the mask's box plus a margin wider than the Gaussian's reach (4 sigma, sigma <= 1
    # voxel) matters: the same surface, at a fraction of the volume's cost.
    found = ndimage.find_objects(mask.astype(np.uint8))[0]
    mask = mask[tuple(slice(max(s.start - 5, 0), s.stop + 5) for s in found)]
    padded = np.pad(mask.astype(np.float32), 3)  # close the surface at the volume's edge
    finest = min(spacing)
    smooth = ndimage.gaussian_filter(padded, sigma=[finest / s for s in spacing])
    if smooth.max() <= 0.5:  # a few voxels vanish when smoothed: measure them as they are
        smooth = padded
    vertices, faces, _, _ = marching_cubes(smooth, level=0.5, spacing=spacing)
    return float(mesh_surface_area(vertices, faces))


def _diameters(plane: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Maximum Feret diameter of a 2D region and its extent perpendicular to it, in mm.

    Pixel corners (not centres) are used, so a single pixel measures its diagonal.
    """
    from scipy import ndimage

    # The hull of a region is the hull of its boundary pixels: far fewer points.
    boundary = plane & ~ndimage.binary_erosion(plane)
    rows, cols = np.nonzero(boundary)
    points = np.concatenate(
        [np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)]
    ).astype(float) * np.asarray(spacing, dtype=float)
    if len(points) > 3:
        from scipy.spatial import ConvexHull, QhullError

        with contextlib.suppress(QhullError):  # all corners on a line: keep them all
            points = points[ConvexHull(points).vertices]
    differences = points[:, None, :] - points[None, :, :]
    distances = np.hypot(differences[..., 0], differences[..., 1])
    first, second = np.unravel_index(np.argmax(distances), distances.shape)
    diameter = float(distances[first, second])
    direction = (points[second] - points[first]) / diameter
    across = points @ np.array([-direction[1], direction[0]])
    return diameter, float(across.max() - across.min())


# Plausible left-atrial volumes per MRI sequence, as each data set labels the atrium. bSSFP
# (LASC'13) labels include the pulmonary-vein trunks: its 16 training cases hold 72-146 mL.
# LGE-MRI (AtriaSeg 2018) labels stop closer to the ostia: its 80 cases hold 19-132 mL
# (5th-95th percentile 33-93 mL). Normal adult LA volumes without veins are about 30-75 mL
# (ASE/EACVI chamber quantification 2015: indexed 16-34 mL/m²), enlarged atria exceed 100
# mL. Outside its sequence's range a result is more likely a failure than anatomy; where the
# sequence is not known, the union of the ranges applies.
PLAUSIBLE_VOLUME_ML = {"bssfp": (30.0, 250.0), "lge": (15.0, 200.0)}
SEQUENCES = ("auto", *PLAUSIBLE_VOLUME_ML)
SEQUENCE_NAMES = {"bssfp": "bSSFP", "lge": "LGE-MRI"}
# A scan whose voxels are coarser than the training data's by more than this factor on any
# axis holds less detail than the model has seen (finer scans are resampled without loss).
SPACING_FACTOR = 1.5


def plausible_volume_ml(sequence: str = "auto") -> tuple[float, float]:
    """The plausible atrium volume range (mL) of a sequence (``bssfp``, ``lge``); ``auto``:
    the union of them all."""
    if sequence == "auto":
        ranges = PLAUSIBLE_VOLUME_ML.values()
        return min(low for low, _ in ranges), max(high for _, high in ranges)
    if sequence not in PLAUSIBLE_VOLUME_ML:
        raise ValueError(f"unknown sequence {sequence!r} (known: {', '.join(SEQUENCES)})")
    return PLAUSIBLE_VOLUME_ML[sequence]


def quality_flags(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    label: int = 1,
    training_spacing: Sequence[float] | None = None,
    volume_ml: float | None = None,
    axcodes: Sequence[str] | None = None,
    training_axcodes: Sequence[str] | None = None,
    sequence: str = "auto",
) -> list[str]:
    """Reasons to check a segmentation by eye; an empty list when none applies.

    ``training_spacing`` is the model's median training voxel size, in the same axis order
    as ``spacing``. ``axcodes`` (e.g. ``RAS``) is the scan's voxel-axis orientation where
    its file states one (``None``: it does not), ``training_axcodes`` that of the model's
    training scans: a stated orientation is turned to the training one by the pipeline, an
    unstated one cannot be. ``sequence`` chooses the plausible volume range
    (:func:`plausible_volume_ml`).
    """
    from scipy import ndimage

    mask = np.asarray(labels) == label
    flags = []
    if axcodes is None and training_axcodes:
        flags.append(
            "the file states no orientation: its axes were taken as the training data's "
            f"({''.join(training_axcodes)})"
        )
    if training_spacing is not None:
        ratios = [float(s) / float(t) for s, t in zip(spacing, training_spacing, strict=True)]
        if any(r > SPACING_FACTOR for r in ratios):
            shown = "x".join(f"{float(s):.2f}" for s in spacing)
            trained = "x".join(f"{float(t):.2f}" for t in training_spacing)
            flags.append(f"voxel size {shown} mm coarser than the training data's {trained} mm")
    if not mask.any():
        return [*flags, "empty prediction"]
    full = ndimage.generate_binary_structure(3, 3)
    # Components lie inside the mask's bounding box: labelling that box alone gives the same
    # count, several times faster than the whole scan (the atrium fills ~1 % of it).
    (around,) = ndimage.find_objects(mask.view(np.uint8))
    components = ndimage.label(mask[around], structure=full)[1]
    if components > 1:
        flags.append(f"{components} separate 3D components")
    if volume_ml is None:
        volume_ml = float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0
    low, high = plausible_volume_ml(sequence)
    if not low <= volume_ml <= high:
        which = "" if sequence == "auto" else f" for {SEQUENCE_NAMES[sequence]}"
        flags.append(
            f"volume {volume_ml:.0f} mL outside the plausible {low:.0f}-{high:.0f} mL{which}"
        )
    edges = mask[[0, -1]].any() or mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any()
    if edges:
        flags.append("touches the edge of the field of view")
    return flags


@dataclass(frozen=True)
class UncertaintyScores:
    """Summaries of an uncertainty map (normalised entropy, 0..1 per voxel)."""

    uncertain_volume_pct: float
    """Sum of the map over the volume (an "uncertain volume") as a percentage of the predicted
    LA volume: the share of the atrium the views disagree on. Higher: less trustworthy."""
    slice_uncertain_area_mm2: np.ndarray = field(repr=False)
    """Per slice along ``slice_axis``: the map summed over the slice times the pixel area."""
    most_uncertain_slice: int
    """The slice with the largest uncertain area: where to look first."""


def uncertainty_scores(
    uncertainty: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    slice_axis: int = 2,
    *,
    label: int = 1,
) -> UncertaintyScores:
    """Per-case and per-slice scores of an uncertainty map over a prediction's labels."""
    if uncertainty.shape != labels.shape or uncertainty.ndim != 3:
        raise ValueError(f"uncertainty {uncertainty.shape} and labels {labels.shape} differ")
    others = tuple(a for a in range(3) if a != slice_axis)
    pixel_mm2 = float(np.prod([spacing[a] for a in others]))
    per_slice_voxels = uncertainty.sum(axis=others, dtype=np.float64)
    per_slice = per_slice_voxels * pixel_mm2
    predicted = int(np.count_nonzero(labels == label))
    uncertain_voxels = float(per_slice_voxels.sum())
    # An empty prediction with any doubt at all is as uncertain as it gets.
    if predicted:
        percentage = 100.0 * uncertain_voxels / predicted
    else:
        percentage = math.inf if uncertain_voxels > 0 else 0.0
    return UncertaintyScores(
        uncertain_volume_pct=percentage,
        slice_uncertain_area_mm2=per_slice,
        most_uncertain_slice=int(np.argmax(per_slice)),
    )
