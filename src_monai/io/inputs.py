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
    """Expand files and folders into (scan files, PNG files), sorted."""
    scans, pngs = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            children = sorted(
                p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
            )
            found = [p for p in children if scan_suffix(p)]
            found_png = [p for p in children if p.suffix.lower() == ".png"]
            if not found and not found_png and is_scan_folder(item):
                # a folder holding a DICOM series is one scan, named by its resolved name
                # (`lasc infer .` inside it would write OUT/.nii.gz)
                scans.append(item.resolve())
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
