"""The earlier Keras tool's PNG slice layout (``images/``, ``masks/``, ``train|valid|test``) and
its RGB masks (``rgb_map``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from src_monai.errors import DatasetError, MaskColourError

logger = logging.getLogger(__name__)


RgbMap = Mapping[tuple[int, int, int], int]


# The earlier tool's Left-Atrial map: background black, left atrium magenta.
DEFAULT_RGB_MAP: dict[tuple[int, int, int], int] = {(0, 0, 0): 0, (255, 0, 255): 1}


# How far (RGB units) a mask colour may lie from the nearest map colour, or from the straight
# line between two map colours (the blends that bilinear resizing makes at edges), before it
# counts as a colour the map does not know.
MASK_COLOUR_TOLERANCE = 48.0


PNG_SUBSETS = ("train", "valid", "test")


_SLICE_NAME = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)$")


@dataclass(frozen=True)
class PngSlice:
    """One slice of the earlier tool's PNG layout: ``images/100NN_z.png`` + ``masks/...``."""

    case_id: str
    slice_index: int | None
    image: Path
    mask: Path | None
    subset: str | None = None


def parse_slice_name(stem: str) -> tuple[str, int | None]:
    """``"10001_104"`` -> ``("10001", 104)``; a name without ``_z`` is its own case."""
    match = _SLICE_NAME.match(stem)
    if match is None:
        return stem, None
    return match["case"], int(match["slice"])


def discover_png(root: str | Path, *, require_masks: bool = True) -> list[PngSlice]:
    """Find PNG slices in ``root/{train,valid,test}/{images,masks}`` or ``root/{images,masks}``.

    Images and masks are paired by file name. A patient whose slices sit in more than one
    subset (the earlier tool's slice-level split) is reported with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    subsets = [s for s in PNG_SUBSETS if (root / s / "images").is_dir()]
    folders = [(s, root / s) for s in subsets] if subsets else [(None, root)]
    slices: list[PngSlice] = []
    for subset, folder in folders:
        images_dir, masks_dir = folder / "images", folder / "masks"
        if not images_dir.is_dir():
            raise DatasetError(root, "no images/ folder (nor train|valid|test/images/)")
        images = sorted(p for p in images_dir.glob("*.png") if not p.name.startswith("."))
        for image in images:
            mask = masks_dir / image.name
            if not mask.is_file():
                if require_masks:
                    raise DatasetError(image, f"no mask {mask}")
                mask = None
            if mask is not None:
                _check_same_size(image, mask)
            case_id, slice_index = parse_slice_name(image.stem)
            slices.append(PngSlice(case_id, slice_index, image, mask, subset))
    if not slices:
        raise DatasetError(root, "no PNG images found")
    leaked = patients_in_several_subsets(slices)
    if leaked:
        logger.warning(
            "%s: %d patient(s) have slices in more than one subset (e.g. %s): "
            "scores on such a split overstate accuracy",
            root,
            len(leaked),
            leaked[0],
        )
    return slices


def _check_same_size(image: Path, mask: Path) -> None:
    # Image.open reads the header only: cheap enough for every pair.
    image_size, mask_size = _open_png(image, pixels=False).size, _open_png(mask, pixels=False).size
    if image_size != mask_size:
        raise DatasetError(
            mask,
            f"mask is {mask_size[0]}x{mask_size[1]}, its image {image_size[0]}x{image_size[1]}",
        )


def patients_in_several_subsets(slices: Iterable[PngSlice]) -> list[str]:
    """Case ids found in more than one of train/valid/test: the earlier tool's leak."""
    subsets_of: dict[str, set[str | None]] = {}
    for item in slices:
        subsets_of.setdefault(item.case_id, set()).add(item.subset)
    return sorted(cid for cid, subsets in subsets_of.items() if len(subsets) > 1)


def read_png_image(path: str | Path) -> np.ndarray:
    """A PNG slice as a 2D ``uint8`` greyscale array."""
    return np.asarray(_open_png(path).convert("L"))


def read_png_mask(path: str | Path, rgb_map: RgbMap = DEFAULT_RGB_MAP) -> np.ndarray:
    """A PNG RGB mask as a 2D ``uint8`` class array (see :func:`decode_rgb_mask`)."""
    return decode_rgb_mask(np.asarray(_open_png(path).convert("RGB")), rgb_map, source=path)


