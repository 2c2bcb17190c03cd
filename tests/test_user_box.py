"""The user steers stage 2: ``lasc infer --box`` / ``--box-mm`` segment around a given box."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from src_monai.cli import main as lasc
from src_monai.data.crops import AtriumBox
from src_monai.io.scans import read_geometry, read_labels
from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN


def _row(out):
    with open(out / "summary.csv", encoding="utf-8") as handle:
        return next(csv.DictReader(handle))


@pytest.fixture(scope="module")
def true_box() -> AtriumBox:
    truth = read_labels(SAMPLE_LABEL).array
    return AtriumBox.around(np.moveaxis(truth, 2, 0))  # the bundled model slices axis 2


def test_a_given_box_is_segmented_and_said_so(true_box, tmp_path):
    out = tmp_path / "given"
    argv = ["infer", str(SAMPLE_SCAN), "--out", str(out), "--device", "cpu"]
    assert lasc([*argv, "--box", true_box.text()]) == 0
    labels = read_labels(out / SAMPLE_SCAN.name).array
    truth = read_labels(SAMPLE_LABEL).array
    dice = 2 * np.count_nonzero(labels & truth) / (labels.sum() + truth.sum())
    assert dice > 0.9
    occupied = np.flatnonzero(labels.any(axis=(0, 1)))
    margin = 5  # the model's slice margin around a box
    assert true_box.z0 - margin <= occupied[0] and occupied[-1] < true_box.z1 + margin
    assert _row(out)["atrium box (slices-first voxels)"] == f"given {true_box.text()}"
    # The same box in world millimetres gives the same labels.
    geometry = read_geometry(SAMPLE_SCAN)
    corners = np.array(
        [
            [true_box.y0, true_box.x0, true_box.z0, 1],
            [true_box.y1 - 1, true_box.x1 - 1, true_box.z1 - 1, 1],
        ]
    )
    world = (geometry.affine @ corners.T)[:3]
    low, high = world.min(axis=1) + 0.01, world.max(axis=1) - 0.01
    text = ",".join(f"{a:.3f}:{b:.3f}" for a, b in zip(low, high, strict=True))
    mm = tmp_path / "mm"
    assert (
        lasc(["infer", str(SAMPLE_SCAN), "--out", str(mm), "--device", "cpu", "--box-mm", text])
        == 0
    )
    assert np.array_equal(read_labels(mm / SAMPLE_SCAN.name).array, labels)


def test_a_box_that_misses_the_atrium_gives_a_small_result_and_a_flag(tmp_path):
    out = tmp_path / "corner"
    argv = ["infer", str(SAMPLE_SCAN), "--out", str(out), "--device", "cpu"]
    assert lasc([*argv, "--box", "0:10,0:20,0:20"]) == 0
    row = _row(out)
    assert float(row["left atrium volume (mL)"]) < 30
    assert row["QC flags"] != "ok"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--box", "0:10,0:20", "is not s0:s1,a0:a1,b0:b1"),
        ("--box", "0:500,0:20,0:20", "S 0:500 is not a range inside the scan's 0:90"),
        ("--box-mm", "9000:9100,0:10,0:10", "lies outside the scan"),
        ("--box-mm", "-inf:inf,0:10,0:10", "not a finite number of mm"),
        ("--box-mm", "0:10,-inf:0,0:10", "not a finite number of mm"),
    ],
)
def test_a_box_outside_the_scan_is_refused_before_any_file(
    option, value, message, tmp_path, capsys
):
    out = tmp_path / "out"
    # OPTION=VALUE: a value starting with "-" is read as an option otherwise
    assert lasc(["infer", str(SAMPLE_SCAN), "--out", str(out), f"{option}={value}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
