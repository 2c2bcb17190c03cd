"""Run every bad input of the test corpus through the CLI and tabulate what happened.

    .venv/bin/python scripts/bad_input_report.py [--out docs/bad_inputs.md]

Each bad scan goes through ``lasc infer``, each bad config through ``lasc train``, each bad
model file through ``lasc infer --model``; the table shows the exit code, the one ``error:``
line the user sees, and whether any file changed. The same cases are asserted by
``tests/test_reliability.py``; this script shows their observed behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _state(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(argv: list[str], folder: Path) -> tuple[int, str, bool]:
    from src_monai.cli import main as lasc

    before = _state(folder)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = lasc(argv)
    lines = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    if lines:
        message = lines[0] if len(lines) == 1 else f"({len(lines)} error lines)"
    else:  # accepted: the first QC flag the user is shown, if any
        flags = [line for line in stderr.getvalue().splitlines() if "check by eye" in line]
        more = f" (+{len(flags) - 1} more QC flags)" if len(flags) > 1 else ""
        message = flags[0] + more if flags else ""
    message = message.replace(str(folder) + "/", "")
    return code, message, _state(folder) == before


def _output_rows(root: Path, dataset: Path, model: Path) -> list[tuple]:
    """Plans that would lose data (issue 15): refused before any work."""
    import shutil

    import nibabel as nib

    rows = []
    scans = root / "scans"
    shutil.copytree(dataset / "imagesTr", scans)
    infer = ["infer", "--model", str(model)]
    argv = [*infer, str(scans), "--out", str(scans), "--overwrite"]
    rows.append(("--out is the input folder (with --overwrite)", "lasc infer", *_run(argv, root)))
    for name in ("a", "b"):
        (root / name).mkdir()
        shutil.copy(scans / "case_000.nii.gz", root / name / "scan.nii.gz")
    argv = [
        *infer,
        str(root / "a/scan.nii.gz"),
        str(root / "b/scan.nii.gz"),
        "--out",
        str(root / "o"),
    ]
    rows.append(("two inputs of one name", "lasc infer", *_run(argv, root)))
    nib.save(nib.load(scans / "case_001.nii.gz"), root / "a" / "scan.nii")
    argv = [*infer, str(root / "a"), "--out", str(root / "o")]
    rows.append(("scan.nii beside scan.nii.gz", "lasc infer", *_run(argv, root)))
    argv = [*infer, str(scans / "case_000.nii.gz"), str(scans / "../scans/case_000.nii.gz")]
    rows.append(
        ("the same scan twice", "lasc infer", *_run([*argv, "--out", str(root / "o")], root))
    )
    labels = str(dataset / "labelsTr")
    for option, value in (("--num-classes", "1"), ("--batch-size", "0")):
        argv = [
            "evaluate",
            "--pred",
            labels,
            "--truth",
            labels,
            "--out",
            str(root / "r"),
            option,
            value,
        ]
        rows.append((f"{option} {value}", "lasc evaluate", *_run(argv, root)))
    argv = ["prepare", str(dataset), str(dataset / "imagesTr"), "--overwrite"]
    rows.append(("output inside the dataset", "lasc prepare", *_run(argv, dataset)))
    return rows


# A sample of the config values outside their range (tests/test_validation.py tries every key).
RANGE_PROBLEMS = {
    "train.weight_decay = -1": ("train", "weight_decay", -1.0),
    "train.reducer_factor = 2": ("train", "reducer_factor", 2.0),
    "model.dilation = 0": ("model", "dilation", 0),
    "augment.gamma = [nan, 1.5]": ("augment", "gamma", [float("nan"), 1.5]),
    "data.num_classes = 100000": ("data", "num_classes", 100000),
    "train.learning_rate = inf": ("train", "learning_rate", float("inf")),
    "train.early_stopping_patience = -1": ("train", "early_stopping_patience", -1),
    'train.run_name = "../escaped"': ("train", "run_name", "../escaped"),
}


def _range_rows(root: Path, dataset: Path) -> list[tuple]:
    import tomli_w
    from conftest import tiny_config

    rows = []
    for problem, (section, key, value) in RANGE_PROBLEMS.items():
        folder = root / f"{section}_{key}"
        folder.mkdir(parents=True)
        raw = tiny_config(dataset, folder / "runs").to_dict()
        raw[section][key] = value
        (folder / "bad.toml").write_text(tomli_w.dumps(raw))
        rows.append(
            (f"config: {problem}", "lasc train", *_run(["train", str(folder / "bad.toml")], folder))
        )
    return rows


METADATA_PROBLEMS = {
    "data.slice_axis = 5": ("data.slice_axis", 5),
    'num_classes = "2"': ("num_classes", "2"),
    'inference.tta = "yes"': ("inference", {"tta": "yes", "postprocess": True}),
    "spacing_mm negative": ("spacing_mm", [-1.25, 1.25, 1.37]),
    "cross_validation.dice_mean = NaN": (
        "cross_validation",
        {"folds": 4, "cases": 16, "chosen": "post", "dice_mean": float("nan"), "dice_sd": 0.0,
         "hd95_mean": 8.0, "hd95_sd": 6.0},
    ),
}  # fmt: skip


def _metadata_rows(root: Path, model: Path, scan: Path) -> list[tuple]:
    import json
    import math

    import torch
    from safetensors.torch import save_file

    from src_monai.model.files import METADATA_KEY, _read_safetensors

    root.mkdir()
    state, metadata = _read_safetensors(model)
    rows = []
    for problem, (path, value) in METADATA_PROBLEMS.items():
        changed = json.loads(json.dumps(metadata))
        *parents, last = path.split(".")
        target = changed
        for name in parents:
            target = target[name]
        target[last] = value
        bad = root / f"{last}.safetensors"
        save_file(state, bad, metadata={METADATA_KEY: json.dumps(changed)})
        argv = ["infer", str(scan), "--out", str(root / "out"), "--model", str(bad)]
        rows.append((f"model metadata: {problem}", "lasc infer", *_run(argv, root)))
    first = next(iter(state))
    broken = {**state, first: torch.full_like(state[first], math.nan)}
    save_file(broken, root / "nan.safetensors", metadata={METADATA_KEY: json.dumps(metadata)})
    argv = [
        "infer",
        str(scan),
        "--out",
        str(root / "out"),
        "--model",
        str(root / "nan.safetensors"),
    ]
    rows.append(("model: NaN weights", "lasc infer", *_run(argv, root)))
    return rows


def _dicom_rows(root: Path, model: Path) -> list[tuple]:
    """DICOM series' folders that are not one regular volume (issue 17)."""
    import shutil

    from test_dicom import write_dicom_series

    from src_monai.model.files import SAMPLE_SCAN

    uid = "1.2.826.0.1.3680043.2.1125.7"
    good = write_dicom_series(SAMPLE_SCAN, root / "good", uid, "LA MRI")
    cases = {}
    cases["DICOM: a slice missing"] = shutil.copytree(good, root / "missing")
    (cases["DICOM: a slice missing"] / "7_040.dcm").unlink()
    cases["DICOM: slices of two orientations"] = write_dicom_series(
        SAMPLE_SCAN, root / "mixed", uid, "LA MRI", tilted=10
    )
    cases["DICOM: two series in one folder"] = shutil.copytree(good, root / "two")
    write_dicom_series(SAMPLE_SCAN, root / "two", uid[:-1] + "8", "second copy")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    cases["a folder of unrelated files"] = root / "notes"
    rows = []
    for problem, folder in cases.items():
        argv = ["infer", str(folder), "--out", str(root / "out"), "--model", str(model)]
        rows.append((problem, "lasc infer", *_run(argv, root)))
    return rows


