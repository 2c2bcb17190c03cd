"""`lasc prepare`: statistics and split files, the earlier tool's PNG dataset."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from src_monai.data.prepare import format_stats_table, prepare
from src_monai.data.splits import load_split
from src_monai.errors import OutputExistsError
from src_monai.io.png import decode_rgb_mask, discover_png, read_png_mask
from src_monai.io.scans import read_labels, read_scan
from src_monai.legacy.png_export import png_exporter
from src_monai.progress import run_to_end


def test_default_prepare_reports_every_case_and_writes_folds(msd_dataset, tmp_path):
    out = tmp_path / "prepared"
    job = prepare(msd_dataset, out, folds=3)
    progress = []
    while True:
        try:
            progress.append(next(job))
        except StopIteration as stop:
            stats = stop.value
            break
    assert [(p.done, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    case_ids = [s.case_id for s in stats]
    for case_stats in stats:
        labels = read_labels(msd_dataset / "labelsTr" / f"{case_stats.case_id}.nii.gz").array
        image = read_scan(msd_dataset / "imagesTr" / f"{case_stats.case_id}.nii.gz")
        assert case_stats.shape == image.array.shape and case_stats.slices == labels.shape[2]
        assert case_stats.la_voxels == labels.sum()
    assert (out / "stats.json").is_file()  # the default output: statistics
    folds = load_split(out / "folds.json", known_cases=case_ids)
    assert sorted(c for f in folds.partitions for c in f["val"]) == sorted(case_ids)


def test_non_empty_output_is_refused_and_left_untouched(msd_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        run_to_end(prepare(msd_dataset, out))
    assert sorted(os.listdir(out)) == ["notes.txt"] and keep.read_text() == "mine"
    run_to_end(prepare(msd_dataset, out, overwrite=True))
    assert keep.read_text() == "mine"  # --overwrite writes over same names, deletes nothing
    assert (out / "stats.json").is_file()


def test_png_export_is_the_earlier_format_split_by_patient(msd_dataset, tmp_path):
    out = tmp_path / "png"
    run_to_end(
        prepare(
            msd_dataset,
            out,
            export=png_exporter(size=64, fractions=(0.34, 0.33, 0.33)),
            split_seed=5,
        )
    )
    slices = discover_png(out)
    info = json.loads((out / "png_dataset.json").read_text())
    assert info["volume_names"] == {"case_000": "10001", "case_001": "10002", "case_002": "10003"}
    # Every slice kept (empty ones too), each patient in exactly one subset.
    assert len(slices) == 7 + 8 + 9 == info["slices_written"]
    subsets = {}
    for item in slices:
        subsets.setdefault(item.case_id, set()).add(item.subset)
    assert all(len(s) == 1 for s in subsets.values()) and len(subsets) == 3
    split = load_split(out / "split.json")
    assert {split.partitions[0][next(iter(s))][0] for s in subsets.values()} <= set(
        info["volume_names"]
    )
    for item in slices:
        image = Image.open(item.image)
        mask = np.asarray(Image.open(item.mask))
        assert image.mode == "L" and image.size == (64, 64)
        assert mask.shape == (64, 64, 3)
        # Nearest-neighbour resizing: only map colours, no blends.
        colours = {tuple(c) for c in mask.reshape(-1, 3)}
        assert colours <= {(0, 0, 0), (255, 0, 255)}
    # The mask of a slice matches its source labels (rotated 90 degrees counter-clockwise).
    labels = read_labels(msd_dataset / "labelsTr" / "case_001.nii.gz").array
    z = int(np.flatnonzero(labels.any(axis=(0, 1)))[0])
    item = next(s for s in slices if s.case_id == "10002" and s.slice_index == z)
    expected = np.rot90(
        np.asarray(Image.fromarray(labels[:, :, z]).resize((64, 64), Image.Resampling.NEAREST))
    )
    assert np.array_equal(read_png_mask(item.mask), expected)


def test_png_export_can_drop_empty_slices(msd_dataset, tmp_path):
    run_to_end(
        prepare(
            msd_dataset,
            tmp_path / "png",
            export=png_exporter(size=32, fractions=(0.34, 0.33, 0.33), keep_empty=False),
        )
    )
    slices = discover_png(tmp_path / "png")
    assert len(slices) == (7 - 4) + (8 - 4) + (9 - 4)  # the synthetic blob spans z = 2 .. z-3
    assert all(read_png_mask(s.mask).any() for s in slices)


def test_stats_table_and_chart(msd_dataset, tmp_path):
    stats = run_to_end(prepare(msd_dataset, tmp_path / "stats"))
    table = format_stats_table(stats)
    assert "case_002" in table and "3 cases, 24 slices" in table
    chart = Image.open(tmp_path / "stats" / "stats.png")
    assert chart.format == "PNG" and chart.size[0] > 300
    rows = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert [r["slices"] for r in rows] == [7, 8, 9]
    assert (tmp_path / "stats" / "stats.csv").read_text().startswith("case_id,shape")


@pytest.mark.slow
def test_real_cases_statistics_count_every_slice(lasc13, tmp_path):
    stats = run_to_end(prepare(lasc13, tmp_path / "stats", stats=True))
    assert len(stats) == 16
    for case_stats in stats:
        depth = nib.load(lasc13 / "imagesTr" / f"{case_stats.case_id}.nii.gz").shape[2]
        assert case_stats.slices == depth
    manifest = json.loads((lasc13 / "dataset.json").read_text())
    assert {c["case"]: c["la_voxels"] for c in manifest["cases"]} == {
        s.case_id: s.la_voxels for s in stats
    }


@pytest.mark.slow
def test_real_png_export_matches_the_earlier_tools_slices(lasc13, seed_mini_test, tmp_path):
    """Our PNG masks of la_003 (= volume 10001) match the earlier tool's own masks.

    The earlier tool resized the full 320x320 slices; ours are the central 256x256, i.e. the
    central 409.6 pixels of its 512x512 masks.
    """
    one_case = tmp_path / "one"
    for folder in ("imagesTr", "labelsTr"):
        (one_case / folder).mkdir(parents=True)
        (one_case / folder / "la_003.nii.gz").symlink_to(lasc13 / folder / "la_003.nii.gz")
    out = tmp_path / "png"
    run_to_end(prepare(one_case, out, export=png_exporter(fractions=(1.0, 0.0, 0.0))))
    reference_masks = sorted((seed_mini_test / "masks").glob("10001_*.png"))
    assert len(reference_masks) == 5
    for reference_path in reference_masks:
        ours = read_png_mask(out / "train" / "masks" / reference_path.name)
        centre = np.asarray(Image.open(reference_path).convert("RGB"))[51:461, 51:461]
        resized = np.asarray(Image.fromarray(centre).resize((512, 512), Image.Resampling.NEAREST))
        reference = decode_rgb_mask(resized)
        dice = 2 * (ours & reference).sum() / (ours.sum() + reference.sum())
        assert dice > 0.95, (reference_path.name, dice)
