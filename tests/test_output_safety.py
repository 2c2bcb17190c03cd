"""No lost data: ``lasc infer`` refuses plans that would replace an input or one result with
another, writes each case as one unit, and merges ``summary.csv`` instead of rewriting it."""

from __future__ import annotations

import csv
import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import save_nifti, synthetic_case

from src_monai.cli import main
from src_monai.errors import LascError
from src_monai.io.outputs import merge_rows, write_unit
from src_monai.io.scans import read_labels, write_labels


@pytest.fixture
def model(tiny_run) -> Path:
    return tiny_run[1].best_model


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _infer(*arguments, model) -> int:
    return main(["infer", *map(str, arguments), "--model", str(model), "--device", "cpu"])


def test_out_equal_to_the_input_folder_never_replaces_a_scan(tiny_run, model, tmp_path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(tiny_run[0] / "imagesTr", scans)
    before = _snapshot(tmp_path)
    assert _infer(scans, "--out", scans, "--overwrite", model=model) == 2
    message = capsys.readouterr().err.strip()
    assert "is an input and would be replaced" in message and "case_000.nii.gz" in message
    assert len(message.splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_two_inputs_of_one_name_are_refused_before_any_file(tiny_run, model, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(tiny_run[0] / "imagesTr" / "case_000.nii.gz", folder / "scan.nii.gz")
    out = tmp_path / "out"
    assert _infer(first / "scan.nii.gz", second / "scan.nii.gz", "--out", out, model=model) == 2
    message = capsys.readouterr().err
    assert str(first / "scan.nii.gz") in message and str(second / "scan.nii.gz") in message
    assert not out.exists()


def test_scan_nii_beside_scan_nii_gz_collide_on_their_area_curve(tmp_path, model, capsys):
    image, _, _ = synthetic_case()
    folder = tmp_path / "scans"
    folder.mkdir()
    save_nifti(folder / "scan.nii.gz", image)
    save_nifti(folder / "scan.nii", image)
    assert _infer(folder, "--out", tmp_path / "out", model=model) == 2
    assert "scan_area_curve.csv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_same_file_given_twice_is_refused(tiny_run, model, tmp_path, capsys):
    scan = tiny_run[0] / "imagesTr" / "case_000.nii.gz"
    assert (
        _infer(
            scan, scan.parent / ".." / "imagesTr" / scan.name, "--out", tmp_path / "o", model=model
        )
        == 2
    )
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_summary_rows_of_earlier_runs_are_kept_and_a_rerun_replaces_its_own(
    tiny_run, model, tmp_path
):
    images, out = tiny_run[0] / "imagesTr", tmp_path / "out"
    assert _infer(images / "case_000.nii.gz", "--out", out, model=model) == 0
    assert _infer(images / "case_001.nii.gz", "--out", out, model=model) == 0
    first = _summary(out)
    assert [Path(row["input"]).name for row in first] == ["case_000.nii.gz", "case_001.nii.gz"]
    assert _infer(images / "case_000.nii.gz", "--out", out, "--overwrite", model=model) == 0
    again = _summary(out)
    assert sorted(Path(row["input"]).name for row in again) == [
        "case_000.nii.gz",
        "case_001.nii.gz",
    ]
    # A --skip-existing run after an interruption keeps every earlier row as well.
    assert _infer(images, "--out", out, "--skip-existing", model=model) == 0
    assert len(_summary(out)) == 4


def _merge_many(arguments) -> None:
    path, worker = arguments
    for i in range(15):
        merge_rows(Path(path), [{"input": f"w{worker}-{i}", "value": i}], key="input")


def test_concurrent_processes_merging_one_summary_lose_no_row(tmp_path):
    path = tmp_path / "summary.csv"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        pool.map(_merge_many, [(str(path), worker) for worker in range(3)])
    with open(path, encoding="utf-8") as handle:
        keys = {row["input"] for row in csv.DictReader(handle)}
    assert keys == {f"w{w}-{i}" for w in range(3) for i in range(15)}


def test_a_failed_write_keeps_every_earlier_file_of_the_case(tmp_path):
    labels, curve = tmp_path / "scan.nii.gz", tmp_path / "scan_area_curve.csv"
    labels.write_bytes(b"earlier labels")
    curve.write_text("earlier curve")

    def failing(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(LascError, match=r"\(No space left on device\); earlier files kept"):
        write_unit({curve: lambda p: p.write_text("new curve"), labels: failing}, overwrite=True)
    assert labels.read_bytes() == b"earlier labels" and curve.read_text() == "earlier curve"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "scan_area_curve.csv"]


def _prediction_folder(msd_dataset: Path, folder: Path, empty_case: str | None = None) -> Path:
    folder.mkdir()
    for path in sorted((msd_dataset / "labelsTr").glob("*.nii.gz")):
        labels = read_labels(path)
        array = np.zeros_like(labels.array) if path.name == empty_case else labels.array
        write_labels(folder / path.name, array, labels.geometry)
    return folder


def _evaluate(pred: Path, truth: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out), *extra])


def test_evaluate_overwrite_replaces_its_own_earlier_report(msd_dataset, tmp_path):
    pred = _prediction_folder(msd_dataset, tmp_path / "pred")
    out = tmp_path / "report"
    assert _evaluate(pred, msd_dataset / "labelsTr", out) == 0
    first = _snapshot(out)
    assert _evaluate(pred, msd_dataset / "labelsTr", out) == 2  # no --overwrite: refused
    assert _snapshot(out) == first
    assert _evaluate(pred, msd_dataset / "labelsTr", out, "--overwrite") == 0
    assert set(_snapshot(out)) == set(first)
    assert not list(out.glob(".partial-*"))


def test_evaluate_counts_what_each_mean_covers_and_lists_empty_predictions(
    msd_dataset, tmp_path, capsys
):
    pred = _prediction_folder(msd_dataset, tmp_path / "pred", empty_case="case_001.nii.gz")
    out = tmp_path / "report"
    assert _evaluate(pred, msd_dataset / "labelsTr", out) == 0
    printed = capsys.readouterr().out
    assert "n=2 of 3 (1 undefined, left out of the mean)" in printed
    assert "empty predictions (1; Dice 0, distances undefined): case_001" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["empty_predictions"] == ["case_001"]
    assert summary["metrics"]["hd95_mm"]["n"] == 2 and summary["metrics"]["dice"]["n"] == 3


@pytest.mark.parametrize("option", [("--num-classes", "1"), ("--batch-size", "0")])
def test_evaluate_refuses_bad_numbers_before_any_folder(msd_dataset, tmp_path, capsys, option):
    pred = _prediction_folder(msd_dataset, tmp_path / "pred")
    assert _evaluate(pred, msd_dataset / "labelsTr", tmp_path / "report", *option) == 2
    message = capsys.readouterr().err
    assert option[0] in message and "internal error" not in message
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("inside", ["", "imagesTr"])
def test_prepare_never_writes_into_the_dataset(msd_dataset, tmp_path, capsys, inside):
    before = _snapshot(msd_dataset)
    out = msd_dataset / inside if inside else msd_dataset
    assert main(["prepare", str(msd_dataset), str(out), "--folds", "2", "--overwrite"]) == 2
    assert "is inside the dataset" in capsys.readouterr().err
    assert _snapshot(msd_dataset) == before


def test_evaluate_of_infer_outputs_marks_the_cases_the_model_learnt_from(tmp_path, capsys):
    """lasc infer records in summary.csv that la_016 was a training case of the bundled model;
    lasc evaluate --pred of that folder marks the row and says so."""
    from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN

    scans, truth = tmp_path / "scans", tmp_path / "truth"
    scans.mkdir(), truth.mkdir()
    shutil.copy(SAMPLE_SCAN, scans / "la_016.nii.gz")
    shutil.copy(SAMPLE_LABEL, truth / "la_016.nii.gz")
    seg = tmp_path / "seg"
    assert main(["infer", str(scans), "--out", str(seg), "--device", "cpu"]) == 0
    assert _summary(seg)[0]["seen by model"] == "training"
    report = tmp_path / "report"
    assert _evaluate(seg, truth, report) == 0
    assert "la_016 is a training case of this model" in capsys.readouterr().err
    with open(report / "per_case.csv", encoding="utf-8") as handle:
        assert next(csv.DictReader(handle))["seen_by_model"] == "training"


def test_a_second_run_of_the_same_scan_into_the_same_folder_is_refused(tmp_path, capsys):
    """Two runs at once, one scan, one --out: both passed the output check (nothing was there
    yet) and the second replaced the first. Now the case is claimed while it is segmented,
    and the second run is refused in one line, leaving the first's result."""
    import subprocess
    import sys
    import time

    from src_monai.model.files import SAMPLE_SCAN

    out = tmp_path / "out"
    command = [sys.executable, "-m", "src_monai.cli", "infer", str(SAMPLE_SCAN), "--out", str(out)]
    # --uncertainty: five passes, so the first run is still segmenting when the second starts
    slow = [*command, "--device", "cpu", "--uncertainty"]
    first = subprocess.Popen(slow, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".partial-*-claim-*")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.05)
    assert main(["infer", str(SAMPLE_SCAN), "--out", str(out), "--device", "cpu"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {out / SAMPLE_SCAN.name}: another lasc infer run"), message
    assert len(message.splitlines()) == 1
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert read_labels(out / SAMPLE_SCAN.name).array.any()
    assert not list(out.glob(".partial-*"))  # the claim is gone with its run
    assert [Path(r["input"]).name for r in _summary(out)] == [SAMPLE_SCAN.name]
