"""A model as a MONAI bundle that runs without napari-lasc installed (``lasc export-bundle``).

The bundle runs with MONAI (``python -m monai.bundle run --config_file configs/inference.json``;
MONAI's CLI needs ``fire``) and gives the labels ``lasc infer`` gives (tests check both kinds).

A **two-stage model** (the shipped kind): both networks are MONAI's, described in
``localiser_def`` and ``network_def`` with their weights in ``models/localiser.pt`` and
``models/model.pt``; the steps between them (orientation, resampling, the localiser's box,
stage 2's windows or crops inside it, the way back) are ``scripts/lasc_pipeline.py``, a copy of
:mod:`src_monai.model.bundle_pipeline`, which imports only MONAI, PyTorch, nibabel, NumPy and
SciPy, with every number it needs in the config's ``pipeline``.

A **one-stage model** is MONAI's parts alone:

- the same intensity normalisation from MONAI transforms (``ScaleIntensityRangePercentilesd``
  0.5-99.5 %, then ``NormalizeIntensityd``), on the file's own voxel axes (no reorientation,
  as in ``lasc infer`` for such models);
- the 2.5D context (neighbouring slices as channels, edge slices repeated) built by a
  ``Lambdad`` expression;
- MONAI's ``SliceInferer`` over the slice axis with the training patch as its window: it pads
  smaller slices to the patch, centred, and tiles larger ones with Gaussian-blended windows,
  as :class:`src_monai.inference.predictor.Predictor` does;
- argmax, then (when the model's cross-validation chose it) ``KeepLargestConnectedComponentd``
  and ``FillHolesd``, which :func:`src_monai.inference.postprocess.postprocess_labels` equals;
- ``SaveImaged`` with the scan's affine, as ``<name>_seg.nii.gz``.

The weights are plain state dicts (read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from src_monai.errors import LascError
from src_monai.io.files import atomic_destination, ensure_empty_folder, write_text
from src_monai.model.files import load_model
from src_monai.model.networks import network_spec, plain_state_dict
from src_monai.model.spec import CrossValidation, ModelSpec, Stage

logger = logging.getLogger(__name__)


LICENCE_NOTE = """\
Model weights: trained by napari-lasc on the Medical Segmentation Decathlon Task02_Heart
(left atrium; King's College London, LASC'13), which is licensed CC-BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/). The weights, as a work derived from that
data, are shared under the same licence: CC-BY-SA 4.0. Attribute the Medical Segmentation
Decathlon (Antonelli et al., Nature Communications 13, 4128, 2022; Simpson et al.,
arXiv:1902.09063) and the LASC'13 challenge (Tobon-Gomez et al., IEEE TMI 34(7), 2015).
"""
LGE_NOTE = """
The weights were also trained on the LGE-MRI scans of the 2018 Atrial Segmentation Challenge
(the 80 training cases; used under the challenge's terms for research): cite Xiong et al., A
global benchmark of algorithms for segmenting the left atrium from late gadolinium-enhanced
cardiac MRI, Medical Image Analysis 67, 101832 (2021).
"""


def licence_text(spec: ModelSpec) -> str:
    """The bundle's LICENSE: the data the weights derive from, and how to attribute it."""
    sources = [spec.record.source, *([spec.localiser.record.source] if spec.localiser else [])]
    lge = any("atriaseg" in source.lower() for source in sources)
    return LICENCE_NOTE + (LGE_NOTE if lge else "")


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


def bundle_configs(spec: ModelSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata.json, inference.json)`` contents for a model; a :class:`LascError` says
    why a model cannot be exported."""
    _check_exportable(spec)
    name, arguments, _ = network_spec(
        spec.network, spec.in_channels, spec.num_classes, spec.input.spatial_dims
    )
    network_def = {"_target_": name, **arguments}
    if spec.localiser is not None:
        return _bundle_metadata(spec, name), _two_stage_config(spec, network_def)
    return _bundle_metadata(spec, name), _inference_config(spec, network_def)


def _check_exportable(spec: ModelSpec) -> None:
    if spec.localiser is None and spec.stage is not Stage.WHOLE_SLICE:
        raise LascError(
            None,
            f"a {spec.stage.value} alone cannot be exported: it needs the other stage (export "
            "the two-stage model that `lasc train` joined, or combine the stages first)",
        )
    for part in [spec, *([spec.localiser] if spec.localiser is not None else [])]:
        _check_stage(part)


def _check_stage(spec: ModelSpec) -> None:
    if spec.tri_planar:
        raise LascError(
            None,
            "tri-planar models cannot be exported yet (the bundle predicts along one axis); "
            "export a single-axis model",
        )
    if spec.normalisation != "zscore":
        raise LascError(None, f"normalisation {spec.normalisation!r} is not exported")
    if (
        network_spec(spec.network, spec.in_channels, spec.num_classes, spec.input.spatial_dims)[2]
        is not None
    ):
        raise LascError(
            None,
            "models with the earlier tool's large first kernel are not MONAI networks alone "
            "and cannot be exported",
        )


def _context_expression(spec: ModelSpec) -> str:
    """A ``Lambdad`` expression stacking each slice's neighbours as channels, edge slices
    repeated (as :func:`src_monai.data.transforms.context_stack`)."""
    half = spec.context_slices // 2
    dim = spec.slice_axis + 1  # the tensor is channel-first: (1, X, Y, Z)
    return (
        f"$lambda x: torch.cat([x.index_select({dim}, (torch.arange(x.shape[{dim}]) + k)"
        f".clamp(0, x.shape[{dim}] - 1)) for k in range({-half}, {half + 1})], dim=0)"
    )


def _preprocessing(spec: ModelSpec) -> dict[str, Any]:
    return {
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
            {"_target_": "Lambdad", "keys": "image", "func": _context_expression(spec)},
        ],
    }


def _postprocessing(spec: ModelSpec) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    if spec.defaults.postprocess:
        foreground = list(range(1, spec.num_classes))
        common = {"keys": "pred", "applied_labels": foreground, "connectivity": 3}
        steps += [
            {"_target_": "KeepLargestConnectedComponentd", **common, "independent": True},
            {"_target_": "FillHolesd", **common},
        ]
    steps.append(
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
    return {"_target_": "Compose", "transforms": steps}


def _common_entries() -> dict[str, Any]:
    """The entries every bundle config starts with: imports, folders, the stage-2 weights'
    path, the device."""
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    }


def _load_weights(network: str, path: str) -> str:
    """The ``initialize`` expression loading the plain state dict at ``@path`` into
    ``@network`` (``weights_only``: a state dict runs no code)."""
    return (
        f"$@{network}.load_state_dict(torch.load(@{path}, map_location=@device, weights_only=True))"
    )


def _inference_config(spec: ModelSpec, network_def: dict[str, Any]) -> dict[str, Any]:
    return {
        **_common_entries(),
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "network_def": network_def,
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": _preprocessing(spec),
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },
        "inferer": {"_target_": "SliceInferer", **slice_inferer_arguments(spec), "progress": False},
        "postprocessing": _postprocessing(spec),
        "predict": (
            "$lambda item: @postprocessing({'pred': @inferer(item['image'][None].to(@device), "
            "@network)[0].cpu()})"
        ),
        "initialize": [_load_weights("network", "ckpt_path"), "$torch.set_grad_enabled(False)"],
        "run": ["$[@predict(item) for item in @dataset]"],
    }


def _two_stage_config(spec: ModelSpec, network_def: dict[str, Any]) -> dict[str, Any]:
    """A two-stage model's inference: both networks MONAI's, the steps between them in
    ``scripts/lasc_pipeline.py`` (:mod:`src_monai.model.bundle_pipeline`)."""
    localiser = spec.localiser
    assert localiser is not None
    name, arguments, _ = network_spec(
        localiser.network, localiser.in_channels, localiser.num_classes
    )
    return {
        **_common_entries(),
        "localiser_path": "$@bundle_root + '/models/localiser.pt'",
        "localiser_def": {"_target_": name, **arguments},
        "network_def": network_def,
        "localiser": "$@localiser_def.to(@device).eval()",
        "network": "$@network_def.to(@device).eval()",
        "pipeline": pipeline_parameters(spec),
        "initialize": [
            _load_weights("localiser", "localiser_path"),
            _load_weights("network", "ckpt_path"),
            "$torch.set_grad_enabled(False)",
        ],
        # MONAI puts the bundle folder on sys.path only when it runs, and resolves an item
        # when first referenced: this import happens in "run", not in "imports".
        "lasc_pipeline": "$__import__('scripts.lasc_pipeline', fromlist=['segment_folder'])",
        "run": [
            "$@lasc_pipeline.segment_folder(@dataset_dir, @output_dir, @localiser, @network, "
            "@pipeline, @device)"
        ],
    }


def pipeline_parameters(spec: ModelSpec) -> dict[str, Any]:
    """Every number :mod:`~src_monai.model.bundle_pipeline` needs, as the project's
    pipeline uses it (orientation, voxel size, both stages' windows, margins and flips)."""
    from src_monai.inference.in_box_3d import (
        GROWTH,
        GROWTH_ROUNDS,
        IN_PLANE_MARGIN,
        WHOLE_REGION_VOXELS,
        WINDOW_OVERLAP,
    )
    from src_monai.inference.options import PredictOptions
    from src_monai.inference.resample import RESAMPLE_TOLERANCE

    localiser = spec.localiser
    assert localiser is not None
    options = PredictOptions.for_model(spec)
    localiser_options = options.for_localiser(localiser)
    three_d = spec.input.spatial_dims == 3
    spacing = spec.training_spacing
    return {
        "training_axcodes": list(spec.orientation_axcodes) if spec.orientation_axcodes else None,
        "training_spacing": list(spacing) if spacing is not None else None,
        "resample_tolerance": RESAMPLE_TOLERANCE,
        "slice_axis": spec.slice_axis,
        "num_classes": spec.num_classes,
        "postprocess": options.postprocess,
        # auto: bfloat16 where the device computes it natively, as lasc infer's default;
        # float32 reproduces lasc infer --precision float32
        "precision": "auto",
        "localiser": {
            "downsample": localiser.downsample,
            "context_slices": localiser.context_slices,
            "window": list(localiser.input.window),
            "overlap": localiser_options.overlap,
            "flip_dims": [[-1]] if localiser_options.tta else [],
            "batch_size": localiser_options.batch_size,
            "num_classes": localiser.num_classes,
        },
        "segmenter": {
            "kind": "3d" if three_d else "2.5d",
            "window": list(spec.input.window),
            "overlap": WINDOW_OVERLAP if three_d else options.overlap,
            # a 3D region this small goes through the network at once (0: always windows)
            "whole_region_voxels": WHOLE_REGION_VOXELS if three_d and options.whole_region else 0,
            # ... and so does a region of a scan less than half the window thick (always)
            "thin_scan_voxels": WHOLE_REGION_VOXELS if three_d else 0,
            "divisor": 2 ** (spec.network.levels - 1),
            "crop_size": spec.crop_size,
            "slice_margin": spec.crop_slice_margin,
            "in_plane_margin": IN_PLANE_MARGIN,
            "growth": list(GROWTH),
            "growth_rounds": GROWTH_ROUNDS,
            "context_slices": spec.context_slices,
            "flip_dims": [[-1]] if options.tta else [],
            "batch_size": options.batch_size,
        },
    }


def slice_inferer_arguments(spec: ModelSpec) -> dict[str, Any]:
    """MONAI ``SliceInferer`` arguments that tile slices as ``lasc infer`` does."""
    return {
        "roi_size": list(spec.patch_size),
        "spatial_dim": spec.slice_axis,
        "sw_batch_size": 16,
        "overlap": 0.25,
        "mode": "gaussian",
        "padding_mode": "constant",
    }


def _tensor_format(spec: ModelSpec, kind: str, channels: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "image",
        "format": kind,
        **({"modality": "MR"} if kind == "magnitude" else {}),
        "num_channels": len(channels),
        "spatial_shape": list(spec.input.window),
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": channels,
    }


def _bundle_metadata(spec: ModelSpec, network_name: str) -> dict[str, Any]:
    from src_monai import __version__

    half = spec.context_slices // 2
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(spec.class_names))
    cv = asdict(spec.cross_validation) if spec.cross_validation else {}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": __version__,
        "changelog": {__version__: "exported by napari-lasc"},
        "monai_version": _installed("monai"),
        "pytorch_version": _installed("torch"),
        "numpy_version": _installed("numpy"),
        "required_packages_version": {"nibabel": _installed("nibabel")},
        **_naming(spec, network_name),
        "authors": "napari-lasc developers",
        "copyright": "Copyright napari-lasc developers; weights CC-BY-SA 4.0 (see LICENSE)",
        "data_source": data_source(spec),
        "data_type": "nibabel",
        "image_classes": "single-channel MRI volume, any intensity range",
        "label_classes": classes,
        "pred_classes": classes,
        "eval_metrics": {"mean_dice": cv.get("dice_mean"), "mean_hd95_mm": cv.get("hd95_mean")},
        "intended_use": "Research only; not for clinical decisions",
        "network_data_format": {
            "inputs": {
                "image": _tensor_format(
                    spec,
                    "magnitude",
                    {str(i): f"slice {i - half:+d}" for i in range(spec.context_slices)}
                    if spec.input.spatial_dims == 2
                    else {"0": "MRI volume"},
                )
            },
            "outputs": {
                "pred": _tensor_format(
                    spec, "segmentation", {str(i): n for i, n in enumerate(spec.class_names)}
                )
            },
        },
        "napari_lasc": {
            "two_stage": spec.localiser is not None,
            "slice_axis": spec.slice_axis,
            "context_slices": spec.context_slices,
            "postprocess": spec.defaults.postprocess,
            "training_split": spec.split or None,
            "cross_validation": cv or None,
        },
    }


