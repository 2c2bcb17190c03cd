"""Datasets on disk: the MSD layout, the earlier Keras tool's PNG layout, patient-level splits.

A *case* is one patient's scan (and label). Everything that splits data splits cases,
never slices, so no patient is seen in training and in validation or test.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DatasetError, MaskColourError
from .fileutil import write_json
from .scan_io import SCAN_SUFFIXES, case_id_from_path, check_pair, read_geometry, scan_suffix

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


# --------------------------------------------------------------------------- MSD layout


@dataclass(frozen=True)
class Case:
    """One patient's scan and (for training cases) label file."""

    case_id: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class MsdDataset:
    """A dataset in the Medical Segmentation Decathlon layout."""

    root: Path
    name: str
    class_names: dict[int, str]
    training: list[Case]
    test: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.class_names) + 1

    def case_ids(self) -> list[str]:
        return [case.case_id for case in self.training]


def discover_msd(root: str | Path, *, verify: bool = True) -> MsdDataset:
    """Find the cases of an MSD-layout folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Without ``dataset.json`` the folders are scanned and images paired with labels by case
    id. With ``verify`` each pair's headers are read and compared (shape, affine): a
    mismatch raises :class:`~src_monai.errors.PairMismatchError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    manifest = root / "dataset.json"
    dataset = _msd_from_manifest(root, manifest) if manifest.is_file() else _msd_from_folders(root)
    if not dataset.training:
        raise DatasetError(root, "no training cases found (expected imagesTr/ and labelsTr/)")
    if verify:
        for case in dataset.training:
            assert case.label is not None
            check_pair(read_geometry(case.image), read_geometry(case.label), case.image, case.label)
    logger.debug(
        "%s: %d training cases, %d test images", root, len(dataset.training), len(dataset.test)
    )
    return dataset


def _msd_from_manifest(root: Path, manifest: Path) -> MsdDataset:
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        entries = info.get("training", [])
        training = [
            Case(case_id_from_path(e["image"]), root / e["image"], root / e["label"])
            for e in entries
        ]
        test = [Case(case_id_from_path(p), root / p) for p in info.get("test", [])]
        class_names = {
            int(k): str(v)
            for k, v in info.get("labels", {"0": "background", "1": "foreground"}).items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(manifest, f"not a valid MSD dataset.json ({exc!r})") from exc
    for case in training:
        assert case.label is not None
        for path in (case.image, case.label):
            if not path.is_file():
                raise DatasetError(
                    manifest, f"lists {path.relative_to(root)}, which does not exist"
                )
        if case_id_from_path(case.label) != case.case_id:
            raise DatasetError(
                manifest, f"pairs image {case.image.name} with label {case.label.name}"
            )
    test = [case for case in test if case.image.is_file()]
    return MsdDataset(
        root=root,
        name=str(info.get("name", root.name)),
        class_names=class_names,
        training=sorted(training, key=lambda c: c.case_id),
        test=sorted(test, key=lambda c: c.case_id),
    )


def _scan_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    files = [
        p
        for p in folder.iterdir()
        # MSD archives carry macOS "._la_003.nii.gz" resource forks: not scans.
        if p.is_file() and not p.name.startswith(".") and scan_suffix(p) is not None
    ]
    return {case_id_from_path(p): p for p in sorted(files)}


def _msd_from_folders(root: Path) -> MsdDataset:
    images = _scan_files(root / "imagesTr")
    labels = _scan_files(root / "labelsTr")
    unlabelled = sorted(set(images) - set(labels))
    orphans = sorted(set(labels) - set(images))
    if unlabelled:
        raise DatasetError(root / "labelsTr", f"no label for case(s) {', '.join(unlabelled[:5])}")
    if orphans:
        raise DatasetError(root / "imagesTr", f"no image for label(s) {', '.join(orphans[:5])}")
    training = [Case(cid, images[cid], labels[cid]) for cid in sorted(images)]
    test = [Case(cid, path) for cid, path in _scan_files(root / "imagesTs").items()]
    return MsdDataset(
        root=root,
        name=root.name,
        class_names={0: "background", 1: "left atrium"},
        training=training,
        test=test,
    )


# --------------------------------------------------------------------------- PNG layout


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


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitPlan:
    """Patient-level partitions of a sorted case list, reproducible from ``seed``.

    ``kind == "holdout"``: one partition with ``train``/``valid``/``test``.
    ``kind == "kfold"``: one partition per fold with ``train``/``val``.
    """

    kind: str
    seed: int
    cases: list[str]
    partitions: list[dict[str, list[str]]]

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "cases": self.cases,
            "partitions": self.partitions,
        }


def holdout_split(
    case_ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.15, 0.05), seed: int = 137
) -> SplitPlan:
    """Split cases into train/valid/test by the given fractions (seeded, patient-level)."""
    from monai.data import partition_dataset

    cases = _sorted_unique(case_ids)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise DatasetError(None, f"split fractions {tuple(fractions)} must be three numbers >= 0")
    parts = partition_dataset(cases, ratios=list(fractions), shuffle=True, seed=seed)
    for name, fraction, part in zip(PNG_SUBSETS, fractions, parts, strict=True):
        if fraction > 0 and not part:
            raise DatasetError(
                None, f"{len(cases)} cases are too few for a {name} fraction of {fraction:g}"
            )
    partition = {name: sorted(part) for name, part in zip(PNG_SUBSETS, parts, strict=True)}
    return SplitPlan("holdout", seed, cases, [partition])


def kfold_split(case_ids: Sequence[str], folds: int = 4, seed: int = 0) -> SplitPlan:
    """``folds``-fold cross-validation over cases: each case is validated in exactly one fold."""
    from monai.data import partition_dataset

    cases = _sorted_unique(case_ids)
    if not 2 <= folds <= len(cases):
        raise DatasetError(None, f"cannot make {folds} folds from {len(cases)} cases")
    parts = partition_dataset(
        cases, num_partitions=folds, shuffle=True, seed=seed, even_divisible=False
    )
    partitions = [
        {
            "train": sorted(c for j, p in enumerate(parts) if j != i for c in p),
            "val": sorted(parts[i]),
        }
        for i in range(folds)
    ]
    return SplitPlan("kfold", seed, cases, partitions)


def save_split(path: str | Path, plan: SplitPlan, *, overwrite: bool = False) -> Path:
    return write_json(path, plan.to_json(), overwrite=overwrite)


def load_split(path: str | Path, known_cases: Iterable[str] | None = None) -> SplitPlan:
    """Read a split saved by :func:`save_split` and check it is a patient-level partition."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        plan = SplitPlan(
            str(raw["kind"]),
            int(raw["seed"]),
            list(raw["cases"]),
            [{k: list(v) for k, v in p.items()} for p in raw["partitions"]],
        )
    except FileNotFoundError as exc:
        raise DatasetError(path, "split file not found") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(path, f"not a split file ({exc!r})") from exc
    for index, partition in enumerate(plan.partitions):
        seen: dict[str, str] = {}
        for subset, members in partition.items():
            for case in members:
                if case in seen:
                    raise DatasetError(
                        path, f"partition {index}: case {case} is in both {seen[case]} and {subset}"
                    )
                seen[case] = subset
    if known_cases is not None:
        unknown = sorted(set(plan.cases) - set(known_cases))
        if unknown:
            raise DatasetError(path, f"names cases not in the dataset: {', '.join(unknown[:5])}")
    return plan


def _sorted_unique(case_ids: Sequence[str]) -> list[str]:
    cases = sorted(case_ids)
    duplicates = sorted({c for c in cases if cases.count(c) > 1})
    if duplicates:
        raise DatasetError(None, f"duplicate case ids: {', '.join(duplicates[:5])}")
    if not cases:
        raise DatasetError(None, "no cases to split")
    return cases


__all__ = [
    "DEFAULT_RGB_MAP",
    "SCAN_SUFFIXES",
    "Case",
    "MsdDataset",
    "PngSlice",
    "SplitPlan",
    "colour_mask",
    "decode_rgb_mask",
    "discover_msd",
    "discover_png",
    "holdout_split",
    "kfold_split",
    "load_split",
    "parse_rgb_map",
    "read_png_image",
    "read_png_mask",
    "save_split",
]
