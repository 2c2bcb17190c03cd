"""NRRD (``.nrrd``/``.nhdr``) and MetaImage (``.mha``/``.mhd``) through SimpleITK, whose LPS
world is converted to RAS. SimpleITK is imported only when such a file is met."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src_monai.errors import CorruptScanError, NotAScanError, ScanShapeError
from src_monai.io.geometry import (
    LPS_TO_RAS,
    ScanGeometry,
    check_affine,
    spatial_shape,
    squeeze_to_3d,
)


def read_itk(path: Path) -> tuple[np.ndarray, ScanGeometry]:
    reader = _itk_reader(path)
    geometry = _itk_geometry(reader, path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptScanError(path, f"voxel data unreadable ({itk_message(exc)})") from exc
    return squeeze_to_3d(itk_array(image), path), geometry


def read_itk_geometry(path: Path) -> ScanGeometry:
    """The geometry in the file's header, without reading the voxels."""
    return _itk_geometry(_itk_reader(path), path)


def write_itk(path: Path, array: np.ndarray, geometry: ScanGeometry) -> None:
    import SimpleITK as sitk

    linear = geometry.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (LPS_TO_RAS @ linear / spacing).ravel()])
    image.SetOrigin([float(o) for o in LPS_TO_RAS @ geometry.affine[:3, 3]])
    sitk.WriteImage(image, str(path), useCompression=True)


def _itk_reader(path: Path):
    import SimpleITK as sitk  # imported here: NIfTI-only users never pay for it

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NotAScanError(path, f"not a readable image header ({itk_message(exc)})") from exc
    return reader


def _itk_geometry(reader, path: Path) -> ScanGeometry:
    if reader.GetNumberOfComponents() != 1:
        raise ScanShapeError(
            path,
            f"{reader.GetNumberOfComponents()} components per voxel: a scalar volume is needed",
        )
    shape = spatial_shape(tuple(int(n) for n in reader.GetSize()), path)
    affine = itk_affine(reader, reader.GetDimension())
    check_affine(affine, path)
    return ScanGeometry(
        affine=affine,
        shape=shape,
        spacing=tuple(float(s) for s in reader.GetSpacing()[:3]),  # type: ignore[arg-type]
        dtype=str(np.dtype(_itk_numpy_dtype(reader))),
        source_format="nrrd" if path.name.lower().endswith((".nrrd", ".nhdr")) else "metaimage",
    )


def itk_affine(source, dimension: int) -> np.ndarray:
    """The RAS affine of an ITK image or image reader (ITK's world is LPS)."""
    spacing = np.array(source.GetSpacing()[:3], dtype=np.float64)
    direction = np.array(source.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction[:3, :3] @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.array(source.GetOrigin()[:3], dtype=np.float64)
    return affine


def itk_array(image) -> np.ndarray:
    """An ITK image's voxels in the file's (i, j, k) order (SimpleITK's arrays are (k, j, i))."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    return np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))


def _itk_numpy_dtype(reader) -> np.dtype:
    import SimpleITK as sitk

    # GetPixelIDTypeAsString gives e.g. "16-bit signed integer"; map through a 1-voxel image.
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    return sitk.GetArrayViewFromImage(probe).dtype


def itk_message(exc: RuntimeError) -> str:
    # SimpleITK messages span lines and lead with C++ source locations; keep the last line
    # that says something.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("sitk::ERROR", "Exception thrown"))]
    return (useful or lines or [type(exc).__name__])[-1][:200]
