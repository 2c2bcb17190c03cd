"""Evaluation: per-case 3D metrics against hand computations, and `lasc evaluate`."""

from __future__ import annotations

import csv
import json
import math
import subprocess

import nibabel as nib
import numpy as np
import pytest
from conftest import LASC

from src_monai.evaluation.metrics import case_metrics, earlier_tool_metrics
from src_monai.io.scans import read_labels, read_scan, write_labels


def test_cube_shifted_by_two_voxels_matches_a_hand_computation():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    shifted = np.roll(truth, 2, axis=0)
    metrics = case_metrics(shifted, truth, (1.5, 1.0, 1.0), num_classes=2)
    # Overlap 8x10x10 of two 1000-voxel cubes.
    assert metrics["dice"] == pytest.approx(2 * 800 / 2000)
    assert metrics["iou"] == pytest.approx(800 / 1200)
    assert metrics["hd95_mm"] == pytest.approx(3.0)  # 2 voxels of 1.5 mm
    assert metrics["volume_truth_ml"] == pytest.approx(1.5)
    assert metrics["volume_error_pct"] == 0.0


def test_empty_prediction_gives_zero_dice_and_undefined_distances():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:5, 2:5, 2:5] = 1
    metrics = case_metrics(np.zeros_like(truth), truth, (1, 1, 1), num_classes=2)
    assert metrics["dice"] == 0.0 and math.isnan(metrics["hd95_mm"])
    assert metrics["volume_error_pct"] == -100.0


def test_earlier_tool_dice_counts_background():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[0, 0, 0] = 1
    legacy = earlier_tool_metrics(np.zeros_like(truth), truth, 2)
    assert legacy["legacy_dice_with_background"] == pytest.approx((2 * 999 / 1999 + 0) / 2)


@pytest.mark.slow
def test_real_truth_against_itself_and_a_shifted_copy(lasc13):
    labels = read_labels(lasc13 / "labelsTr" / "la_009.nii.gz")
    same = case_metrics(labels.array, labels.array, labels.geometry.spacing, 2)
    assert (same["dice"], same["hd95_mm"], same["asd_mm"]) == (1.0, 0.0, 0.0)
    shifted = np.roll(labels.array, 2, axis=1)  # 2 voxels of 1.25 mm along y
    metrics = case_metrics(shifted, labels.array, labels.geometry.spacing, 2)
    overlap = np.count_nonzero(shifted & labels.array)
    assert metrics["dice"] == pytest.approx(2 * overlap / (2 * labels.array.sum()), rel=1e-5)
    assert metrics["hd95_mm"] == pytest.approx(2.5)


