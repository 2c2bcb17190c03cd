"""Crops around the left atrium: the boxes, the training crops, and their augmentation.

The atrium fills a small part of each slice (over LASC'13 its box is at most 54 x 79 voxels
in-plane), so the segmenting network learns on fixed-size crops around it: many times more
slices per second than on whole slices. Crops are drawn with their centre jittered about the
box centre (the localiser's box is never exact) and from slices within the box's range plus a
margin (so the network also learns where the atrium ends). Augmentation runs on whole batches
in torch (one affine grid for the batch), which on a CPU is far cheaper than per-sample
transforms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from src_monai.config import AugmentConfig
from src_monai.data.sampling import CaseChooser, VolumeCase
from src_monai.data.transforms import context_stack
from src_monai.errors import LascError


@dataclass(frozen=True)
class AtriumBox:
    """A box in a slices-first voxel grid ``(S, H, W)``: ``[z0, z1)``, ``[y0, y1)``,
    ``[x0, x1)``."""

    z0: int
    z1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def around(cls, mask: np.ndarray | torch.Tensor) -> AtriumBox | None:
        """The bounding box of a ``(S, H, W)`` mask's non-zero voxels; ``None`` when empty."""
        mask = torch.as_tensor(mask) != 0
        if not bool(mask.any()):
            return None
        ranges = []
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            hits = torch.nonzero(mask.any(dim=others)).flatten()
            ranges += [int(hits[0]), int(hits[-1]) + 1]
        return cls(*ranges)

    def contains(self, other: AtriumBox) -> bool:
        """``other`` lies wholly inside this box."""
        return (
            self.z0 <= other.z0
            and self.z1 >= other.z1
            and self.y0 <= other.y0
            and self.y1 >= other.y1
            and self.x0 <= other.x0
            and self.x1 >= other.x1
        )

    @classmethod
    def parse(cls, text: str, shape: Sequence[int], source: str = "--box") -> AtriumBox:
        """``s0:s1,a0:a1,b0:b1`` (slices-first voxel indices, ends exclusive: the slices, then
        the other two array axes in file order) checked against a slices-first ``shape``:
        one line naming the problem when it is not a box inside."""
        parts = [p.strip() for p in text.split(",")]
        try:
            ranges = [tuple(int(v) for v in part.split(":")) for part in parts]
        except ValueError:
            ranges = []
        if len(ranges) != 3 or any(len(r) != 2 for r in ranges):
            raise LascError(source, f"{text!r} is not s0:s1,a0:a1,b0:b1 (whole voxel indices)")
        for name, (start, stop), size in zip("SAB", ranges, shape, strict=True):
            if not 0 <= start < stop <= size:
                raise LascError(
                    source,
                    f"{name} {start}:{stop} is not a range inside the scan's 0:{size}",
                )
        return cls(*(v for r in ranges for v in r))

    @classmethod
    def from_world(
        cls,
        text: str,
        affine: np.ndarray,
        shape: Sequence[int],
        slice_axis: int,
        source: str = "--box-mm",
    ) -> AtriumBox:
        """A box given in world millimetres (RAS+, the scan's affine) as
        ``x0:x1,y0:y1,z0:z1``: the voxels of its eight corners, slices first, clipped to the
        scan; refused when it lies wholly outside."""
        parts = [p.strip() for p in text.split(",")]
        try:
            ranges = [tuple(float(v) for v in part.split(":")) for part in parts]
        except ValueError:
            ranges = []
        if len(ranges) != 3 or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
            raise LascError(source, f"{text!r} is not x0:x1,y0:y1,z0:z1 in mm, each low:high")
        if not np.isfinite(ranges).all():  # inf parses as a float, then no voxel holds it
            raise LascError(source, f"{text!r} has a value that is not a finite number of mm")
        corners = np.array(
            [[x, y, z, 1.0] for x in ranges[0] for y in ranges[1] for z in ranges[2]]
        )
        voxels = (np.linalg.inv(affine) @ corners.T)[:3].T
        low, high = np.floor(voxels.min(axis=0)), np.ceil(voxels.max(axis=0)) + 1
        order = (slice_axis, *[a for a in range(3) if a != slice_axis])
        edges = []
        for axis in order:
            start, stop = max(int(low[axis]), 0), min(int(high[axis]), int(shape[axis]))
            if start >= stop:
                raise LascError(source, f"{text!r} lies outside the scan")
            edges += [start, stop]
        return cls(*edges)

    def text(self) -> str:
        """``z0:z1,y0:y1,x0:x1``."""
        return f"{self.z0}:{self.z1},{self.y0}:{self.y1},{self.x0}:{self.x1}"

    @property
    def centre(self) -> tuple[float, float]:
        """In-plane centre ``(y, x)`` in voxels."""
        return (self.y0 + self.y1) / 2.0, (self.x0 + self.x1) / 2.0

    def scaled(self, factors: Sequence[float], shape: Sequence[int]) -> AtriumBox:
        """The same region on a grid ``factors`` times as fine per axis (slices first) whose
        shape is ``shape``: starts rounded down, ends up, so it never shrinks."""
        edges = []
        for (start, stop), factor, size in zip(
            ((self.z0, self.z1), (self.y0, self.y1), (self.x0, self.x1)),
            factors,
            shape,
            strict=True,
        ):
            edges += [max(0, math.floor(start * factor)), min(size, math.ceil(stop * factor))]
        return AtriumBox(*edges)

    def slice_range(self, margin: int, count: int) -> tuple[int, int]:
        """``[first, stop)`` slices of the box widened by ``margin``, within ``0..count``."""
        return max(self.z0 - margin, 0), min(self.z1 + margin, count)


