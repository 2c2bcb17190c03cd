"""``lasc train CONFIG`` (or ``--resume RUN_DIR``); on several GPUs
``torchrun --nproc_per_node N -m src_monai.cli train CONFIG``. The core is
:mod:`src_monai.training.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from src_monai.config import STAGES, Config, is_two_stage_config
from src_monai.errors import LascError
from src_monai.legacy.ini import load_any_config as load_config

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Train a segmentation model from a config file (TOML, or the earlier tool's
train_eval_infer.config). Each run gets its own folder under train.runs_dir with its config,
split, curves, previews and checkpoints; an existing run is never reused. Create a file named
STOP in the run folder to end after the current step (validated and saved); continue an
interrupted run with --resume. On several GPUs:
torchrun --nproc_per_node N -m src_monai.cli train CONFIG."""

EXAMPLES = """\
examples:
  lasc train configs/lasc13_two_stage.toml --set data.dataset=../shared/data/lasc13
  lasc train configs/lasc13_two_stage.toml --set segmenter.train.epochs=5 --seed 1
  lasc train --resume runs/two-stage/20261128-101500"""


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
    from src_monai.training.trainer import run_training  # torch and MONAI: not for --help
    from src_monai.training.two_stage import run_two_stage_training

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("src_monai").setLevel(logging.WARNING)  # rank 0 speaks for all
    if args.resume is not None:
        if args.config or args.overrides or args.seed is not None:
            raise LascError(
                None,
                "--resume continues a run with its own config: give no CONFIG, --set or --seed",
            )
        if (args.resume / "stages.toml").is_file():
            job = run_two_stage_training(resume=args.resume)
            return _report_two_stage(drive(job, description="train"))
        config = Config()
    elif args.config is None:
        raise LascError(None, "give a CONFIG file (or --resume RUN_DIR)")
    else:
        overrides = list(args.overrides) + (
            [f"train.seed={args.seed}"] if args.seed is not None else []
        )
        if is_two_stage_config(args.config):
            configs = {stage: load_config(args.config, overrides, stage=stage) for stage in STAGES}
            return _report_two_stage(drive(run_two_stage_training(configs), description="train"))
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


def _report_two_stage(result) -> int:
    from src_monai.cli.support import EXIT_INTERRUPTED

    if int(os.environ.get("RANK", "0")) == 0:
        for stage, stage_result in result.stages.items():
            print(f"{stage}: {stage_result.stopped} after {stage_result.epochs_done} epoch(s)")
        if result.model is not None:
            print(f"model (both stages): {result.model}")
        else:
            print(
                f"stopped ({result.stopped}); continue with `lasc train --resume {result.run_dir}`"
            )
        print(f"run folder: {result.run_dir}")
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0
