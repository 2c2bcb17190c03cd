"""NIfTI (``.nii``, ``.nii.gz``) through nibabel, with the checks nibabel leaves out: the
whole gzip stream verified, the file's length against its header, units, and a header that
disagrees with itself said aloud."""

from __future__ import annotations

import gzip
import math
import struct
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from src_monai.errors import (
    CorruptScanError,
    GeometryWarning,
    NotAScanError,
    OrientationUnknownWarning,
    ScanShapeError,
    TruncatedScanError,
)
from src_monai.io.geometry import (
    GEOMETRY_TOLERANCE_MM,
    ScanGeometry,
    check_affine,
    one_line,
    spatial_shape,
    squeeze_to_3d,
)

# NIfTI float fields whose NaN means "not set" (no intensity scaling, nibabel's default).
_NAN_MEANS_UNSET = frozenset({"scl_slope", "scl_inter"})
# Spatial units of the NIfTI header (xyzt_units) in millimetres; "unknown" is read as mm,
# as every common tool does.
_UNIT_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}


def read_nifti(path: Path) -> tuple[np.ndarray, ScanGeometry]:
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
        raise TruncatedScanError(path, f"voxel data unreadable ({one_line(exc)})") from exc
    return squeeze_to_3d(array, path), geometry


def read_nifti_geometry(path: Path) -> ScanGeometry:
    """The geometry in a NIfTI file's header, checked as :func:`read_nifti` checks it,
    without reading the voxels."""
    try:
        image = nib.load(path)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            head = handle.read(544)  # both NIfTI headers' fixed part
    except Exception as exc:
        raise NotAScanError(path, f"not a readable NIfTI header ({one_line(exc)})") from exc
    _check_header_fields(image.header, path)
    _voxel_offset(head, image, path)
    return _nifti_geometry(image, path, warn=False)


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
        raise CorruptScanError(path, f"corrupted gzip stream ({one_line(exc)})") from exc


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
        raise NotAScanError(path, f"not a readable NIfTI header ({one_line(exc)})") from exc


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
    shape = spatial_shape(tuple(int(n) for n in header.get_data_shape()), path)
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
    check_affine(affine, path)
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


def write_nifti(path: Path, array: np.ndarray, geometry: ScanGeometry, intent: str | None) -> None:
    _nifti_image(array, geometry, intent).to_filename(path)


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
