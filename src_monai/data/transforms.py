"""Intensity normalisation, 2.5D slice stacks and training augmentation (MONAI transforms).

Training and inference call the same :func:`normalise_volume` and :func:`context_stack`, so a
model sees at inference exactly what it was trained on.
"""

from __future__ import annotations

import numpy as np
import torch

from src_monai.config import AugmentConfig

# Percentiles clipped before normalising: MRI has a few very bright voxels (fat, flow).
CLIP_PERCENTILES = (0.5, 99.5)


def normalise_volume(volume: np.ndarray, scheme: str) -> np.ndarray:
    """Per-volume intensity normalisation to ``float32``.

    ``zscore``: clip to the 0.5-99.5 percentiles, then zero mean and unit variance;
    ``minmax``: the same percentiles mapped to 0..1; ``none``: unchanged.
    """
    from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

    volume = np.asarray(volume, dtype=np.float32)
    if scheme == "none":
        return volume
    low, high = CLIP_PERCENTILES
    scaled = ScaleIntensityRangePercentiles(lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True)(
        volume[None]
    )
    if scheme == "minmax":
        return np.asarray(scaled[0], dtype=np.float32)
    if scheme == "zscore":
        return np.asarray(NormalizeIntensity()(scaled)[0], dtype=np.float32)
    raise ValueError(f"unknown normalisation {scheme!r}")


def context_stack(
    slices: torch.Tensor, indices: torch.Tensor | np.ndarray | list[int], context: int
) -> torch.Tensor:
    """``(S, H, W)`` slices -> ``(B, context, H, W)``: each index with its neighbours.

    Neighbours beyond the first or last slice repeat the edge slice.
    """
    index = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=slices.device)
    half = context // 2
    offsets = torch.arange(-half, half + 1, device=slices.device)
    neighbours = (index[:, None] + offsets[None, :]).clamp(0, slices.shape[0] - 1)
    return slices[neighbours]


def training_transforms(augment: AugmentConfig, patch_size: list[int], seed: int):
    """MONAI dictionary transforms for one ``{"image": (C,H,W), "label": (1,H,W)}`` sample."""
    from monai.transforms import (
        Compose,
        Rand2DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    steps = [
        SpatialPadd(keys, spatial_size=patch_size),
        RandSpatialCropd(keys, roi_size=patch_size, random_size=False),
    ]
    p = augment.probability
    if augment.enabled:
        steps.append(
            RandAffined(
                keys,
                prob=p,
                rotate_range=np.deg2rad(augment.rotate_degrees),
                scale_range=(augment.scale, augment.scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
        if augment.elastic:
            steps.append(
                Rand2DElasticd(
                    keys,
                    spacing=(32, 32),
                    magnitude_range=(1, 3),
                    prob=p,
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
        if augment.flip:
            steps.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
        steps.append(RandAdjustContrastd("image", prob=p, gamma=tuple(augment.gamma)))
        if augment.contrast > 0:
            steps.append(RandScaleIntensityd("image", factors=augment.contrast, prob=p))
        if augment.bias_field:
            steps.append(RandBiasFieldd("image", prob=p, coeff_range=(0.0, 0.1)))
        if augment.noise_std > 0:
            steps.append(RandGaussianNoised("image", prob=p, std=augment.noise_std))
    transform = Compose(steps)
    transform.set_random_state(seed=seed)
    return transform
