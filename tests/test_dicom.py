"""DICOM series in: a folder holding one series reads with the same voxels and geometry as
the NIfTI it was made from; bad series are refused in one line; lasc infer takes the folder."""

from __future__ import annotations

import locale
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from src_monai.cli import main as lasc
from src_monai.errors import LascError, ScanShapeError
from src_monai.io.inputs import find_inputs
from src_monai.io.scans import read_labels, read_scan
from src_monai.model.files import SAMPLE_SCAN


def write_dicom_series(
    source: Path,
    folder: Path,
    uid: str,
    description: str,
    tilted: int | None = None,
    edit=None,
) -> Path:
    """A real scan as a DICOM series, one file per slice (SimpleITK's own recipe: the
    position and orientation of each slice are set explicitly); slice ``tilted`` gets
    another orientation; ``edit(index, plane)``, when given, changes a slice before it is
    written (its spacing, origin or tags)."""
    # GDCM's writer sets the process locale to "C" (ASCII): every later text decoding in this
    # process would fail on "±" or "mm²". Restore it when done (lasc never writes DICOM).
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        return _write_series(source, folder, uid, description, tilted, edit)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(source: Path, folder: Path, uid: str, description: str, tilted, edit) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(sitk.ReadImage(str(source)), sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(
        str(v)
        for v in (
            direction[0],
            direction[3],
            direction[6],
            direction[1],
            direction[4],
            direction[7],
        )
    )
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        for tag, value in (
            ("0008|0060", "MR"),
            ("0008|103e", description),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", uid),
            ("0020|0037", "1\\0\\0\\0\\0\\1" if index == tilted else orientation),
            ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, index))))),
            ("0020|0013", str(index + 1)),
            ("0008|0018", f"{uid}.{index + 1}"),
        ):
            plane.SetMetaData(tag, value)
        if edit is not None:
            edit(index, plane)
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[-1]}_{index:03d}.dcm"))
        writer.Execute(plane)
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    return write_dicom_series(
        SAMPLE_SCAN, root / "la_016_series", "1.2.826.0.1.3680043.2.1125.7", "LA MRI"
    )


def test_a_dicom_series_reads_as_its_nifti_original(series):
    original, dicom = read_scan(SAMPLE_SCAN), read_scan(series)
    assert dicom.geometry.shape == original.geometry.shape
    np.testing.assert_array_equal(dicom.array, original.array.astype(np.int16))
    np.testing.assert_allclose(dicom.geometry.affine, original.geometry.affine, atol=1e-3)
    assert dicom.geometry.source_format == "dicom"


def test_lasc_infer_segments_a_dicom_folder_into_nifti_with_its_geometry(series, tmp_path):
    out = tmp_path / "seg"
    assert lasc(["infer", str(series), "--out", str(out), "--device", "cpu"]) == 0
    labels = read_labels(out / "la_016_series.nii.gz")
    np.testing.assert_allclose(
        labels.geometry.affine, read_scan(SAMPLE_SCAN).geometry.affine, atol=1e-3
    )
    assert 50 < labels.array.sum() * np.prod(labels.geometry.spacing) / 1000 < 200  # mL


