"""Scan I/O: exact geometry round trips, NRRD/MetaImage, and every kind of bad input."""

from __future__ import annotations

import gzip
import re
import struct
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE_AFFINE, save_nifti, synthetic_case

from src_monai.errors import (
    BadAffineError,
    CorruptScanError,
    GeometryWarning,
    LabelValueError,
    NonFiniteVoxelsError,
    NotAScanError,
    OrientationUnknownWarning,
    OutputExistsError,
    PairMismatchError,
    ScanReadError,
    ScanShapeError,
    TruncatedScanError,
)
from src_monai.io.scans import (
    case_id_from_path,
    check_pair,
    read_geometry,
    read_labels,
    read_scan,
    write_labels,
    write_volume,
)


@pytest.fixture
def case(tmp_path):
    image, labels, affine = synthetic_case()
    image_path = save_nifti(tmp_path / "scan.nii.gz", image, affine)
    label_path = save_nifti(tmp_path / "label.nii.gz", labels, affine)
    return image, labels, image_path, label_path


def header_codes(path: Path):
    header = nib.load(path).header
    return (
        int(header["qform_code"]),
        int(header["sform_code"]),
        tuple(float(z) for z in header.get_zooms()),
        header.get_xyzt_units(),
    )


# --------------------------------------------------------------------------- round trips


def test_read_scan_keeps_data_dtype_and_geometry(case):
    image, _, image_path, _ = case
    scan = read_scan(image_path)
    reference = nib.load(image_path)
    assert scan.array.dtype == np.int16
    assert np.array_equal(scan.array, image)
    assert np.array_equal(scan.geometry.affine, reference.affine)
    assert scan.geometry.spacing == pytest.approx((1.25, 0.9, 1.37), abs=1e-6)
    assert scan.geometry.axcodes == nib.aff2axcodes(reference.affine)
    assert scan.geometry.dtype == "int16"
    assert scan.geometry.orientation_known


def test_labels_written_with_scan_geometry_are_exact(case, tmp_path):
    _, labels, image_path, label_path = case
    scan = read_scan(image_path)
    out = write_labels(tmp_path / "out.nii.gz", read_labels(label_path).array, scan.geometry)
    written = nib.load(out)
    assert np.array_equal(np.asarray(written.dataobj), labels)
    assert written.get_data_dtype() == np.uint8
    assert np.array_equal(written.affine, nib.load(image_path).affine)
    assert header_codes(out) == header_codes(image_path)
    assert written.header.get_intent()[0] == "label"


def test_scan_round_trip_is_bit_exact(case, tmp_path):
    image, _, image_path, _ = case
    scan = read_scan(image_path)
    out = write_volume(tmp_path / "copy.nii", scan.array, scan.geometry)
    again = read_scan(out)
    assert again.array.dtype == image.dtype
    assert np.array_equal(again.array, image)
    assert np.array_equal(again.geometry.affine, scan.geometry.affine)


@pytest.mark.slow
def test_real_cases_round_trip_exactly(lasc13, tmp_path):
    for image_path in sorted((lasc13 / "imagesTr").glob("la_*.nii.gz")):
        label_path = lasc13 / "labelsTr" / image_path.name
        scan = read_scan(image_path)
        labels = read_labels(label_path)
        check_pair(scan.geometry, labels.geometry, image_path, label_path)
        source = nib.load(label_path)
        assert np.array_equal(labels.array, np.asarray(source.dataobj))
        out = write_labels(tmp_path / image_path.name, labels.array, scan.geometry)
        written = nib.load(out)
        assert np.array_equal(np.asarray(written.dataobj), labels.array), image_path.name
        assert np.array_equal(written.affine, nib.load(image_path).affine), image_path.name
        assert header_codes(out) == header_codes(image_path), image_path.name
        copy = write_volume(tmp_path / f"scan_{image_path.name}", scan.array, scan.geometry)
        assert np.array_equal(read_scan(copy).array, scan.array), image_path.name


