"""Patient-level k-fold cross-validation of a training recipe, then the final model.

    python scripts/cross_validate.py configs/lasc13_2d.toml --data ../shared/data/lasc13 \\
        --out runs/cv [--folds 4] [--parallel 5] [--set train.epochs=30 ...]

1. Writes ``folds.json`` (k folds by patient, seed 0) and ``all.json`` (every case in training).
   Several ``--data`` folders train together (``data.extra_datasets``) in joint folds: each
   fold holds out a quarter of each dataset, and every dataset gets its own table.
2. Trains one model per fold and the final model on all cases, ``--parallel`` at a time, each
   as ``python -m src_monai.cli train CONFIG --set ...`` (logs in ``OUT/logs``).
3. Evaluates each fold's last checkpoint on its held-out patients (not the best on validation:
   the folds validate on those same patients, and the final model has nothing to choose on)
   with and without test-time augmentation and post-processing: per-case 3D Dice and HD95
   (mm) in ``cv_per_case.csv``, means in ``cv_summary.json``. The variant with the best mean
   Dice (then HD95) is chosen.
4. Writes ``OUT/model.safetensors``: the final model, fp16, whose metadata recommends the
   chosen inference variant and records the cross-validation.

An interrupted cross-validation continues with the same command and ``--resume``: the folds
of ``OUT/folds.json`` are kept, a run that trained all its epochs is kept, an interrupted
one continues from its last checkpoint (``lasc train --resume``), and one without a
checkpoint starts again in a new folder (``fold0-2``: nothing is deleted).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from src_monai.config import STAGES, Stage, load_config, save_config
from src_monai.data.datasets import discover_datasets
from src_monai.data.splits import SplitPlan, joint_kfold_split, load_split, save_split
from src_monai.evaluation.report import EvalPair, evaluate_pairs
from src_monai.inference.predictor import Predictor
from src_monai.io.tables import write_csv
from src_monai.model.files import load_model, load_spec, save_model
from src_monai.model.spec import CrossValidation, InferenceDefaults
from src_monai.progress import run_to_end

logger = logging.getLogger("cross_validate")

VARIANTS = {  # name: (tta, postprocess)
    "plain": (False, False),
    "post": (False, True),
    "tta": (True, False),
    "tta+post": (True, True),
}


def run_folder(out: Path, name: str) -> Path | None:
    """The latest run folder of job ``name`` that holds a checkpoint (``name``, ``name-2``...)."""
    folders = [
        p
        for p in (out / "runs").glob(f"{name}*")
        if re.fullmatch(rf"{re.escape(name)}(-\d+)?", p.name)
        and (p / "checkpoints" / "last_state.pt").is_file()
    ]
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def fold_model(out: Path, name: str) -> Path:
    """The last checkpoint of job ``name``'s run (the fold models are scored on it)."""
    folder = run_folder(out, name)
    if folder is None:
        raise SystemExit(f"{out / 'runs'}: no run of {name} with a checkpoint")
    return folder / "checkpoints" / "last.safetensors"


def trained_to_the_end(folder: Path) -> bool:
    """All the epochs its config asks for are in its ``metrics.csv``."""
    epochs = load_config(folder / "config.toml").train.epochs
    with open(folder / "metrics.csv", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle)) >= epochs


