"""napari-lasc's two-stage inference for a MONAI bundle, with MONAI, PyTorch, nibabel, NumPy
and SciPy alone: ``lasc export-bundle`` copies this file into the bundle as
``scripts/lasc_pipeline.py`` (custom code in ``scripts/``, as MONAI's own bundles carry it).

It imports nothing of napari-lasc, and it repeats napari-lasc's pipeline step by step (a test
checks that the labels equal ``lasc infer``'s on real scans):

1. the scan's axes permuted and flipped to the training orientation (nibabel ``ornt``);
   intensities clipped to their 0.5-99.5 percentiles and z-scored (MONAI transforms); the
   volume resampled to the training voxel size where it differs by more than 10 %;
2. stage 1, the localiser: slices shrunk by its factor (block means), 2.5D stacks, MONAI's
   ``SlidingWindowInferer``, the largest 3D component; its box at full resolution;
3. stage 2 inside that box: a 3D network's Gaussian-blended windows over the box grown by
   its margins (and further where its labels reach the region's faces), or a 2.5D crop
   network on square crops of the box's slices; background elsewhere (whole slices where
   the localiser finds nothing);
4. labels resampled back and re-oriented onto the scan's grid, then (when the model's
   cross-validation chose it) each class's largest 3D component kept and its holes filled.

Every number the steps need is in ``pipeline`` (``configs/inference.json``). The two pure
steps both sides need, :func:`postprocess` and :func:`resample_labels`, live here only:
napari-lasc imports them from this file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch


def segment_folder(
    dataset_dir: str,
    output_dir: str,
    localiser: torch.nn.Module,
    segmenter: torch.nn.Module,
    pipeline: dict[str, Any],
    device: torch.device,
) -> list[str]:
    """Every ``*.nii`` / ``*.nii.gz`` scan of ``dataset_dir`` as ``<name>_seg.nii.gz`` in
    ``output_dir`` (uint8 labels, the scan's affine and header); the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    scans = sorted(p for p in Path(dataset_dir).iterdir() if p.name.endswith((".nii", ".nii.gz")))
    for path in scans:
        image = nib.load(str(path))
        labels = segment(
            np.asanyarray(image.dataobj),
            image.affine if _orientation_stated(image) else None,
            tuple(float(z) for z in image.header.get_zooms()[:3]),
            localiser,
            segmenter,
            pipeline,
            device,
        )
        name = path.name.removesuffix(".gz").removesuffix(".nii")
        result = nib.Nifti1Image(labels.astype(np.uint8), image.affine, image.header)
        result.set_data_dtype(np.uint8)
        target = out / f"{name}_seg.nii.gz"
        nib.save(result, str(target))
        written.append(str(target))
    return written


def _orientation_stated(image: Any) -> bool:
    header = image.header
    return bool(int(header["qform_code"])) or bool(int(header["sform_code"]))


def segment(
    volume: np.ndarray,
    affine: np.ndarray | None,
    spacing: tuple[float, ...],
    localiser: torch.nn.Module,
    segmenter: torch.nn.Module,
    pipeline: dict[str, Any],
    device: torch.device,
) -> np.ndarray:
    """Labels of one scan (file axis order) in its own shape."""
    transform = _orientation(affine, pipeline["training_axcodes"])
    oriented = (
        volume if transform is None else nib.orientations.apply_orientation(volume, transform)
    )
    oriented_spacing = _permuted(spacing, transform)
    values = normalise(oriented)
    grid = _resampled_shape(oriented.shape, oriented_spacing, pipeline)
    if grid is not None:
        values = _resize(values, grid, anti_aliasing=True)
    axis = pipeline["slice_axis"]
    slices = np.ascontiguousarray(np.moveaxis(values, axis, 0))
    precision = {"precision": pipeline.get("precision", "auto")}  # one setting, both networks
    box = localise(localiser, slices, {**pipeline["localiser"], **precision}, device)
    labels = segment_in_box(segmenter, slices, box, {**pipeline["segmenter"], **precision}, device)
    labels = np.moveaxis(labels, 0, axis)
    if grid is not None:
        labels = resample_labels(labels, pipeline["num_classes"], oriented.shape)
    labels = np.ascontiguousarray(_unorient(labels, transform))
    if pipeline["postprocess"]:
        labels = postprocess(labels, pipeline["num_classes"])
    return labels


# ------------------------------------------------------------------ 1. the model's grid


def _orientation(affine: np.ndarray | None, axcodes: list[str] | None) -> np.ndarray | None:
    if affine is None or axcodes is None:
        return None
    start = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(axcodes))
    identity = np.array([[a, 1] for a in range(3)], dtype=float)
    return None if np.array_equal(transform, identity) else transform


