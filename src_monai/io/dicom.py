"""DICOM series (a folder of slices) through SimpleITK; the slices are checked to form one
regular volume before they are read."""

from __future__ import annotations

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
        raise CorruptScanError(folder, f"DICOM voxels unreadable ({itk_message(exc)})") from exc
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
