"""``lasc train CONFIG`` (or ``--resume RUN_DIR``); on several GPUs
``torchrun --nproc_per_node N -m src_monai.cli train CONFIG``. The core is
:mod:`src_monai.training.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from src_monai.config import Config, load_config
from src_monai.errors import LascError
from src_monai.training.trainer import run_training

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc train`` options."""
    parser.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="config file: TOML, or the earlier tool's train_eval_infer.config",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint",
    )
    parser.add_argument("--seed", type=int, help="shortcut for --set train.seed=N")


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc train`` with parsed arguments."""
    from src_monai.cli.support import EXIT_INTERRUPTED, drive

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("src_monai").setLevel(logging.WARNING)  # rank 0 speaks for all
    if args.resume is not None:
        if args.config or args.overrides or args.seed is not None:
            raise LascError(
                None,
                "--resume continues a run with its own config: give no CONFIG, --set or --seed",
            )
        config = Config()
    elif args.config is None:
        raise LascError(None, "give a CONFIG file (or --resume RUN_DIR)")
    else:
        overrides = list(args.overrides) + (
            [f"train.seed={args.seed}"] if args.seed is not None else []
        )
        config = load_config(args.config, overrides)
    result = drive(run_training(config, resume=args.resume), description="train")
    if int(os.environ.get("RANK", "0")) == 0:
        quality = (
            f"best validation Dice {result.best_dice:.4f} at epoch {result.best_epoch}"
            if result.best_dice >= 0
            else "no validation cases: the model is the last epoch"
        )
        print(f"{result.stopped} after {result.epochs_done} epoch(s); {quality}")
        print(f"run folder: {result.run_dir}")
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0