# How the bundle names the datasets this project's models are trained on (by folder name).
KNOWN_DATASETS = {
    "lasc13": "Medical Segmentation Decathlon Task02_Heart (LASC'13, bSSFP)",
    "task02_heart": "Medical Segmentation Decathlon Task02_Heart (LASC'13, bSSFP)",
    "atriaseg2018": "2018 Atrial Segmentation Challenge (LGE-MRI)",
}


def data_source(spec: ModelSpec) -> str:
    """The training data by name (a known dataset) or folder name, never a local path."""
    parts = [part.strip() for part in spec.record.source.split(" + ") if part.strip()]
    names = [KNOWN_DATASETS.get(Path(part).name.lower(), Path(part).name) for part in parts]
    return " + ".join(names) or KNOWN_DATASETS["lasc13"]


def _naming(spec: ModelSpec, network_name: str) -> dict[str, str]:
    """The bundle's name, task and description for a one- or two-stage model."""
    if spec.localiser is None:
        return {
            "name": "napari-lasc left atrium 2.5D",
            "task": "Left atrium segmentation of 3D cardiac MRI, slice by slice",
            "description": (
                f"2D {network_name} over {spec.context_slices} neighbouring slices along "
                f"array axis {spec.slice_axis}; exported from napari-lasc"
            ),
        }
    three_d = spec.input.spatial_dims == 3
    stage_two = (
        f"a 3D {network_name} in {'x'.join(map(str, spec.input.window))} windows"
        if three_d
        else f"a 2.5D {network_name} on {spec.crop_size}-voxel crops"
    )
    return {
        "name": f"napari-lasc left atrium two-stage {'3D' if three_d else '2.5D'}",
        "task": "Left atrium segmentation of 3D cardiac MRI: find the atrium, then segment it",
        "description": (
            f"Two stages: a 2D {spec.localiser.network.name} finds the atrium on slices "
            f"shrunk {spec.localiser.downsample}x, then {stage_two} segments its box at full "
            "resolution; exported from napari-lasc"
        ),
    }


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def export_bundle(model_path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the MONAI bundle of the model at ``model_path`` into ``out`` (new or empty)."""
    model_path = Path(model_path)
    network, spec = load_model(model_path)
    try:
        bundle_metadata, inference = bundle_configs(spec)
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
        "LICENSE": licence_text(spec),
    }
    for name, text in files.items():
        write_text(out / name, text, overwrite=overwrite)
    networks = {"model.pt": network}
    if spec.localiser is not None:
        networks = {"model.pt": network.segmenter, "localiser.pt": network.localiser}
        (out / "scripts").mkdir(exist_ok=True)
        pipeline = Path(__file__).with_name("bundle_pipeline.py").read_text(encoding="utf-8")
        write_text(out / "scripts" / "lasc_pipeline.py", pipeline, overwrite=overwrite)
        write_text(out / "scripts" / "__init__.py", "", overwrite=overwrite)
    for file_name, part in networks.items():
        # fp32 weights: the bundle's users load them into a fresh fp32 network.
        state = {
            key: value.float() if value.is_floating_point() else value
            for key, value in plain_state_dict(part).items()
        }
        with atomic_destination(out / "models" / file_name, overwrite=overwrite) as temporary:
            torch.save(state, temporary)
    logger.info("MONAI bundle of %s written to %s", model_path.name, out)
    return out


TWO_STAGE_STEPS = """\
`scripts/lasc_pipeline.py` (MONAI, PyTorch, nibabel, NumPy and SciPy only) runs napari-lasc's
steps: the scan is turned to the training orientation and, where its voxel size differs by
more than 10 %, resampled to the training one; intensities are clipped to their 0.5-99.5
percentiles and z-scored; the localiser finds the atrium's box on shrunk slices; the segmenter
labels the box (grown by its margins) at full resolution with MONAI's sliding-window inferer;
the labels go back onto the scan's own grid."""


def _one_stage_steps(info: dict[str, Any]) -> str:
    return f"""\
The scan stays in its own voxel axes (no reorientation). Intensities are clipped to their
0.5-99.5 percentiles and z-scored; slices along array axis {info["slice_axis"]} go to the network
with {info["context_slices"] // 2} neighbour(s) on each side as extra channels; MONAI's
`SliceInferer` pads small slices to the training patch and tiles large ones, in float32 (the
labels of `lasc infer --precision float32`)."""


def _readme(bundle_metadata: dict[str, Any]) -> str:
    info = bundle_metadata["napari_lasc"]
    cv = info["cross_validation"] or {}
    accuracy = (
        f"Patient-level {cv['folds']}-fold cross-validation, per-case means: "
        f"{CrossValidation.from_dict(cv).text()}."
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
{TWO_STAGE_STEPS if info["two_stage"] else _one_stage_steps(info)}
{"The largest 3D component is kept and holes are filled." if info["postprocess"] else ""}

## Accuracy and limits
{accuracy} Trained on {len((info["training_split"] or {}).get("train", []))} scans of
{bundle_metadata["data_source"]}; other sequences, resolutions or pathologies are untested
(the napari-lasc model card has the per-case figures). Research use only.

## Licence
See LICENSE: the weights derive from CC-BY-SA 4.0 data and carry that licence.
"""