def _permuted(values: tuple, transform: np.ndarray | None) -> tuple:
    if transform is None:
        return tuple(values)
    out: list = [None] * 3
    for axis, value in enumerate(values):
        out[int(transform[axis, 0])] = value
    return tuple(out)


def _unorient(volume: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    if transform is None:
        return volume
    inverse = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return nib.orientations.apply_orientation(volume, inverse)


def normalise(volume: np.ndarray) -> np.ndarray:
    """0.5-99.5 percentiles to 0..1 (clipped), then zero mean and unit variance."""
    from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentiles

    volume = np.asarray(volume, dtype=np.float32)
    scaled = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)(
        volume[None]
    )
    return np.asarray(NormalizeIntensity()(scaled)[0], dtype=np.float32)


def _resampled_shape(shape, spacing, pipeline) -> tuple[int, ...] | None:
    target = pipeline["training_spacing"]
    if target is None:
        return None
    ratios = [float(s) / float(t) for s, t in zip(spacing, target, strict=True)]
    if all(abs(r - 1.0) <= pipeline["resample_tolerance"] for r in ratios):
        return None
    return tuple(max(1, round(n * r)) for n, r in zip(shape, ratios, strict=True))


def _resize(values: np.ndarray, shape, *, anti_aliasing: bool) -> np.ndarray:
    from monai.transforms import Resize

    resize = Resize(
        tuple(shape), mode="trilinear", anti_aliasing=anti_aliasing, dtype=torch.float32
    )
    out = resize(torch.from_numpy(np.asarray(values, dtype=np.float32))[None])
    return np.ascontiguousarray(torch.as_tensor(out)[0].numpy())


def resample_labels(labels: np.ndarray, num_classes: int, shape) -> np.ndarray:
    """Labels on another grid: each class's indicator interpolated (trilinear), then the
    class with the highest value per voxel, which keeps boundaries smooth where nearest
    neighbour would leave steps; two volumes held at a time, whatever the class count.
    napari-lasc's own (:func:`src_monai.inference.resample.resample_labels`) is this one."""
    from monai.transforms import Resize

    resize = Resize(tuple(shape), mode="trilinear", dtype=torch.float32)
    source = torch.from_numpy(np.asarray(labels))
    best = torch.zeros(tuple(shape), dtype=torch.float32)
    out = torch.zeros(tuple(shape), dtype=torch.uint8)
    for label in range(num_classes):
        score = torch.as_tensor(resize((source == label).float()[None]))[0]
        better = score > best
        best = torch.where(better, score, best)
        out[better] = label
    return out.numpy()


# ------------------------------------------------------------------ networks

PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16, named in
    Linux's ``/proc/cpuinfo``). Elsewhere oneDNN emulates it, slower than float32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def network_autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The autocast the networks run under. ``auto``: bfloat16 on a CUDA GPU and on a CPU
    that computes it natively (a 3D stage 2 runs several times faster there, with the same
    Dice), float32 elsewhere; ``float32`` / ``bfloat16`` force one."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    native = device.type == "cuda" or (device.type == "cpu" and _cpu_has_bfloat16())
    bfloat16 = precision == "bfloat16" or (precision == "auto" and native)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)


def one_pass_limit(scan_shape: tuple[int, ...], stage: dict[str, Any]) -> int:
    """The largest 3D region (in voxels) of a scan of ``scan_shape`` (slices first) that
    passes through the network at once: ``stage["whole_region_voxels"]`` (what the model chose;
    0: windows), or ``stage["thin_scan_voxels"]`` where the scan is less than half the window
    along an axis. Its windows would then be mostly zero padding past the scan's edge, which
    the network fails on (a 16-slice excerpt of a lasc13 scan: Dice 0.05 in 48-slice windows,
    0.96 in one pass, padded only to the network's stride). Half, not the whole window: the
    cross-validated LGE scans are down to 44 slices and 66 columns (48 x 80 x 80 windows) and
    scored as windowed."""
    chosen = stage.get("whole_region_voxels", 0)
    window = stage["window"]
    thin = len(scan_shape) == len(window) and any(
        2 * size < patch for size, patch in zip(scan_shape, window, strict=True)
    )
    return max(chosen, stage.get("thin_scan_voxels", 0)) if thin else chosen


def fits_whole(shape: tuple[int, ...], limit: int) -> bool:
    """Whether a 3D region of ``shape`` (slices, rows, columns) is passed through the network
    at once: at most ``limit`` voxels (0: never; sliding windows then)."""
    return 0 < int(np.prod(shape)) <= limit


