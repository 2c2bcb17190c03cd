"""Read and write 3D scans and label volumes with their exact geometry.

Arrays keep the file's voxel index order ``(i, j, k)`` (nibabel's convention; for the LASC'13
data that is x, y and the slice axis). ``ScanGeometry.affine`` maps voxel indices to RAS+
world millimetres for every format, so a NIfTI scan and an NRRD label of the same space
compare equal.

NIfTI goes through nibabel; NRRD (``.nrrd``/``.nhdr``) and MetaImage (``.mha``/``.mhd``)
through SimpleITK, whose LPS geometry is converted to RAS.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from src_monai.errors import (
    BadAffineError,
    CorruptScanError,
    GeometryWarning,
    LabelValueError,
    NonFiniteVoxelsError,
    NotAScanError,
    OrientationUnknownWarning,
    PairMismatchError,
    ScanReadError,
    ScanShapeError,
    TruncatedScanError,
)
from src_monai.io.files import atomic_destination

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Detached-header formats (.nhdr, .mhd) are read but not written: their data file is named
# inside the header, which the write-then-rename of an atomic write would leave dangling.
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

# ITK works in LPS, NIfTI and this package in RAS: flip the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# World positions closer than this (mm) count as the same place when pairing volumes.
GEOMETRY_TOLERANCE_MM = 1e-3

SourceFormat = Literal["nifti", "nrrd", "metaimage", "dicom"]


def scan_suffix(path: str | Path) -> str | None:
    """The supported suffix ``path`` ends with (case-insensitive), or ``None``."""
    name = Path(path).name.lower()
    return next((suffix for suffix in SCAN_SUFFIXES if name.endswith(suffix)), None)


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
        ``"nifti"``, ``"nrrd"`` or ``"metaimage"``.
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


# --------------------------------------------------------------------------- reading


def is_dicom_folder(path: str | Path) -> bool:
    """A folder holding at least one DICOM series (and no scan files of ours)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return bool(_dicom_series_ids(path))


def dicom_series(folder: str | Path) -> dict[str, str]:
    """SeriesInstanceUID -> series description of each DICOM series in ``folder``."""
    folder = Path(folder)
    return {uid: _series_description(folder, uid) for uid in _dicom_series_ids(folder)}


