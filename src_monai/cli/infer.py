"""``lasc infer``: segment scans (or the earlier tool's PNG slices) into an output folder with
``summary.csv``; also the prediction options ``lasc evaluate`` shares.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

# Light imports only: arguments and paths are checked before torch and MONAI load (seconds).
from src_monai.errors import LascError
from src_monai.inference.measure import SEQUENCES
from src_monai.inference.options import PRECISIONS
from src_monai.io.files import creatable_folder

if TYPE_CHECKING:
    from src_monai.inference.predictor import PredictOptions, Predictor

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Segment the left atrium in 3D scans (.nii.gz, .nii, .nrrd, .mha; files or folders) or in the
earlier tool's PNG slices. Each scan gives OUT/<name>.nii.gz labels with the scan's exact
geometry and <name>_area_curve.csv; summary.csv gets one row per scan (LA volume, surface,
sphericity, diameters, quality flags). Nothing is replaced without --overwrite."""

EXAMPLES = """\
examples:
  lasc infer scan.nii.gz --out seg/
  lasc infer scans/ --out seg/ --model my_model.safetensors --skip-existing
  lasc infer scans/ --out seg/ --uncertainty --probabilities"""


def add_prediction_arguments(parser: argparse.ArgumentParser) -> None:
    """How a model is applied: shared by ``lasc infer`` and ``lasc evaluate``."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs (auto: a CUDA GPU when there is one)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' arithmetic (auto: bfloat16 on a GPU and on CPUs with native "
        "bfloat16, AVX512-BF16 or AMX; float32 elsewhere)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average over the flips the model was trained with (default: what the model "
        "recommends)",
    )
    parser.add_argument(
        "--postprocess",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the largest 3D component and fill holes (default: what the model recommends)",
    )
    parser.add_argument(
        "--tri-planar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="predict along all three axes and average (default: when the model was trained "
        "for it)",
    )
    parser.add_argument(
        "--whole-region",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a 3D segmenter: one pass over the atrium's region where it fits, not sliding "
        "windows (default: what the model recommends)",
    )


def check_prediction_arguments(args: argparse.Namespace) -> None:
    """The options :func:`add_prediction_arguments` added, checked before any work."""
    if args.batch_size < 1:
        raise LascError(None, "--batch-size must be >= 1")


def prediction_options(args: argparse.Namespace, predictor: Predictor) -> PredictOptions:
    """Those options for ``predictor``'s model: unset ones take what its file recommends."""
    return predictor.options(
        batch_size=args.batch_size,
        tta=args.tta,
        postprocess=args.postprocess,
        tri_planar=args.tri_planar,
        whole_region=args.whole_region,
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``lasc infer`` writes besides the labels, and what its QC flags check against."""
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <name>_probability.nii.gz (foreground probability)",
    )
    parser.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write <name>_uncertainty.nii.gz (0..1: how much augmented views of the scan "
        "disagree; about 7x the time) and add its scores to summary.csv",
    )
    parser.add_argument(
        "--sequence",
        choices=SEQUENCES,
        default="auto",
        help="the scans' MRI sequence, for the plausible atrium volume the QC flags check "
        "(bssfp 30-250 mL, lge 15-200 mL; auto: 15-250 mL)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc infer`` options."""
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="scans (.nii.gz, .nii, .nrrd, .mha, ...), PNG slices, folders of them, or a "
        "folder holding a DICOM series",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model file (.safetensors), or bundled (the default): the model shipped with "
        "the package",
    )
    add_prediction_arguments(parser)
    _add_output_arguments(parser)
    parser.add_argument(
        "--series",
        metavar="UID",
        help="an input folder holding several DICOM series: the SeriesInstanceUID to segment",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--box",
        metavar="S0:S1,A0:A1,B0:B1",
        help="one scan: segment around this box instead of the one the model finds (voxel "
        "indices, ends exclusive). S: the slices, along the array axis the model slices (the "
        "file's third for LASC'13 scans); A then B: the other two array axes in file order "
        "(the file's first and second for LASC'13 scans)",
    )
    where.add_argument(
        "--box-mm",
        metavar="X0:X1,Y0:Y1,Z0:Z1",
        help="one scan: the same in world millimetres (RAS+, as napari and the file's affine "
        "show them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep existing outputs and segment only the missing ones",
    )
    parser.add_argument(
        "--rgb-map",
        default=None,
        help='PNG inputs: colour of each class, e.g. "{(0,0,0):0, (255,0,255):1}"',
    )


def _given_box(args: argparse.Namespace, plans, predictor: Predictor):
    """``--box``/``--box-mm`` as a slices-first voxel box of the one input scan (``plans``:
    the inputs as :func:`plan_files` found them), its Z across the scan axis the model
    slices once the scan is oriented as its training scans."""
    from src_monai.data.crops import AtriumBox
    from src_monai.inference.steps import model_grid
    from src_monai.io.scans import read_geometry

    if len(plans) != 1 or plans[0].source.suffix.lower() == ".png":
        option = "--box" if args.box else "--box-mm"
        raise LascError(None, f"{option} is for one scan; {len(plans)} inputs given")
    geometry = read_geometry(plans[0].source, args.series)
    grid = model_grid(predictor.spec, geometry.shape, affine=geometry.stated_affine)
    slice_axis = grid.scan_slice_axis
    if args.box_mm:
        return AtriumBox.from_world(args.box_mm, geometry.affine, geometry.shape, slice_axis)
    shape = geometry.shape
    slices_first = (shape[slice_axis], *[n for a, n in enumerate(shape) if a != slice_axis])
    return AtriumBox.parse(args.box, slices_first)


def run(args: argparse.Namespace) -> int:
    """Execute ``lasc infer`` with parsed arguments."""
    from src_monai.cli.support import drive
    from src_monai.io.inputs import find_inputs
    from src_monai.io.png import parse_rgb_map

    check_prediction_arguments(args)  # checked before any work
    rgb_map = parse_rgb_map(args.rgb_map) if args.rgb_map else None
    found = find_inputs(args.inputs)  # a missing input refused before the pipeline loads
    if args.series and not any(scan.is_dir() for scan in found[0]):
        raise LascError("--series", "picks a series of a DICOM folder: the inputs hold none")
    creatable_folder(args.out)
    from src_monai.inference.files import plan_files, predict_files
    from src_monai.inference.predictor import Predictor

    # Every input's header and every output planned and checked before the model loads: a
    # plan that would lose data is refused before any work or any new file.
    plans = plan_files(
        args.inputs,
        args.out,
        probabilities=args.probabilities,
        uncertainty=args.uncertainty,
        overwrite=args.overwrite,
        skip_existing=args.skip_existing,
        series=args.series,
        found=found,
    )
    predictor = Predictor.from_checkpoint(
        args.model, args.device, tri_planar=args.tri_planar, precision=args.precision
    )
    box = _given_box(args, plans, predictor) if args.box or args.box_mm else None
    rows = drive(
        predict_files(
            predictor,
            args.inputs,
            args.out,
            options=prediction_options(args, predictor),
            save_probabilities=args.probabilities,
            save_uncertainty=args.uncertainty,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
            rgb_map=rgb_map,
            box=box,
            series=args.series,
            plans=plans,
            sequence=args.sequence,
        ),
        description="infer",
        unit="file",
    )
    for row in rows:
        volumes = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("input", "output"))
        print(f"{row['output']}: {volumes}")
    print(f"wrote {args.out}")
    return 0
