"""The bundled model and sample: a real segmentation, and `lasc demo` from the command line."""

from __future__ import annotations

import json
import subprocess

import nibabel as nib
import numpy as np
from conftest import LASC

from src_monai.evaluation.metrics import case_metrics
from src_monai.inference.predictor import Predictor
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import BUNDLED_MODEL, SAMPLE_LABEL, SAMPLE_SCAN, load_spec
from src_monai.model.spec import InferenceDefaults
from src_monai.progress import run_to_end


def _accuracy_words(spec) -> str:
    """What a note says of the model's accuracy: its recorded cross-validation, or that it
    has none (never another model's figures)."""
    if spec.cross_validation is None:
        return "no cross-validated accuracy is recorded for this model"
    return f"cross-validated on unseen patients: {spec.cross_validation.text()}"


def test_bundled_model_segments_the_bundled_sample(monkeypatch):
    # No network: the model and sample come from the package itself.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictor = Predictor.from_checkpoint(device="cpu")
    # The defaults are what the cross-validation chose (before it: what the screens chose,
    # post-processing and the 3D region in one pass).
    cross_validation = predictor.spec.cross_validation
    chosen = cross_validation.chosen if cross_validation else "post-whole"
    assert predictor.spec.inference == InferenceDefaults(
        tta=False, postprocess=chosen.startswith("post"), whole_region=chosen.endswith("-whole")
    )
    assert cross_validation is None or cross_validation.folds == 4
    scan, truth = read_scan(SAMPLE_SCAN), read_labels(SAMPLE_LABEL)
    labels = run_to_end(predictor.predict_volume(scan.array)).labels
    metrics = case_metrics(labels, truth.array, scan.geometry.spacing, 2)
    assert metrics["dice"] >= 0.85, metrics
    from src_monai.model.files import load_model

    weights = sum(p.numel() for p in load_model(BUNDLED_MODEL)[0].parameters())
    assert BUNDLED_MODEL.stat().st_size < 2 * weights + 500_000  # fp16, one copy


def test_lasc_demo_writes_labels_overlay_and_summary(tmp_path):
    result = subprocess.run(
        [LASC, "demo", "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "lasc-demo"
    assert f"wrote {folder}" in result.stdout
    # Every file it wrote is named, and the Dice is said to be on a training case.
    for name in ("la_016_prediction.nii.gz", "overlay.png", "summary.json", "summary.txt"):
        assert name in result.stdout.splitlines()[-1]
    note = load_spec(BUNDLED_MODEL).seen_note({"la_016": "training"})
    assert note.startswith("la_016 is a training case of this model") and note in result.stdout
    assert _accuracy_words(load_spec(BUNDLED_MODEL)) in note
    text = (folder / "summary.txt").read_text()
    cross_validation = load_spec(BUNDLED_MODEL).cross_validation
    if cross_validation is None:
        assert "model: no cross-validation recorded" in text
    else:
        assert f"model: cross-validated over 4 folds of {cross_validation.cases} cases" in text
        assert cross_validation.text(spread=True) in text  # per dataset for a joint model
    assert "{" not in text  # no Python dicts for a reader
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["dice"] >= 0.85 and 50 < summary["la_volume_ml"] < 200
    written = nib.load(folder / "la_016_prediction.nii.gz")
    assert np.array_equal(written.affine, nib.load(SAMPLE_SCAN).affine)
    # Both outlines are readable: the truth's green dashes are not hidden under the
    # prediction's magenta line (once 5 green pixels against 718 magenta).
    from PIL import Image

    rgb = np.asarray(Image.open(folder / "overlay.png").convert("RGB")).astype(int)
    green = (rgb[..., 1] > 180) & (rgb[..., 0] < 90) & (rgb[..., 2] < 160)
    magenta = (rgb[..., 0] > 180) & (rgb[..., 2] > 180) & (rgb[..., 1] < 90)
    assert green.sum() > 0.3 * magenta.sum() > 0, (green.sum(), magenta.sum())
    again = subprocess.run(
        [LASC, "demo", "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert again.returncode == 0 and (tmp_path / "lasc-demo-2").is_dir()  # never overwrites


def test_a_renamed_copy_of_a_training_case_is_flagged_when_scored(tmp_path, capsys):
    """lasc evaluate recognises the bundled model's training case la_016 under another name
    (by its voxels) and says, on its row and in one line, that its score is not accuracy."""
    import csv
    import shutil

    from src_monai.cli import main as lasc

    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    shutil.copy(SAMPLE_SCAN, data / "imagesTr" / "mystery_001.nii.gz")
    shutil.copy(SAMPLE_LABEL, data / "labelsTr" / "mystery_001.nii.gz")
    manifest = {
        "labels": {"0": "background", "1": "left atrium"},
        "training": [
            {"image": "./imagesTr/mystery_001.nii.gz", "label": "./labelsTr/mystery_001.nii.gz"}
        ],
    }
    (data / "dataset.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--model",
        "bundled",
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert lasc(argv) == 0
    (row,) = list(csv.DictReader((out / "per_case.csv").open()))
    assert row["case"] == "mystery_001" and row["seen_by_model"] == "training"
    err = capsys.readouterr().err
    note = load_spec(BUNDLED_MODEL).seen_note({"mystery_001": "training"})
    assert note in err and _accuracy_words(load_spec(BUNDLED_MODEL)) in note
    assert note in (out / "summary.txt").read_text()
