"""``lasc export-bundle MODEL OUTDIR``: a model as a MONAI bundle that needs none of our code.

The bundle runs with MONAI alone (``python -m monai.bundle run --config_file
configs/inference.json``; MONAI's CLI needs ``fire``) and gives the labels ``lasc infer`` gives:

- the same intensity normalisation from MONAI transforms (``ScaleIntensityRangePercentilesd``
  0.5-99.5 %, then ``NormalizeIntensityd``), on the file's own voxel axes (no reorientation,
  as in ``lasc infer``);
- the 2.5D context (neighbouring slices as channels, edge slices repeated) built by a
  ``Lambdad`` expression;
- MONAI's ``SliceInferer`` over the slice axis with the training patch as its window: it pads
  smaller slices to the patch, centred, and tiles larger ones with Gaussian-blended windows,
  as :class:`src_monai.infer.Predictor` does;
- argmax, then (when the model's cross-validation chose it) ``KeepLargestConnectedComponentd``
  and ``FillHolesd``, which :func:`src_monai.infer.postprocess_labels` equals;
- ``SaveImaged`` with the scan's affine, as ``<name>_seg.nii.gz``.

The weights are a plain state dict (``models/model.pt``, read with ``weights_only=True``); the
network is MONAI's, described in ``network_def``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src_monai.model.bundle import export_bundle

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc export-bundle`` options."""
    parser.add_argument("model", type=Path, help="model file (.safetensors); 'bundled' for ours")
    parser.add_argument("out", type=Path, help="bundle folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")


def run(args: argparse.Namespace) -> int:
    from src_monai.model.files import BUNDLED_MODEL

    model = BUNDLED_MODEL if str(args.model) == "bundled" else args.model
    out = export_bundle(model, args.out, overwrite=args.overwrite)
    print(f"wrote MONAI bundle {out}")
    print(
        f"run it: cd {out} && python -m monai.bundle run --config_file configs/inference.json "
        "--dataset_dir SCANS --output_dir LABELS"
    )
    return 0
