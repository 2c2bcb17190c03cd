"""Bad input never crashes or loses data; interrupted work resumes; model files run no code.

Every bad scan of ``test_scan_io.BAD_SCANS`` goes through each command that reads scans
(``lasc infer``, ``evaluate``, ``prepare``, ``train``) and napari's reader; bad configs
through ``lasc train``; bad model files through ``lasc infer`` and the Segment widget. Each
must end with exit code 2 and one ``error:`` line naming the file (no traceback), and leave
every existing file as it was.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import (
    LASC,
    CodeRunningPickle,
    make_msd_dataset,
    model_metadata,
    model_spec,
    save_nifti,
    synthetic_case,
    tiny_config,
)
from safetensors.torch import load_file
from test_scan_io import BAD_SCANS

from src_monai.cli import main as lasc
from src_monai.config import ModelConfig
from src_monai.io.scans import case_id_from_path
from src_monai.io.tables import read_csv
from src_monai.model.files import save_model
from src_monai.model.networks import build_network

# Bad inputs that are not scan files at all: commands that look for scans in a folder skip
# them (correctly), and napari's reader declines them so napari can try another.
NOT_SCAN_FILES = {"missing file", "a folder", "wrong extension"}
SCAN_FILE_KINDS = [kind for kind in BAD_SCANS if kind not in NOT_SCAN_FILES]


def tree_state(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: to prove nothing changed."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_error_line(capsys, *names: str) -> str:
    """The command's stderr holds exactly one ``error:`` line naming each of ``names``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def bad_scan(kind: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make, _, _ = BAD_SCANS[kind]
    return make(folder)


def good_label_like(path: Path, target: Path) -> Path:
    """A valid label file at ``target`` (for pairing with a bad scan)."""
    _, labels, affine = synthetic_case()
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_nifti(target, labels, affine)


# --------------------------------------------------------------------------- bad scans