def test_a_missing_slice_is_refused(series, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(series, broken)
    (broken / "7_040.dcm").unlink()
    with pytest.raises(ScanShapeError, match="not evenly spaced .* a slice is missing"):
        read_scan(broken)
    out = tmp_path / "out"
    assert lasc(["infer", str(broken), "--out", str(out)]) == 2
    assert "not evenly spaced" in capsys.readouterr().err and not out.exists()


def test_several_series_ask_which_and_series_chooses(series, tmp_path, capsys):
    both = tmp_path / "both"
    shutil.copytree(series, both)
    write_dicom_series(SAMPLE_SCAN, both, "1.2.826.0.1.3680043.2.1125.8", "second copy")
    with pytest.raises(
        LascError, match="holds 2 DICOM series: .*LA MRI.*second copy.*--series UID"
    ):
        read_scan(both)
    out = tmp_path / "out"
    assert lasc(["infer", str(both), "--out", str(out)]) == 2
    assert "1.2.826.0.1.3680043.2.1125.8" in capsys.readouterr().err and not out.exists()
    argv = ["infer", str(both), "--out", str(out), "--series", "1.2.826.0.1.3680043.2.1125.8"]
    assert lasc([*argv, "--device", "cpu"]) == 0
    assert (out / "both.nii.gz").is_file()


def test_a_folder_of_unrelated_files_is_not_a_scan(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image")
    (folder / "empty").mkdir()
    assert lasc(["infer", str(folder), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "no scans, PNG images or DICOM series found" in error
    assert "1 other files, 1 subfolders" in error


def test_a_study_folder_gives_the_series_folders_inside_it(series, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(series, study / "series_7")
    shutil.copytree(series, study / "series_8")
    (study / "DICOMDIR.txt").write_text("an index, not a slice")
    scans, pngs = find_inputs([study])
    assert scans == [(study / "series_7").resolve(), (study / "series_8").resolve()]
    assert pngs == []


def test_a_dicom_series_beside_a_nifti_is_refused_not_chosen_between(series, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed)
    shutil.copy(SAMPLE_SCAN, mixed / SAMPLE_SCAN.name)
    out = tmp_path / "out"
    assert lasc(["infer", str(mixed), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"holds a DICOM series and 1 scan or PNG files ({SAMPLE_SCAN.name})" in error
    assert str(mixed) in error and not out.exists()


def test_series_with_no_dicom_input_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["infer", str(SAMPLE_SCAN), "--out", str(out), "--series", "1.2.3"]
    assert lasc(argv) == 2
    assert "--series: picks a series of a DICOM folder: the inputs hold none" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_slices_of_mixed_orientations_are_refused(tmp_path, capsys):
    folder = write_dicom_series(
        SAMPLE_SCAN, tmp_path / "mixed", "1.2.826.0.1.3680043.2.1125.9", "LA MRI", tilted=10
    )
    with pytest.raises(ScanShapeError, match="orientation .* where the series' other 89 slices"):
        read_scan(folder)
    assert lasc(["infer", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "9_010.dcm: orientation 1\\0\\0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_and_prepare_take_dicom_series_folders(series, tmp_path):
    """lasc evaluate --pred pairs a prediction stored as a DICOM series' folder by its name;
    lasc prepare reads an MSD dataset whose image is a DICOM series' folder."""
    from src_monai.model.files import SAMPLE_LABEL

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    write_dicom_series(SAMPLE_LABEL, pred / "la_016", "1.2.826.0.1.3680043.2.1125.10", "labels")
    truth.mkdir()
    shutil.copy(SAMPLE_LABEL, truth / "la_016.nii.gz")
    report = tmp_path / "report"
    argv = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(report)]
    assert lasc(argv) == 0
    assert '"dice": {\n   "mean": 1.0' in (report / "summary.json").read_text()
    data = tmp_path / "data"
    (data / "labelsTr").mkdir(parents=True)
    shutil.copytree(series, data / "imagesTr" / "la_016")
    shutil.copy(SAMPLE_LABEL, data / "labelsTr" / "la_016.nii.gz")
    assert lasc(["prepare", str(data), str(tmp_path / "prepared")]) == 0
    assert "la_016" in (tmp_path / "prepared" / "stats.csv").read_text()


def test_a_colour_screenshot_series_is_refused(tmp_path, capsys):
    """A series that is not a greyscale image volume (a screen capture in colour)."""
    folder = tmp_path / "capture"
    folder.mkdir()
    saved = locale.setlocale(locale.LC_ALL, None)  # see write_dicom_series
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(3):
        plane = sitk.Image([16, 16], sitk.sitkVectorUInt8, 3)
        for tag, value in (
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.11"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0032", f"0\\0\\{index}"),
            ("0008|0018", f"1.2.826.0.1.3680043.2.1125.11.{index + 1}"),
        ):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{index}.dcm"))
        writer.Execute(plane)
    locale.setlocale(locale.LC_ALL, saved)
    assert lasc(["infer", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "a scalar (greyscale) volume is needed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- slice by slice

UID = "1.2.826.0.1.3680043.2.1125.9"


def _refusal(folder: Path, capsys) -> str:
    """lasc infer's exit status and its one-line message on ``folder``."""
    out = folder.parent / f"{folder.name}_out"
    code = lasc(["infer", str(folder), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


def shear(index: int, plane) -> None:
    """A ``write_dicom_series`` edit: each slice's position moved 0.9 mm further along the
    columns' direction than the one before (a tilted gantry)."""
    x, y, z = (float(v) for v in plane.GetMetaData("0020|0032").split("\\"))
    plane.SetMetaData("0020|0032", "\\".join(map(str, (x, y + 0.9 * index, z))))


def other_pixel_spacing(which: int):
    """A ``write_dicom_series`` edit: slice ``which`` with 1 x 1 mm pixels (the others'
    are the scan's)."""

    def edit(index: int, plane) -> None:
        if index == which:
            plane.SetSpacing((1.0, 1.0))

    return edit


def test_a_sheared_series_is_refused_not_read_as_a_taller_volume(tmp_path, capsys):
    """Positions shifted in-plane as well as along the normal (a tilted gantry): the even
    spacing along the normal alone would claim no shear and a wrong slice thickness."""
    folder = write_dicom_series(SAMPLE_SCAN, tmp_path / "sheared", UID, "tilt", edit=shear)
    err = _refusal(folder, capsys)
    assert err.startswith(f"error: {folder}: the DICOM slices are sheared"), err
    assert "mm in-plane" in err


@pytest.mark.parametrize("which", [0, 45])
def test_a_slice_with_other_pixel_spacing_is_named(tmp_path, capsys, which):
    """The first slice's spacing was taken for the whole volume, a middle one ignored."""
    edit = other_pixel_spacing(which)
    folder = write_dicom_series(SAMPLE_SCAN, tmp_path / "spacing", UID, "s", edit=edit)
    odd = sorted(folder.iterdir())[which]
    err = _refusal(folder, capsys)
    assert odd.name in err and "pixel spacing 1x1 mm" in err and "1.25x1.25" in err, err


def test_a_slice_of_another_size_is_named(tmp_path, capsys):
    folder = write_dicom_series(SAMPLE_SCAN, tmp_path / "sizes", UID, "s")
    odd = sorted(folder.iterdir())[30]
    plane = sitk.ReadImage(str(odd))
    small = plane[:128, :128]  # a 128x128 slice with the series' tags
    for key in plane.GetMetaDataKeys():
        if key not in ("0028|0010", "0028|0011"):
            small.SetMetaData(key, plane.GetMetaData(key))
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(odd))
        writer.Execute(small)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    err = _refusal(folder, capsys)
    assert odd.name in err and "128x128" in err and "256x256" in err, err


@pytest.mark.parametrize("which", [-1, 40])
def test_a_truncated_slice_is_named_never_dropped(series, tmp_path, capsys, which):
    """GDCM leaves a truncated file out of the series: the last one would vanish (one slice
    fewer, exit 0), a middle one looked like a missing slice. Both are named."""
    folder = tmp_path / "truncated"
    shutil.copytree(series, folder)
    broken = sorted(folder.iterdir())[which]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    err = _refusal(folder, capsys)
    assert err.startswith(f"error: {broken}: "), err
    assert "cannot be read" in err and "truncated" in err


def test_lasc_infer_dot_inside_a_dicom_folder_names_the_output_after_the_folder(
    series, tmp_path, monkeypatch
):
    """``lasc infer .`` (or ``..``) named the outputs after ``Path('.').name``: hidden
    ``OUT/.nii.gz`` and ``OUT/_area_curve.csv``."""
    out = tmp_path / "out"
    monkeypatch.chdir(series)
    assert lasc(["infer", ".", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        f"{series.name}.nii.gz",
        f"{series.name}_area_curve.csv",
        "summary.csv",
    ]