def _dicom_series_ids(folder: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def _dicom_files(folder: Path, series: str | None) -> list[str]:
    """The files of the folder's one DICOM series (or of ``series``)."""
    import SimpleITK as sitk

    ids = _dicom_series_ids(folder)
    if not ids:
        raise NotAScanError(folder, "no DICOM series in this folder")
    if series is None and len(ids) > 1:
        described = "; ".join(f"{_series_description(folder, uid)} ({uid})" for uid in ids)
        raise ScanReadError(
            folder, f"holds {len(ids)} DICOM series: {described}: choose one with --series UID"
        )
    uid = series or ids[0]
    if uid not in ids:
        raise ScanReadError(folder, f"has no DICOM series {uid} (it has {', '.join(ids)})")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _series_description(folder: Path, uid: str) -> str:
    import SimpleITK as sitk

    first = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(first)
    reader.ReadImageInformation()
    tag = "0008|103e"
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else "no description"


def _read_dicom(folder: Path, series: str | None) -> tuple[np.ndarray, ScanGeometry]:
    """One DICOM series: its slices checked to form one regular volume (same orientation,
    evenly spaced: a missing slice would silently stretch the anatomy), read with
    SimpleITK, geometry converted from LPS to RAS like every ITK format."""
    import SimpleITK as sitk

    files = _dicom_files(folder, series)
    if len(files) < 2:
        raise ScanShapeError(
            folder, f"the DICOM series has {len(files)} slice: a 3D volume is needed"
        )
    _check_dicom_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptScanError(folder, f"DICOM voxels unreadable ({_itk_message(exc)})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanShapeError(folder, "RGB/vector voxels: a scalar (greyscale) volume is needed")
    array = _itk_array(image)
    affine = _itk_affine(image, image.GetDimension())
    _check_affine(affine, folder)
    geometry = ScanGeometry(
        affine=affine,
        shape=_spatial_shape(tuple(array.shape), folder),
        spacing=tuple(float(s) for s in image.GetSpacing()[:3]),  # type: ignore[arg-type]
        dtype=str(array.dtype),
        source_format="dicom",
    )
    return _squeeze_to_3d(array, folder), geometry


def _check_dicom_slices(folder: Path, files: list[str]) -> None:
    """Every slice with the same orientation, positions evenly spaced along its normal."""
    import SimpleITK as sitk

    orientations, positions = [], []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            orientation = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
            position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
        except (RuntimeError, ValueError) as exc:
            raise NotAScanError(
                Path(name), "not an image slice with a position and orientation (DICOM)"
            ) from exc
        orientations.append(orientation)
        positions.append(position)
    orientations_array = np.array(orientations)
    if not np.allclose(orientations_array, orientations_array[0], atol=1e-4):
        raise ScanShapeError(folder, "the DICOM slices have different orientations")
    row, column = orientations_array[0][:3], orientations_array[0][3:]
    along = np.array(positions) @ np.cross(row, column)
    gaps = np.diff(np.sort(along))
    if gaps.size and (gaps.min() <= 1e-6 or gaps.max() - gaps.min() > 0.01 * abs(gaps.mean())):
        raise ScanShapeError(
            folder,
            f"the DICOM slices are not evenly spaced (gaps {gaps.min():.3g}-{gaps.max():.3g} mm): "
            "a slice is missing or repeated",
        )


def read_geometry(path: str | Path, series: str | None = None) -> ScanGeometry:
    """Read only the header of a scan: cheap, for pairing, dataset discovery and checking
    every input before any work (the same header checks as :func:`read_scan`); a DICOM
    folder is checked slice by slice (headers only) and read."""
    if Path(path).is_dir() and is_dicom_folder(path):
        return _read_dicom(Path(path), series)[1]
    path = _existing_file(path)
    if scan_suffix(path) in NIFTI_SUFFIXES:
        try:
            image = nib.load(path)
            opener = gzip.open if path.name.lower().endswith(".gz") else open
            with opener(path, "rb") as handle:
                head = handle.read(544)  # both NIfTI headers' fixed part
        except Exception as exc:
            raise NotAScanError(path, f"not a readable NIfTI header ({_one_line(exc)})") from exc
        _check_header_fields(image.header, path)
        _voxel_offset(head, image, path)
        return _nifti_geometry(image, path, warn=False)
    reader = _itk_reader(path)
    return _itk_geometry(reader, path)


def read_scan(path: str | Path, series: str | None = None) -> Scan:
    """Read a 3D scalar volume with its geometry: a scan file, or a folder holding a DICOM
    series (``series``: its SeriesInstanceUID when the folder holds several).

    Raises a :class:`~src_monai.errors.ScanReadError` subclass, whose message names the file
    and the problem, for anything that is not one finite 3D volume with a usable affine.
    A 4D file with a single volume is accepted. A NIfTI file without qform and sform is
    read with a :class:`~src_monai.errors.OrientationUnknownWarning`.
    """
    if Path(path).is_dir():
        array, geometry = _read_dicom(Path(path), series)
        path = Path(path)
    else:
        path = _existing_file(path)
        if scan_suffix(path) in NIFTI_SUFFIXES:
            array, geometry = _read_nifti(path)
        else:
            array, geometry = _read_itk(path)
    if array.dtype.kind in "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteVoxelsError(path, f"{bad} voxels are NaN or infinite")
    return Scan(array=array, geometry=geometry, path=path)


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
    image: ScanGeometry, label: ScanGeometry, image_path: str | Path, label_path: str | Path
) -> None:
    """Raise :class:`PairMismatchError` unless image and label lie in the same voxel space."""
    pair = f"{image_path} / {Path(label_path).name}"
    if image.shape != label.shape:
        raise PairMismatchError(
            pair, f"image shape {_shape_str(image.shape)} != label shape {_shape_str(label.shape)}"
        )
    if not image.same_space(label):
        offset = float(np.abs(image.affine - label.affine).max())
        raise PairMismatchError(
            pair, f"image and label affines differ (by up to {offset:.4g} mm): not the same space"
        )


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ScanReadError(path, "file not found")
    if not path.is_file():
        raise ScanReadError(path, "is a folder, not a scan file")
    if scan_suffix(path) is None:
        raise NotAScanError(
            path, f"unsupported file type (expected one of {', '.join(SCAN_SUFFIXES)})"
        )
    if path.stat().st_size == 0:
        raise NotAScanError(path, "empty file")
    return path


def _read_nifti(path: Path) -> tuple[np.ndarray, ScanGeometry]:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = _gunzip_verified(raw, path)
    image = _nifti_from_bytes(raw, path)
    header = image.header
    _check_header_fields(header, path)
    geometry = _nifti_geometry(image, path, warn=True)
    if header.get_data_dtype().names is not None:
        raise ScanShapeError(path, "RGB/vector voxels: a scalar (greyscale) volume is needed")
    voxel_bytes = (
        int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    )
    offset = _voxel_offset(raw, image, path)
    expected = offset + voxel_bytes
    if len(raw) > expected:
        # Readers disagree where the voxels of such a file start (nibabel from vox_offset,
        # others from the end of the file): refuse rather than read shifted voxels.
        raise CorruptScanError(
            path,
            f"holds {len(raw)} bytes, but its header declares {expected} (vox_offset "
            f"{offset} + {voxel_bytes} bytes of voxels): where the voxels start is uncertain",
        )
    if len(raw) < expected:
        raise TruncatedScanError(
            path, f"truncated: header declares {expected} bytes, file holds {len(raw)}"
        )
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise TruncatedScanError(path, f"voxel data unreadable ({_one_line(exc)})") from exc
    return _squeeze_to_3d(array, path), geometry


def _gunzip_verified(raw: bytes, path: Path) -> bytes:
    # nibabel stops reading a gzip stream once it has the voxels it wants, before the CRC,
    # so a damaged stream can give wrong voxels silently. Decompressing the whole stream
    # here checks every member's CRC and length.
    if not raw.startswith(b"\x1f\x8b"):
        raise NotAScanError(path, "not a gzip file, so not a .nii.gz")
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise TruncatedScanError(path, "truncated: the gzip stream ends early") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise CorruptScanError(path, f"corrupted gzip stream ({_one_line(exc)})") from exc


def _nifti_from_bytes(raw: bytes, path: Path) -> nib.Nifti1Image:
    if len(raw) < 348:
        raise NotAScanError(path, "not a NIfTI file (shorter than a NIfTI header)")
    sizeof_hdr = {struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0]}
    if 348 in sizeof_hdr:
        image_class = nib.Nifti1Image
    elif 540 in sizeof_hdr:
        image_class = nib.Nifti2Image
    else:
        raise NotAScanError(path, "not a NIfTI file (bad header size field)")
    try:
        return image_class.from_bytes(raw)
    except Exception as exc:
        raise NotAScanError(path, f"not a readable NIfTI header ({_one_line(exc)})") from exc


