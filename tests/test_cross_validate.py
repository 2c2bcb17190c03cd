"""scripts/cross_validate.py: folds trained and scored, and an interrupted run continued."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, make_msd_dataset, tiny_config

from src_monai.config import save_config

SCRIPT = REPO / "scripts" / "cross_validate.py"


def _cv(config: Path, data: Path | list[Path], out: Path, *extra: str, **popen) -> subprocess.Popen:
    folders = [str(d) for d in (data if isinstance(data, list) else [data])]
    command = [sys.executable, str(SCRIPT), str(config), "--data", *folders, "--out", str(out)]
    command += ["--folds", "2", "--no-final", "--device", "cpu", *extra]
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _epochs(folder: Path) -> int:
    with open(folder / "metrics.csv", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def test_an_interrupted_cross_validation_continues_where_it_stopped(tmp_path):
    data = make_msd_dataset(tmp_path / "data", cases=4)
    config = save_config(
        tiny_config(data, tmp_path / "unused", train={"epochs": 40, "val_every": 40}),
        tmp_path / "cv.toml",
    )
    out = tmp_path / "cv"
    # Fold 1 alone, killed (with its training process) once its first checkpoint exists.
    first = _cv(config, data, out, "--only", "1", start_new_session=True)
    state = out / "runs" / "fold1" / "checkpoints" / "last_state.pt"
    deadline = time.monotonic() + 300
    while not state.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before = _epochs(out / "runs" / "fold1")
    assert 1 <= done_before < 40, "the run was not cut off mid-way: the test saw nothing"

    again = _cv(config, data, out, "--resume")
    log, _ = again.communicate(timeout=900)
    assert again.returncode == 0, log[-3000:]
    assert _epochs(out / "runs" / "fold1") == 40  # continued in its own folder
    assert _epochs(out / "runs" / "fold0") == 40  # the fold not started, started
    assert not list((out / "runs").glob("fold1-*"))
    with open(out / "cv_per_case.csv", encoding="utf-8") as handle:
        folds = {row["fold"] for row in csv.DictReader(handle)}
    assert folds == {"0", "1"}

    kept = _cv(config, data, out, "--resume")
    log, _ = kept.communicate(timeout=900)
    assert kept.returncode == 0 and "fold0: kept" in log and "fold1: kept" in log, log[-2000:]


def test_two_datasets_are_cross_validated_in_joint_folds_with_a_table_each(tmp_path):
    """Each fold holds out half of each dataset (2 folds); both datasets train every fold;
    the summary has each dataset's own means."""
    first = make_msd_dataset(tmp_path / "bssfp", cases=4, prefix="la")
    second = make_msd_dataset(tmp_path / "lge", cases=4, prefix="lge")
    config = save_config(
        tiny_config(first, tmp_path / "unused", train={"epochs": 2, "val_every": 2}),
        tmp_path / "cv.toml",
    )
    out = tmp_path / "cv"
    run = _cv(config, [first, second], out)
    log, _ = run.communicate(timeout=900)
    assert run.returncode == 0, log[-3000:]
    folds = json.loads((out / "folds.json").read_text())["partitions"]
    for partition in folds:
        held_out = partition["val"]
        assert sum(c.startswith("la_") for c in held_out) == 2
        assert sum(c.startswith("lge_") for c in held_out) == 2
    trained = json.loads((out / "runs" / "fold0" / "split.json").read_text())
    assert sorted(trained["train"]) == sorted(folds[0]["train"])
    with open(out / "cv_per_case.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["dataset"], r["case"][:3]) for r in rows} == {("bssfp", "la_"), ("lge", "lge")}
    summary = json.loads((out / "cv_summary.json").read_text())
    parts = summary["variants"]["plain"]["datasets"]
    assert {name: part["cases"] for name, part in parts.items()} == {"bssfp": 4, "lge": 4}


def test_two_stage_scoring_covers_the_folds_asked_for(tmp_path):
    """``cv_two_stage.py --only`` scores the folds trained so far and says which; a fold that
    does not exist is refused in one line, before anything is written."""
    data = make_msd_dataset(tmp_path / "data", cases=4)
    config = save_config(
        tiny_config(
            data,
            tmp_path / "unused",
            data={"downsample": 2, "patch_size": [16, 16]},
            train={"epochs": 2, "val_every": 2},
        ),
        tmp_path / "localiser.toml",
    )
    localisers = tmp_path / "cv-loc"
    run = _cv(config, data, localisers)
    log, _ = run.communicate(timeout=900)
    assert run.returncode == 0, log[-3000:]
    script = [sys.executable, str(REPO / "scripts" / "cv_two_stage.py"), "--data", str(data)]
    script += ["--localisers", str(localisers)]

    def score(fold: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*script, "--only", fold, "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )

    scored = score("1", tmp_path / "boxes")
    assert scored.returncode == 0, scored.stderr[-3000:]
    held_out = json.loads((localisers / "folds.json").read_text())["partitions"][1]["val"]
    with open(tmp_path / "boxes" / "boxes.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["case"] for r in rows) == sorted(held_out)
    assert {r["fold"] for r in rows} == {"1"}
    assert json.loads((tmp_path / "boxes" / "summary.json").read_text())["folds"] == [1]
    refused = score("2", tmp_path / "none")
    assert refused.returncode == 2 and "--only: the folds are 0-1" in refused.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.slow  # two cross-validations and four scorings, each a process: about 2 minutes
def test_folds_scored_in_separate_runs_merge_into_the_summary_of_one(tmp_path):
    """Run folders do not outlive a session, so folds are scored one by one (``--only``) and
    kept; ``--merge`` gives the summary that scoring them together gives, and the fold
    localisers may be plain files (``FOLDER/fold<k>.safetensors``)."""
    import shutil

    data = make_msd_dataset(tmp_path / "data", cases=4)
    localiser = tiny_config(
        data,
        tmp_path / "unused",
        data={"downsample": 2, "patch_size": [16, 16]},
        train={"epochs": 2, "val_every": 2},
    )
    segmenter = tiny_config(
        data,
        tmp_path / "unused",
        data={"crop_size": 16, "crop_depth": 4, "context_slices": 1, "crop_jitter": 2},
        train={"epochs": 2, "val_every": 2, "batch_size": 2},
    )
    trained = {}
    for name, config in (("loc", localiser), ("seg", segmenter)):
        trained[name] = tmp_path / f"cv-{name}"
        run = _cv(save_config(config, tmp_path / f"{name}.toml"), data, trained[name])
        log, _ = run.communicate(timeout=900)
        assert run.returncode == 0, log[-3000:]
    kept = tmp_path / "kept_localisers"
    kept.mkdir()
    for fold in (0, 1):
        source = next((trained["loc"] / "runs").glob(f"fold{fold}/checkpoints/last.safetensors"))
        shutil.copy(source, kept / f"fold{fold}.safetensors")
    script = [sys.executable, str(REPO / "scripts" / "cv_two_stage.py"), "--data", str(data)]

    def score(*extra: str) -> dict:
        done = subprocess.run(
            [*script, *extra], cwd=REPO, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((Path(extra[extra.index("--out") + 1]) / "summary.json").read_text())

    both = ["--localisers", str(kept), "--segmenters", str(trained["seg"])]
    together = score(*both, "--out", str(tmp_path / "together"))
    for fold in ("0", "1"):
        score(*both, "--only", fold, "--out", str(tmp_path / f"fold{fold}"))
    merged = score(
        "--localisers", str(kept), "--folds", str(trained["seg"] / "folds.json"),
        "--merge", str(tmp_path / "fold0"), str(tmp_path / "fold1"),
        "--out", str(tmp_path / "merged"),
    )  # fmt: skip
    assert together["folds"] == merged["folds"] == [0, 1]
    assert merged["variants"] == together["variants"]
    assert merged["cases"] == together["cases"] == 4


def _rows(variant: str, dataset: str, dices: list[float], hd95: float) -> list[dict]:
    return [
        {
            "fold": i % 4,
            "dataset": dataset,
            "variant": variant,
            "case": f"{dataset}_{i:03d}",
            "dice": dice,
            "hd95_mm": hd95,
            "asd_mm": 1.0,
            "volume_error_pct": -2.0,
        }
        for i, dice in enumerate(dices)
    ]


def test_a_joint_cross_validation_is_quoted_and_chosen_per_dataset(monkeypatch):
    """With two datasets (80 LGE cases against 16 bSSFP), the accuracy is quoted per dataset
    and the variant is chosen with each counting equally: the pooled mean would pick the one
    that is worse on bSSFP. The model file keeps the per-dataset figures."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import cv_two_stage

    from src_monai.model.files import BUNDLED_MODEL, load_spec
    from src_monai.model.spec import InferenceDefaults, ModelSpec

    rows = [
        *_rows("plain", "lasc13", [0.80, 0.82, 0.78, 0.80], 9.0),
        *_rows("plain", "atriaseg2018", [0.96] * 20, 3.0),
        *_rows("post", "lasc13", [0.90, 0.92, 0.88, 0.86], 4.0),
        *_rows("post", "atriaseg2018", [0.93] * 20, 3.5),
    ]
    accuracies = {v: cv_two_stage.variant_accuracy(rows, 4, v) for v in ("plain", "post")}
    assert accuracies["plain"].dice_mean > accuracies["post"].dice_mean  # pooled
    assert cv_two_stage.chosen_variant(accuracies) == "post"
    post = accuracies["post"]
    by_name = {part.name: part for part in post.datasets}
    assert by_name["lasc13"].cases == 4 and by_name["lasc13"].dice_min == 0.86
    assert by_name["lasc13"].dice_mean == pytest.approx(0.89)
    assert post.text() == "atriaseg2018: Dice 0.930, HD95 3.5 mm; lasc13: Dice 0.890, HD95 4.0 mm"

    spec = load_spec(BUNDLED_MODEL).with_inference(InferenceDefaults(postprocess=True), post)
    read_back = ModelSpec.from_metadata(json.loads(json.dumps(spec.to_metadata())))
    assert read_back.cross_validation == post
    assert "lasc13: Dice 0.890" in read_back.seen_note({"la_016": "training"}, 1)

    tables = cv_two_stage.case_tables(
        rows,
        [{"case": "lasc13_003", "voxels_outside_crop": 74, "voxels_outside_grown_region": 0}],
        "post",
    )
    assert tables.count("| 3 | lasc13_003 | 0.860 | 4.00 | 1.00 | -2.0 | 74 / 0 |") == 1
    assert "#### lasc13: 4 cases" in tables and "lowest 0.860, lasc13_003" in tables
    assert len([line for line in tables.splitlines() if line.startswith("| ")]) == 2 * 1 + 24
