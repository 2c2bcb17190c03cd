"""Reader contribution: NIfTI, NRRD and MetaImage scans and label volumes as napari layers."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.errors import GeometryWarning, LascError
from src_monai.io.scans import (
    Scan,
    case_id_from_path,
    dicom_series,
    is_dicom_folder,
    read_scan,
    scan_suffix,
)

from ._layers import (
    FILE_LABEL_COLOURS,
    SOURCE_KEY,
    geometry_kwargs,
    labels_kwargs,
    to_layer_axes,
)

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

# A label volume has few distinct small non-negative integers; a scan has hundreds of grey
# levels. Folders named like MSD's labelsTr/labelsTs hold labels whatever their values.
MAX_LABEL_VALUES = 16
LABEL_FOLDERS = ("labelstr", "labelsts", "labels")
# napari's null-layer sentinel: "read, but no layers" (after a notification says why).
NO_LAYERS: list[Any] = [(None,)]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: our reader for scan files, ``None`` for anything else."""
    paths = [path] if isinstance(path, str) else list(path)
    if len(paths) == 1 and is_dicom_folder(paths[0]):
        return read_dicom_folder
    if not paths or not all(scan_suffix(p) and not Path(p).is_dir() for p in paths):
        return None
    return read_layers


def read_dicom_folder(path: str | list[str]) -> list[LayerData]:
    """A folder of DICOM series: each series becomes its own layer, named by its description
    (the user picks the one to segment); a series that cannot be read is reported, the others
    still open."""
    from napari.utils.notifications import show_error, show_info

    folder = Path(path if isinstance(path, str) else path[0])
    uids = dicom_series(folder)
    layers: list[LayerData] = []
    for uid, description in uids.items():
        try:
            data, kwargs, kind = scan_layer_data(read_scan(folder, series=uid))
        except LascError as exc:
            show_error(str(exc))
            continue
        if len(uids) > 1:
            kwargs["name"] = f"{folder.name} {description}"
        layers.append((data, kwargs, kind))
    if len(uids) > 1:
        show_info(
            f"{folder.name}: {len(uids)} DICOM series opened as separate layers: "
            + "; ".join(f"{d} ({u})" for u, d in uids.items())
        )
    return layers or NO_LAYERS


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Each file becomes an Image layer (a scan) or a Labels layer (a label volume).

    A file that cannot be read shows a notification with the one-line reason; the others
    still open.
    """
    from napari.utils.notifications import show_error, show_warning

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for item in paths:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GeometryWarning)
                layers.append(scan_layer_data(read_scan(item)))
            for warning in caught:
                if issubclass(warning.category, GeometryWarning):
                    show_warning(str(warning.message))
        except LascError as exc:
            logger.info("not opened: %s", exc)
            show_error(str(exc))
    return layers or NO_LAYERS


def is_label_volume(scan: Scan) -> bool:
    """Labels: an integer volume with at most a few values, or a file in a labels folder."""
    array = scan.array
    if array.dtype.kind not in "iub":
        return False
    if scan.path.parent.name.lower() in LABEL_FOLDERS:
        return True
    if array.size and (array.min() < 0 or array.max() >= 256):
        return False
    return np.unique(array).size <= MAX_LABEL_VALUES


def scan_layer_data(scan: Scan) -> LayerData:
    """The napari layer tuple of a scan read by the core: placement and geometry kept."""
    name = case_id_from_path(scan.path)
    if is_label_volume(scan):
        if scan.path.parent.name.lower() in LABEL_FOLDERS:
            name = f"{name} labels"
        kwargs = labels_kwargs(scan.geometry, colours=FILE_LABEL_COLOURS)
        data = scan.array if scan.array.dtype.kind != "b" else scan.array.astype(np.uint8)
        layer_type = "labels"
    else:
        kwargs = geometry_kwargs(scan.geometry)
        kwargs["colormap"] = "gray"
        data = scan.array
        layer_type = "image"
    kwargs["name"] = name
    kwargs["metadata"][SOURCE_KEY] = str(scan.path)
    return to_layer_axes(data), kwargs, layer_type