# NIfTI float fields whose NaN means "not set" (no intensity scaling, nibabel's default).
_NAN_MEANS_UNSET = frozenset({"scl_slope", "scl_inter"})

# Spatial units of the NIfTI header (xyzt_units) in millimetres; "unknown" is read as mm,
# as every common tool does.
_UNIT_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}


def _check_header_fields(header, path: Path) -> None:
    """Every float field of the header (the reading uses them or the labels carry them):
    finite, except where NaN means "not set"."""
    for name in header:
        value = np.asarray(header[name])
        if value.dtype.kind != "f":
            continue
        finite = np.isfinite(value) | (np.isnan(value) if name in _NAN_MEANS_UNSET else False)
        if not finite.all():
            shown = value.item() if value.size == 1 else value.tolist()
            raise CorruptScanError(path, f"header field {name} = {shown} is not a finite number")


def _voxel_offset(raw: bytes, image: nib.Nifti1Image, path: Path) -> int:
    """Where a single-file NIfTI's voxels start, from the file's own vox_offset field
    (nibabel's loaded header no longer holds it): a whole byte at or after the header, and
    where nibabel reads them."""
    two = isinstance(image, nib.Nifti2Image)
    order = "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"
    field, at = ("q", 168) if two else ("f", 108)
    offset = float(struct.unpack(order + field, raw[at : at + struct.calcsize(field)])[0])
    minimum = image.header.single_vox_offset
    if not math.isfinite(offset) or offset != int(offset) or offset < minimum:
        raise CorruptScanError(
            path,
            f"header field vox_offset = {offset:g}: a single-file NIfTI's voxels start at a "
            f"whole byte >= {minimum}",
        )
    if getattr(image.dataobj, "offset", int(offset)) != int(offset):
        raise CorruptScanError(
            path, f"header field vox_offset = {offset:g} is not where nibabel reads the voxels"
        )
    return int(offset)


