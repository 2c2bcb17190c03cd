"""DICOM series (a folder of slices) through SimpleITK; the slices are checked to form one
regular volume before they are read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_monai.errors import CorruptScanError, NotAScanError, ScanReadError, ScanShapeError
from src_monai.io.geometry import ScanGeometry, check_affine, spatial_shape, squeeze_to_3d
from src_monai.io.itk import itk_affine, itk_array, itk_message


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


def read_dicom(folder: Path, series: str | None) -> tuple[np.ndarray, ScanGeometry]:
    """One DICOM series: its slices checked to form one regular volume (same orientation,
    evenly spaced: a missing slice would silently stretch the anatomy), read with
    SimpleITK, geometry converted from LPS to RAS like every ITK format."""
    import SimpleITK as sitk

    files, uid = _dicom_files(folder, series)
    _check_unread_slices(folder, files, uid)
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
        raise CorruptScanError(
            _unreadable_file(files) or folder, f"DICOM voxels unreadable ({itk_message(exc)})"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanShapeError(folder, "RGB/vector voxels: a scalar (greyscale) volume is needed")
    array = itk_array(image)
    affine = itk_affine(image, image.GetDimension())
    check_affine(affine, folder)
    geometry = ScanGeometry(
        affine=affine,
        shape=spatial_shape(tuple(array.shape), folder),
        spacing=tuple(float(s) for s in image.GetSpacing()[:3]),  # type: ignore[arg-type]
        dtype=str(array.dtype),
        source_format="dicom",
    )
    return squeeze_to_3d(array, folder), geometry


def _dicom_series_ids(folder: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def _dicom_files(folder: Path, series: str | None) -> tuple[list[str], str]:
    """The files of the folder's one DICOM series (or of ``series``), and its UID."""
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
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)), uid


def _series_description(folder: Path, uid: str) -> str:
    import SimpleITK as sitk

    first = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(first)
    reader.ReadImageInformation()
    tag = "0008|103e"
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else "no description"


@dataclass(frozen=True)
class _SliceHeader:
    """What one slice file says about its place in the volume (read without its pixels)."""

    path: Path
    orientation: tuple[float, ...]  # ImageOrientationPatient: row, then column direction
    position: tuple[float, ...]  # ImagePositionPatient (mm)
    spacing: tuple[float, float]  # in-plane voxel size (mm), as SimpleITK reads PixelSpacing
    size: tuple[int, int]  # columns, rows


def _slice_header(name: str) -> _SliceHeader:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
        orientation = tuple(float(v) for v in reader.GetMetaData("0020|0037").split("\\"))
        position = tuple(float(v) for v in reader.GetMetaData("0020|0032").split("\\"))
    except (RuntimeError, ValueError) as exc:
        raise NotAScanError(
            Path(name), "not an image slice with a position and orientation (DICOM)"
        ) from exc
    spacing = reader.GetSpacing()
    size = reader.GetSize()
    return _SliceHeader(
        Path(name), orientation, position, (spacing[0], spacing[1]), (size[0], size[1])
    )


def _check_unread_slices(folder: Path, files: list[str], uid: str) -> None:
    """GDCM leaves out of a series any file it cannot parse, such as a truncated slice: the
    last one would vanish silently, a middle one look like a gap. A DICOM file of the folder
    that carries the series' UID and is not among its files is named instead."""
    listed = {Path(name).resolve() for name in files}
    marker = uid.encode("ascii")
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.resolve() in listed:
            continue
        try:
            with path.open("rb") as handle:
                head = handle.read(1 << 16)
        except OSError:
            continue
        if head[128:132] == b"DICM" and marker in head:
            raise CorruptScanError(
                path,
                f"a slice of DICOM series {uid} that cannot be read (truncated or damaged): "
                "copy it again, or remove it and the slice is reported missing",
            )


def _same_everywhere(headers: list[_SliceHeader], what: str, value, shown) -> None:
    """Every slice's ``value(header)`` is the series' usual one; else the first odd slice is
    named, with both values (``shown`` formats one)."""
    counts = Counter(value(h) for h in headers)
    usual, _ = counts.most_common(1)[0]
    odd = next((h for h in headers if value(h) != usual), None)
    if odd is not None:
        others = len(headers) - counts[value(odd)]
        raise ScanShapeError(
            odd.path,
            f"{what} {shown(value(odd))}, where the series' other {others} slices have "
            f"{shown(usual)}: one volume needs the same on every slice",
        )


def _check_dicom_slices(folder: Path, files: list[str]) -> None:
    """Every slice with the same orientation, pixel spacing and size; positions evenly
    spaced along the slices' normal and not shifted in-plane (a sheared volume)."""
    headers = [_slice_header(name) for name in files]
    _same_everywhere(
        headers,
        "orientation",
        lambda h: tuple(round(v, 4) for v in h.orientation),
        lambda o: "\\".join(f"{v:g}" for v in o),
    )
    _same_everywhere(
        headers,
        "pixel spacing",
        lambda h: tuple(round(v, 4) for v in h.spacing),
        lambda s: f"{s[0]:g}x{s[1]:g} mm",
    )
    _same_everywhere(headers, "size", lambda h: h.size, lambda s: f"{s[0]}x{s[1]} pixels")
    row, column = np.array(headers[0].orientation[:3]), np.array(headers[0].orientation[3:])
    normal = np.cross(row, column)
    positions = np.array([h.position for h in headers])
    along = positions @ normal
    order = np.argsort(along)
    gaps = np.diff(along[order])
    if gaps.size and (gaps.min() <= 1e-6 or gaps.max() - gaps.min() > 0.01 * abs(gaps.mean())):
        raise ScanShapeError(
            folder,
            f"the DICOM slices are not evenly spaced (gaps {gaps.min():.3g}-{gaps.max():.3g} mm): "
            "a slice is missing or repeated",
        )
    offsets = positions[order] - positions[order[0]]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    shift = float(np.linalg.norm(in_plane, axis=1).max())
    if shift > 0.01 * min(headers[0].spacing):  # well above the positions' rounding
        raise ScanShapeError(
            folder,
            f"the DICOM slices are sheared: their positions move {shift:.3g} mm in-plane over "
            f"the series (a tilted gantry?), which a volume's affine here cannot hold; "
            "resample the series onto an orthogonal grid first",
        )


def _unreadable_file(files: list[str]) -> Path | None:
    """The first slice file whose voxels SimpleITK cannot read alone (after the series as a
    whole failed: to name it)."""
    import SimpleITK as sitk

    for name in files:
        try:
            sitk.ReadImage(name)
        except RuntimeError:
            return Path(name)
    return None
