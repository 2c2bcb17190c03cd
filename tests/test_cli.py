"""The `lasc` command as a user runs it: exit codes, one-line errors, nothing lost."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LASC


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LASC, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    # Progress lines (no terminal here) may come before the error; nothing else may.
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not re.match(r"^[a-z-]+: [\d.]+/\d+ \w+ \(\d+ %\)", line)
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_prepare():
    result = run("--help")
    assert result.returncode == 0
    assert "prepare" in result.stdout


def test_module_entry_point_has_the_same_options():
    result = subprocess.run(
        [sys.executable, "-m", "src_monai.cli", "prepare", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--drop-empty" in result.stdout


def test_missing_dataset_is_one_line_naming_it(tmp_path):
    assert_one_line_error(
        run("prepare", str(tmp_path / "nowhere"), str(tmp_path / "out")),
        "nowhere",
        "dataset folder not found",
    )
    assert not (tmp_path / "out").exists()


def test_verbose_shows_the_traceback(tmp_path):
    result = run("prepare", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--verbose")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "error: " in result.stderr


def test_usage_errors_are_one_line_too(tmp_path):
    assert_one_line_error(run("prepare"), "required")
    assert_one_line_error(run("prepare", "a", "b", "--slice-axis", "7"), "--slice-axis")


def test_code_in_rgb_map_is_refused_not_run(msd_dataset, tmp_path):
    marker = tmp_path / "pwned"
    result = run(
        "prepare",
        str(msd_dataset),
        str(tmp_path / "out"),
        "--format",
        "png",
        "--rgb-map",
        f"__import__('os').system('touch {marker}')",
    )
    assert_one_line_error(result, "rgb_map")
    assert not marker.exists()


def test_non_empty_output_folder_is_kept(msd_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"weights")
    assert_one_line_error(run("prepare", str(msd_dataset), str(out)), str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["model.pt"]
    assert (out / "model.pt").read_bytes() == b"weights"


def test_corrupt_scan_in_a_dataset_names_the_file(msd_dataset, tmp_path):
    bad = msd_dataset / "imagesTr" / "case_001.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    result = run("prepare", str(msd_dataset), str(tmp_path / "out"))
    assert_one_line_error(result, "case_001.nii.gz")


def test_stats_are_printed(msd_dataset, tmp_path):
    result = run("prepare", str(msd_dataset), str(tmp_path / "out"), "--format", "none", "--stats")
    assert result.returncode == 0, result.stderr
    assert "case_000" in result.stdout and "3 cases, 24 slices" in result.stdout
    assert (tmp_path / "out" / "stats.png").is_file()
    quiet = run("prepare", str(msd_dataset), str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    assert "case_000" not in quiet.stdout  # the table is --stats's; its files are written
    assert "3 cases, 24 slices" in quiet.stdout and "--stats" in quiet.stdout
    assert (tmp_path / "quiet" / "stats.csv").is_file()


@pytest.mark.slow
def test_prepare_png_from_the_command_line(msd_dataset, tmp_path):
    result = run(
        "prepare",
        str(msd_dataset),
        str(tmp_path / "png"),
        "--format",
        "png",
        "--size",
        "32",
        "--fractions",
        "0.34",
        "0.33",
        "0.33",
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "png").glob("*/images/*.png"))) == 24


def test_every_subcommand_has_user_facing_help_with_examples():
    import argparse

    from src_monai.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {
        "prepare",
        "train",
        "evaluate",
        "infer",
        "demo",
        "export-bundle",
    }
    for name, sub in commands.choices.items():
        text = sub.format_help()
        for developer_note in ("``", ":class:", ":func:", ":mod:"):
            assert developer_note not in text, (name, developer_note)
        assert "examples:\n  lasc " in text or "examples:\n  torchrun" in text, name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"lasc {name} {action.option_strings or action.dest}: no help"


def test_model_bundled_works_wherever_a_model_is_taken(tmp_path, msd_dataset):
    from src_monai.cli import main as lasc

    scan = sorted((msd_dataset / "imagesTr").glob("*.nii.gz"))[0]
    assert lasc(["infer", str(scan), "--out", str(tmp_path / "seg"), "--model", "bundled"]) == 0
    assert (tmp_path / "seg" / scan.name).is_file()
    report = tmp_path / "report"
    argv = ["evaluate", "--model", "bundled", "--data", str(msd_dataset), "--out", str(report)]
    assert lasc(argv) == 0
    assert (report / "per_case.csv").is_file()


PIPELINE_MODULES = ("torch", "monai", "scipy.ndimage", "skimage")


def _imported_while(argv: list[str]) -> tuple[int, set[str]]:
    """Exit status of ``lasc ARGV`` and which of the pipeline's heavy packages it imported."""
    code = (
        "import sys\nfrom src_monai.cli import main\n"
        f"try:\n    status = main({argv!r})\nexcept SystemExit as exit:\n    status = exit.code\n"
        f"print(status, *sorted(m for m in {PIPELINE_MODULES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    status, *modules = done.stdout.splitlines()[-1].split()  # after any help text
    return int(status), set(modules)


def test_help_and_a_missing_input_are_answered_before_torch_loads(tmp_path):
    """Seconds of torch and MONAI imports are spent only on work: ``lasc --help``, a
    subcommand's help and a missing input or model folder are answered without them
    (``benchmarks/cli_startup.py`` times it), and nothing is created."""
    assert _imported_while(["--help"]) == (0, set())
    for command in ("infer", "evaluate", "train", "export-bundle", "prepare", "demo"):
        assert _imported_while([command, "--help"]) == (0, set()), command
    missing = tmp_path / "nothing.nii.gz"
    out = tmp_path / "out"
    assert _imported_while(["infer", str(missing), "--out", str(out)]) == (2, set())
    assert not out.exists()
    refused = subprocess.run(
        [LASC, "infer", str(missing), "--out", str(out)], capture_output=True, text=True
    )
    assert (
        refused.returncode == 2 and refused.stderr.strip() == f"error: {missing}: input not found"
    )


def test_a_scan_that_fails_leaves_no_output_folder(tmp_path):
    """The output folder appears with the first result: a run whose only scan is refused
    (blank) leaves nothing behind."""
    import nibabel as nib
    import numpy as np

    scan = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.eye(4)), scan)
    out = tmp_path / "new" / "out"
    done = subprocess.run(
        [LASC, "infer", str(scan), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and str(scan) in done.stderr, done.stderr
    assert not out.exists() and not out.parent.exists()


def test_infer_output_reads_well_and_leaves_no_lock_file(tmp_path):
    """What a user sees of ``lasc infer`` in a log: each pass of a two-stage model named,
    a file part-way through as a short fraction, "no" for a scan the model never saw, and
    nothing in --out but the results."""
    import nibabel as nib
    import numpy as np

    from src_monai.model.files import SAMPLE_SCAN

    image = nib.load(SAMPLE_SCAN)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(image, scans / "known.nii.gz")
    mirrored = np.ascontiguousarray(np.asanyarray(image.dataobj)[::-1])  # new voxels: unseen
    nib.save(nib.Nifti1Image(mirrored, image.affine, image.header), scans / "new.nii.gz")
    out = tmp_path / "out"
    done = subprocess.run(
        [LASC, "infer", str(scans), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "localiser: slices" in done.stderr  # the first pass, named (lines every 10 s)
    assert not re.search(r"\d\.\d{3,}/", done.stderr), done.stderr  # no 0.177778/2 files
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    import csv

    with open(out / "summary.csv", encoding="utf-8") as handle:
        seen = {Path(r["output"]).name: r["seen by model"] for r in csv.DictReader(handle)}
    assert seen == {"known.nii.gz": "training", "new.nii.gz": "no"}
