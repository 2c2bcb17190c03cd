"""``lasc demo``: segment the bundled real sample scan with the bundled model (see
:func:`src_monai.evaluation.demo.run_demo` for what it writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from src_monai.evaluation.demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc demo`` options."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (new or empty; default: ./lasc-demo[-N])",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc demo`` with parsed arguments."""
    from src_monai.cli.support import drive

    summary = drive(run_demo(args.out, args.device), description="demo")
    print(
        f"LA volume {summary['la_volume_ml']:.1f} mL (ground truth "
        f"{summary['la_volume_truth_ml']:.1f} mL); Dice {summary['dice']:.3f}, "
        f"HD95 {summary['hd95_mm']:.2f} mm; segmented in {summary['segmentation_seconds']} s "
        f"on {summary['device']}"
    )
    print(f"wrote {summary['folder']} (la_016_prediction.nii.gz, overlay.png, summary.json)")
    return 0