@pytest.mark.parametrize("kind", list(BAD_SCANS))
def test_lasc_infer_refuses_each_bad_scan(kind, tmp_path, capsys, tiny_run):
    _, run = tiny_run
    inputs = tmp_path / "inputs"
    path = bad_scan(kind, inputs)
    before = tree_state(tmp_path)
    code = lasc(
        [
            "infer",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--model",
            str(run.best_model),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    one_error_line(capsys, path.name)
    after = tree_state(tmp_path)
    assert after == before  # inputs untouched, no output written (not even a partial one)


@pytest.mark.parametrize("kind", SCAN_FILE_KINDS)
def test_lasc_evaluate_refuses_each_bad_prediction(kind, tmp_path, capsys):
    path = bad_scan(kind, tmp_path / "pred")
    good_label_like(path, tmp_path / "truth" / f"{case_id_from_path(path)}.nii.gz")
    before = tree_state(tmp_path)
    code = lasc(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred"),
            "--truth",
            str(tmp_path / "truth"),
            "--out",
            str(tmp_path / "report"),
        ]
    )
    assert code == 2
    one_error_line(capsys, path.name)
    assert tree_state(tmp_path) == before


def _dataset_with(kind: str, root: Path) -> Path:
    """An MSD dataset whose first case's scan is the bad file (its label is fine)."""
    make_msd_dataset(root, cases=3, with_manifest=False)
    first = sorted((root / "imagesTr").iterdir())[0]
    label = root / "labelsTr" / first.name
    first.unlink()
    bad = bad_scan(kind, root / "imagesTr")
    label.rename(root / "labelsTr" / f"{case_id_from_path(bad)}.nii.gz")
    return bad


@pytest.mark.parametrize("kind", SCAN_FILE_KINDS)
def test_lasc_prepare_refuses_a_dataset_with_each_bad_scan(kind, tmp_path, capsys):
    bad = _dataset_with(kind, tmp_path / "data")
    before = tree_state(tmp_path)
    code = lasc(["prepare", str(tmp_path / "data"), str(tmp_path / "prepared")])
    assert code == 2
    one_error_line(capsys, bad.name)
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize("kind", SCAN_FILE_KINDS)
def test_lasc_train_refuses_a_dataset_with_each_bad_scan(kind, tmp_path, capsys):
    bad = _dataset_with(kind, tmp_path / "data")
    config = tmp_path / "train.toml"
    config.write_text(tiny_config(tmp_path / "data", tmp_path / "runs").to_toml())
    before = tree_state(tmp_path)
    code = lasc(["train", str(config)])
    assert code == 2
    one_error_line(capsys, bad.name)
    assert tree_state(tmp_path) == before  # no run folder was started


def test_bad_labels_are_refused_by_evaluate_and_train(tmp_path, capsys):
    _, labels, _ = synthetic_case()
    cases = {
        "outside the classes": labels * 3,
        "non-integer": labels.astype(np.float32) * 0.5,
    }
    for problem, values in cases.items():
        folder = tmp_path / problem.replace(" ", "_")
        make_msd_dataset(folder / "data", cases=3, with_manifest=False)
        target = sorted((folder / "data" / "labelsTr").iterdir())[0]
        save_nifti(target, values, nib.load(target).affine)
        config = folder / "train.toml"
        config.write_text(tiny_config(folder / "data", folder / "runs").to_toml())
        assert lasc(["train", str(config)]) == 2
        one_error_line(capsys, target.name)
        (folder / "pred").mkdir()
        shutil.copy(target, folder / "pred" / target.name)  # the bad labels as a prediction
        truth = folder / "truth"
        good_label_like(target, truth / target.name)
        assert (
            lasc(
                [
                    "evaluate",
                    "--pred",
                    str(folder / "pred"),
                    "--truth",
                    str(truth),
                    "--out",
                    str(folder / "report"),
                ]
            )
            == 2
        )
        one_error_line(capsys, target.name)
        # No run was started and no report written (at most the empty output folders).
        assert not list((folder / "runs").glob("*")) and not list((folder / "report").glob("*"))


def test_image_label_mismatch_is_refused_by_prepare_and_train(tmp_path, capsys):
    root = make_msd_dataset(tmp_path / "data", cases=3, with_manifest=False)
    label = sorted((root / "labelsTr").iterdir())[0]
    data = np.asanyarray(nib.load(label).dataobj)
    save_nifti(label, np.pad(data, ((0, 1), (0, 0), (0, 0))), nib.load(label).affine)
    before = tree_state(tmp_path)
    assert lasc(["prepare", str(root), str(tmp_path / "prepared")]) == 2
    one_error_line(capsys, label.stem.split(".")[0])
    config = tmp_path / "train.toml"
    config.write_text(tiny_config(root, tmp_path / "runs").to_toml())
    before = tree_state(tmp_path)
    assert lasc(["train", str(config)]) == 2
    one_error_line(capsys, label.stem.split(".")[0])
    assert tree_state(tmp_path) == before


def test_png_mask_with_a_colour_outside_the_rgb_map_is_refused_by_train(tmp_path, capsys):
    from PIL import Image

    for subset in ("train", "valid"):
        for kind in ("images", "masks"):
            (tmp_path / "png" / subset / kind).mkdir(parents=True)
        for index in range(3):
            name = f"1000{index}_{subset}_{index}.png"
            image = np.random.default_rng(index).integers(0, 255, (32, 32), dtype=np.uint8)
            mask = np.zeros((32, 32, 3), dtype=np.uint8)
            mask[8:20, 8:20] = (255, 0, 255)
            Image.fromarray(image).save(tmp_path / "png" / subset / "images" / name)
            Image.fromarray(mask).save(tmp_path / "png" / subset / "masks" / name)
    bad = tmp_path / "png" / "train" / "masks" / "10001_train_1.png"
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[4:10, 4:10] = (0, 255, 0)  # green: not in the map
    Image.fromarray(mask).save(bad)
    config = tmp_path / "train.toml"
    config.write_text(
        tiny_config(tmp_path / "png", tmp_path / "runs", data={"context_slices": 1}).to_toml()
    )
    assert lasc(["train", str(config)]) == 2
    one_error_line(capsys, bad.name)
    assert not list((tmp_path / "runs").glob("*"))  # no run folder was started


# --------------------------------------------------------------------------- configs


CONFIG_PROBLEMS = {
    "unknown key": ("[train]\nepochz = 3\n", "train.epochz"),
    "wrong type": ('[train]\nepochs = "many"\n', "train.epochs"),
    "missing dataset folder": ('[data]\ndataset = "nowhere"\n', "nowhere"),
}


@pytest.mark.parametrize("problem", list(CONFIG_PROBLEMS))
def test_lasc_train_refuses_each_bad_config(problem, tmp_path, capsys):
    text, fragment = CONFIG_PROBLEMS[problem]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    before = tree_state(tmp_path)
    with_runs = ["--set", f"train.runs_dir={tmp_path / 'runs'}"] if problem != "unknown key" else []
    assert lasc(["train", str(config), *with_runs]) == 2
    one_error_line(capsys, fragment)
    assert tree_state(tmp_path) == before


def test_missing_config_file_and_code_in_the_earlier_tools_ini(tmp_path, capsys):
    assert lasc(["train", str(tmp_path / "absent.toml")]) == 2
    one_error_line(capsys, "absent.toml")
    marker = tmp_path / "pwned"
    ini = tmp_path / "train_eval_infer.config"
    ini.write_text(
        f"[model]\nnum_classes = 2\nbase_filters = __import__('os').system('touch {marker}')\n"
    )
    assert lasc(["train", str(ini)]) == 2
    one_error_line(capsys, "train_eval_infer.config")
    assert not marker.exists()


# --------------------------------------------------------------------------- model files


def _bad_models(folder: Path) -> dict[str, Path]:
    small, other = ModelConfig(base_filters=4, levels=3), ModelConfig(base_filters=8, levels=3)
    models = {}
    path = save_model(
        folder / "truncated.safetensors", build_network(small, 1, 2), model_spec(small)
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    models["truncated weights"] = path
    models["metadata disagrees with the weights"] = save_model(
        folder / "disagrees.safetensors", build_network(small, 1, 2), model_spec(other)
    )
    torch.save(build_network(other, 1, 2).state_dict(), folder / "other_arch.pt")
    (folder / "other_arch.json").write_text(json.dumps(model_metadata(small)))
    models["weights of another architecture"] = folder / "other_arch.pt"
    with open(folder / "exploit.pt", "wb") as handle:
        pickle.dump({"weight": CodeRunningPickle(folder / "pwned")}, handle)
    (folder / "exploit.json").write_text(json.dumps(model_metadata(small)))
    models["pickle that runs code"] = folder / "exploit.pt"
    models["missing model file"] = folder / "absent.safetensors"
    return models


def test_lasc_infer_refuses_each_bad_model_file_without_running_it(tmp_path, capsys):
    scan, _, affine = synthetic_case()
    scan_path = save_nifti(tmp_path / "scan.nii.gz", scan, affine)
    (tmp_path / "models").mkdir()
    for problem, model in _bad_models(tmp_path / "models").items():
        before = tree_state(tmp_path)
        out = tmp_path / f"out_{problem.replace(' ', '_')}"
        code = lasc(["infer", str(scan_path), "--out", str(out), "--model", str(model)])
        assert code == 2, problem
        one_error_line(capsys, model.name)
        assert not (tmp_path / "models" / "pwned").exists()
        assert not list(out.glob("*.nii*")), problem
        after = tree_state(tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before


# --------------------------------------------------------------------------- outputs


def test_output_that_is_not_a_writable_folder_fails_before_any_work(tmp_path, capsys):
    scan, _, affine = synthetic_case()
    scan_path = save_nifti(tmp_path / "scan.nii.gz", scan, affine)
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    # The model path does not exist: the output check must come first to be the error.
    missing_model = tmp_path / "absent.safetensors"
    for out in (blocker / "out", blocker, Path("/proc/lasc-not-writable")):
        before = tree_state(tmp_path)
        code = lasc(["infer", str(scan_path), "--out", str(out), "--model", str(missing_model)])
        assert code == 2
        message = one_error_line(capsys, str(out))
        assert "not writable" in message or "not a folder" in message
        assert tree_state(tmp_path) == before
    dataset = make_msd_dataset(tmp_path / "data", cases=3)
    config = tmp_path / "train.toml"
    config.write_text(tiny_config(dataset, blocker / "runs").to_toml())
    assert lasc(["train", str(config)]) == 2
    one_error_line(capsys, "runs", "not writable")
    assert lasc(["prepare", str(dataset), str(blocker / "prepared")]) == 2
    one_error_line(capsys, "prepared")


def _limit_file_size(limit: int):
    def apply() -> None:
        # Writes past `limit` bytes fail with EFBIG, as on a full disk; without ignoring
        # SIGXFSZ the kernel would kill the process instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_writing_leaves_no_partial_file(tmp_path, tiny_run):
    _, run = tiny_run
    scan, _, affine = synthetic_case(shape=(64, 64, 16))
    scan_path = save_nifti(tmp_path / "scan.nii", scan, affine)  # uncompressed: 64 KB out
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [
            LASC,
            "infer",
            str(scan_path),
            "--out",
            str(out),
            "--model",
            str(run.best_model),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(16_000),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "scan.nii" in line and "could not be written" in line
    assert list(out.iterdir()) == []  # neither the result nor its temporary file


# --------------------------------------------------------------------------- crash safety


def _train_config(tmp_path: Path, runs: Path) -> Path:
    dataset = tmp_path / "data"
    if not dataset.exists():
        make_msd_dataset(dataset, cases=4)
    config = tmp_path / "train.toml"
    config.write_text(
        tiny_config(
            dataset,
            runs,
            train={"epochs": 8, "steps_per_epoch": 6, "device": "cpu", "preview_slices": 0},
        ).to_toml()
    )
    return config


def test_training_killed_with_sigkill_resumes_to_the_uninterrupted_weights(tmp_path):
    from src_monai.config import load_config
    from src_monai.progress import run_to_end
    from src_monai.training.trainer import run_training

    config = _train_config(tmp_path, tmp_path / "killed")
    process = subprocess.Popen(
        [LASC, "train", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    state_files: list[Path] = []
    while not state_files and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        state_files = list((tmp_path / "killed").glob("*/checkpoints/last_state.pt"))
    assert state_files, "training never saved an epoch"
    # Kill at a random moment after the first checkpoint: mid-step, mid-validation or in
    # the middle of writing a checkpoint (the seed is printed by pytest -ra on failure).
    seed = random.randrange(1_000_000)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
    (run_dir,) = list((tmp_path / "killed").iterdir())
    epochs_at_kill = (run_dir / "metrics.csv").read_text().count("\n") - 1
    assert epochs_at_kill < 8
    resumed = subprocess.run(
        [LASC, "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, (seed, resumed.stderr)
    reference = run_to_end(
        run_training(load_config(_train_config(tmp_path, tmp_path / "reference")))
    )
    killed_weights = load_file(run_dir / "checkpoints" / "last.safetensors")
    reference_weights = load_file(reference.run_dir / "checkpoints" / "last.safetensors")
    assert killed_weights.keys() == reference_weights.keys()
    for name, value in reference_weights.items():
        assert torch.equal(killed_weights[name], value), (seed, name)
    assert not list(run_dir.rglob(".partial-*"))


def test_inference_killed_half_way_leaves_complete_outputs_and_skip_existing_finishes(
    tmp_path, tiny_run
):
    _, run = tiny_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(8):
        scan, _, affine = synthetic_case(shape=(96, 96, 24), seed=index)
        save_nifti(inputs / f"case_{index}.nii.gz", scan, affine)
    out = tmp_path / "out"
    command = [
        LASC,
        "infer",
        str(inputs),
        "--out",
        str(out),
        "--model",
        str(run.best_model),
        "--device",
        "cpu",
        "--batch-size",
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(out.glob("case_*.nii.gz"))) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = sorted(out.glob("case_*.nii.gz"))
    assert 0 < len(finished) < 8, "the kill should land half way"
    for path in finished:  # every file under a final name is complete
        assert nib.load(path).get_fdata().shape == (96, 96, 24)
    stamps = {path.name: path.stat().st_mtime_ns for path in finished}
    rerun = subprocess.run(
        [*command, "--skip-existing"], capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("case_*.nii.gz"))) == 8
    assert {p.name: p.stat().st_mtime_ns for p in finished} == stamps  # kept, not redone
    rows = read_csv(out / "summary.csv")  # and every case has its row, kept ones included
    assert sorted(Path(r["input"]).name for r in rows) == [f"case_{i}.nii.gz" for i in range(8)]
    assert not list(out.glob(".partial-*"))  # the killed run's temporary file is cleaned


# --------------------------------------------------------------------------- resources


def test_a_header_claiming_2048_cubed_is_refused_before_allocating(tmp_path, capsys):
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4), header=header)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as handle:
        handle.write(image.header.binaryblock)
        handle.write(b"\0" * (352 - len(image.header.binaryblock) + 1000))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert lasc(["infer", str(path), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, "huge.nii")
    # 2048^3 float32 would be 32 GiB; the peak resident size grew by far less than 1 GiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1_000_000


class _OutOfMemoryAbove(torch.nn.Module):
    """A stand-in for a GPU that holds at most ``limit`` slices: the real network runs on
    the CPU, larger batches raise the out-of-memory error CUDA raises. (No GPU here.)"""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self._inner = [network]  # a list: .to() on the wrapper must not move the real weights
        self.limit = limit
        self.calls: list[int] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(batch.shape[0])
        if batch.device.type != "cpu" or batch.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self._inner[0](batch)


def _unconstrained_prediction(tiny_run):
    """The tiny model as a CPU predictor, a volume, and its labels with memory to spare."""
    from src_monai.inference.predictor import Predictor
    from src_monai.progress import run_to_end

    _, run = tiny_run
    reference = Predictor.from_checkpoint(run.best_model, device="cpu")
    volume = np.random.default_rng(0).normal(size=(32, 32, 12)).astype(np.float32)
    return (
        reference,
        volume,
        run_to_end(reference.predict_volume(volume, reference.options(postprocess=False))).labels,
    )


def test_out_of_memory_splits_batches(tiny_run, caplog):
    from src_monai.inference.predictor import Predictor
    from src_monai.progress import run_to_end

    reference, volume, expected = _unconstrained_prediction(tiny_run)
    limited = _OutOfMemoryAbove(reference.network, limit=3)
    predictor = Predictor(limited, reference.spec, torch.device("cpu"))
    labels = run_to_end(
        predictor.predict_volume(volume, predictor.options(batch_size=8, postprocess=False))
    ).labels
    np.testing.assert_array_equal(labels, expected)
    assert limited.calls[:3] == [8, 4, 2]  # halved until it fit ...
    assert max(limited.calls[3:]) <= 2  # ... and later batches start at the size that fit
    assert caplog.text.count("smaller batches") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CPU fallback needs a CUDA GPU")
def test_out_of_memory_for_one_slice_on_the_gpu_continues_on_the_cpu(tiny_run, caplog):
    from src_monai.inference.predictor import Predictor
    from src_monai.progress import run_to_end

    reference, volume, expected = _unconstrained_prediction(tiny_run)
    no_room = _OutOfMemoryAbove(reference.network, limit=0)
    predictor = Predictor(no_room, reference.spec, torch.device("cuda"))
    labels = run_to_end(
        predictor.predict_volume(volume, predictor.options(batch_size=4, postprocess=False))
    ).labels
    np.testing.assert_array_equal(labels, expected)
    assert predictor.device.type == "cpu"
    assert "continuing on the CPU" in caplog.text


# --------------------------------------------------------------------------- napari


@pytest.mark.gui
@pytest.mark.parametrize("kind", list(BAD_SCANS))
def test_napari_reader_reports_each_bad_scan_and_opens_nothing(
    kind, make_napari_viewer, tmp_path, errors
):
    from napari_lasc._reader import get_reader, read_layers

    path = bad_scan(kind, tmp_path / "inputs")
    before = tree_state(tmp_path)
    if kind in ("a folder", "wrong extension"):
        assert get_reader(str(path)) is None  # declined: napari may try another reader
        return
    viewer = make_napari_viewer()
    if kind == "missing file":  # napari checks existence itself; the reader must cope too
        assert read_layers(str(path)) == [(None,)]
    else:
        viewer.open(path, plugin="napari-lasc")
    assert len(viewer.layers) == 0
    (message,) = errors()
    assert path.name in message and "\n" not in message
    assert tree_state(tmp_path) == before


@pytest.mark.gui
def test_segment_widget_reports_each_bad_model_file(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_lasc._models import FROM_FILE

    (tmp_path / "models").mkdir()
    models = _bad_models(tmp_path / "models")
    viewer = make_napari_viewer()
    image, _ = viewer.open_sample("napari-lasc", "la_016")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lasc", "Segment left atrium")
    widget._image.value = image
    widget._model.value = FROM_FILE
    widget._current_slice.value = True
    for problem, model in models.items():
        shown = len(errors())
        widget._model_file.value = model
        widget.run()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        (message,) = errors()[shown:]
        assert model.name in message and "\n" not in message, problem
        assert widget._run.enabled
    assert not (tmp_path / "models" / "pwned").exists()
    assert [layer.name for layer in viewer.layers] == ["la_016", "la_016 ground truth"]


@pytest.mark.gui
def test_train_widget_refuses_unusable_pairs(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    image, truth = viewer.open_sample("napari-lasc", "la_016")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lasc", "Train model")
    empty = viewer.add_labels(np.zeros(image.data.shape, dtype=np.uint8), name="unpainted")
    small = viewer.add_labels(np.zeros((4, 5, 6), dtype=np.uint8), name="small")
    for labels in (empty, small):
        widget._image.value, widget._labels_layer.value = image, labels
        widget.add_pair()
    widget.start()  # nothing added: refuses to start
    messages = errors()
    assert "unpainted" in messages[0] and "empty" in messages[0]
    assert "small" in messages[1] and "shape" in messages[1]
    assert "no training pairs" in messages[2]
    assert widget.worker is None
    widget._image.value, widget._labels_layer.value = image, truth
    widget.add_pair()
    widget.add_pair()
    assert "already" in errors()[-1]
