"""Packaging: the npe2 manifest, the console script, and a core free of GUI imports."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points, metadata
from pathlib import Path


def test_npe2_manifest_validates_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2), "validate", "napari-lasc", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_distribution_metadata():
    meta = metadata("napari-lasc")
    assert "Framework :: napari" in meta.get_all("Classifier")
    manifests = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-lasc"]
    assert [ep.value for ep in manifests] == ["napari_lasc:napari.yaml"]
    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "lasc"]
    assert [ep.value for ep in scripts] == ["src_monai.cli:main"]


def test_core_imports_without_napari_or_qt():
    code = (
        "import sys\n"
        "import importlib, pkgutil, src_monai\n"
        "for m in pkgutil.walk_packages(src_monai.__path__, 'src_monai.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'})\n"
        "print(gui)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
