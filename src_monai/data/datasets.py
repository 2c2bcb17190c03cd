"""Datasets on disk in the MSD layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``): cases
paired and verified.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from src_monai.errors import DatasetError
from src_monai.io.scans import (
    case_id_from_path,
    check_pair,
    is_scan_folder,
    read_geometry,
    scan_suffix,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One patient's scan and (for training cases) label file."""

    case_id: str
    image: Path
    label: Path | None = None
    dataset: str = ""
    """The folder name of the dataset it came from, where several train together."""


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
    if not manifest.is_file() and not (root / "imagesTr").is_dir():
        _refuse_a_folder_of_tasks(root)
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


def _refuse_a_folder_of_tasks(root: Path) -> None:
    """The folder an MSD archive was unpacked into (``Task02_Heart.tar`` gives
    ``Task02_Heart/``): name the task folder inside it instead of finding no cases."""
    tasks = sorted(c.name for c in root.iterdir() if c.is_dir() and (c / "dataset.json").is_file())
    if tasks:
        raise DatasetError(
            root, f"is not an MSD task folder but holds {', '.join(tasks)}: give that folder"
        )


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
            if not (path.is_file() or is_scan_folder(path)):
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
        if not p.name.startswith(".")
        and ((p.is_file() and scan_suffix(p) is not None) or is_scan_folder(p))
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


def discover_datasets(roots: list[str | Path], *, verify: bool = True) -> MsdDataset:
    """Several MSD-layout folders as one dataset (the first folder's root and name lead):
    their training cases together, in folder order. Case ids must differ across folders (a
    split names cases by id) and the folders must declare the same classes."""
    if len(roots) == 1:
        return discover_msd(roots[0], verify=verify)
    parts = [discover_msd(root, verify=verify) for root in roots]
    first = parts[0]
    seen: dict[str, Path] = {}
    for part in parts:
        if part.class_names != first.class_names:
            raise DatasetError(
                part.root,
                f"declares classes {part.class_names}, {first.root} declares {first.class_names}",
            )
        for case in part.training:
            if case.case_id in seen:
                raise DatasetError(
                    part.root, f"case {case.case_id} is also a case of {seen[case.case_id]}"
                )
            seen[case.case_id] = part.root
    return MsdDataset(
        root=first.root,
        name=" + ".join(part.name for part in parts),
        class_names=first.class_names,
        training=[replace(c, dataset=part.root.name) for part in parts for c in part.training],
        test=[case for part in parts for case in part.test],
    )
