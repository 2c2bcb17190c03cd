"""``lasc demo``: segment the bundled real sample scan with the bundled model.

Writes, to a new folder, the predicted label volume (NIfTI, the scan's geometry), an overlay
montage PNG and a summary: LA volume in mL and Dice/HD95 against the bundled ground truth.
The sample (MSD Task02_Heart la_016) is one of the model's training cases: the numbers show the
tool works end to end; the cross-validation in docs/MODEL_CARD.md says how well it generalises.
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
