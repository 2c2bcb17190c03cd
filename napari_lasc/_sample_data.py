"""Sample data contribution: a real LASC'13 scan with its expert left-atrium labels.

Case ``la_016`` of the Medical Segmentation Decathlon's Task02_Heart (King's College London,
CC-BY-SA 4.0; see ``src_monai/resources/README.md``), shipped inside the package.
"""

from __future__ import annotations

from src_monai.io.scans import read_scan
from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN

from ._reader import LayerData, scan_layer_data


def sample_la_016() -> list[LayerData]:
    """The scan as an Image layer and its ground truth as a Labels layer, same placement."""
    image = scan_layer_data(read_scan(SAMPLE_SCAN))
    labels = scan_layer_data(read_scan(SAMPLE_LABEL))
    image[1]["name"] = "la_016"
    labels[1]["name"] = "la_016 ground truth"
    labels[1]["visible"] = False  # the user segments first, then compares
    return [image, labels]