# --------------------------------------------------------------------------- ITK formats


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_formats_read_with_the_same_world_geometry(case, tmp_path, suffix):
    image, _, image_path, _ = case
    converted = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(image_path)), str(converted))  # SimpleITK's own writer
    scan = read_scan(converted)
    assert np.array_equal(scan.array, image)
    assert np.allclose(scan.geometry.affine, nib.load(image_path).affine, atol=1e-4)
    assert scan.geometry.source_format == (
        "nrrd" if "nrrd" in suffix or suffix == ".nhdr" else "metaimage"
    )


def test_binary_255_mask_reads_as_class_1(case, tmp_path):
    _, labels, _, label_path = case
    mask = sitk.ReadImage(str(label_path)) * 255  # like the 2018 challenge's laendo.nrrd
    sitk.WriteImage(mask, str(tmp_path / "laendo.nrrd"))
    assert np.array_equal(read_labels(tmp_path / "laendo.nrrd").array, labels)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_labels_written_to_itk_format_keep_geometry(case, tmp_path, suffix):
    _, labels, image_path, _ = case
    scan = read_scan(image_path)
    out = write_labels(tmp_path / f"labels{suffix}", labels, scan.geometry)
    again = read_labels(out)
    assert np.array_equal(again.array, labels)
    assert np.allclose(again.geometry.affine, scan.geometry.affine, atol=1e-5)


def test_nifti_labels_from_an_nrrd_scan_overlay_it(case, tmp_path):
    _, labels, image_path, _ = case
    nrrd = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(image_path)), str(nrrd))
    scan = read_scan(nrrd)
    out = write_labels(tmp_path / "labels.nii.gz", labels, scan.geometry)
    assert np.allclose(nib.load(out).affine, scan.geometry.affine, atol=1e-4)
    assert header_codes(out)[:2] == (1, 1)


# --------------------------------------------------------------------------- bad input


def gzipped_nifti_bytes(array, affine=OBLIQUE_AFFINE, compresslevel=6) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), compresslevel=compresslevel)


def test_corrupted_gzip_stream_is_detected_where_nibabel_is_silent(tmp_path):
    array = np.arange(32 * 32 * 8, dtype=np.int16).reshape(32, 32, 8)
    # A stored (level 0) deflate stream: a flipped voxel byte leaves the stream well-formed,
    # so only the CRC at the end can tell.
    raw = bytearray(gzipped_nifti_bytes(array, compresslevel=0))
    raw[len(raw) // 2] ^= 0xFF
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(bytes(raw))
    silently_wrong = np.asarray(nib.load(path).dataobj)
    assert not np.array_equal(silently_wrong, array)  # the danger this check exists for
    with pytest.raises(CorruptScanError, match="corrupted gzip stream"):
        read_scan(path)


def test_gzip_with_bad_crc_trailer_is_corrupt(tmp_path):
    raw = bytearray(gzipped_nifti_bytes(np.ones((8, 8, 8), np.int16)))
    raw[-8] ^= 0xFF  # CRC32 of the member
    (tmp_path / "crc.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(CorruptScanError):
        read_scan(tmp_path / "crc.nii.gz")


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _nifti(path: Path, array, affine=OBLIQUE_AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _nifti_with_sform(path: Path, sform: np.ndarray | None) -> Path:
    """A NIfTI whose header holds exactly this sform (code 1), or no qform/sform at all."""
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.int16)
    if sform is not None:
        header["sform_code"] = 1
        for row, axis in enumerate("xyz"):
            header[f"srow_{axis}"] = sform[row]
    # affine=None: nibabel writes the header's (missing or degenerate) transforms as they are.
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), None, header=header), path)
    return path


def _rgb_nifti(path: Path) -> Path:
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    return path


