"""The package as users get it: the wheel built from the sdist, installed non-editable into a
fresh environment through napari's own plugin dialog, and run from outside the source tree.

Every other test runs on the editable checkout, where a file missing from the wheel (model,
sample scan, manifest) would go unnoticed. These tests share one build and one fresh
environment (CPU torch pinned as scripts/setup.sh pins it, napari with PyQt6 and its plugin
manager), made with the steps of ``scripts/release_check.py``. They need PyPI (the build's
isolated environment and the fresh environment's packages), as CI's setup does.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from pathlib import Path

import pytest

import src_monai

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.gui]

log = logging.getLogger(__name__)


def _load_release_check():
    spec = importlib.util.spec_from_file_location(
        "release_check", REPO / "scripts" / "release_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


release = _load_release_check()


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> tuple[Path, Path]:
    return release.build_distributions(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def napari_user_environment(tmp_path_factory):
    return release.make_napari_user_environment(tmp_path_factory.mktemp("fresh") / "env")


@pytest.fixture(scope="module")
def installed(napari_user_environment, distributions):
    """The fresh environment with the wheel in it (installed by the dialog test when it ran)."""
    if not napari_user_environment.has_distribution(release.DISTRIBUTION):
        napari_user_environment.pip_install(distributions[1])
    return napari_user_environment


# ----------------------------------------------------------------------------- artefacts


def test_both_distributions_pass_twine_and_carry_the_version(distributions):
    sdist, wheel = distributions
    output = release.twine_check(sdist, wheel)
    assert output.count("PASSED") == 2, output
    assert wheel.name == f"napari_lasc-{src_monai.__version__}-py3-none-any.whl"
    assert sdist.name == f"napari_lasc-{src_monai.__version__}.tar.gz"


def test_wheel_holds_what_the_package_needs_and_nothing_else(distributions, record_property):
    _, wheel = distributions
    shipped, needed = release.wheel_package_files(wheel), release.expected_package_files()
    assert shipped - needed == set(), "files in the wheel the package does not need"
    assert needed - shipped == set(), "files the package needs missing from the wheel"
    for resource in (
        "napari_lasc/napari.yaml",
        "src_monai/resources/left_atrium.safetensors",
        "src_monai/resources/sample_la_016.nii.gz",
        "src_monai/resources/sample_la_016_label.nii.gz",
    ):
        assert resource in shipped
    assert {name.split("/")[0] for name in shipped} == {"src_monai", "napari_lasc"}
    size = wheel.stat().st_size
    record_property("wheel_bytes", size)
    log.info("wheel %s: %.1f MB, %d files", wheel.name, size / 1e6, len(shipped))
    # The model (10.1 MB: the 3D stage 2's 4.8 M weights in fp16, which zip cannot shrink)
    # and the sample scan (6.3 MB) are nearly all of it.
    assert size < 18e6


def test_sdist_builds_the_wheel_and_leaves_the_tests_in_the_repository(distributions):
    sdist, _ = distributions
    files = release.sdist_files(sdist)
    assert release.expected_package_files() <= files
    for document in ("README.md", "LICENSE", "DATA_LICENSE.md", "CHANGELOG.md"):
        assert document in files
    assert ".napari-hub/DESCRIPTION.md" in files  # the wheel's description is read from it
    assert not any(name.startswith(("tests/", "runs/", "docs/", "benchmarks/")) for name in files)


def test_metadata_has_what_the_napari_hub_shows(distributions):
    _, wheel = distributions
    meta = release.wheel_metadata(wheel)
    assert meta["Version"] == [src_monai.__version__]
    assert "napari" in meta["Summary"][0] and "left atrium" in meta["Summary"][0]
    assert meta["Author"] == ["the napari-lasc developers"]
    assert meta["License"] == ["BSD-3-Clause AND CC-BY-SA-4.0"]
    assert set(meta["License-File"]) == {"LICENSE", "DATA_LICENSE.md"}
    assert "Framework :: napari" in meta["Classifier"]
    urls = dict(url.split(", ", 1) for url in meta["Project-URL"])
    assert {"Source Code", "Bug Tracker", "Documentation", "User Support"} <= set(urls)
    description = meta["Description"][0]
    for section in ("## Supported data", "## Installing", "## Licence and attribution"):
        assert section in description
    assert "CC-BY-SA 4.0" in description and "Not for clinical use" in description


def test_description_images_point_at_files_in_this_repository(distributions):
    """The hub and PyPI need absolute image URLs: each must name a file the repository has."""
    _, wheel = distributions
    meta = release.wheel_metadata(wheel)
    source = dict(url.split(", ", 1) for url in meta["Project-URL"])["Source Code"]
    raw_prefix = source.replace("https://github.com/", "https://raw.githubusercontent.com/")
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", meta["Description"][0])
    assert images, "the description shows no screenshot"
    for url in images:
        assert url.startswith(raw_prefix + "/main/"), url
        assert (REPO / url.removeprefix(raw_prefix + "/main/")).is_file(), url


# ----------------------------------------------------------------------------- installed


def test_napari_plugin_dialog_installs_the_wheel(
    napari_user_environment, distributions, tmp_path_factory
):
    """Plugins > Install/Uninstall Plugins..., the wheel's path typed in, Install."""
    screenshots = tmp_path_factory.mktemp("screenshots")
    assert not napari_user_environment.has_distribution(release.DISTRIBUTION)
    answer = release.run_gui_step(
        napari_user_environment, "gui-install", distributions[1], screenshots
    )
    assert answer["exit_codes"] == [0]
    assert release.PLUGIN_MENU_TITLE not in answer["menu_before"]
    assert answer["menu_after"][release.PLUGIN_MENU_TITLE] == list(release.PLUGIN_WIDGETS)
    assert "napari-lasc" in answer["dialog_installed_list"]
    assert any("restart" in text.lower() for text in answer["restart_notice"])
    for name in ("plugin_dialog_after_install", "plugins_menu_after_install", "restart_notice"):
        assert (screenshots / f"{name}.png").stat().st_size > 2000


