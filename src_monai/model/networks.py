"""Segmentation networks from MONAI (2D, or 3D for a 3D crop model), described once for
training, inference and bundle export."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from src_monai.config import ModelConfig

logger = logging.getLogger(__name__)


def _norm(name: str):
    return None if name == "none" else name


def network_spec(
    model: ModelConfig, in_channels: int, num_classes: int, spatial_dims: int = 2
) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """The MONAI network a model config describes: ``(class name in monai.networks.nets,
    its keyword arguments, stem)``. ``stem`` (arguments of a ``monai.networks.blocks.
    Convolution`` run first) is set only for the earlier tool's large or dilated first kernel.

    One description for :func:`build_network` and for the MONAI bundle's ``network_def``.
    """
    describe = _DESCRIPTIONS.get(model.name)
    if describe is None:
        raise ValueError(f"unknown network {model.name!r}")
    common = {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": num_classes,
    }
    arguments, stem = describe(model, common)
    return model.name, arguments, stem


def _levels(model: ModelConfig) -> tuple[list[int], list[int]]:
    """Filters per level (doubling) and the strides between levels."""
    channels = [model.base_filters * 2**level for level in range(model.levels)]
    return channels, [2] * (model.levels - 1)


def _unet(model: ModelConfig, common: dict[str, Any]) -> tuple[dict, dict | None]:
    channels, strides = _levels(model)
    stem = None
    if model.first_kernel_size != 3 or model.dilation != 1:
        stem = {
            "spatial_dims": common["spatial_dims"],
            "in_channels": common["in_channels"],
            "out_channels": model.base_filters,
            "kernel_size": model.first_kernel_size,
            "dilation": model.dilation,
            "norm": _norm(model.norm),
            "dropout": model.dropout,
        }
    unet = {
        **common,
        "in_channels": model.base_filters if stem else common["in_channels"],
        "channels": channels,
        "strides": strides,
        "num_res_units": model.residual_units,
        "norm": _norm(model.norm),
        "dropout": model.dropout,
    }
    return unet, stem


def _basic_unet(model: ModelConfig, common: dict[str, Any]) -> tuple[dict, None]:
    b = model.base_filters
    return {
        **common,
        "features": [b, b, 2 * b, 4 * b, 8 * b, b],
        "dropout": model.dropout,
        "norm": _norm(model.norm) or ["instance", {"affine": True}],
    }, None


def _dyn_unet(model: ModelConfig, common: dict[str, Any]) -> tuple[dict, None]:
    channels, strides = _levels(model)
    return {
        **common,
        "kernel_size": [model.first_kernel_size] + [3] * (model.levels - 1),
        "strides": [1, *strides],
        "upsample_kernel_size": strides,
        "filters": channels,
        "dropout": model.dropout,
        "norm_name": _norm(model.norm) or "instance",
        "res_block": model.residual_units > 0,
    }, None


def _attention_unet(model: ModelConfig, common: dict[str, Any]) -> tuple[dict, None]:
    channels, strides = _levels(model)
    return {**common, "channels": channels, "strides": strides, "dropout": model.dropout}, None


def _seg_res_net(model: ModelConfig, common: dict[str, Any]) -> tuple[dict, None]:
    return {
        **common,
        "init_filters": model.base_filters,
        "dropout_prob": model.dropout or None,
        "blocks_down": [1] + [2] * (model.levels - 2) + [4],
        "blocks_up": [1] * (model.levels - 1),
    }, None


_DESCRIPTIONS = {
    "UNet": _unet,
    "BasicUNet": _basic_unet,
    "DynUNet": _dyn_unet,
    "AttentionUnet": _attention_unet,
    "SegResNet": _seg_res_net,
}


def build_network(
    model: ModelConfig, in_channels: int, num_classes: int, spatial_dims: int = 2
) -> nn.Module:
    """A network that maps ``(N, in_channels, H, W)`` (3D: ``(N, in_channels, D, H, W)``) to
    ``num_classes`` logits."""
    from monai.networks import nets
    from monai.networks.blocks import Convolution

    name, arguments, stem = network_spec(model, in_channels, num_classes, spatial_dims)
    network = getattr(nets, name)(**arguments)
    if stem is None:
        return network
    # The earlier tool's large, optionally dilated first kernel, ahead of MONAI's UNet.
    return nn.Sequential(Convolution(**stem), network)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the network itself)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def plain_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """Weights without DistributedDataParallel's ``module.`` prefix, contiguous, on the CPU."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(network).state_dict().items()}