def launch(
    name: str, config: Path, overrides: list[str], out: Path, resume: Path | None = None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "src_monai.cli", "train"]
    if resume is not None:
        command += ["--resume", str(resume)]
    else:
        command.append(str(config))
        for item in overrides:
            command += ["--set", item]
    log = open(out / "logs" / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
    logger.info("start %s", name)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def variant_summary(rows: list[dict]) -> dict[str, float]:
    """Mean and sample sd of per-case Dice and HD95 (undefined HD95 left out), and the count."""
    dice = np.array([r["dice"] for r in rows])
    hd = np.array([r["hd95_mm"] for r in rows], dtype=float)
    return {
        "dice_mean": float(dice.mean()),
        "dice_sd": float(dice.std(ddof=1)),
        "hd95_mean": float(np.nanmean(hd)),
        "hd95_sd": float(np.nanstd(hd, ddof=1)),
        "cases": len(rows),
    }


def choice_key(stats: dict) -> tuple[float, float]:
    """How variants are ranked: mean Dice (to 3 places), then lower HD95; with several
    datasets, the means of their own means (a large dataset does not outvote a small one)."""
    parts = list(stats.get("datasets", {}).values()) or [stats]
    dice = float(np.mean([part["dice_mean"] for part in parts]))
    hd95 = float(np.mean([part["hd95_mean"] for part in parts]))
    return round(dice, 3), -hd95


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path)
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="MSD-layout folder(s); several train together, in joint folds",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-final", action="store_true", help="skip the final model")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted cross-validation in OUT (its folds and finished runs "
        "kept, interrupted runs continued from their last checkpoint)",
    )
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        metavar="FOLD",
        help="train and score only this fold (repeatable): screening a recipe on one or two "
        "folds before the full cross-validation; the summary says which folds it covers",
    )
    parser.add_argument(
        "--stage",
        choices=STAGES,
        help="of a two-stage config: cross-validate this stage (its merged config is saved "
        "as OUT/config_<stage>.toml and trained)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.out.resolve()
    if args.resume and not (out / "folds.json").is_file():
        parser.error(f"--resume: {out} holds no folds.json (no cross-validation to continue)")
    (out / "logs").mkdir(parents=True, exist_ok=args.resume)
    if args.stage:
        staged = out / f"config_{args.stage}.toml"
        if not args.resume:
            save_config(load_config(args.config, stage=args.stage), staged)
        args.config = staged
    dataset = discover_datasets(args.data)
    dataset_of = {c.case_id: c.dataset or args.data[0].name for c in dataset.training}
    groups = [[c for c in dataset.case_ids() if dataset_of[c] == root.name] for root in args.data]
    folds = joint_kfold_split(groups, args.folds, seed=0)
    if args.resume:
        if load_split(out / "folds.json").to_json() != folds.to_json():
            parser.error(f"--resume: {out / 'folds.json'} holds other folds than these data")
    else:
        save_split(out / "folds.json", folds)
        everything = SplitPlan(
            "all", 0, dataset.case_ids(), [{"train": dataset.case_ids(), "val": []}]
        )
        save_split(out / "all.json", everything)
    common = [
        f"data.dataset='{args.data[0].resolve()}'",
        "data.extra_datasets=[{}]".format(", ".join(f"'{p.resolve()}'" for p in args.data[1:])),
        f"train.runs_dir='{out / 'runs'}'",
        *args.overrides,
    ]
    jobs = [
        (
            f"fold{k}",
            [f"data.split='{out / 'folds.json'}'", f"data.fold={k}", f"train.run_name='fold{k}'"],
        )
        for k in range(args.folds)
        if not args.only or k in args.only
    ]
    if not args.no_final:
        jobs.append(
            ("final", [f"data.split='{out / 'all.json'}'", "data.fold=0", "train.run_name='final'"])
        )
    started = time.perf_counter()
    running: dict[str, subprocess.Popen] = {}
    pending = list(jobs)
    failed = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name, extra = pending.pop(0)
            earlier = run_folder(out, name) if args.resume else None
            if earlier is not None and trained_to_the_end(earlier):
                logger.info("%s: kept (%s trained to the end)", name, earlier.name)
                continue
            running[name] = launch(name, args.config, common + extra, out, resume=earlier)
        for name, process in list(running.items()):
            if process.poll() is not None:
                logger.info(
                    "%s ended with %d after %.0f s",
                    name,
                    process.returncode,
                    time.perf_counter() - started,
                )
                if process.returncode != 0:
                    failed.append(name)
                del running[name]
        time.sleep(1)
    if failed:
        logger.error("failed: %s (see %s)", ", ".join(failed), out / "logs")
        return 1
    train_seconds = time.perf_counter() - started

    scored = [k for k in range(args.folds) if not args.only or k in args.only]
    if load_spec(fold_model(out, f"fold{scored[0]}")).stage is Stage.LOCALISER:
        logger.info("localisers find boxes: score them with scripts/cv_two_stage.py")
        return 0
    rows = []
    by_case = {c.case_id: c for c in dataset.training}
    for k, partition in enumerate(folds.partitions):
        if k not in scored:
            continue
        predictor = Predictor.from_checkpoint(fold_model(out, f"fold{k}"), args.device)
        pairs = [EvalPair(c, None, by_case[c].label, by_case[c].image) for c in partition["val"]]
        for variant, (tta, post) in VARIANTS.items():
            for row in run_to_end(
                evaluate_pairs(
                    pairs,
                    dataset.num_classes,
                    predictor=predictor,
                    options=predictor.options(tta=tta, postprocess=post),
                    # A crop model alone is scored on the crop around the true atrium.
                    true_box=predictor.spec.stage.in_box,
                )
            ):
                rows.append(
                    {
                        "fold": k,
                        "dataset": dataset_of[row["case"]],
                        "variant": variant,
                        "case": row["case"],
                        "dice": row["dice"],
                        "hd95_mm": row["hd95_mm"],
                        "asd_mm": row["asd_mm"],
                        "volume_error_pct": row["volume_error_pct"],
                        "legacy_dice_with_background": row["legacy_dice_with_background"],
                    }
                )
        logger.info("fold %d evaluated", k)
    write_csv(out / "cv_per_case.csv", rows)
    summary = {}
    for variant in VARIANTS:
        chosen = [r for r in rows if r["variant"] == variant]
        hd = np.array([r["hd95_mm"] for r in chosen], dtype=float)
        summary[variant] = {
            **variant_summary(chosen),
            "hd95_undefined": int(np.isnan(hd).sum()),
        }
        if len(args.data) > 1:
            summary[variant]["datasets"] = {
                root.name: variant_summary([r for r in chosen if r["dataset"] == root.name])
                for root in args.data
            }
    best = max(summary, key=lambda v: choice_key(summary[v]))
    report = {
        "variants": summary,
        "chosen": best,
        "folds": folds.to_json(),
        "folds_scored": scored,
        "training_seconds": train_seconds,
        "overrides": args.overrides,
        "config": str(args.config),
    }
    (out / "cv_summary.json").write_text(json.dumps(report, indent=1))
    for variant, stats in summary.items():
        logger.info(
            "%-9s Dice %.4f ± %.4f  HD95 %.2f ± %.2f mm%s",
            variant,
            stats["dice_mean"],
            stats["dice_sd"],
            stats["hd95_mean"],
            stats["hd95_sd"],
            "  <- chosen" if variant == best else "",
        )
        for name, part in stats.get("datasets", {}).items():
            logger.info(
                "  %-20s Dice %.4f ± %.4f  HD95 %.2f ± %.2f mm (%d cases)",
                name,
                part["dice_mean"],
                part["dice_sd"],
                part["hd95_mean"],
                part["hd95_sd"],
                part["cases"],
            )

    if not args.no_final:
        final = fold_model(out, "final").with_name("best.safetensors")
        network, spec = load_model(final)
        tta, post = VARIANTS[best]
        accuracy = CrossValidation(
            folds=args.folds,
            chosen=best,
            **{k: round(v, 4) for k, v in summary[best].items() if k != "datasets"},
        )
        spec = spec.with_inference(InferenceDefaults(tta=tta, postprocess=post), accuracy)
        save_model(out / "model.safetensors", network, spec, half=True)
        logger.info(
            "final model: %s (%.1f MB)",
            out / "model.safetensors",
            os.path.getsize(out / "model.safetensors") / 1e6,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
