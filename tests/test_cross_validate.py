"""scripts/cross_validate.py: folds trained and scored, and an interrupted run continued."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, make_msd_dataset, tiny_config

from src_monai.config import save_config

SCRIPT = REPO / "scripts" / "cross_validate.py"


def _cv(config: Path, data: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), str(config), "--data", str(data), "--out", str(out)]
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