def _huge_header_nifti(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4 + b"\x00" * 1000
    path.write_bytes(gzip.compress(raw))
    return path


def _truncated(path: Path, compressed: bool) -> Path:
    array = np.random.default_rng(0).integers(0, 1000, (32, 32, 16)).astype(np.int16)
    raw = nib.Nifti1Image(array, OBLIQUE_AFFINE).to_bytes()
    data = gzip.compress(raw) if compressed else raw
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_SCANS = {
    "empty file": (lambda d: _write(d / "empty.nii.gz", b""), NotAScanError, "empty file"),
    "random bytes .nii.gz": (
        lambda d: _write(d / "random.nii.gz", np.random.default_rng(1).bytes(5000)),
        NotAScanError,
        "not a gzip file",
    ),
    "random bytes .nii": (
        lambda d: _write(d / "random.nii", np.random.default_rng(1).bytes(5000)),
        NotAScanError,
        "NIfTI",
    ),
    "text named .nii": (lambda d: _write(d / "notes.nii", b"hello"), NotAScanError, "NIfTI"),
    "wrong extension": (
        lambda d: _write(d / "scan.png", b"\x89PNG"),
        NotAScanError,
        "unsupported file type",
    ),
    "truncated .nii.gz": (
        lambda d: _truncated(d / "cut.nii.gz", True),
        TruncatedScanError,
        "truncated",
    ),
    "truncated .nii": (lambda d: _truncated(d / "cut.nii", False), TruncatedScanError, "truncated"),
    "2D scan": (
        lambda d: _nifti(d / "flat.nii.gz", np.ones((16, 16), np.int16)),
        ScanShapeError,
        "2D",
    ),
    "single-slice scan": (
        lambda d: _nifti(d / "slice.nii.gz", np.ones((16, 16, 1), np.int16)),
        ScanShapeError,
        "2D",
    ),
    "4D scan": (
        lambda d: _nifti(d / "series.nii.gz", np.ones((8, 8, 8, 3), np.int16)),
        ScanShapeError,
        "3 volumes",
    ),
    "RGB NIfTI": (lambda d: _rgb_nifti(d / "rgb.nii.gz"), ScanShapeError, "RGB"),
    "NaN voxels": (
        lambda d: _nifti(
            d / "nan.nii.gz",
            np.where(np.eye(8)[..., None] > 0, np.nan, 1.0) * np.ones((8, 8, 8), np.float32),
        ),
        NonFiniteVoxelsError,
        "64 voxels are NaN",
    ),
    "Inf voxels": (
        lambda d: _nifti(d / "inf.nii.gz", np.full((8, 8, 8), np.inf, np.float32)),
        NonFiniteVoxelsError,
        "NaN or infinite",
    ),
    "zero affine": (
        lambda d: _nifti_with_sform(d / "zero.nii.gz", np.zeros((4, 4))),
        BadAffineError,
        "zero",
    ),
    "singular affine": (
        lambda d: _nifti_with_sform(d / "singular.nii.gz", np.diag([1.0, 1.0, 0.0, 1.0])),
        BadAffineError,
        "singular",
    ),
    "huge header, tiny file": (
        lambda d: _huge_header_nifti(d / "huge.nii.gz"),
        TruncatedScanError,
        "header declares",
    ),
    "missing file": (lambda d: d / "absent.nii.gz", ScanReadError, "file not found"),
    "a folder": (
        lambda d: (d / "folder.nii.gz").mkdir() or d / "folder.nii.gz",
        ScanReadError,
        "folder",
    ),
    "random bytes .nrrd": (
        lambda d: _write(d / "random.nrrd", np.random.default_rng(2).bytes(3000)),
        NotAScanError,
        "not a readable image header",
    ),
    "truncated .nrrd": (lambda d: _truncated_nrrd(d / "cut.nrrd"), ScanReadError, ""),
}


def _nifti_with_fields(path: Path, **fields) -> Path:
    """An 8x8x8 NIfTI with a proper sform whose header fields are then set as given (saved
    as they are: affine=None)."""
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([1.25, 1.25, 1.37, 1.0]), code=1)
    header.set_zooms((1.25, 1.25, 1.37))
    for name, value in fields.items():
        header[name] = value
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), None, header=header), path)
    return path


