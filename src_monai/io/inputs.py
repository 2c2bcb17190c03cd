"""The inputs of ``lasc infer``: files and folders expanded into scans and PNG slices.

Light on purpose (nibabel and NumPy, no torch or MONAI): the command checks its inputs with
it before it imports the pipeline, so a missing input is refused at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src_monai.errors import LascError
from src_monai.io.scans import is_scan_folder, scan_suffix, scan_suffixes


def find_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders into (scan files and DICOM series folders, PNG files), sorted.

    A folder gives its scan and PNG files, or is itself one scan when it holds a DICOM
    series; a folder holding neither gives the DICOM series folders directly inside it (one
    level down: a study folder of series folders). A folder with a DICOM series beside scan
    or PNG files is refused: which of them is meant is not for us to guess."""
    scans, pngs = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found, found_png = _folder_inputs(item)
            scans += found
            pngs += found_png
        elif item.is_file() and item.suffix.lower() == ".png":
            pngs.append(item)
        elif item.is_file() and scan_suffix(item):
            scans.append(item)
        elif not item.exists():
            raise LascError(item, "input not found")
        else:
            raise LascError(item, f"not a scan ({', '.join(scan_suffixes())}) or PNG")
    if not scans and not pngs:
        raise LascError(", ".join(map(str, inputs)), "no scans or PNG images found")
    return scans, pngs


def _folder_inputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """One folder input of :func:`find_inputs`; refused in one line, saying what the folder
    holds, when it holds nothing to segment."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    scans = [p for p in files if scan_suffix(p)]
    pngs = [p for p in files if p.suffix.lower() == ".png"]
    others = [p for p in files if not scan_suffix(p) and p.suffix.lower() != ".png"]
    # DICOM files are the "others" (.dcm or no suffix): GDCM reads headers only then
    if others and is_scan_folder(folder):
        if scans or pngs:
            named = ", ".join(p.name for p in (scans + pngs)[:3])
            raise LascError(
                folder,
                f"holds a DICOM series and {len(scans) + len(pngs)} scan or PNG files "
                f"({named}{', ...' if len(scans) + len(pngs) > 3 else ''}): give those "
                "files, or move the DICOM series into a folder of its own",
            )
        # one scan, named by its resolved name (`lasc infer .` would write OUT/.nii.gz)
        return [folder.resolve()], []
    if scans or pngs:
        return scans, pngs
    subfolders = [p for p in entries if p.is_dir()]
    series = [p.resolve() for p in subfolders if is_scan_folder(p)]
    if not series:
        raise LascError(
            folder,
            f"no scans, PNG images or DICOM series found (in it and its subfolders): "
            f"{len(others)} other files, {len(subfolders)} subfolders",
        )
    return series, []
