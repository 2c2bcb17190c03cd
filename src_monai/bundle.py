"""``lasc export-bundle MODEL OUTDIR``: a model as a MONAI bundle that needs none of our code.

The bundle runs with MONAI alone (``python -m monai.bundle run --config_file
configs/inference.json``; MONAI's CLI needs ``fire``) and gives the labels ``lasc infer`` gives:

- the same intensity normalisation from MONAI transforms (``ScaleIntensityRangePercentilesd``
  0.5-99.5 %, then ``NormalizeIntensityd``), on the file's own voxel axes (no reorientation,
  as in ``lasc infer``);
- the 2.5D context (neighbouring slices as channels, edge slices repeated) built by a
  ``Lambdad`` expression;
- MONAI's ``SliceInferer`` over the slice axis with the training patch as its window: it pads
  smaller slices to the patch, centred, and tiles larger ones with Gaussian-blended windows,
  as :class:`src_monai.infer.Predictor` does;
- argmax, then (when the model's cross-validation chose it) ``KeepLargestConnectedComponentd``
  and ``FillHolesd``, which :func:`src_monai.infer.postprocess_labels` equals;
- ``SaveImaged`` with the scan's affine, as ``<name>_seg.nii.gz``.

The weights are a plain state dict (``models/model.pt``, read with ``weights_only=True``); the
network is MONAI's, described in ``network_def``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import LascError
from .fileutil import atomic_destination, ensure_empty_folder, write_text
from .model import load_model, network_spec, plain_state_dict

logger = logging.getLogger(__name__)

LICENCE_NOTE = """\
Model weights: trained by napari-lasc on the Medical Segmentation Decathlon Task02_Heart
(left atrium; King's College London, LASC'13), which is licensed CC-BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/). The weights, as a work derived from that
data, are shared under the same licence: CC-BY-SA 4.0. Attribute the Medical Segmentation
Decathlon (Antonelli et al., Nature Communications 13, 4128, 2022; Simpson et al.,
arXiv:1902.09063) and the LASC'13 challenge (Tobon-Gomez et al., IEEE TMI 34(7), 2015).
"""

# MONAI's bundle runner reads configs/logging.conf when present (the layout of MONAI's own).
LOGGING_CONF = """\
[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def bundle_configs(metadata: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata.json, inference.json)`` contents for a model's metadata."""
    from . import __version__
    from .config import config_from_dict

    data = metadata["data"]
    if data.get("tri_planar"):
        raise LascError(
            None,
            "tri-planar models cannot be exported yet (the bundle predicts along one axis); "
            "export a single-axis model",
        )
    if data.get("normalisation") != "zscore":
        raise LascError(None, f"normalisation {data.get('normalisation')!r} is not exported")
    model_config = config_from_dict({"model": metadata["model"]}).model
    name, arguments, stem = network_spec(
        model_config, int(metadata["in_channels"]), int(metadata["num_classes"])
    )
    if stem is not None:
        raise LascError(
            None,
            "models with the earlier tool's large first kernel are not MONAI networks alone "
            "and cannot be exported",
        )
    num_classes = int(metadata["num_classes"])
    class_names = list(data["class_names"])
    slice_axis = int(data["slice_axis"])
    context = int(data["context_slices"])
    half = context // 2
    patch = [int(s) for s in data["patch_size"]]
    postprocess = bool(metadata.get("inference", {}).get("postprocess", False))
    dim = slice_axis + 1  # the tensor is channel-first: (1, X, Y, Z)
    context_expression = (
        f"$lambda x: torch.cat([x.index_select({dim}, (torch.arange(x.shape[{dim}]) + k)"
        f".clamp(0, x.shape[{dim}] - 1)) for k in range({-half}, {half + 1})], dim=0)"
    )
    post_steps: list[dict[str, Any]] = [
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    if postprocess:
        foreground = list(range(1, num_classes))
        post_steps += [
            {
                "_target_": "KeepLargestConnectedComponentd",
                "keys": "pred",
                "applied_labels": foreground,
                "independent": True,
                "connectivity": 3,
            },
            {
                "_target_": "FillHolesd",
                "keys": "pred",
                "applied_labels": foreground,
                "connectivity": 3,
            },
        ]
    post_steps.append(
        {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_dtype": "$numpy.uint8",
            "resample": False,
            "separate_folder": False,
            "print_log": False,
        }
    )
    inference = {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": name, **arguments},
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": True},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {
                    "_target_": "ScaleIntensityRangePercentilesd",
                    "keys": "image",
                    "lower": 0.5,
                    "upper": 99.5,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "NormalizeIntensityd", "keys": "image"},
                {"_target_": "Lambdad", "keys": "image", "func": context_expression},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },
        "inferer": {
            "_target_": "SliceInferer",
            "roi_size": patch,
            "spatial_dim": slice_axis,
            "sw_batch_size": 16,
            "overlap": 0.25,
            "mode": "gaussian",
            "padding_mode": "constant",
            "progress": False,
        },
        "postprocessing": {"_target_": "Compose", "transforms": post_steps},
        "predict": (
            "$lambda item: @postprocessing({'pred': @inferer(item['image'][None].to(@device), "
            "@network)[0].cpu()})"
        ),
        "initialize": [
            "$@network.load_state_dict(torch.load(@ckpt_path, map_location=@device, "
            "weights_only=True))",
            "$torch.set_grad_enabled(False)",
        ],
        "run": ["$[@predict(item) for item in @dataset]"],
    }
    cv = metadata.get("cross_validation", {})
    bundle_metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": __version__,
        "changelog": {__version__: "exported by napari-lasc"},
        "monai_version": _installed("monai"),
        "pytorch_version": _installed("torch"),
        "numpy_version": _installed("numpy"),
        "required_packages_version": {"nibabel": _installed("nibabel")},
        "name": "napari-lasc left atrium 2.5D",
        "task": "Left atrium segmentation of 3D cardiac MRI, slice by slice",
        "description": (
            f"2D {name} over {context} neighbouring slices along array axis {slice_axis}; "
            "exported from napari-lasc"
        ),
        "authors": "napari-lasc developers",
        "copyright": "Copyright napari-lasc developers; weights CC-BY-SA 4.0 (see LICENSE)",
        "data_source": "Medical Segmentation Decathlon Task02_Heart (LASC'13)",
        "data_type": "nibabel",
        "image_classes": "single-channel MRI volume, any intensity range",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(class_names)),
        "pred_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(class_names)),
        "eval_metrics": {
            "mean_dice": cv.get("dice_mean"),
            "mean_hd95_mm": cv.get("hd95_mean"),
        },
        "intended_use": "Research only; not for clinical decisions",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": context,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): f"slice {i - half:+d}" for i in range(context)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": num_classes,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): n for i, n in enumerate(class_names)},
                }
            },
        },
        "napari_lasc": {
            "slice_axis": slice_axis,
            "context_slices": context,
            "postprocess": postprocess,
            "training_split": metadata.get("split"),
            "cross_validation": cv or None,
        },
    }
    return bundle_metadata, inference


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def export_bundle(model_path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the MONAI bundle of the model at ``model_path`` into ``out`` (new or empty)."""
    model_path = Path(model_path)
    network, metadata = load_model(model_path)
    try:
        bundle_metadata, inference = bundle_configs(metadata)
    except LascError as exc:
        raise LascError(model_path, exc.problem) from None
    out = ensure_empty_folder(out, overwrite=overwrite)
    (out / "configs").mkdir(exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "docs").mkdir(exist_ok=True)
    files = {
        "configs/metadata.json": json.dumps(bundle_metadata, indent=2) + "\n",
        "configs/inference.json": json.dumps(inference, indent=2) + "\n",
        "docs/README.md": _readme(bundle_metadata),
        "configs/logging.conf": LOGGING_CONF,
        "LICENSE": LICENCE_NOTE,
    }
    for name, text in files.items():
        write_text(out / name, text, overwrite=overwrite)
    # fp32 weights: the bundle's users load them into a fresh fp32 network.
    state = {
        key: value.float() if value.is_floating_point() else value
        for key, value in plain_state_dict(network).items()
    }
    with atomic_destination(out / "models" / "model.pt", overwrite=overwrite) as temporary:
        torch.save(state, temporary)
    logger.info("MONAI bundle of %s written to %s", model_path.name, out)
    return out


def _readme(bundle_metadata: dict[str, Any]) -> str:
    info = bundle_metadata["napari_lasc"]
    cv = info["cross_validation"] or {}
    accuracy = (
        f"Patient-level {cv.get('folds')}-fold cross-validation: mean Dice "
        f"{cv.get('dice_mean')}, mean HD95 {cv.get('hd95_mean')} mm."
        if cv
        else "No cross-validation figures are recorded in this model."
    )
    return f"""# {bundle_metadata["name"]}

{bundle_metadata["description"]}. Exported from napari-lasc {bundle_metadata["version"]}.

## Run it
Needs `monai`, `torch`, `nibabel` and, for MONAI's command line, `fire`:

    pip install monai nibabel fire
    cd <this folder>
    python -m monai.bundle run --config_file configs/inference.json \\
        --dataset_dir /path/to/scans --output_dir /path/to/labels

Each `*.nii` / `*.nii.gz` scan in `dataset_dir` gives `<name>_seg.nii.gz` in `output_dir`:
0 background, 1 left atrium, with the scan's affine. The result equals napari-lasc's
`lasc infer` on the same scan (napari-lasc tests this).

## What it does
The scan stays in its own voxel axes (no reorientation). Intensities are clipped to their
0.5-99.5 percentiles and z-scored; slices along array axis {info["slice_axis"]} go to the network
with {info["context_slices"] // 2} neighbour(s) on each side as extra channels; MONAI's
`SliceInferer` pads small slices to the training patch and tiles large ones.
{"The largest 3D component is kept and holes are filled." if info["postprocess"] else ""}

## Accuracy and limits
{accuracy} Trained on {len((info["training_split"] or {}).get("train", []))} MSD Task02_Heart
scans (1.25 x 1.25 x 1.37 mm, 3D balanced SSFP); other sequences, resolutions or pathologies
are untested. Research use only.

## Licence
See LICENSE: the weights derive from CC-BY-SA 4.0 data and carry that licence.
"""


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lasc export-bundle`` options."""
    parser.add_argument("model", type=Path, help="model file (.safetensors); 'bundled' for ours")
    parser.add_argument("out", type=Path, help="bundle folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")


def run(args: argparse.Namespace) -> int:
    from .model import BUNDLED_MODEL

    model = BUNDLED_MODEL if str(args.model) == "bundled" else args.model
    out = export_bundle(model, args.out, overwrite=args.overwrite)
    print(f"wrote MONAI bundle {out}")
    print(
        f"run it: cd {out} && python -m monai.bundle run --config_file configs/inference.json "
        "--dataset_dir SCANS --output_dir LABELS"
    )
    return 0


if __name__ == "__main__":
    from .cli_support import module_main

    raise SystemExit(
        module_main(add_arguments, run, prog="python -m src_monai.bundle", description=__doc__)
    )
