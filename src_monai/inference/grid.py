"""The model's grid of a scan: orientation and voxel size as the networks were trained on.

Networks learn anatomy in one voxel order: the LASC'13 scans are stored RAS, so the same heart
stored LPS (the usual axial DICOM order), slices first, or with rows and columns swapped is a
different picture to them. :class:`ModelGrid` maps a scan onto the grid the model expects
(first its axes permuted and flipped to the training orientation with nibabel's ``ornt``
tools: exact, no interpolation; then resampled to the training voxel size, see
:mod:`~src_monai.inference.resample`) and maps labels, maps and boxes back, so every
orientation gives the same labels in world space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.inference.resample import resample_channels, resample_labels, resampled_shape

Ranges = list[tuple[int, int]]


def slices_first(values: Sequence, axis: int) -> tuple:
    """Per-axis ``values`` in file order, reordered as ``np.moveaxis(volume, axis, 0)``."""
    return (values[axis], *(v for a, v in enumerate(values) if a != axis))


def _box_ranges(box: AtriumBox, axis: int) -> Ranges:
    """A slices-first box as ``[start, stop)`` per file axis (``axis``: its slice axis)."""
    in_plane = iter([(box.y0, box.y1), (box.x0, box.x1)])
    return [(box.z0, box.z1) if a == axis else next(in_plane) for a in range(3)]


def _ranges_box(ranges: Ranges, axis: int) -> AtriumBox:
    ordered = slices_first(ranges, axis)
    return AtriumBox(*(edge for pair in ordered for edge in pair))


@dataclass(frozen=True)
class ModelGrid:
    """How a scan's voxels (file axis order) map onto the grid the networks see.

    Attributes
    ----------
    scan_shape
        The scan's shape, file axis order.
    transform
        nibabel ``ornt`` transform from the scan's axes to the training orientation (row
        ``i``: the model axis file axis ``i`` becomes, and ``-1`` where it is flipped);
        ``None`` where either orientation is unknown (a bare array, a PNG slice).
    shape
        The model's grid: oriented, and resampled where the voxel size differs.
    slice_axis
        The model's slice axis on its grid.
    resampled
        Whether the voxel size differed enough from the training one to resample.
    """

    scan_shape: tuple[int, int, int]
    transform: np.ndarray | None
    shape: tuple[int, int, int]
    slice_axis: int
    resampled: bool = False

    @classmethod
    def for_scan(
        cls,
        shape: Sequence[int],
        slice_axis: int,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        training_axcodes: Sequence[str] | None = None,
        training_spacing: Sequence[float] | None = None,
    ) -> ModelGrid:
        """The grid of a scan of ``shape`` (voxel size ``spacing``, voxel-to-RAS ``affine``)
        for a model trained at ``training_axcodes`` and ``training_spacing``."""
        scan_shape = tuple(int(n) for n in shape)
        transform = None
        if affine is not None and training_axcodes is not None:
            start = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
            end = nib.orientations.axcodes2ornt(tuple(training_axcodes))
            found = nib.orientations.ornt_transform(start, end)
            identity = np.array([[a, 1] for a in range(3)], dtype=float)
            transform = None if np.array_equal(found, identity) else found
        oriented = _permuted(scan_shape, transform)
        grid = None
        if spacing is not None:
            grid = resampled_shape(oriented, _permuted(spacing, transform), training_spacing)
        return cls(
            scan_shape=scan_shape,
            transform=transform,
            shape=tuple(grid or oriented),  # type: ignore[arg-type]
            slice_axis=slice_axis,
            resampled=grid is not None,
        )

    # ------------------------------------------------------------------ shapes and axes

    @property
    def oriented_shape(self) -> tuple[int, int, int]:
        """The scan's shape in the training orientation, before resampling."""
        return _permuted(self.scan_shape, self.transform)  # type: ignore[return-value]

    @property
    def scan_slice_axis(self) -> int:
        """The scan's file axis that becomes the model's slice axis (a ``--box``'s Z, the
        axis napari's box layer is drawn across)."""
        if self.transform is None:
            return self.slice_axis
        return int(np.flatnonzero(self.transform[:, 0] == self.slice_axis)[0])

    @property
    def slices_first_shape(self) -> tuple[int, int, int]:
        """The model grid with its slice axis first."""
        return slices_first(self.shape, self.slice_axis)  # type: ignore[return-value]

    # ------------------------------------------------------------------ volumes

    def orient(self, volume: np.ndarray) -> np.ndarray:
        """A scan's voxels in the training orientation (a view where one suffices)."""
        if self.transform is None:
            return volume
        return nib.orientations.apply_orientation(volume, self.transform)

    def labels_to_scan(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Labels on the model's grid back on the scan's (resampled, then re-oriented)."""
        if self.resampled:
            labels = resample_labels(labels, num_classes, self.oriented_shape)
        return np.ascontiguousarray(self._unorient(labels))

    def channels_to_scan(self, values: np.ndarray) -> np.ndarray:
        """A channel-first ``(C, ...)`` map on the model's grid back on the scan's."""
        if self.resampled:
            values = resample_channels(values, self.oriented_shape)
        return np.ascontiguousarray(np.stack([self._unorient(channel) for channel in values]))

    def slice_to_scan(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """One model slice's labels (its in-plane axes in order) as the scan's slice across
        :attr:`scan_slice_axis` (its other two axes in file order)."""
        thin = np.expand_dims(labels, self.slice_axis)
        if self.resampled:
            plane = tuple(
                1 if a == self.slice_axis else n for a, n in enumerate(self.oriented_shape)
            )
            thin = resample_labels(thin, num_classes, plane)
        return np.ascontiguousarray(np.take(self._unorient(thin), 0, axis=self.scan_slice_axis))

    def scan_index_to_model(self, index: int) -> int:
        """The model's slice nearest the scan's slice ``index`` (across its slice axis)."""
        count = self.scan_shape[self.scan_slice_axis]
        if self.transform is not None and self.transform[self.scan_slice_axis, 1] < 0:
            index = count - 1 - index
        if not self.resampled:
            return index
        grid_count = self.shape[self.slice_axis]
        nearest = round((index + 0.5) * grid_count / count - 0.5)
        return int(np.clip(nearest, 0, grid_count - 1))

    def _unorient(self, volume: np.ndarray) -> np.ndarray:
        if self.transform is None:
            return volume
        # The inverse transform: model axis transform[i, 0] goes back to file axis i.
        inverse = np.zeros_like(self.transform)
        for axis, (target, flip) in enumerate(self.transform):
            inverse[int(target)] = (axis, flip)
        return nib.orientations.apply_orientation(volume, inverse)

    # ------------------------------------------------------------------ boxes

    def box_to_model(self, box: AtriumBox) -> AtriumBox:
        """A box in the scan's slices-first voxels (across :attr:`scan_slice_axis`) on the
        model's slices-first grid; resampled edges are rounded outwards."""
        ranges = _box_ranges(box, self.scan_slice_axis)
        oriented: Ranges = list(ranges)
        if self.transform is not None:
            for axis, (start, stop) in enumerate(ranges):
                target, flip = int(self.transform[axis, 0]), self.transform[axis, 1] < 0
                size = self.scan_shape[axis]
                oriented[target] = (size - stop, size - start) if flip else (start, stop)
        scaled = _scaled(oriented, self.oriented_shape, self.shape)
        return _ranges_box(scaled, self.slice_axis)

    def box_to_scan(self, box: AtriumBox) -> AtriumBox:
        """A box on the model's slices-first grid in the scan's slices-first voxels."""
        oriented = _scaled(_box_ranges(box, self.slice_axis), self.shape, self.oriented_shape)
        ranges: Ranges = list(oriented)
        if self.transform is not None:
            for axis in range(3):
                target, flip = int(self.transform[axis, 0]), self.transform[axis, 1] < 0
                start, stop = oriented[target]
                size = self.scan_shape[axis]
                ranges[axis] = (size - stop, size - start) if flip else (start, stop)
        return _ranges_box(ranges, self.scan_slice_axis)


def _permuted(values: Sequence, transform: np.ndarray | None) -> tuple:
    """Per-axis ``values`` of a scan in the order of the oriented axes."""
    if transform is None:
        return tuple(values)
    out = [None] * 3
    for axis, value in enumerate(values):
        out[int(transform[axis, 0])] = value
    return tuple(out)


def _scaled(ranges: Ranges, source: Sequence[int], target: Sequence[int]) -> Ranges:
    """Ranges on a grid of shape ``source`` as ranges on ``target`` (same field of view):
    starts rounded down, ends up, so the region never shrinks."""
    if tuple(source) == tuple(target):
        return list(ranges)
    out = []
    for (start, stop), before, after in zip(ranges, source, target, strict=True):
        factor = after / before
        out.append((max(0, math.floor(start * factor)), min(after, math.ceil(stop * factor))))
    return out
