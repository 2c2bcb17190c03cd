"""Cross-validate several variants of a training recipe and tabulate them (a GPU goes faster).

    python scripts/recipe_search.py configs/lasc13_two_stage.toml --stage segmenter \\
        --data ../shared/data/lasc13 --out runs/search [--parallel 4] [--variants baseline ...]

Each variant is ``scripts/cross_validate.py`` (4 patient-level folds, no final model) with its
``--set`` overrides on top of the config; the folds are the same for every variant (seed 0).
Writes ``OUT/<variant>/cv_summary.json`` and ``OUT/recipe_search.json`` (each variant's
overrides, slices seen per fold, training seconds, and mean Dice / HD95 of its best
inference variant) and logs the table. A crop model is scored on the crop around the true
atrium (stage 2 alone), as the rows of ``cv_per_case.csv`` say.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger("recipe_search")

SCRIPTS = Path(__file__).resolve().parent

# name: overrides on top of the config. The baseline is the config as it is.
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "slices48k": ["train.epochs=30"],
    "slices96k": ["train.epochs=60"],
    "context3": ["data.context_slices=3"],
    "no_ema": ["train.ema_decay=0.0"],
    "crop160": ["data.crop_size=160"],
    "jitter10": ["data.crop_jitter=10"],
    "adamw_cosine": ["train.optimizer='adamw'", "train.scheduler='cosine'"],
    "dice_focal": ["train.loss='dice_focal'"],
    "augment_p05": ["augment.probability=0.5"],
    "filters32": ["model.base_filters=32"],
}


def slices_seen(config: Path, overrides: list[str], stage: str | None) -> int:
    """Training slices per fold model: epochs x steps x batch, after the overrides."""
    from src_monai.config import load_config

    train = load_config(config, overrides, stage=stage).train
    return train.epochs * train.steps_per_epoch * train.batch_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parallel", type=int, default=1, help="fold trainings at a time")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--stage", help="of a two-stage config: the stage to search")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    table = {}
    for name in args.variants:
        overrides = [*args.overrides, *VARIANTS[name]]
        command = [sys.executable, str(SCRIPTS / "cross_validate.py"), str(args.config)]
        command += ["--data", str(args.data), "--out", str(args.out / name), "--no-final"]
        command += ["--parallel", str(args.parallel), "--device", args.device]
        command += ["--stage", args.stage] if args.stage else []
        for item in ["train.preview_slices=0", *overrides]:
            command += ["--set", item]
        logger.info("variant %s: %s", name, " ".join(overrides) or "(the config)")
        if subprocess.run(command).returncode != 0:
            logger.error("variant %s failed (logs in %s)", name, args.out / name / "logs")
            continue
        summary = json.loads((args.out / name / "cv_summary.json").read_text())
        best = summary["variants"][summary["chosen"]]
        table[name] = {
            "overrides": overrides,
            "slices_per_fold": slices_seen(args.config, overrides, args.stage),
            "training_seconds": round(summary["training_seconds"], 1),
            "inference": summary["chosen"],
            **{k: round(v, 4) for k, v in best.items()},
        }
        logger.info("%-13s %s", name, table[name])
        (args.out / "recipe_search.json").write_text(json.dumps(table, indent=1))
    for name, row in table.items():
        logger.info(
            "%-13s Dice %.4f ± %.4f  HD95 %.2f ± %.2f mm  %d slices  %.0f s  (%s)",
            name,
            row["dice_mean"],
            row["dice_sd"],
            row["hd95_mean"],
            row["hd95_sd"],
            row["slices_per_fold"],
            row["training_seconds"],
            row["inference"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
