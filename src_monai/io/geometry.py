"""Where a volume's voxels lie in the world: :class:`ScanGeometry`, :class:`Scan`, and the
checks every format's reader shares.

Arrays keep the file's voxel index order ``(i, j, k)`` (nibabel's convention).
``ScanGeometry.affine`` maps voxel indices to RAS+ world millimetres for every format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from src_monai.errors import BadAffineError, ScanShapeError

# ITK works in LPS, NIfTI and this package in RAS: flip the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# World positions closer than this (mm) count as the same place when pairing volumes.
GEOMETRY_TOLERANCE_MM = 1e-3

SourceFormat = Literal["nifti", "nrrd", "metaimage", "dicom"]


@dataclass(frozen=True, eq=False)
class ScanGeometry:
    """Where a volume's voxels lie in the world, and how the file stored them.

    Attributes
    ----------
    affine
        4x4 voxel-index -> RAS+ millimetre transform.
    shape
        The three spatial dimensions.
    spacing
        Voxel size in mm along the three array axes.
    dtype
        Data type of the voxels as stored in the file.
    source_format
        ``"nifti"``, ``"nrrd"``, ``"metaimage"`` or ``"dicom"``.
    orientation_known
        False when a NIfTI file had neither qform nor sform, so the affine is nibabel's
        fall-back built from the voxel sizes alone.
    nifti_header
        The source NIfTI header, kept so that written labels carry the same qform/sform
        codes, units and zooms.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str
    source_format: SourceFormat
    orientation_known: bool = True
    nifti_header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def stated_affine(self) -> np.ndarray | None:
        """The affine where the file states the orientation (``None`` where it is nibabel's
        fall-back): what the pipeline orients a scan by."""
        return self.affine if self.orientation_known else None

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ``('R', 'A', 'S')``."""
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def same_space(self, other: ScanGeometry, tolerance_mm: float = GEOMETRY_TOLERANCE_MM) -> bool:
        """True when both volumes have the same shape and voxel-to-world transform."""
        return self.shape == other.shape and bool(
            np.allclose(self.affine, other.affine, rtol=0.0, atol=tolerance_mm)
        )


@dataclass(frozen=True, eq=False)
class Scan:
    """A 3D volume read from ``path``: voxel array in file index order plus geometry."""

    array: np.ndarray
    geometry: ScanGeometry
    path: Path


def spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The three spatial dimensions, after rejecting 2D and multi-volume files."""
    extra = shape[3:]
    if len(shape) < 3 or min(shape[:3]) <= 1:
        raise ScanShapeError(path, f"2D image (shape {shape_text(shape)}): a 3D volume is needed")
    if any(n > 1 for n in extra):
        count = int(np.prod(extra))
        raise ScanShapeError(
            path, f"4D file with {count} volumes (shape {shape_text(shape)}): give one 3D volume"
        )
    return shape[0], shape[1], shape[2]


def squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    spatial_shape(array.shape, path)
    return array.reshape(array.shape[:3])


def check_affine(affine: np.ndarray, path: Path) -> None:
    if not np.isfinite(affine).all():
        raise BadAffineError(path, "voxel-to-world affine holds NaN or infinite values")
    linear = affine[:3, :3]
    scale = float(np.abs(linear).max())
    if scale == 0.0:
        raise BadAffineError(path, "voxel-to-world affine is zero (no voxel size or orientation)")
    if abs(np.linalg.det(linear)) <= 1e-9 * scale**3:
        raise BadAffineError(path, "voxel-to-world affine is singular (a voxel size is zero?)")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
