"""``lasc export-bundle MODEL OUTDIR``: write a model as a MONAI bundle that runs without
napari-lasc (:mod:`src_monai.model.bundle`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Write a model as a MONAI bundle (configs/, models/, docs/) that runs with MONAI alone,
without napari-lasc: `python -m monai.bundle run --config_file configs/inference.json`."""

EXAMPLES = """\
examples:
  lasc export-bundle bundled lasc_bundle/
  lasc export-bundle runs/lasc13/20261128-101500/checkpoints/best.safetensors my_bundle/"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc export-bundle`` options."""
    parser.add_argument("model", type=Path, help="model file (.safetensors); 'bundled' for ours")
    parser.add_argument("out", type=Path, help="bundle folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")


def run(args: argparse.Namespace) -> int:
    from src_monai.model.bundle import export_bundle  # torch and MONAI: not for --help
    from src_monai.model.files import model_path

    model = model_path(args.model)
    out = export_bundle(model, args.out, overwrite=args.overwrite)
    print(f"wrote MONAI bundle {out}")
    print(
        f"run it: cd {out} && python -m monai.bundle run --config_file configs/inference.json "
        "--dataset_dir SCANS --output_dir LABELS"
    )
    return 0
