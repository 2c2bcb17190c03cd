"""``lasc evaluate``: per-case 3D metrics of a model on a dataset (``--model --data``) or of
predicted label files against the truth (``--pred --truth``); the core is
:mod:`src_monai.evaluation`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

# Light imports only (the pipeline's are in run): parsing and --help need no torch.
from src_monai.cli.infer import check_prediction_arguments, prediction_options
from src_monai.errors import LascError
from src_monai.io.files import check_empty_folder, ensure_empty_folder

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Per-case 3D metrics (Dice, HD95, ASD, volume error) of a model on a dataset (--model with
--data, optionally a --split subset) or of predicted label files against the truth (--pred
with --truth, paired by file name). Writes per_case.csv, summary.json, summary.txt and
boxplot.png into --out."""

EXAMPLES = """\
examples:
  lasc evaluate --model bundled --data ../shared/data/lasc13 --out eval-bundled
  lasc evaluate --pred seg/ --truth ../shared/data/lasc13/labelsTr --out eval-seg"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc evaluate`` options."""
    from src_monai.cli.infer import add_prediction_arguments

    parser.add_argument("--out", type=Path, required=True, help="report folder (new or empty)")
    source = parser.add_argument_group("what to evaluate (a model on data, or label folders)")
    source.add_argument(
        "--model", type=Path, help="model file, or bundled: predict the cases of --data"
    )
    source.add_argument("--data", type=Path, help="MSD-layout dataset")
    source.add_argument("--split", type=Path, help="split JSON (lasc prepare --folds/--format png)")
    source.add_argument(
        "--subset", default=None, help="subset of the split: test, valid, val (with --fold), train"
    )
    source.add_argument("--fold", type=int, default=0, help="partition of a k-fold split")
    source.add_argument("--pred", type=Path, help="folder of predicted label volumes")
    source.add_argument("--truth", type=Path, help="folder of true label volumes")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=2,
        help="classes in the label files, background included (--pred/--truth; default 2)",
    )
    add_prediction_arguments(parser)
    parser.add_argument(
        "--require-all",
        action="store_true",
        help="--pred/--truth: refuse when a truth case has no prediction (default: evaluate "
        "the cases in both folders and list the ones left out)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out (deletes nothing)"
    )


def _report_left_out(found, truth: Path) -> None:
    """Say which cases the evaluation leaves out (all named: they are also in summary.json)."""
    if found.without_prediction:
        total = len(found.pairs) + len(found.without_prediction)
        logger.warning(
            "%d of %d truth cases have no prediction and are left out (--require-all refuses "
            "instead): %s",
            len(found.without_prediction),
            total,
            ", ".join(found.without_prediction),
        )
    if found.without_truth:
        logger.warning(
            "%d prediction(s) have no truth in %s and are left out: %s",
            len(found.without_truth),
            truth,
            ", ".join(found.without_truth),
        )


def _cases_of_model(args: argparse.Namespace) -> list:
    """``--data``'s cases as evaluation pairs, those of ``--split``'s subset when given."""
    from src_monai.data.datasets import discover_msd
    from src_monai.data.splits import load_split
    from src_monai.evaluation.report import EvalPair

    dataset = discover_msd(args.data)
    cases = dataset.training
    if args.split:
        plan = load_split(args.split, known_cases=dataset.case_ids())
        subset = args.subset or ("test" if plan.kind == "holdout" else plan.validation_key)
        partition = plan.partitions[args.fold] if 0 <= args.fold < len(plan.partitions) else None
        if partition is None or subset not in partition:
            raise LascError(args.split, f"has no subset {subset!r} in partition {args.fold}")
        wanted = set(partition[subset])
        cases = [c for c in cases if c.case_id in wanted]
    return [EvalPair(c.case_id, None, c.label, c.image) for c in cases]


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc evaluate`` with parsed arguments."""
    from src_monai.cli.support import drive
    from src_monai.evaluation.metrics import empty_predictions, format_summary
    from src_monai.evaluation.report import (
        evaluate_pairs,
        pairs_from_folders,
        seen_cases_note,
        write_report,
    )
    from src_monai.inference.predictor import Predictor

    check_prediction_arguments(args)  # every option checked before any work
    if not 2 <= args.num_classes <= 255:
        raise LascError(
            None, f"--num-classes must be 2..255 (background included), got {args.num_classes}"
        )
    predictor, left_out = None, []
    if args.pred or args.truth:
        if not (args.pred and args.truth) or args.model or args.data:
            raise LascError(None, "give --pred and --truth together, or --model with --data")
        found = pairs_from_folders(args.pred, args.truth, require_all=args.require_all)
        pairs, left_out = found.pairs, found.without_prediction
        _report_left_out(found, args.truth)
        num_classes = args.num_classes
    elif args.model and args.data:
        predictor = Predictor.from_checkpoint(
            args.model, args.device, tri_planar=args.tri_planar, precision=args.precision
        )
        num_classes = predictor.spec.num_classes
        pairs = _cases_of_model(args)
    else:
        raise LascError(None, "give --model with --data, or --pred with --truth")
    check_empty_folder(args.out, overwrite=args.overwrite)  # made once there is a report
    rows = drive(
        evaluate_pairs(
            pairs,
            num_classes,
            predictor=predictor,
            options=None if predictor is None else prediction_options(args, predictor),
        ),
        description="evaluate",
        unit="case",
    )
    out = ensure_empty_folder(args.out, overwrite=args.overwrite)
    note = seen_cases_note(rows, predictor.spec if predictor is not None else None)
    summary = write_report(out, rows, overwrite=args.overwrite, left_out=left_out, seen_note=note)
    print(format_summary(summary, len(rows), empty_predictions(rows)))
    if note:
        logger.warning("%s", note)
    print(f"wrote {out}")
    return 0