def crop_at(
    slices: torch.Tensor,
    z: list[int] | np.ndarray,
    centre: tuple[float, float],
    size: int,
    context: int,
) -> torch.Tensor:
    """``(B, context, size, size)`` 2.5D crops of ``(S, H, W)`` slices centred at ``centre``;
    outside the slices is zero (the normalised mean), as training's padding."""
    stack = context_stack(slices, z, context)
    return crop_plane(stack, centre, size)


def crop_plane(stack: torch.Tensor, centre: tuple[float, float], size: int) -> torch.Tensor:
    """The ``size`` x ``size`` window of ``(..., H, W)`` centred at ``centre``, zero-padded."""
    height, width = stack.shape[-2:]
    top, left = crop_origin(centre, size)
    y0, y1 = max(top, 0), min(top + size, height)
    x0, x1 = max(left, 0), min(left + size, width)
    out = stack.new_zeros((*stack.shape[:-2], size, size))
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = stack[..., y0:y1, x0:x1]
    return out


def crop_origin(centre: tuple[float, float], size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window centred at ``centre`` (may lie outside)."""
    return round(centre[0] - size / 2), round(centre[1] - size / 2)


class CropSampler:
    """Draws training crops: a case, a slice within its atrium's range plus ``slice_margin``,
    and a centre jittered by up to ``jitter`` voxels about the atrium's box centre."""

    def __init__(
        self,
        cases: list[VolumeCase],
        *,
        jitter: int,
        slice_margin: int,
        rng: np.random.Generator,
        balance: bool = True,
    ) -> None:
        self.cases = cases
        self.jitter = jitter
        self.slice_margin = slice_margin
        self.rng = rng
        self.boxes = [AtriumBox.around(case.labels) for case in cases]
        self.with_atrium = [i for i, box in enumerate(self.boxes) if box is not None]
        if not self.with_atrium:
            raise ValueError("no training case holds the atrium: nothing to crop around")
        self.chooser = CaseChooser(cases, self.with_atrium, balance=balance)

    def draw(self, count: int) -> list[tuple[int, int, tuple[float, float]]]:
        picks = []
        for _ in range(count):
            index = self.chooser.choose(self.rng)
            box = self.boxes[index]
            assert box is not None
            first, stop = box.slice_range(self.slice_margin, self.cases[index].slices.shape[0])
            z = int(self.rng.integers(first, stop))
            dy, dx = self.rng.uniform(-self.jitter, self.jitter, size=2)
            picks.append((index, z, (box.centre[0] + dy, box.centre[1] + dx)))
        return picks


def make_crop_batch(
    cases: list[VolumeCase],
    picks: list[tuple[int, int, tuple[float, float]]],
    size: int,
    context: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, context, size, size)`` and labels ``(B, 1, size, size)`` of the picks."""
    images, labels = [], []
    for index, z, centre in picks:
        case = cases[index]
        images.append(crop_at(case.slices, [z], centre, size, context)[0])
        labels.append(crop_plane(case.labels[z][None], centre, size))
    return torch.stack(images).float(), torch.stack(labels).long()


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentation of :func:`~src_monai.data.transforms.training_transforms`, batched
    where that is faster: rotation and scaling (one affine grid; images bilinear, labels
    nearest), left-right flips when enabled, gamma, contrast and Gaussian noise, each drawn
    per sample with ``augment.probability``; elastic deformation and the bias field with
    MONAI's own transforms, sample by sample, as the whole-slice path runs them. Every key of
    ``[augment]`` is honoured, so a model's saved config is the recipe that ran."""
    if not augment.enabled:
        return images, labels
    if augment.elastic or augment.bias_field:
        images, labels = _monai_per_sample(images, labels, augment, generator)
    batch = images.shape[0]
    grid = _affine_grid(images, augment, generator)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(
        labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    ).long()
    images = _intensity(images, augment, generator)
    if augment.noise_std > 0:
        noisy = _chance(batch, augment.probability, generator, images.device)
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        images = images + noisy[:, None, None, None] * noise * augment.noise_std
    return images, labels


def _monai_per_sample(
    images: torch.Tensor,
    labels: torch.Tensor,
    augment: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic deformation (image and labels together) and the bias field, with the settings
    of :func:`~src_monai.data.transforms.training_transforms`, seeded from ``generator``."""
    from monai.transforms import Compose, Rand2DElasticd, RandBiasFieldd

    steps = []
    if augment.elastic:
        steps.append(
            Rand2DElasticd(
                ["image", "label"],
                spacing=(32, 32),
                magnitude_range=(1, 3),
                prob=augment.probability,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            )
        )
    if augment.bias_field:
        steps.append(RandBiasFieldd("image", prob=augment.probability, coeff_range=(0.0, 0.1)))
    transform = Compose(steps)
    transform.set_random_state(seed=int(torch.randint(2**31 - 1, (1,), generator=generator)))
    out_images, out_labels = [], []
    for image, label in zip(images, labels.float(), strict=True):
        sample = transform({"image": image, "label": label})
        out_images.append(torch.as_tensor(sample["image"]).to(images.device, images.dtype))
        out_labels.append(torch.as_tensor(sample["label"]).to(labels.device))
    return torch.stack(out_images), torch.stack(out_labels).round().long()


def _chance(count: int, probability: float, generator: torch.Generator, device) -> torch.Tensor:
    """1.0 for the samples a transform applies to (each with ``probability``), else 0.0."""
    draw = torch.rand(count, generator=generator, device=device)
    return (draw < probability).float()


def _uniform(
    count: int, low: float, high: float, generator: torch.Generator, device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def _affine_grid(
    images: torch.Tensor, augment: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    batch, device = images.shape[0], images.device
    p = augment.probability
    limit = math.radians(augment.rotate_degrees)
    angle = _uniform(batch, -limit, limit, generator, device) * _chance(batch, p, generator, device)
    scaled = _chance(batch, p, generator, device)
    scale = 1.0 + _uniform(batch, -augment.scale, augment.scale, generator, device) * scaled
    flip = torch.ones(batch, device=device)
    if augment.flip:
        flip = 1.0 - 2.0 * _chance(batch, 0.5, generator, device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, torch.zeros_like(cos)], dim=1),
            torch.stack([sin * flip, cos, torch.zeros_like(cos)], dim=1),
        ],
        dim=1,
    )
    return F.affine_grid(theta, list(images.shape), align_corners=False)


def _intensity(
    images: torch.Tensor, augment: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Gamma on each sample's own range (as MONAI's ``AdjustContrast``), then contrast."""
    batch, device, p = images.shape[0], images.device, augment.probability
    low, high = augment.gamma
    gamma = _uniform(batch, low, high, generator, device)
    use_gamma = _chance(batch, p, generator, device).bool()
    if bool(use_gamma.any()):
        flat = images.flatten(1)
        minimum = flat.min(dim=1).values[:, None, None, None]
        span = (flat.max(dim=1).values[:, None, None, None] - minimum).clamp_min(1e-8)
        adjusted = ((images - minimum) / span).clamp_min(0) ** gamma[:, None, None, None]
        adjusted = adjusted * span + minimum
        images = torch.where(use_gamma[:, None, None, None], adjusted, images)
    if augment.contrast > 0:
        factor = 1.0 + _uniform(batch, -augment.contrast, augment.contrast, generator, device)
        factor = torch.where(_chance(batch, p, generator, device).bool(), factor, 1.0)
        images = images * factor[:, None, None, None]
    return images
