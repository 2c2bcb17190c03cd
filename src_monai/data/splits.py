"""Patient-level splits: a case is one patient, and every split splits cases, never slices."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from src_monai.errors import DatasetError
from src_monai.io.files import write_json
from src_monai.io.png import PNG_SUBSETS

logger = logging.getLogger(__name__)


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

    @property
    def validation_key(self) -> str:
        """The name of the validation subset: ``valid`` (hold-out, the earlier tool's
        folder name) or ``val`` (k-fold)."""
        return "valid" if self.kind == "holdout" else "val"

    def train_and_validation(self, index: int = 0) -> tuple[list[str], list[str]]:
        """Training and validation cases of partition ``index`` (a fold)."""
        partition = self.partitions[index]
        return list(partition["train"]), list(partition.get(self.validation_key, []))

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


def joint_kfold_split(groups: Sequence[Sequence[str]], folds: int = 4, seed: int = 0) -> SplitPlan:
    """k-fold cross-validation over several datasets together: each group (a dataset's case
    ids) is split as :func:`kfold_split` splits it alone, and fold ``k`` holds out part ``k``
    of every group. So each fold validates on a share of each dataset, and one dataset's folds
    are the same whether or not the others join it."""
    plans = [kfold_split(group, folds, seed) for group in groups]
    cases = [c for plan in plans for c in plan.cases]
    if len(set(cases)) != len(cases):
        raise DatasetError(None, "a case id appears in more than one dataset")
    partitions = [
        {
            key: sorted(c for plan in plans for c in plan.partitions[k][key])
            for key in ("train", "val")
        }
        for k in range(folds)
    ]
    return SplitPlan("kfold", seed, sorted(cases), partitions)


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
        raise DatasetError(
            path,
            f"split file not found: make it with `lasc prepare DATASET {path.parent} --folds 4`, "
            "or train on a seeded patient-level split with --set \"data.split=''\"",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(path, f"not a split file ({exc!r})") from exc
    for index, partition in enumerate(plan.partitions):
        missing = {"train", plan.validation_key} - set(partition)
        if missing:
            raise DatasetError(
                path, f"partition {index} has no {' or '.join(sorted(missing))} list ({plan.kind})"
            )
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
