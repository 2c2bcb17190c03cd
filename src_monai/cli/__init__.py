"""The ``lasc`` command: one entry point, a subcommand per job.

Each subcommand lives in its module here (``add_arguments`` + ``run``), which only parses
arguments and calls the core. ``python -m src_monai.cli`` is the same command (``torchrun``
starts it so).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from src_monai import __version__
from src_monai.cli import demo, evaluate, export_bundle, infer, prepare, train
from src_monai.cli.support import (
    LascArgumentParser,
    add_common_arguments,
    configure_logging,
    report_errors,
)

SUBCOMMANDS = {
    "prepare": (
        prepare,
        "statistics and patient-level folds of an MSD dataset, or the earlier tool's PNG dataset",
    ),
    "train": (train, "train a model (one or two stages, 2.5D or 3D) from a config file"),
    "evaluate": (evaluate, "per-case 3D metrics of a model or of predicted labels"),
    "infer": (infer, "segment scans or PNG slices with a trained model"),
    "demo": (demo, "segment the bundled sample scan with the bundled model"),
    "export-bundle": (
        export_bundle,
        "write a model as a MONAI bundle that runs without napari-lasc",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = LascArgumentParser(
        prog="lasc",
        description="Left-atrium segmentation of 3D cardiac MRI (napari-lasc).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in SUBCOMMANDS.items():
        sub = commands.add_parser(
            name,
            help=summary,
            description=module.DESCRIPTION,
            epilog=module.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        add_common_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return report_errors(args.verbose, lambda: args.run(args))
