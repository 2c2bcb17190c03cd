"""3D training windows for a 3D crop model: ``crop_depth`` x ``crop_size`` x ``crop_size``
blocks of a case's slices-first voxels at full resolution, centred anywhere inside the true
atrium's box grown by ``crop_jitter`` voxels (the localiser's box is never exact, and the
network must learn where the atrium ends), zero-padded (the normalised mean) where they
leave the scan. Augmentation is the crop path's, batched, in-plane: every slice of a window
is rotated, scaled and flipped alike, and the bias field is 3D (:func:`augment_windows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from src_monai.config import AugmentConfig
from src_monai.data.crops import AtriumBox, augment_batch
from src_monai.data.sampling import CaseChooser, VolumeCase

Centre = tuple[float, float, float]


class WindowSampler:
    """Draws (case, window centre) pairs: a case holding the atrium (by
    :class:`~src_monai.data.sampling.CaseChooser`), and a centre uniform inside its atrium's
    box grown by ``jitter`` voxels along every axis."""

    def __init__(
        self,
        cases: list[VolumeCase],
        *,
        jitter: int,
        rng: np.random.Generator,
        balance: bool = True,
    ):
        self.rng, self.jitter = rng, jitter
        self.boxes = [AtriumBox.around(case.labels) for case in cases]
        self.with_atrium = [i for i, box in enumerate(self.boxes) if box is not None]
        if not self.with_atrium:
            raise ValueError("no training case holds the atrium: nothing to centre windows on")
        self.chooser = CaseChooser(cases, self.with_atrium, balance=balance)

    def draw(self, count: int) -> list[tuple[int, Centre]]:
        picks = []
        for _ in range(count):
            index = self.chooser.choose(self.rng)
            box = self.boxes[index]
            assert box is not None
            low = np.array([box.z0, box.y0, box.x0], float) - self.jitter
            high = np.array([box.z1, box.y1, box.x1], float) + self.jitter
            centre = self.rng.uniform(low, high)
            picks.append((index, (float(centre[0]), float(centre[1]), float(centre[2]))))
        return picks


def window_at(volume: torch.Tensor, centre: Centre, window: Sequence[int]) -> torch.Tensor:
    """The ``window`` block of an ``(S, H, W)`` volume centred at ``centre``, zero-padded."""
    starts = [round(c - size / 2) for c, size in zip(centre, window, strict=True)]
    out = volume.new_zeros(tuple(window))
    source, target = [], []
    for start, size, extent in zip(starts, window, volume.shape, strict=True):
        low, high = max(start, 0), min(start + size, extent)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[tuple(target)] = volume[tuple(source)]
    return out


def make_window_batch(
    cases: list[VolumeCase], picks: list[tuple[int, Centre]], window: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels ``(B, 1, D, H, W)`` of the picked windows."""
    images = [window_at(cases[i].slices, centre, window) for i, centre in picks]
    labels = [window_at(cases[i].labels, centre, window) for i, centre in picks]
    return torch.stack(images)[:, None].float(), torch.stack(labels)[:, None].long()


def augment_windows(
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop path's batched augmentation with a window's slices as its channels: one
    in-plane rotation, scale and flip per window, then gamma, contrast and noise; the bias
    field with MONAI's ``RandBiasFieldd`` over the whole window (3D), sample by sample.
    (Elastic deformation is refused for 3D models by the config check.)"""
    if augment.enabled and augment.bias_field:
        images = _bias_field_3d(images, augment.probability, generator)
    in_plane = replace(augment, bias_field=False)
    out_images, out_labels = augment_batch(images[:, 0], labels[:, 0], in_plane, generator)
    return out_images[:, None], out_labels[:, None]


def _bias_field_3d(
    images: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    from monai.transforms import RandBiasFieldd

    transform = RandBiasFieldd("image", prob=probability, coeff_range=(0.0, 0.1))
    transform.set_random_state(seed=int(torch.randint(2**31 - 1, (1,), generator=generator)))
    fielded = [torch.as_tensor(transform({"image": image})["image"]) for image in images]
    return torch.stack(fielded).to(images.device, images.dtype)
