"""napari-lasc: the napari face of the left-atrium segmentation core in ``src_monai``."""

from src_monai import __version__

__all__ = ["__version__"]
