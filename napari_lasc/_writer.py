"""Writer contributions: Labels and Image layers to NIfTI/NRRD/MetaImage in the scan's geometry.

A layer read by this plugin (or predicted from such a layer) carries the source file's
geometry, which is written back unchanged: reopened in nibabel, saved labels have exactly the
scan's affine and header codes. Other layers are written from their scale and translate.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from src_monai.errors import LascError
from src_monai.io.scans import write_labels, write_volume

from ._layers import from_layer_axes, layer_geometry

logger = logging.getLogger(__name__)


class _LayerView:
    """What :func:`layer_geometry` reads from a layer, rebuilt from a writer's arguments."""

    def __init__(self, data: Any, meta: dict[str, Any]) -> None:
        self.data = np.asarray(data)
        self.metadata = meta.get("metadata") or {}
        self.scale = meta.get("scale", (1.0,) * self.data.ndim)
        self.translate = meta.get("translate", (0.0,) * self.data.ndim)
        self.name = meta.get("name", "layer")


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels. napari's save dialog has already asked before
    replacing an existing file, so an existing ``path`` is replaced (atomically)."""
    return _write(path, data, meta, labels=True)


def write_image_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Image layers (e.g. a cropped or filtered scan)."""
    return _write(path, data, meta, labels=False)


def _write(path: str, data: Any, meta: dict[str, Any], *, labels: bool) -> list[str]:
    from napari.utils.notifications import show_error

    layer = _LayerView(data, meta)
    try:
        if layer.data.ndim != 3:
            raise LascError(path, f"only 3D layers can be saved as scans (got {layer.data.ndim}D)")
        geometry = layer_geometry(layer)
        volume = from_layer_axes(layer.data)
        writer = write_labels if labels else write_volume
        written = writer(path, volume, geometry, overwrite=True)
    except LascError as exc:
        show_error(str(exc))
        return []
    logger.info("saved %s as %s", layer.name, written)
    return [str(written)]
