"""2D segmentation networks from MONAI, and the model file that carries one.

A model file is a ``.safetensors`` file: the weights, plus JSON metadata in its header (the
architecture config, normalisation, classes, slice axis, spacing, data and split used,
validation metrics, package version). Loading it runs no code from the file. A plain state
dict saved with ``torch.save`` is accepted too when a ``.json`` file with the metadata stands
beside it; it is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .config import ModelConfig
from .errors import LascError
from .fileutil import atomic_destination

logger = logging.getLogger(__name__)

MODEL_FORMAT = "napari-lasc-model"
MODEL_FORMAT_VERSION = 1
METADATA_KEY = "napari_lasc"

# Default class colours (RGB), background first; the earlier tool's LA magenta.
DEFAULT_COLOURS = [(0, 0, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0)]


RESOURCES = Path(__file__).resolve().parent / "resources"
BUNDLED_MODEL = RESOURCES / "left_atrium_2d5.safetensors"
SAMPLE_SCAN = RESOURCES / "sample_la_016.nii.gz"
SAMPLE_LABEL = RESOURCES / "sample_la_016_label.nii.gz"


class ModelFileError(LascError):
    """A model file is missing, damaged, unsafe, or disagrees with its metadata."""


def _norm(name: str):
    return None if name == "none" else name


def network_spec(
    model: ModelConfig, in_channels: int, num_classes: int
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The MONAI network a model config describes: ``(class name in monai.networks.nets,
    its keyword arguments, stem)``. ``stem`` (arguments of a ``monai.networks.blocks.
    Convolution`` run first) is set only for the earlier tool's large or dilated first kernel.

    One description for :func:`build_network` and for the MONAI bundle's ``network_def``.
    """
    channels = [model.base_filters * 2**level for level in range(model.levels)]
    strides = [2] * (model.levels - 1)
    common = {"spatial_dims": 2, "in_channels": in_channels, "out_channels": num_classes}
    if model.name == "UNet":
        stem = None
        if model.first_kernel_size != 3 or model.dilation != 1:
            stem = {
                "spatial_dims": 2,
                "in_channels": in_channels,
                "out_channels": model.base_filters,
                "kernel_size": model.first_kernel_size,
                "dilation": model.dilation,
                "norm": _norm(model.norm),
                "dropout": model.dropout,
            }
        unet = {
            **common,
            "in_channels": model.base_filters if stem else in_channels,
            "channels": channels,
            "strides": strides,
            "num_res_units": model.residual_units,
            "norm": _norm(model.norm),
            "dropout": model.dropout,
        }
        return "UNet", unet, stem
    if model.name == "BasicUNet":
        b = model.base_filters
        return (
            "BasicUNet",
            {
                **common,
                "features": [b, b, 2 * b, 4 * b, 8 * b, b],
                "dropout": model.dropout,
                "norm": _norm(model.norm) or ["instance", {"affine": True}],
            },
            None,
        )
    if model.name == "DynUNet":
        return (
            "DynUNet",
            {
                **common,
                "kernel_size": [model.first_kernel_size] + [3] * (model.levels - 1),
                "strides": [1, *strides],
                "upsample_kernel_size": strides,
                "filters": channels,
                "dropout": model.dropout,
                "norm_name": _norm(model.norm) or "instance",
                "res_block": model.residual_units > 0,
            },
            None,
        )
    if model.name == "AttentionUnet":
        return (
            "AttentionUnet",
            {**common, "channels": channels, "strides": strides, "dropout": model.dropout},
            None,
        )
    if model.name == "SegResNet":
        return (
            "SegResNet",
            {
                "spatial_dims": 2,
                "in_channels": in_channels,
                "out_channels": num_classes,
                "init_filters": model.base_filters,
                "dropout_prob": model.dropout or None,
                "blocks_down": [1] + [2] * (model.levels - 2) + [4],
                "blocks_up": [1] * (model.levels - 1),
            },
            None,
        )
    raise ValueError(f"unknown network {model.name!r}")


def build_network(model: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """A 2D network that maps ``(N, in_channels, H, W)`` to ``num_classes`` logits."""
    from monai.networks import nets
    from monai.networks.blocks import Convolution

    name, arguments, stem = network_spec(model, in_channels, num_classes)
    network = getattr(nets, name)(**arguments)
    if stem is None:
        return network
    # The earlier tool's large, optionally dilated first kernel, ahead of MONAI's UNet.
    return nn.Sequential(Convolution(**stem), network)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def plain_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """Weights without DistributedDataParallel's ``module.`` prefix, contiguous, on the CPU."""
    inner = network.module if hasattr(network, "module") else network
    return {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}


def save_model(
    path: str | Path,
    network: nn.Module,
    metadata: dict[str, Any],
    *,
    overwrite: bool = True,
    half: bool = False,
) -> Path:
    """Write weights and metadata as one ``.safetensors`` file, atomically.

    ``half`` stores floating-point weights as fp16 (half the size; loading casts them back).
    """
    from safetensors.torch import save_file

    metadata = {
        **metadata,
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
    }
    state = plain_state_dict(network)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_destination(path, overwrite=overwrite) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: json.dumps(metadata)})
    return Path(path)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a model file describes and load its weights (no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "model file not found")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    else:
        state, metadata = _read_state_dict(path)
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(path, "metadata is not a napari-lasc model description")
    try:
        from .config import config_from_dict

        config = config_from_dict({"model": metadata["model"]})
        network = build_network(
            config.model, int(metadata["in_channels"]), int(metadata["num_classes"])
        )
    except (KeyError, TypeError, ValueError, LascError) as exc:
        raise ModelFileError(path, f"metadata does not describe a network ({exc})") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(
            path, f"weights do not match the architecture in its metadata ({first})"
        ) from exc
    network.to(device).eval()
    return network, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"not a readable safetensors file ({exc})") from exc
    try:
        return state, json.loads(header[METADATA_KEY])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(path, "no napari-lasc metadata in the file") from exc


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sidecar = path.with_suffix(".json")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickles that would run code
        if "Weights only load failed" in str(exc):
            problem = (
                "refused: it holds pickled Python objects, not only tensors, and loading "
                "it could run code"
            )
        else:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            problem = f"refused: not a plain weights file ({first[:160]})"
        raise ModelFileError(path, problem) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(path, "not a state dict of tensors")
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(sidecar, f"model metadata missing or unreadable ({exc})") from exc
    return state, metadata