def _nifti_bytes_patched(path: Path, vox_offset: float | None = None, tail: bytes = b"") -> Path:
    """A single-file NIfTI whose vox_offset field is overwritten, or with bytes appended."""
    raw = bytearray(
        nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4)).to_bytes()
    )
    if vox_offset is not None:
        struct.pack_into("<f", raw, 108, vox_offset)
    path.write_bytes(bytes(raw) + tail)
    return path


HEADER_FIELD_SCANS = {
    "NaN in pixdim": (
        lambda d: _nifti_with_fields(
            d / "nan_pixdim.nii.gz", pixdim=[1, np.nan, 1.25, 1.37, 0, 0, 0, 0]
        ),
        CorruptScanError,
        "header field pixdim = [1.0, nan,",
    ),
    "NaN in qoffset": (
        lambda d: _nifti_with_fields(d / "nan_qoffset.nii.gz", qoffset_x=np.nan),
        CorruptScanError,
        "header field qoffset_x = nan is not a finite number",
    ),
    "NaN in the time step": (
        lambda d: _nifti_with_fields(d / "nan_toffset.nii.gz", toffset=np.nan),
        CorruptScanError,
        "header field toffset = nan",
    ),
    "undefined spatial unit code": (
        lambda d: _nifti_with_fields(d / "units.nii.gz", xyzt_units=5),
        CorruptScanError,
        "header field xyzt_units: unknown spatial unit 'code 5'",
    ),
    "voxel offset 0 in a .nii": (
        lambda d: _nifti_bytes_patched(d / "offset0.nii", vox_offset=0.0),
        CorruptScanError,
        "header field vox_offset = 0: a single-file NIfTI's voxels start at a whole byte >= 352",
    ),
    "fractional voxel offset": (
        lambda d: _nifti_bytes_patched(d / "offset_half.nii", vox_offset=352.5),
        CorruptScanError,
        "vox_offset = 352.5",
    ),
    "bytes after the voxels": (
        lambda d: _nifti_bytes_patched(d / "tail.nii", tail=b"\x00" * 16),
        CorruptScanError,
        "holds 1392 bytes, but its header declares 1376",
    ),
}
BAD_SCANS.update(HEADER_FIELD_SCANS)


def _truncated_nrrd(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.ones((16, 16, 16), np.int16))
    sitk.WriteImage(image, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    return path


@pytest.mark.parametrize("kind", list(BAD_SCANS))
def test_bad_scans_raise_a_specific_one_line_error(tmp_path, kind):
    make, error, fragment = BAD_SCANS[kind]
    path = make(tmp_path)
    started = time.perf_counter()
    with pytest.raises(error) as raised:
        read_scan(path)
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith(str(path))
    assert time.perf_counter() - started < 10  # refused, not allocated and read


@pytest.mark.parametrize("kind", list(HEADER_FIELD_SCANS))
def test_bad_header_fields_are_refused_from_the_header_alone(tmp_path, kind):
    """``read_geometry`` (what ``lasc infer`` checks every input with before any work) refuses
    the same header fields as the full read, except the file-size check, which needs the
    voxels."""
    make, error, fragment = HEADER_FIELD_SCANS[kind]
    path = make(tmp_path)
    if kind == "bytes after the voxels":
        read_geometry(path)
        return
    with pytest.raises(error, match=re.escape(fragment)):
        read_geometry(path)


def test_an_unusual_but_valid_voxel_offset_reads_the_right_voxels(tmp_path):
    """vox_offset 368 with the voxels there (16 bytes of padding after the header)."""
    image = nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4))
    raw = bytearray(image.to_bytes())
    struct.pack_into("<f", raw, 108, 368.0)
    path = tmp_path / "padded.nii"
    path.write_bytes(bytes(raw[:352]) + b"\x00" * 16 + bytes(raw[352:]))
    assert np.array_equal(read_scan(path).array, np.arange(512).reshape(8, 8, 8))


