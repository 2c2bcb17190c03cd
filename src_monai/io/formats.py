"""The scan formats, behind one small registry (in the manner of nnU-Net's ``imageio``):
each :class:`ScanFormat` says which paths it reads (a suffix, or a kind of folder), how to
read the voxels, the header alone, and, where it can, how to write.

:func:`format_for_reading` and :func:`format_for_writing` pick the format for a path; a new
format is one more entry (:func:`register_format`) and the readers, the CLI's file discovery
and napari's reader follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_monai.errors import NotAScanError, ScanReadError
from src_monai.io import dicom, itk, nifti
from src_monai.io.geometry import ScanGeometry

Reader = Callable[[Path, "str | None"], tuple[np.ndarray, ScanGeometry]]
HeaderReader = Callable[[Path, "str | None"], ScanGeometry]
Writer = Callable[[Path, np.ndarray, ScanGeometry, "str | None"], None]


@dataclass(frozen=True)
class ScanFormat:
    """One way scans are stored. ``read(path, series)`` and ``read_header(path, series)``
    (``series``: the DICOM series to pick; files ignore it); ``write(path, array, geometry,
    intent)`` for the ``writable`` suffixes; ``is_folder`` for a format stored as a folder."""

    name: str
    suffixes: tuple[str, ...]
    read: Reader
    read_header: HeaderReader
    write: Writer | None = None
    writable: tuple[str, ...] = ()
    is_folder: Callable[[Path], bool] | None = None


NIFTI = ScanFormat(
    "NIfTI",
    (".nii.gz", ".nii"),
    read=lambda path, _series: nifti.read_nifti(path),
    read_header=lambda path, _series: nifti.read_nifti_geometry(path),
    write=nifti.write_nifti,
    writable=(".nii.gz", ".nii"),
)
ITK = ScanFormat(
    "NRRD/MetaImage",
    (".nrrd", ".nhdr", ".mha", ".mhd"),
    read=lambda path, _series: itk.read_itk(path),
    read_header=lambda path, _series: itk.read_itk_geometry(path),
    write=lambda path, array, geometry, _intent: itk.write_itk(path, array, geometry),
    # Detached-header formats (.nhdr, .mhd) are read but not written: their data file is
    # named inside the header, which the write-then-rename of an atomic write would leave
    # dangling.
    writable=(".nrrd", ".mha"),
)
DICOM = ScanFormat(
    "DICOM series",
    (),
    read=dicom.read_dicom,
    read_header=lambda folder, series: dicom.read_dicom(folder, series)[1],
    is_folder=dicom.is_dicom_folder,
)

FORMATS: list[ScanFormat] = [NIFTI, ITK, DICOM]


def register_format(scan_format: ScanFormat) -> None:
    """Read (and write) one more format; its suffixes are tried before the built-in ones."""
    FORMATS.insert(0, scan_format)


def scan_suffixes() -> tuple[str, ...]:
    return tuple(suffix for entry in FORMATS for suffix in entry.suffixes)


def writable_suffixes() -> tuple[str, ...]:
    return tuple(suffix for entry in FORMATS for suffix in entry.writable)


def scan_suffix(path: str | Path) -> str | None:
    """The supported suffix ``path`` ends with (case-insensitive), or ``None``."""
    name = Path(path).name.lower()
    return next((suffix for suffix in scan_suffixes() if name.endswith(suffix)), None)


def is_scan_folder(path: str | Path) -> bool:
    """A folder that a folder format (a DICOM series) reads as one scan."""
    path = Path(path)
    return path.is_dir() and any(f.is_folder is not None and f.is_folder(path) for f in FORMATS)


def format_for_reading(path: Path) -> ScanFormat:
    """The format that reads ``path``; refused in one line when none does (or the file is
    missing or empty)."""
    if path.is_dir():
        for entry in FORMATS:
            if entry.is_folder is not None and entry.is_folder(path):
                return entry
        raise NotAScanError(path, "no DICOM series in this folder")
    if not path.exists():
        raise ScanReadError(path, "file not found")
    if not path.is_file():
        raise ScanReadError(path, "is not a scan file")
    suffix = scan_suffix(path)
    if suffix is None:
        raise NotAScanError(
            path, f"unsupported file type (expected one of {', '.join(scan_suffixes())})"
        )
    if path.stat().st_size == 0:
        raise NotAScanError(path, "empty file")
    return next(entry for entry in FORMATS if suffix in entry.suffixes)


def format_for_writing(path: Path) -> ScanFormat:
    """The format that writes ``path``'s suffix; refused in one line when none does."""
    name = path.name.lower()
    for entry in FORMATS:
        if entry.write is not None and any(name.endswith(s) for s in entry.writable):
            return entry
    raise NotAScanError(
        path, f"cannot write this file type (use one of {', '.join(writable_suffixes())})"
    )
