"""Where an epoch's training batches come from, by the stage a config trains."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from src_monai.config import Config
from src_monai.data.crops import CropSampler, augment_batch, make_crop_batch
from src_monai.data.patches import WindowSampler, augment_windows, make_window_batch
from src_monai.data.sampling import SliceSampler, VolumeCase, make_batch
from src_monai.data.transforms import training_transforms
from src_monai.model.spec import Stage

Batch = tuple[torch.Tensor, torch.Tensor]


def batch_maker(config: Config, cases: list[VolumeCase], seed: int) -> Callable[[], Batch]:
    """This epoch's source of training batches (images, labels): whole slices with MONAI's
    transforms, or (a crop segmenter) crops around the atrium augmented as whole batches.
    Seeded by ``seed`` alone, so a resumed run draws what an uninterrupted one would."""
    data, rng = config.data, np.random.default_rng(seed)
    size, count = data.crop_size, config.train.batch_size
    if data.stage is Stage.CROP_SEGMENTER_3D:
        return _window_maker(config, cases, seed, rng)
    if data.stage is Stage.CROP_SEGMENTER:
        sampler = CropSampler(
            cases,
            jitter=data.crop_jitter,
            slice_margin=data.crop_slice_margin,
            rng=rng,
            balance=data.balance_datasets,
        )
        # On the cases' device: on a GPU the crops are cut and augmented there.
        generator = torch.Generator(device=cases[0].slices.device).manual_seed(seed)

        def crops() -> Batch:
            images, labels = make_crop_batch(cases, sampler.draw(count), size, data.context_slices)
            return augment_batch(images, labels, config.augment, generator)

        return crops
    slices = SliceSampler(cases, data.foreground_oversample, rng, balance=data.balance_datasets)
    transform = training_transforms(config.augment, data.patch_size, seed)
    return lambda: make_batch(cases, slices.draw(count), data.context_slices, transform)


def _window_maker(
    config: Config, cases: list[VolumeCase], seed: int, rng: np.random.Generator
) -> Callable[[], Batch]:
    """A 3D crop model's batches: windows inside the atrium's box, augmented in-plane."""
    data, count = config.data, config.train.batch_size
    window = (data.crop_depth, data.crop_size, data.crop_size)
    sampler = WindowSampler(cases, jitter=data.crop_jitter, rng=rng, balance=data.balance_datasets)
    generator = torch.Generator(device=cases[0].slices.device).manual_seed(seed)

    def windows() -> Batch:
        images, labels = make_window_batch(cases, sampler.draw(count), window)
        return augment_windows(images, labels, config.augment, generator)

    return windows