def test_geometry_comes_from_the_affine_in_mm_and_disagreements_are_warned(tmp_path):
    # pixdim says 2.5 mm, the sform 1.25 mm: the affine's voxel size is the one used.
    path = _nifti_with_fields(tmp_path / "pixdim.nii.gz", pixdim=[1, 2.5, 2.5, 2.5, 0, 0, 0, 0])
    with pytest.warns(
        GeometryWarning,
        match="pixdim says voxels of 2.5 x 2.5 x 2.5, the affine 1.25 x 1.25 x 1.37",
    ):
        scan = read_scan(path)
    assert scan.geometry.spacing == pytest.approx((1.25, 1.25, 1.37))
    # Units in metres: world and voxel sizes converted to mm; the written labels keep the
    # file's own header (units and transform).
    metres = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.diag([0.00125, 0.00125, 0.00137, 1]))
    metres.header.set_xyzt_units("meter")
    nib.save(metres, tmp_path / "metres.nii.gz")
    with pytest.warns(GeometryWarning, match="spatial units are meters: sizes converted to mm"):
        scan = read_scan(tmp_path / "metres.nii.gz")
    assert scan.geometry.spacing == pytest.approx((1.25, 1.25, 1.37))
    assert scan.geometry.voxel_volume_ml == pytest.approx(1.25 * 1.25 * 1.37 / 1000)
    write_labels(tmp_path / "labels.nii.gz", np.ones((8, 8, 8), np.uint8), scan.geometry)
    written = nib.load(tmp_path / "labels.nii.gz")
    assert written.header.get_xyzt_units()[0] == "meter"
    assert np.allclose(written.affine, metres.affine)
    # qform and sform that disagree: the sform is used, and said so.
    both = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4))
    both.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    both.set_sform(np.eye(4), code=1)
    nib.save(both, tmp_path / "both.nii.gz")
    with pytest.warns(
        GeometryWarning, match="qform and sform differ by up to 1: the sform is used"
    ):
        assert read_scan(tmp_path / "both.nii.gz").geometry.spacing == pytest.approx((1, 1, 1))


def test_single_volume_4d_is_accepted(tmp_path):
    path = _nifti(tmp_path / "one.nii.gz", np.ones((8, 9, 10, 1), np.int16))
    assert read_scan(path).array.shape == (8, 9, 10)
    assert read_geometry(path).shape == (8, 9, 10)


def test_missing_qform_and_sform_warns_orientation_unknown(tmp_path):
    path = _nifti_with_sform(tmp_path / "bare.nii.gz", None)
    with pytest.warns(OrientationUnknownWarning, match="orientation unknown"):
        scan = read_scan(path)
    assert not scan.geometry.orientation_known
    # Labels written for it stay marked as of unknown orientation, not promoted to scanner.
    out = write_labels(tmp_path / "labels.nii.gz", np.zeros((8, 8, 8), np.uint8), scan.geometry)
    assert header_codes(out)[:2] == (0, 0)


# --------------------------------------------------------------------------- labels and pairs