def test_cli_evaluate_from_label_folders(tmp_path, msd_dataset):
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sorted((msd_dataset / "labelsTr").glob("*.nii.gz")):
        labels = read_labels(path)
        write_labels(pred / path.name, np.roll(labels.array, 1, axis=0), read_scan(path).geometry)
    out = tmp_path / "report"
    result = subprocess.run(
        [
            LASC,
            "evaluate",
            "--pred",
            str(pred),
            "--truth",
            str(msd_dataset / "labelsTr"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert [r["case"] for r in rows] == ["case_000", "case_001", "case_002"]
    assert all(0.5 < float(r["dice"]) < 1.0 for r in rows)
    # A shifted copy has the same shape: its measurements equal the truth's.
    for row in rows:
        assert float(row["max_diameter_mm_pred"]) == pytest.approx(
            float(row["max_diameter_mm_truth"])
        )
        assert float(row["sphericity_pred"]) == pytest.approx(
            float(row["sphericity_truth"]), abs=1e-3
        )
        assert 0 < float(row["sphericity_truth"]) <= 1.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(
        np.mean([float(r["dice"]) for r in rows])
    )
    assert (out / "boxplot.png").is_file()
    assert "not comparable" in result.stdout


def test_cli_evaluate_a_model_on_a_split(tiny_run, tmp_path):
    dataset, result = tiny_run
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps(
            {
                "kind": "holdout",
                "seed": 0,
                "cases": ["case_001"],
                "partitions": [{"train": [], "valid": [], "test": ["case_001"]}],
            }
        )
    )
    done = subprocess.run(
        [
            LASC,
            "evaluate",
            "--model",
            str(result.best_model),
            "--data",
            str(dataset),
            "--split",
            str(split),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "r" / "per_case.csv").open()))
    assert [r["case"] for r in rows] == ["case_001"]
    assert float(rows[0]["legacy_categorical_crossentropy"]) > 0


def test_cli_evaluate_needs_a_source(tmp_path):
    done = subprocess.run(
        [LASC, "evaluate", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: give --model")


def test_evaluate_scores_the_cases_in_both_folders_and_names_those_left_out(
    tmp_path, msd_dataset, capsys
):
    from src_monai.cli import main as lasc

    pred = tmp_path / "pred"
    pred.mkdir()
    only = sorted((msd_dataset / "labelsTr").glob("*.nii.gz"))[0]
    labels = read_labels(only)
    write_labels(pred / only.name, labels.array, labels.geometry)
    truth, out = msd_dataset / "labelsTr", tmp_path / "report"
    assert lasc(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 of 3 truth cases have no prediction and are left out" in err
    assert "case_001, case_002" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 1
    assert summary["left_out_without_prediction"] == ["case_001", "case_002"]
    assert "left out, no prediction (2): case_001, case_002" in (out / "summary.txt").read_text()
    strict = ["--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "strict")]
    assert lasc(["evaluate", *strict, "--require-all"]) == 2
    assert "no prediction for 2 of 3 truth case(s) (--require-all): case_001, case_002" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "strict").exists()


def test_a_users_own_model_names_its_validation_cases_and_no_borrowed_accuracy(tiny_run, tmp_path):
    """A model trained here (no cross-validation recorded) evaluated on its whole dataset: its
    validation cases are called what they were (they chose the checkpoint), its training
    cases training, and the note does not point to the bundled model's figures."""
    from src_monai.model.files import load_spec

    dataset, result = tiny_run
    spec = load_spec(result.best_model)
    done = subprocess.run(
        [
            *[LASC, "evaluate", "--model", str(result.best_model), "--data", str(dataset)],
            *["--out", str(tmp_path / "r")],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "r" / "per_case.csv").open()))
    roles = {row["case"]: row["seen_by_model"] for row in rows}
    assert {c: roles[c] for c in spec.split["val"]} == dict.fromkeys(
        spec.split["val"], "validation"
    )
    assert {c: roles[c] for c in spec.split["train"]} == dict.fromkeys(
        spec.split["train"], "training"
    )
    note = " ".join(done.stderr.split())
    assert spec.seen_note({r: roles[r] for r in roles if roles[r]}, len(rows)) in note
    assert "validation, it chose the checkpoint" in note
    assert "no cross-validated accuracy is recorded for this model" in note
    assert "0.899" not in note and "MODEL_CARD" not in note


def test_a_prediction_on_another_grid_is_named_as_prediction_and_truth_in_full(
    tmp_path, msd_dataset, capsys
):
    from src_monai.cli import main as lasc

    pred = tmp_path / "pred"
    pred.mkdir()
    truth = msd_dataset / "labelsTr"
    first = sorted(truth.glob("*.nii.gz"))[0]
    truth_file = nib.load(first)
    cropped = np.asarray(truth_file.dataobj)[:, :, :-1]  # one slice fewer: another grid
    nib.save(nib.Nifti1Image(cropped, truth_file.affine), pred / first.name)
    out = tmp_path / "report"
    assert lasc(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"{pred / first.name} and {first}" in error
    assert "prediction shape" in error and "!= truth shape" in error
    assert "image" not in error and "label shape" not in error
    assert not out.exists()