def _world_mm(header, affine: np.ndarray, path: Path, *, warn: bool) -> np.ndarray:
    """The affine in millimetres (the header's spatial units honoured), after warning about
    the header disagreeing with itself: pixdim against the affine, qform against sform."""
    try:
        unit = header.get_xyzt_units()[0]
    except KeyError:  # a code NIfTI does not define
        unit = f"code {int(header['xyzt_units']) & 0x07}"
    if unit not in _UNIT_MM:
        raise CorruptScanError(path, f"header field xyzt_units: unknown spatial unit {unit!r}")
    scaled = affine.copy()
    scaled[:3] *= _UNIT_MM[unit]
    if not warn:
        return scaled
    said = []
    if _UNIT_MM[unit] != 1.0:
        said.append(f"spatial units are {unit}s: sizes converted to mm")
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(zooms, norms, rtol=1e-3, atol=1e-6):
        said.append(
            f"pixdim says voxels of {_sizes(zooms)}, the affine {_sizes(norms)}: the affine's "
            "are used (the labels are written with it)"
        )
    qform, qform_code = header.get_qform(coded=True)
    sform, sform_code = header.get_sform(coded=True)
    if qform_code and sform_code and not np.allclose(qform, sform, atol=GEOMETRY_TOLERANCE_MM):
        offset = float(np.abs(qform - sform).max())
        said.append(f"qform and sform differ by up to {offset:.4g}: the sform is used")
    for text in said:
        warnings.warn(f"{path}: {text}", GeometryWarning, stacklevel=4)
    return scaled


