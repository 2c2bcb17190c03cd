"""``lasc prepare DATA OUT``: look at an MSD-layout NIfTI dataset before training on it.

* dataset statistics: a table, ``stats.csv``/``stats.json`` and a ``stats.png`` chart;
* ``--folds K``: ``folds.json``, a K-fold patient-level split for ``lasc train`` (``data.split``);
* ``--format png``: the earlier Keras tool's 512x512 PNG dataset (``100NN_z.png``, RGB masks),
  split by patient, keeping empty slices unless asked and resizing masks with nearest neighbour;

``lasc train`` reads the MSD folder itself (each scan once, into memory).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src_monai.data.prepare import (
    DEFAULT_SLICE_AXIS,
    format_stats_table,
    prepare,
    stats_summary_line,
)
from src_monai.io.png import DEFAULT_RGB_MAP, parse_rgb_map

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Look at an MSD-layout NIfTI dataset (dataset.json, imagesTr/, labelsTr/) before training on it:
a table of per-case statistics (also stats.csv, stats.json, stats.png); with --folds K a
patient-level K-fold split (folds.json) for `lasc train`; with --format png the earlier Keras
tool's 512x512 PNG dataset, split by patient. `lasc train` reads the MSD folder itself."""

EXAMPLES = """\
examples:
  lasc prepare ../shared/data/lasc13 runs/lasc13 --folds 4
  lasc prepare ../shared/data/lasc13 runs/lasc13-png --format png --drop-empty"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc prepare`` options."""

    parser.add_argument(
        "data",
        type=Path,
        help="dataset folder in the MSD layout (dataset.json, imagesTr/, labelsTr/)",
    )
    parser.add_argument(
        "out", type=Path, help="output folder (created; must be empty unless --overwrite)"
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=("png", "none"),
        default="none",
        help="none (default): statistics (and --folds); png: the earlier Keras tool's "
        "512x512 PNG dataset as well. `lasc train` reads the MSD folder itself",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="print the per-case statistics table (stats.csv, stats.json and the stats.png "
        "chart are written without it too, except with --format png, which needs --stats "
        "for them)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also write folds.json: K-fold patient-level cross-validation",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the patient-level split (default 137 for --format png "
        "as the earlier tool, 0 for --folds)",
    )
    parser.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        default=DEFAULT_SLICE_AXIS,
        help="array axis to slice along (default 2, as the earlier tool)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty output folder (replaces same-named files, deletes nothing)",
    )
    _add_png_arguments(parser.add_argument_group("--format png (the earlier Keras tool's data)"))


def _add_png_arguments(group) -> None:
    from src_monai.cli.support import argument_type

    group.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.15, 0.05),
        metavar=("TRAIN", "VALID", "TEST"),
        help="png: share of patients in train/valid/test (default 0.8 0.15 0.05)",
    )
    group.add_argument("--size", type=int, default=512, help="png: slice size (default 512)")
    group.add_argument(
        "--rgb-map",
        type=argument_type(parse_rgb_map),
        default=DEFAULT_RGB_MAP,
        help='png: colour of each class, e.g. "{(0,0,0):0, (255,0,255):1}"',
    )
    group.add_argument(
        "--drop-empty",
        action="store_true",
        help="png: leave out slices without any label (the earlier tool did; "
        "a model trained so has never seen an empty slice)",
    )
    group.add_argument(
        "--intensity",
        choices=("slice-max", "volume"),
        default="slice-max",
        help="png: scale each slice by its own maximum (earlier tool) or by "
        "the volume's 99.5th percentile",
    )


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc prepare`` with parsed arguments."""
    from src_monai.cli.support import drive

    export = None
    if args.output_format == "png":  # the earlier tool's layout: the legacy package writes it
        from src_monai.legacy.png_export import png_exporter

        export = png_exporter(
            size=args.size,
            rgb_map=args.rgb_map,
            fractions=args.fractions,
            keep_empty=not args.drop_empty,
            intensity=args.intensity,
        )
    stats = drive(
        prepare(
            args.data,
            args.out,
            export=export,
            stats=args.stats,
            folds=args.folds,
            split_seed=args.split_seed,
            slice_axis=args.slice_axis,
            overwrite=args.overwrite,
        ),
        description="prepare",
    )
    if args.stats:
        print(format_stats_table(stats))
    elif args.output_format == "none":  # the files hold the table; --stats prints it
        print(f"{stats_summary_line(stats)} (the table: --stats or stats.csv)")
    print(f"wrote {args.out}")
    return 0