def _round3_rows(root: Path, model: Path) -> list[tuple]:
    """Issue 28: DICOM geometry slice by slice, folder inputs, and the last internal errors."""
    import shutil

    from test_dicom import other_pixel_spacing, shear, write_dicom_series

    from src_monai.model.files import SAMPLE_LABEL, SAMPLE_SCAN

    uid = "1.2.826.0.1.3680043.2.1125.7"

    good = write_dicom_series(SAMPLE_SCAN, root / "good", uid, "LA MRI")
    cases = {
        "DICOM: sheared positions (gantry tilt)": write_dicom_series(
            SAMPLE_SCAN, root / "sheared", uid, "tilt", edit=shear
        ),
        "DICOM: one slice of other pixel spacing": write_dicom_series(
            SAMPLE_SCAN, root / "spacing", uid, "s", edit=other_pixel_spacing(45)
        ),
        "DICOM: last file truncated": shutil.copytree(good, root / "truncated"),
        "DICOM series and a NIfTI in one folder": shutil.copytree(good, root / "mixed"),
    }
    last = sorted(cases["DICOM: last file truncated"].iterdir())[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    shutil.copy(SAMPLE_SCAN, cases["DICOM series and a NIfTI in one folder"] / SAMPLE_SCAN.name)
    out = ["--out", str(root / "out"), "--model", str(model)]
    runs = [(problem, ["infer", str(folder), *out]) for problem, folder in cases.items()]
    runs += [
        ("--series with a NIfTI input", ["infer", str(SAMPLE_SCAN), *out, "--series", "1.2.3"]),
        ("--box-mm with inf", ["infer", str(SAMPLE_SCAN), *out, "--box-mm=-inf:inf,0:9,0:9"]),
        ("a label file given as the scan", ["infer", str(SAMPLE_LABEL), *out]),
    ]
    (root / "notes.pt").write_text("weights are elsewhere")
    runs.append(("model: a text file named .pt", ["infer", str(SAMPLE_SCAN), *out[:2],
                 "--model", str(root / "notes.pt")]))  # fmt: skip
    ini = root / "train_eval_infer.config"
    ini.write_text("[model]\nnum_classes = 1000000000000\n")
    runs.append(("config: earlier tool's INI, num_classes = 10**12", ["train", str(ini)]))
    rows = []
    for problem, argv in runs:
        command = "lasc train" if argv[0] == "train" else "lasc infer"
        rows.append((problem, command, *_run(argv, root)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bad_inputs.md")
    args = parser.parse_args()

    from conftest import make_msd_dataset, save_nifti, synthetic_case, tiny_config
    from test_reliability import CONFIG_PROBLEMS, _bad_models
    from test_scan_io import BAD_SCANS

    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        dataset = make_msd_dataset(root / "tiny_data", cases=4)
        model = run_to_end(run_training(tiny_config(dataset, root / "tiny_runs"))).best_model
        for kind, (make, _, _) in BAD_SCANS.items():
            folder = root / kind.replace(" ", "_").replace(",", "")
            folder.mkdir()
            path = make(folder)
            argv = ["infer", str(path), "--out", str(folder / "out"), "--model", str(model)]
            rows.append((kind, "lasc infer", *_run(argv, folder)))
        blank = root / "blank"
        blank.mkdir()
        import numpy as np

        path = save_nifti(blank / "blank.nii.gz", np.zeros((16, 16, 5), np.int16))
        argv = ["infer", str(path), "--out", str(blank / "out"), "--model", str(model)]
        rows.append(("all-zero scan", "lasc infer", *_run(argv, blank)))
        for problem, (text, _) in CONFIG_PROBLEMS.items():
            folder = root / problem.replace(" ", "_")
            folder.mkdir()
            (folder / "bad.toml").write_text(text)
            argv = ["train", str(folder / "bad.toml"), "--set", f"train.runs_dir={folder}/runs"]
            if problem == "unknown key":
                argv = argv[:2]
            rows.append((f"config: {problem}", "lasc train", *_run(argv, folder)))
        folder = root / "ini"
        folder.mkdir()
        marker = folder / "pwned"
        (folder / "train_eval_infer.config").write_text(
            f"[model]\nbase_filters = __import__('os').system('touch {marker}')\n"
        )
        code, message, unchanged = _run(["train", str(folder / "train_eval_infer.config")], folder)
        message += " · code not run" if not marker.exists() else " · CODE RAN"
        rows.append(
            ("config: code in the earlier tool's INI", "lasc train", code, message, unchanged)
        )
        folder = root / "models"
        folder.mkdir()
        scan, _, affine = synthetic_case()
        scan_path = save_nifti(folder / "scan.nii.gz", scan, affine)
        for problem, bad_model in _bad_models(folder).items():
            argv = [
                "infer",
                str(scan_path),
                "--out",
                str(folder / "out"),
                "--model",
                str(bad_model),
            ]
            code, message, unchanged = _run(argv, folder)
            if problem.startswith("pickle"):
                message += " · code not run" if not (folder / "pwned").exists() else " · RAN"
            rows.append((f"model: {problem}", "lasc infer", code, message, unchanged))
        blocker = root / "a_file"
        blocker.write_text("x")
        argv = ["infer", str(scan_path), "--out", str(blocker / "out"), "--model", str(model)]
        rows.append(("output folder not writable", "lasc infer", *_run(argv, root)))
        rows += _output_rows(root / "outputs", dataset, model)
        rows += _range_rows(root / "ranges", dataset)
        rows += _metadata_rows(root / "metadata", model, scan_path)
        rows += _dicom_rows(root / "dicom", model)
        rows += _round3_rows(root / "round3", model)

    lines = [
        "# Bad inputs and what happens",
        "",
        "Generated by `.venv/bin/python scripts/bad_input_report.py`; asserted by "
        "`tests/test_reliability.py` (also through napari's reader and widgets), "
        "`tests/test_scan_io.py` (header fields), `tests/test_output_safety.py` (plans that "
        "would lose data), `tests/test_validation.py` (every config key and every model-metadata "
        "field, a wrong type and an out-of-range value each: the rows below are a sample) and "
        "`tests/test_training_failures.py`. Every refusal happens before any work and before "
        "any file or folder is made; `internal error` is reachable from no input here.",
        "",
        "| input | command | exit | message (paths shortened) | files unchanged |",
        "|---|---|---|---|---|",
    ]
    for kind, command, code, message, unchanged in rows:
        lines.append(
            f"| {kind} | `{command}` | {code} | {message.replace('|', '/')} | "
            f"{'yes' if unchanged else 'results written' if code == 0 else 'NO'} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
