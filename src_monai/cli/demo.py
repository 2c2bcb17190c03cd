"""``lasc demo``: segment the bundled real sample scan with the bundled model (see
:func:`src_monai.evaluation.demo.run_demo` for what it writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from src_monai.evaluation.demo import run_demo

DESCRIPTION = """\
Segment the real sample scan shipped with the package (la_016 of MSD Task02_Heart) with the
bundled model, and write the labels, an overlay picture, the summary and the timing. The
sample is one of the model's training cases: its Dice shows the install works, not accuracy
(the cross-validated figures are in docs/MODEL_CARD.md)."""

EXAMPLES = """\
examples:
  lasc demo
  lasc demo --out my-demo --device cpu"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc demo`` options."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (new or empty; default: ./lasc-demo[-N])",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs (auto: a CUDA GPU when there is one)",
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc demo`` with parsed arguments."""
    from src_monai.cli.support import drive

    summary = drive(run_demo(args.out, args.device), description="demo")
    print(
        f"LA volume {summary['la_volume_ml']:.1f} mL (ground truth "
        f"{summary['la_volume_truth_ml']:.1f} mL); Dice {summary['dice']:.3f}, "
        f"HD95 {summary['hd95_mm']:.2f} mm on la_016; segmented in "
        f"{summary['segmentation_seconds']} s on {summary['device']}"
    )
    # The same words as lasc evaluate's and napari's for a case the model learnt from.
    print(summary.get("note") or "la_016 is new to this model", "(docs/MODEL_CARD.md)")
    folder = Path(summary["folder"])
    written = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    print(f"wrote {folder} ({', '.join(written)})")
    return 0
