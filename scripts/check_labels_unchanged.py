"""Check that ``lasc infer`` still gives the same labels, voxel for voxel, on real scans.

Runs the ``lasc infer`` command (a subprocess: the whole user path) with the bundled model, in
float32, on every scan in a folder and compares a SHA-256 of each output's voxels and affine with a
recorded reference. Record the reference before a change that must not alter predictions
(a refactor), compare after it::

    python scripts/check_labels_unchanged.py ../shared/data/lasc13/imagesTr --record
    python scripts/check_labels_unchanged.py ../shared/data/lasc13/imagesTr

The reference names the model file's hash: a new bundled model (a deliberate change of
predictions) needs a new reference, and the check says so instead of reporting differences.
Exit 0 when every case matches, 1 when any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger("check_labels_unchanged")

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "labels_sha256.json"


def label_digest(path: Path) -> str:
    """SHA-256 of a label file's voxels (as uint8, file axis order) and its affine."""
    image = nib.load(str(path))
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(np.asarray(image.dataobj, dtype=np.uint8)).tobytes())
    digest.update(np.asarray(image.affine, dtype=np.float64).tobytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundled_model() -> Path:
    from src_monai.model.files import BUNDLED_MODEL  # the one name of the shipped file

    return BUNDLED_MODEL


def infer_digests(scans: list[Path], extra_args: list[str]) -> dict[str, str]:
    """Run ``lasc infer`` once over ``scans``; the digest of each output by scan name."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        # float32: bfloat16 (lasc infer's default where the CPU has it) moves a few dozen
        # boundary voxels between CPUs with and without it; the reference must not.
        command = [
            *[sys.executable, "-m", "src_monai.cli", "infer", *map(str, scans)],
            *["--precision", "float32"],
        ]
        subprocess.run([*command, "--out", str(out), *extra_args], check=True)
        return {scan.name: label_digest(out / scan.name) for scan in scans}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path, help="folder of .nii.gz scans")
    parser.add_argument("--record", action="store_true", help="write the reference")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--cases", nargs="*", help="only these file names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scans = sorted(args.scans.glob("*.nii.gz"))
    if args.cases:
        scans = [s for s in scans if s.name in set(args.cases)]
    model = file_digest(bundled_model())
    digests = infer_digests(scans, ["--device", "cpu"])
    if args.record:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(
            json.dumps({"model_sha256": model, "labels": digests}, indent=1) + "\n"
        )
        logger.info("recorded %d cases in %s", len(digests), args.reference)
        return 0
    reference = json.loads(args.reference.read_text())
    if reference["model_sha256"] != model:
        logger.error("the reference was recorded for another bundled model: record it anew")
        return 1
    differing = [name for name, d in digests.items() if reference["labels"].get(name) != d]
    for name in digests:
        logger.info("%-16s %s", name, "differs" if name in differing else "identical")
    logger.info("%d of %d cases identical", len(digests) - len(differing), len(digests))
    return 1 if differing else 0


if __name__ == "__main__":
    raise SystemExit(main())