def test_installed_files_are_the_wheels_and_import_from_site_packages(installed, distributions):
    answer = release.installed_package_files(installed)
    assert set(answer["files"]) == release.wheel_package_files(distributions[1])
    assert answer["version"] == src_monai.__version__
    site_packages = installed.root / "lib"
    for module in (answer["core"], answer["plugin"]):
        assert Path(module).is_relative_to(site_packages), module
    assert any(script.endswith("bin/lasc") for script in answer["scripts"])


def test_lasc_demo_and_version_run_outside_the_tree(installed, tmp_path):
    version = release.run([installed.bin / "lasc", "--version"], cwd=tmp_path)
    assert version.strip() == f"lasc {src_monai.__version__}"
    output = release.run([installed.bin / "lasc", "demo"], cwd=tmp_path)
    log.info("lasc demo in the fresh environment:\n%s", output)
    volume = float(re.search(r"LA volume ([\d.]+) mL", output).group(1))
    dice = float(re.search(r"Dice ([\d.]+)", output).group(1))
    assert 80 < volume < 130 and dice > 0.9
    assert "la_016 is a training case of this model" in output
    demo = tmp_path / "lasc-demo"
    for name in ("la_016_prediction.nii.gz", "overlay.png", "summary.json", "summary.txt"):
        assert (demo / name).is_file()
    assert json.loads((demo / "summary.json").read_text())


def test_npe2_validates_the_installed_manifest_and_lists_its_version(installed, tmp_path):
    validation = release.run(
        [installed.bin / "npe2", "validate", release.DISTRIBUTION, "--imports"], cwd=tmp_path
    )
    assert "valid" in validation
    listed = json.loads(
        release.run(
            [installed.bin / "npe2", "list", "--fields", "name,version", "--format", "json"],
            cwd=tmp_path,
        )
    )
    assert {"name": "napari-lasc", "version": src_monai.__version__} in listed


def test_napari_opens_the_installed_sample_and_segments_it(installed):
    answer = release.run_gui_step(installed, "gui-sample")
    assert answer["layers"][:3] == [
        ["la_016", "Image"],
        ["la_016 ground truth", "Labels"],
        ["la_016 left atrium", "Labels"],
    ]
    assert answer["labels_scale"] == answer["image_scale"]
    assert answer["labels_translate"] == answer["image_translate"]
    assert not answer["truth_visible"]
    assert "LA volume" in answer["result"] and answer["dice"] > 0.9
    assert Path(answer["plugin_file"]).is_relative_to(installed.root)