def whole_region_logits(network, batch: torch.Tensor, divisor: int) -> torch.Tensor:
    """Logits of a batch of 3D regions ``(B, C, D, H, W)`` in one pass of the network: each
    axis zero-padded, centred, to a multiple of ``divisor`` (the network's total stride) and
    the padding cut off again. Zero is the z-scored scan's mean, as MONAI's windows pad."""
    shape = batch.shape[2:]
    pads: list[int] = []
    for size in reversed(shape):  # torch.nn.functional.pad's order: the last axis first
        extra = -size % divisor
        pads += [extra // 2, extra - extra // 2]
    out = network(torch.nn.functional.pad(batch, pads))
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    starts = [pads[2 * (len(shape) - 1 - axis)] for axis in range(len(shape))]
    inside = tuple(slice(lo, lo + n) for lo, n in zip(starts, shape, strict=True))
    return out[(slice(None), slice(None), *inside)]


def _scores(network, batch, stage: dict[str, Any], device, *, softmax: bool) -> torch.Tensor:
    """Logits (or probabilities) of a batch through MONAI's sliding window (or, a 3D region
    that fits ``stage["whole_region_voxels"]``, one pass), with the stage's test-time flips
    averaged in (probabilities then)."""
    from monai.inferers import SlidingWindowInferer

    window = stage["window"]
    whole = batch.ndim == 5 and fits_whole(batch.shape[2:], stage.get("whole_region_voxels", 0))
    larger = any(
        size > patch for size, patch in zip(batch.shape[-len(window) :], window, strict=True)
    )
    inferer = (
        None
        if whole
        else SlidingWindowInferer(
            roi_size=window,
            sw_batch_size=batch.shape[0],
            overlap=stage["overlap"],
            mode="gaussian" if larger else "constant",
            padding_mode="constant",
        )
    )
    batch = batch.to(device)

    def logits(x: torch.Tensor) -> torch.Tensor:
        with network_autocast(device, stage.get("precision", "auto")):
            if inferer is None:
                return whole_region_logits(network, x, stage["divisor"])
            out = inferer(x, network)
        return out.as_tensor() if hasattr(out, "as_tensor") else out

    flips = [tuple(d) for d in stage["flip_dims"]]
    first = logits(batch)
    if not flips:
        return torch.softmax(first.float(), dim=1) if softmax else first
    total = torch.softmax(first.float(), dim=1)
    for dims in flips:
        total += torch.flip(torch.softmax(logits(torch.flip(batch, dims)).float(), dim=1), dims)
    return total / (1 + len(flips))


def _context_stack(slices: torch.Tensor, indices, context: int) -> torch.Tensor:
    index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    half = context // 2
    offsets = torch.arange(-half, half + 1)
    return slices[(index[:, None] + offsets[None, :]).clamp(0, slices.shape[0] - 1)]


def _slice_labels(network, slices: np.ndarray, stage: dict[str, Any], device) -> np.ndarray:
    """Labels of every slice of a slices-first volume, 2.5D stacks in batches."""
    tensor = torch.from_numpy(np.ascontiguousarray(slices))
    labels = torch.empty(tensor.shape, dtype=torch.uint8)
    batch_size = stage["batch_size"]
    for start in range(0, tensor.shape[0], batch_size):
        stop = min(start + batch_size, tensor.shape[0])
        with torch.inference_mode():
            stack = _context_stack(tensor, range(start, stop), stage["context_slices"])
            scores = _scores(network, stack, stage, device, softmax=bool(stage["flip_dims"]))
            labels[start:stop] = scores.max(1).indices.to("cpu", torch.uint8)
    return labels.numpy()


# ------------------------------------------------------------------ 2. localise


def localise(network, slices: np.ndarray, stage: dict[str, Any], device) -> tuple | None:
    """The atrium's box ``(z0, z1, y0, y1, x0, x1)`` at full resolution, or ``None``."""
    factor = stage["downsample"]
    small = _shrink(torch.from_numpy(slices), factor).numpy()
    if float(small.max()) == float(small.min()):
        return None
    labels = postprocess(_slice_labels(network, small, stage, device), stage["num_classes"])
    box = _box_around(labels == 1)
    if box is None:
        return None
    z0, z1, y0, y1, x0, x1 = box
    _, height, width = slices.shape
    return z0, z1, y0 * factor, min(y1 * factor, height), x0 * factor, min(x1 * factor, width)


def _shrink(slices: torch.Tensor, factor: int) -> torch.Tensor:
    batch = slices.float()[:, None]
    height, width = batch.shape[-2:]
    pad = (0, -width % factor, 0, -height % factor)
    if any(pad):
        batch = torch.nn.functional.pad(batch, pad, mode="replicate")
    return torch.nn.functional.avg_pool2d(batch, factor)[:, 0]


def _box_around(mask: np.ndarray) -> tuple | None:
    if not mask.any():
        return None
    edges: list[int] = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        edges += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(edges)


# ------------------------------------------------------------------ 3. segment


def segment_in_box(network, slices: np.ndarray, box, stage: dict[str, Any], device) -> np.ndarray:
    """Stage 2's labels (slices first) inside the region around ``box`` (``None``: all)."""
    count, height, width = slices.shape
    if stage["kind"] == "3d":
        return _segment_region_3d(network, slices, box, stage, device)
    if box is None:
        return _slice_labels(network, slices, stage, device)
    half, size = stage["context_slices"] // 2, stage["crop_size"]
    first, stop = max(box[0] - stage["slice_margin"], 0), min(box[1] + stage["slice_margin"], count)
    lower, upper = max(first - half, 0), min(stop + half, count)
    top = round((box[2] + box[3]) / 2.0 - size / 2)
    left = round((box[4] + box[5]) / 2.0 - size / 2)
    y0, y1, x0, x1 = max(top, 0), min(top + size, height), max(left, 0), min(left + size, width)
    crop = np.zeros((upper - lower, size, size), np.float32)
    crop[:, y0 - top : y1 - top, x0 - left : x1 - left] = slices[lower:upper, y0:y1, x0:x1]
    crop_labels = _slice_labels(network, crop, stage, device)
    labels = np.zeros(slices.shape, np.uint8)
    kept = crop_labels[first - lower : stop - lower, y0 - top : y1 - top, x0 - left : x1 - left]
    labels[first:stop, y0:y1, x0:x1] = kept
    return labels


def _segment_region_3d(network, slices: np.ndarray, box, stage: dict[str, Any], device):
    """The 3D network's windows over the box grown by its margins; where the labels reach
    a face that is not the scan's edge, the region grows past it (``growth``) and is
    segmented again, up to ``growth_rounds`` times (a localiser's box can stop short)."""
    count, height, width = slices.shape
    if box is None:
        region = [0, count, 0, height, 0, width]
    else:
        margins = (stage["slice_margin"], stage["in_plane_margin"], stage["in_plane_margin"])
        region = []
        for axis in range(3):
            low, high = box[2 * axis], box[2 * axis + 1]
            region += [max(low - margins[axis], 0), min(high + margins[axis], slices.shape[axis])]
    rounds = stage["growth_rounds"] if box is not None else 0
    stage = {**stage, "whole_region_voxels": one_pass_limit(slices.shape, stage)}
    for round_ in range(rounds + 1):
        part = tuple(slice(region[2 * a], region[2 * a + 1]) for a in range(3))
        volume = torch.from_numpy(np.ascontiguousarray(slices[part]))[None, None]
        with torch.inference_mode():
            probabilities = _scores(network, volume, stage, device, softmax=True)[0].float()
        found = probabilities.max(0).indices.to("cpu", torch.uint8).numpy()
        if round_ == rounds:
            break
        larger = list(region)
        for axis in range(3):
            planes = np.moveaxis(found != 0, axis, 0)
            step, size = stage["growth"][axis], slices.shape[axis]
            if region[2 * axis] > 0 and planes[0].any():
                larger[2 * axis] = max(region[2 * axis] - step, 0)
            if region[2 * axis + 1] < size and planes[-1].any():
                larger[2 * axis + 1] = min(region[2 * axis + 1] + step, size)
        if larger == region:
            break
        region = larger
    labels = np.zeros(slices.shape, np.uint8)
    labels[part] = found
    return labels


# ------------------------------------------------------------------ 4. post-process


def postprocess(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep each foreground class's largest 3D component, then fill its enclosed holes where
    no other class claims them (full connectivity for both: MONAI's
    ``KeepLargestConnectedComponent(independent=True)`` then ``FillHoles``), with SciPy's C
    implementations, on the foreground's box plus one voxel only: the margin is background
    connected around the box to the volume's border, so the same holes are found in a fraction
    of the time (most of a scan is far from the atrium). napari-lasc's own post-processing is
    this function (:func:`src_monai.inference.postprocess.postprocess_labels`)."""
    from scipy import ndimage

    result = np.asarray(labels, dtype=np.uint8).copy()
    found = ndimage.find_objects((result != 0).astype(np.uint8))
    if not found:
        return result
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in found[0])
    part = result[box]  # a view: result changes with it
    full = ndimage.generate_binary_structure(part.ndim, part.ndim)
    for cls in range(1, num_classes):
        mask = part == cls
        components, count = ndimage.label(mask, structure=full)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            largest = components == sizes.argmax()
            part[mask & ~largest] = 0
            mask = largest
        if count:
            holes = ndimage.binary_fill_holes(mask, structure=full) & ~mask & (part == 0)
            part[holes] = cls
    return result
