"""Read and write 3D scans and label volumes with their exact geometry.

Arrays keep the file's voxel index order ``(i, j, k)`` (nibabel's convention; for the LASC'13
data that is x, y and the slice axis). ``ScanGeometry.affine`` maps voxel indices to RAS+
world millimetres for every format, so a NIfTI scan and an NRRD label of the same space
compare equal.

The formats (NIfTI through nibabel; NRRD, MetaImage and DICOM series through SimpleITK, whose
LPS geometry is converted to RAS) sit behind the registry in :mod:`src_monai.io.formats`;
this module is what the rest of the package calls.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from src_monai.errors import LabelValueError, NonFiniteVoxelsError, PairMismatchError
from src_monai.io.dicom import dicom_series, is_dicom_folder
from src_monai.io.files import atomic_destination
from src_monai.io.formats import (
    format_for_reading,
    format_for_writing,
    is_scan_folder,
    scan_suffix,
    scan_suffixes,
)
from src_monai.io.geometry import GEOMETRY_TOLERANCE_MM, Scan, ScanGeometry, shape_text

logger = logging.getLogger(__name__)

__all__ = [
    "GEOMETRY_TOLERANCE_MM",
    "Scan",
    "ScanGeometry",
    "as_label_array",
    "case_id_from_path",
    "check_pair",
    "dicom_series",
    "image_digest",
    "is_dicom_folder",
    "is_scan_folder",
    "read_geometry",
    "read_labels",
    "read_scan",
    "scan_suffix",
    "scan_suffixes",
    "write_labels",
    "write_volume",
]


def image_digest(array: np.ndarray) -> str:
    """SHA-256 of a volume's voxels (with their type and shape): the same scan under another
    name, in another folder or another file format gives the same digest."""
    import hashlib

    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def case_id_from_path(path: str | Path) -> str:
    """File name without its scan suffix: ``imagesTr/la_003.nii.gz`` -> ``la_003``."""
    name = Path(path).name
    suffix = scan_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


# --------------------------------------------------------------------------- reading


def read_geometry(path: str | Path, series: str | None = None) -> ScanGeometry:
    """Read only the header of a scan: cheap, for pairing, dataset discovery and checking
    every input before any work (the same header checks as :func:`read_scan`); a DICOM
    folder is checked slice by slice (headers only) and read."""
    path = Path(path)
    return format_for_reading(path).read_header(path, series)


def read_scan(path: str | Path, series: str | None = None) -> Scan:
    """Read a 3D scalar volume with its geometry: a scan file, or a folder holding a DICOM
    series (``series``: its SeriesInstanceUID when the folder holds several).

    Raises a :class:`~src_monai.errors.ScanReadError` subclass, whose message names the file
    and the problem, for anything that is not one finite 3D volume with a usable affine.
    A 4D file with a single volume is accepted. A NIfTI file without qform and sform is
    read with a :class:`~src_monai.errors.OrientationUnknownWarning`.
    """
    path = Path(path)
    array, geometry = format_for_reading(path).read(path, series)
    bad = non_finite_voxels(array)
    if bad:
        raise NonFiniteVoxelsError(path, f"{bad} voxels are NaN or infinite")
    return Scan(array=array, geometry=geometry, path=path)


def non_finite_voxels(array: np.ndarray) -> int:
    """How many voxels are NaN or infinite (none in an integer array)."""
    if np.asarray(array).dtype.kind not in "fc":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def read_labels(path: str | Path, num_classes: int = 2) -> Scan:
    """Read a label volume as ``uint8`` classes ``0 .. num_classes - 1``.

    A binary mask stored as {0, 255} (the 2018 Atrial Segmentation Challenge's ``laendo.nrrd``)
    is mapped to {0, 1}. Fractional values or values outside the classes raise
    :class:`~src_monai.errors.LabelValueError`.
    """
    if not 2 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 2..255, got {num_classes}")
    scan = read_scan(path)
    labels = as_label_array(scan.array, num_classes, source=scan.path)
    return Scan(array=labels, geometry=scan.geometry, path=scan.path)


def as_label_array(
    array: np.ndarray, num_classes: int, source: str | Path | None = None
) -> np.ndarray:
    """Check that ``array`` holds class indices and return it as ``uint8``."""
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise LabelValueError(source, f"label voxels of type {array.dtype} are not class numbers")
    if array.dtype.kind == "f":
        fractional = array != np.round(array)
        if fractional.any():
            example = float(array[fractional].flat[0])
            raise LabelValueError(
                source, f"non-integer label values (e.g. {example:g}): labels must be class numbers"
            )
    low, high = array.min(), array.max()
    if low >= 0 and high < num_classes:
        return array.astype(np.uint8, copy=False)
    values = np.unique(array)
    if np.array_equal(values, [0, 255]) or np.array_equal(values, [255]):
        logger.info("%s: binary mask stored as {0, 255}; reading 255 as class 1", source)
        return (array == 255).astype(np.uint8)
    outside = [v.item() for v in values if not 0 <= v < num_classes]
    shown = ", ".join(f"{v:g}" for v in outside[:5]) + (", ..." if len(outside) > 5 else "")
    raise LabelValueError(
        source, f"label values {shown} are outside the classes 0..{num_classes - 1}"
    )


def check_pair(
    image: ScanGeometry,
    label: ScanGeometry,
    image_path: str | Path,
    label_path: str | Path,
    roles: tuple[str, str] = ("image", "label"),
) -> None:
    """Raise :class:`PairMismatchError` unless image and label lie in the same voxel space;
    the message names both files in full and calls them by their ``roles`` (``lasc
    evaluate`` compares a prediction and a truth)."""
    pair = f"{image_path} and {label_path}"
    first, second = roles
    if image.shape != label.shape:
        raise PairMismatchError(
            pair,
            f"{first} shape {shape_text(image.shape)} != {second} shape {shape_text(label.shape)}",
        )
    if not image.same_space(label):
        offset = float(np.abs(image.affine - label.affine).max())
        raise PairMismatchError(
            pair,
            f"{first} and {second} affines differ (by up to {offset:.4g} mm): not the same space",
        )


# --------------------------------------------------------------------------- writing


def write_labels(
    path: str | Path, labels: np.ndarray, geometry: ScanGeometry, *, overwrite: bool = False
) -> Path:
    """Write a label volume in the geometry of the scan it was made on.

    The format follows the suffix of ``path``: NIfTI keeps the source header's qform/sform
    (with their codes), zooms and units; NRRD/MetaImage get the same world geometry in LPS.
    The file appears under its final name only once it is complete.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise LabelValueError(path, f"labels must be integers, got {labels.dtype}")
    dtype = np.uint8 if labels.size == 0 or labels.max() <= 255 else np.uint16
    return write_volume(
        path, labels.astype(dtype, copy=False), geometry, overwrite=overwrite, intent="label"
    )


def write_volume(
    path: str | Path,
    array: np.ndarray,
    geometry: ScanGeometry,
    *,
    overwrite: bool = False,
    intent: str | None = None,
) -> Path:
    """Write ``array`` (file index order, shape ``geometry.shape``) with ``geometry``."""
    path = Path(path)
    scan_format = format_for_writing(path)
    if tuple(array.shape) != geometry.shape:
        raise PairMismatchError(
            path,
            f"array shape {shape_text(array.shape)} != scan shape {shape_text(geometry.shape)}",
        )
    with atomic_destination(path, overwrite=overwrite) as temporary:
        scan_format.write(temporary, array, geometry, intent)
    logger.debug("wrote %s", path)
    return path