def test_non_integer_labels_are_refused(tmp_path):
    path = _nifti(tmp_path / "soft.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    with pytest.raises(LabelValueError, match="non-integer label values"):
        read_labels(path)


def test_labels_outside_the_classes_are_refused(tmp_path):
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[0, 0, 0], labels[1, 1, 1] = 1, 3
    path = _nifti(tmp_path / "three.nii.gz", labels)
    with pytest.raises(LabelValueError, match=r"label values 3 are outside the classes 0\.\.1"):
        read_labels(path)
    assert read_labels(path, num_classes=4).array.max() == 3


def test_integral_float_labels_are_accepted(tmp_path):
    labels = np.zeros((8, 8, 8), np.float32)
    labels[2:4, 2:4, 2:4] = 1.0
    assert read_labels(_nifti(tmp_path / "f.nii.gz", labels)).array.sum() == 8


def test_pair_with_other_shape_is_refused(case, tmp_path):
    _, _, image_path, _ = case
    other = save_nifti(tmp_path / "small.nii.gz", np.zeros((10, 10, 10), np.uint8))
    with pytest.raises(PairMismatchError, match="shape"):
        check_pair(read_geometry(image_path), read_geometry(other), image_path, other)


def test_pair_with_other_affine_is_refused(case, tmp_path):
    _, labels, image_path, _ = case
    shifted = OBLIQUE_AFFINE.copy()
    shifted[0, 3] += 2.5
    other = save_nifti(tmp_path / "moved.nii.gz", labels, shifted)
    with pytest.raises(PairMismatchError, match=r"affines differ \(by up to 2\.5 mm\)"):
        check_pair(read_geometry(image_path), read_geometry(other), image_path, other)


# --------------------------------------------------------------------------- writing


def test_existing_output_is_not_overwritten(case, tmp_path):
    _, labels, image_path, _ = case
    scan = read_scan(image_path)
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_labels(target, labels, scan.geometry)
    assert target.read_bytes() == b"precious"
    write_labels(target, labels, scan.geometry, overwrite=True)
    assert np.array_equal(read_labels(target).array, labels)


def test_labels_of_the_wrong_shape_or_type_are_refused(case, tmp_path):
    _, labels, image_path, _ = case
    geometry = read_scan(image_path).geometry
    with pytest.raises(PairMismatchError):
        write_labels(tmp_path / "a.nii.gz", labels[:-1], geometry)
    with pytest.raises(LabelValueError):
        write_labels(tmp_path / "b.nii.gz", labels.astype(np.float32), geometry)
    assert not list(tmp_path.glob("[ab].nii.gz"))


def test_failed_write_leaves_no_file(case, tmp_path):
    _, labels, image_path, _ = case
    geometry = read_scan(image_path).geometry
    with pytest.raises(NotAScanError, match="cannot write"):
        write_labels(tmp_path / "labels.mhd", labels, geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["label.nii.gz", "scan.nii.gz"]


def test_case_id_strips_double_suffix():
    assert case_id_from_path("imagesTr/la_003.nii.gz") == "la_003"
    assert case_id_from_path("lgemri.nrrd") == "lgemri"


def test_a_registered_format_is_read_written_and_discovered_like_the_built_in_ones(
    case, tmp_path, monkeypatch
):
    """The format registry: one entry (here numpy's .npz with the affine beside the voxels)
    and read_scan, read_geometry, write_labels and dataset discovery's scan_suffix follow."""
    from src_monai.io import formats
    from src_monai.io.geometry import ScanGeometry
    from src_monai.io.scans import scan_suffix

    _, _, image_path, label_path = case
    monkeypatch.setattr(formats, "FORMATS", list(formats.FORMATS))  # undone after the test

    def read(path, _series):
        with np.load(path) as stored:
            array, affine = stored["array"], stored["affine"]
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        return array, ScanGeometry(affine, array.shape, spacing, str(array.dtype), "nifti")

    def write(path, array, geometry, _intent):
        with open(path, "wb") as handle:  # np.savez would add its own suffix
            np.savez(handle, array=array, affine=geometry.affine)

    formats.register_format(
        formats.ScanFormat(
            "numpy", (".npz",), read, lambda p, s: read(p, s)[1], write, writable=(".npz",)
        )
    )
    scan = read_scan(image_path)
    labels = read_labels(label_path)
    target = write_labels(tmp_path / "labels.npz", labels.array, scan.geometry)
    assert scan_suffix(target) == ".npz" and case_id_from_path(target) == "labels"
    back = read_labels(target)
    np.testing.assert_array_equal(back.array, labels.array)
    assert back.geometry.same_space(scan.geometry)
    assert read_geometry(target).shape == scan.geometry.shape
    (tmp_path / "other.xyz").write_text("not a scan")
    with pytest.raises(NotAScanError, match=r"unsupported file type \(expected one of .*\.npz"):
        read_scan(tmp_path / "other.xyz")