def _sizes(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def _nifti_geometry(image: nib.Nifti1Image, path: Path, *, warn: bool) -> ScanGeometry:
    header = image.header
    shape = _spatial_shape(tuple(int(n) for n in header.get_data_shape()), path)
    _, qform_code = header.get_qform(coded=True)
    _, sform_code = header.get_sform(coded=True)
    orientation_known = bool(qform_code) or bool(sform_code)
    if not orientation_known and warn:
        warnings.warn(
            f"{path}: NIfTI header has neither qform nor sform; orientation unknown, "
            "assuming the voxel sizes alone",
            OrientationUnknownWarning,
            stacklevel=3,
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(affine, path)
    # One source of geometry: the affine the labels will carry, in mm. Voxel sizes (and
    # with them every volume and distance) come from it, not from pixdim.
    affine = _world_mm(header, affine, path, warn=warn)
    spacing = tuple(float(n) for n in np.linalg.norm(affine[:3, :3], axis=0))
    return ScanGeometry(
        affine=affine,
        shape=shape,
        spacing=spacing,  # type: ignore[arg-type]
        dtype=str(header.get_data_dtype()),
        source_format="nifti",
        orientation_known=orientation_known,
        nifti_header=header.copy(),
    )


def _itk_reader(path: Path):
    import SimpleITK as sitk  # imported here: NIfTI-only users never pay for it

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NotAScanError(path, f"not a readable image header ({_itk_message(exc)})") from exc
    return reader


def _itk_geometry(reader, path: Path) -> ScanGeometry:
    if reader.GetNumberOfComponents() != 1:
        raise ScanShapeError(
            path,
            f"{reader.GetNumberOfComponents()} components per voxel: a scalar volume is needed",
        )
    shape = _spatial_shape(tuple(int(n) for n in reader.GetSize()), path)
    affine = _itk_affine(reader, reader.GetDimension())
    _check_affine(affine, path)
    suffix = scan_suffix(path)
    return ScanGeometry(
        affine=affine,
        shape=shape,
        spacing=tuple(float(s) for s in reader.GetSpacing()[:3]),  # type: ignore[arg-type]
        dtype=str(np.dtype(_itk_numpy_dtype(reader))),
        source_format="nrrd" if suffix in (".nrrd", ".nhdr") else "metaimage",
    )


def _itk_affine(source, dimension: int) -> np.ndarray:
    """The RAS affine of an ITK image or image reader (ITK's world is LPS)."""
    spacing = np.array(source.GetSpacing()[:3], dtype=np.float64)
    direction = np.array(source.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction[:3, :3] @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.array(source.GetOrigin()[:3], dtype=np.float64)
    return affine


def _itk_array(image) -> np.ndarray:
    """An ITK image's voxels in the file's (i, j, k) order (SimpleITK's arrays are (k, j, i))."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))


def _itk_numpy_dtype(reader) -> np.dtype:
    import SimpleITK as sitk

    # GetPixelIDTypeAsString gives e.g. "16-bit signed integer"; map through a 1-voxel image.
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    return sitk.GetArrayViewFromImage(probe).dtype


def _read_itk(path: Path) -> tuple[np.ndarray, ScanGeometry]:

    reader = _itk_reader(path)
    geometry = _itk_geometry(reader, path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptScanError(path, f"voxel data unreadable ({_itk_message(exc)})") from exc
    return _squeeze_to_3d(_itk_array(image), path), geometry


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The three spatial dimensions, after rejecting 2D and multi-volume files."""
    extra = shape[3:]
    if len(shape) < 3 or min(shape[:3]) <= 1:
        raise ScanShapeError(path, f"2D image (shape {_shape_str(shape)}): a 3D volume is needed")
    if any(n > 1 for n in extra):
        count = int(np.prod(extra))
        raise ScanShapeError(
            path, f"4D file with {count} volumes (shape {_shape_str(shape)}): give one 3D volume"
        )
    return shape[0], shape[1], shape[2]


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    _spatial_shape(array.shape, path)
    return array.reshape(array.shape[:3])


def _check_affine(affine: np.ndarray, path: Path) -> None:
    if not np.isfinite(affine).all():
        raise BadAffineError(path, "voxel-to-world affine holds NaN or infinite values")
    linear = affine[:3, :3]
    scale = float(np.abs(linear).max())
    if scale == 0.0:
        raise BadAffineError(path, "voxel-to-world affine is zero (no voxel size or orientation)")
    if abs(np.linalg.det(linear)) <= 1e-9 * scale**3:
        raise BadAffineError(path, "voxel-to-world affine is singular (a voxel size is zero?)")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _itk_message(exc: RuntimeError) -> str:
    # SimpleITK messages span lines and lead with C++ source locations; keep the last line
    # that says something.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("sitk::ERROR", "Exception thrown"))]
    return (useful or lines or [type(exc).__name__])[-1][:200]


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


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
    suffix = scan_suffix(path)
    if suffix not in WRITABLE_SUFFIXES:
        raise NotAScanError(
            path, f"cannot write this file type (use one of {', '.join(WRITABLE_SUFFIXES)})"
        )
    if tuple(array.shape) != geometry.shape:
        raise PairMismatchError(
            path,
            f"array shape {_shape_str(array.shape)} != scan shape {_shape_str(geometry.shape)}",
        )
    with atomic_destination(path, overwrite=overwrite) as temporary:
        if suffix in NIFTI_SUFFIXES:
            _nifti_image(array, geometry, intent).to_filename(temporary)
        else:
            _write_itk(temporary, array, geometry)
    logger.debug("wrote %s", path)
    return path


def _nifti_image(array: np.ndarray, geometry: ScanGeometry, intent: str | None) -> nib.Nifti1Image:
    source = geometry.nifti_header
    if source is None:
        image = nib.Nifti1Image(array, geometry.affine)
        code = "scanner" if geometry.orientation_known else "unknown"
        image.set_qform(geometry.affine, code=code)
        image.set_sform(geometry.affine, code=code)
        image.header.set_xyzt_units("mm")
    else:
        header = source.copy()
        header.set_data_dtype(array.dtype)
        header.set_data_shape(array.shape)
        # Intensity scaling and display range belong to the source's voxels, not ours.
        header.set_slope_inter(None, None)
        header["cal_min"] = 0
        header["cal_max"] = 0
        image_class = nib.Nifti2Image if isinstance(source, nib.Nifti2Header) else nib.Nifti1Image
        # affine=None keeps the header's qform and sform (values and codes) untouched.
        image = image_class(array, None, header=header)
    if intent is not None:
        image.header.set_intent(intent)
    return image


def _write_itk(path: Path, array: np.ndarray, geometry: ScanGeometry) -> None:
    import SimpleITK as sitk

    linear = geometry.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (_LPS_TO_RAS @ linear / spacing).ravel()])
    image.SetOrigin([float(o) for o in _LPS_TO_RAS @ geometry.affine[:3, 3]])
    sitk.WriteImage(image, str(path), useCompression=True)