def _open_png(path: str | Path, *, pixels: bool = True) -> Image.Image:
    """Open an image; with ``pixels=False`` only its header is read (size, mode)."""
    try:
        with Image.open(path) as image:
            if pixels:
                image.load()
            return image
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(path, f"not a readable image ({exc})") from exc


def decode_rgb_mask(
    rgb: np.ndarray,
    rgb_map: RgbMap = DEFAULT_RGB_MAP,
    *,
    source: str | Path | None = None,
    tolerance: float = MASK_COLOUR_TOLERANCE,
) -> np.ndarray:
    """Map each pixel of an ``(H, W, 3)`` mask to the class of the nearest map colour.

    Blended edge colours (from bilinear resizing) go to the nearest map colour instead of
    being dropped. A colour that is neither near a map colour nor near a blend of two map
    colours raises :class:`~src_monai.errors.MaskColourError`: it means a wrong ``rgb_map``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MaskColourError(source, f"expected an RGB mask, got an array of shape {rgb.shape}")
    palette = np.array(list(rgb_map.keys()), dtype=np.float64)
    classes = np.array(list(rgb_map.values()), dtype=np.uint8)
    packed = (
        (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    )
    colours_packed, inverse = np.unique(packed, return_inverse=True)
    colours = np.stack(
        [(colours_packed >> 16) & 255, (colours_packed >> 8) & 255, colours_packed & 255], axis=1
    ).astype(np.float64)
    distances = np.linalg.norm(colours[:, None, :] - palette[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    off_map = _distance_to_blends(colours, palette) > tolerance
    if off_map.any():
        counts = np.bincount(inverse.ravel(), minlength=len(colours))
        worst = int(np.flatnonzero(off_map)[np.argmax(counts[off_map])])
        colour = tuple(int(c) for c in colours[worst])
        raise MaskColourError(
            source,
            f"{int(counts[off_map].sum())} pixels have colours not in rgb_map "
            f"(e.g. {colour}, {int(counts[worst])} pixels); rgb_map has {sorted(rgb_map)}",
        )
    return classes[nearest][inverse].reshape(packed.shape)


def colour_mask(labels: np.ndarray, rgb_map: RgbMap = DEFAULT_RGB_MAP) -> np.ndarray:
    """The inverse of :func:`decode_rgb_mask`: paint class indices with their map colour.

    A class with several colours gets the first one; a class with none is an error.
    """
    colour_of: dict[int, tuple[int, int, int]] = {}
    for colour, cls in rgb_map.items():
        colour_of.setdefault(cls, colour)
    missing = sorted(set(np.unique(labels).tolist()) - set(colour_of))
    if missing:
        raise DatasetError(None, f"rgb_map has no colour for class(es) {missing}")
    lut = np.zeros((256, 3), np.uint8)
    for cls, colour in colour_of.items():
        lut[cls] = colour
    return lut[labels]


def _distance_to_blends(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Distance of each colour to the nearest point on a segment between two map colours."""
    best = np.linalg.norm(colours[:, None, :] - palette[None, :, :], axis=2).min(axis=1)
    for a in range(len(palette)):
        for b in range(a + 1, len(palette)):
            start, direction = palette[a], palette[b] - palette[a]
            t = np.clip((colours - start) @ direction / (direction @ direction), 0.0, 1.0)
            closest = start + t[:, None] * direction
            best = np.minimum(best, np.linalg.norm(colours - closest, axis=1))
    return best


def parse_rgb_map(text: str) -> dict[tuple[int, int, int], int]:
    """Parse the earlier tool's ``{(0,0,0):0, (255,0,255):1}`` safely (no ``eval``)."""
    import ast

    try:
        value = ast.literal_eval(text)
        rgb_map = {tuple(int(c) for c in colour): int(cls) for colour, cls in value.items()}
    except (ValueError, SyntaxError, TypeError, AttributeError) as exc:
        raise DatasetError(None, f"rgb_map {text!r} is not a {{(r,g,b): class}} mapping") from exc
    if any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for colour in rgb_map):
        raise DatasetError(None, f"rgb_map {text!r}: colours must be (r, g, b) in 0..255")
    return rgb_map  # type: ignore[return-value]
