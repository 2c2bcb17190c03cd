"""Check the release artefacts as a user receives them, not the editable checkout.

Builds the sdist and the wheel (``python -m build``: the wheel is built from the sdist, so a
file the sdist lacks is missing from the wheel too), runs ``twine check``, compares the
wheel's files with the files the package needs (every tracked module of ``src_monai`` and
``napari_lasc``, the npe2 manifest, the bundled model and sample scan) and then, in a fresh
virtual environment holding what a napari user has (CPU torch pinned as ``scripts/setup.sh``
pins it, napari with PyQt6 and napari's plugin manager):

1. installs the wheel through napari's own *Plugins > Install/Uninstall Plugins...* dialog
   (the wheel's path typed into its install field) and screenshots the dialog and the
   Plugins menu afterwards;
2. checks the installed files are the wheel's files, imported from site-packages;
3. from a folder outside the source tree runs ``lasc --version``, ``lasc demo``,
   ``npe2 validate napari-lasc`` and ``npe2 list``;
4. opens the bundled sample through the plugin in a real viewer, segments it with the
   *Segment left atrium* widget and scores it with *Compare with ground truth*.

Needs a display for steps 1 and 4: on a headless machine run it under Xvfb::

    xvfb-run -a -s "-screen 0 1280x900x24" .venv/bin/python scripts/release_check.py \\
        --out runs/release-check --screenshots docs/release

Prints a table and writes ``release_check.json`` to ``--out``. ``tests/test_release.py`` runs
the same steps one by one. The GUI steps run in the fresh environment's Python (this file
with ``gui-install`` / ``gui-sample``), so they import only what the wheel installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DISTRIBUTION = "napari-lasc"
PACKAGES = ("src_monai", "napari_lasc")
# Package data besides the modules (setup.cfg's [options.package_data]).
PACKAGE_DATA = ("napari_lasc/napari.yaml", "src_monai/resources/")
# A napari user's environment: napari with a Qt binding and its plugin manager (napari[all]
# brings the manager too, with optional extras the plugin does not need).
NAPARI_USER_PACKAGES = ("napari[pyqt6]", "napari-plugin-manager")
PLUGIN_MENU_TITLE = "napari LASC left atrium"
PLUGIN_WIDGETS = ("Segment left atrium", "Compare with ground truth", "Train model")
GUI_TIMEOUT_S = 600

log = logging.getLogger("release_check")


class ReleaseCheckError(RuntimeError):
    """A step failed; the message names the step and what it printed."""


def run(command: list[str], *, cwd: Path | None = None, timeout: float = 900) -> str:
    """Run ``command``; its stdout, or ReleaseCheckError with its output."""
    log.info("$ %s", " ".join(str(part) for part in command))
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_environment_without_this_venv(),
    )
    if result.returncode != 0:
        raise ReleaseCheckError(
            f"{' '.join(str(p) for p in command)} failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


def _environment_without_this_venv() -> dict[str, str]:
    # The fresh environment must not see the development one: no VIRTUAL_ENV, no PYTHONPATH.
    environment = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        environment.pop(name, None)
    return environment


# ----------------------------------------------------------------------------- artefacts


def build_distributions(out: Path) -> tuple[Path, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "build", "--outdir", out, REPO], timeout=900)
    (sdist,) = out.glob("napari_lasc-*.tar.gz")
    (wheel,) = out.glob("napari_lasc-*-py3-none-any.whl")
    return sdist, wheel


def twine_check(*paths: Path) -> str:
    return run([sys.executable, "-m", "twine", "check", "--strict", *paths])


def expected_package_files(repo: Path = REPO) -> set[str]:
    """The files a user's install needs: tracked modules of both packages and package data."""
    tracked = run(["git", "-C", repo, "ls-files", *PACKAGES]).split()
    return {
        name
        for name in tracked
        if name.endswith(".py") or any(name.startswith(data) for data in PACKAGE_DATA)
    }


def wheel_package_files(wheel: Path) -> set[str]:
    """The wheel's files other than its own metadata (``*.dist-info/``)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return {name for name in names if not name.split("/")[0].endswith(".dist-info")}


def sdist_files(sdist: Path) -> set[str]:
    """The sdist's files, relative to its top folder."""
    with tarfile.open(sdist) as archive:
        return {
            member.name.split("/", 1)[1]
            for member in archive.getmembers()
            if member.isfile() and "/" in member.name
        }


def wheel_metadata(wheel: Path) -> dict[str, list[str]]:
    """The wheel's METADATA header fields (name -> values), without the description."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    header = text.split("\n\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for line in header.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    fields["Description"] = [text.split("\n\n", 1)[1] if "\n\n" in text else ""]
    return fields


def largest_files(wheel: Path, count: int = 3) -> list[tuple[str, int]]:
    with zipfile.ZipFile(wheel) as archive:
        sizes = [(info.filename, info.file_size) for info in archive.infolist()]
    return sorted(sizes, key=lambda item: -item[1])[:count]


# ----------------------------------------------------------------------------- environment


def torch_requirement() -> str:
    """The CPU torch ``scripts/setup.sh`` installed here, pinned (or ``LASC_TORCH_SPEC``)."""
    if os.environ.get("LASC_TORCH_SPEC"):
        return os.environ["LASC_TORCH_SPEC"]
    import torch

    # "2.13.0+cpu" -> torch==2.13.0, the spec setup.sh uses (pip finds the same CPU wheel).
    return f"torch=={torch.__version__.split('+')[0]}"


@dataclass(frozen=True)
class FreshEnvironment:
    """A virtual environment made from scratch; ``bin`` holds its python and scripts."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def pip_install(self, *requirements: str | Path, timeout: float = 1800) -> str:
        return run(
            [self.python, "-m", "pip", "install", "-q", *requirements],
            cwd=self.root,
            timeout=timeout,
        )

    def has_distribution(self, name: str) -> bool:
        # Run from the environment's folder: from the repository, `python -c` would find the
        # checkout's own napari_lasc.egg-info on sys.path.
        code = f"import importlib.metadata as m; m.version({name!r})"
        result = subprocess.run([str(self.python), "-c", code], capture_output=True, cwd=self.root)
        return result.returncode == 0


def make_napari_user_environment(root: Path) -> FreshEnvironment:
    """A new venv with pinned CPU torch, napari (PyQt6) and napari's plugin manager."""
    run([_base_python(), "-m", "venv", root])
    environment = FreshEnvironment(root)
    environment.pip_install(torch_requirement())
    environment.pip_install(*napari_user_requirements())
    return environment


def napari_user_requirements() -> list[str]:
    """napari pinned to the version the rest of the tests run here (when there is one), so a
    new napari release shows up as a deliberate upgrade, not as a failure of this check."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pinned = f"=={version('napari')}"
    except PackageNotFoundError:
        pinned = ""
    return [f"{NAPARI_USER_PACKAGES[0]}{pinned}", *NAPARI_USER_PACKAGES[1:]]


def _base_python() -> str:
    # The interpreter this venv was made from, so the fresh venv shares nothing with it.
    return str(Path(sys._base_executable)) if hasattr(sys, "_base_executable") else "python3"


def installed_package_files(environment: FreshEnvironment) -> dict[str, object]:
    """Where the installed packages import from, and their files (no bytecode, no metadata)."""
    code = (
        "import importlib.metadata as m, json, napari_lasc, src_monai\n"
        f"dist = m.distribution({DISTRIBUTION!r})\n"
        "files = [str(f) for f in dist.files if not str(f).endswith('.pyc')\n"
        "         and '.dist-info/' not in str(f) and not str(f).startswith('..')]\n"
        "print(json.dumps({'files': sorted(files), 'version': dist.version,\n"
        "    'core': src_monai.__file__, 'plugin': napari_lasc.__file__,\n"
        "    'scripts': [str(f) for f in dist.files if str(f).startswith('..')]}))\n"
    )
    return json.loads(run([environment.python, "-c", code], cwd=environment.root))


# ----------------------------------------------------------------------------- GUI steps


def run_gui_step(environment: FreshEnvironment, step: str, *args: str | Path) -> dict:
    """Run one GUI step of this file in the fresh environment's Python; its JSON answer."""
    output = run(
        [environment.python, Path(__file__).resolve(), step, *args],
        cwd=environment.root,
        timeout=GUI_TIMEOUT_S,
    )
    return json.loads(output.strip().splitlines()[-1])


def _pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _wait_for_worker(app, widget) -> None:
    """Let napari run until the widget's worker is done (it clears ``widget.worker``)."""
    started = time.perf_counter()
    while widget.worker is not None and time.perf_counter() - started < GUI_TIMEOUT_S:
        _pump(app, 0.05)


def gui_install(wheel: str, screenshots: str) -> dict:
    """Install ``wheel`` through napari's plugin dialog, as a user would; screenshot it.

    Runs inside the fresh environment (``gui-install``): types the wheel's path into the
    dialog's install field, presses *Install*, waits for the installer, presses *Refresh*
    and opens *Plugins > napari LASC left atrium*.
    """
    import napari
    from napari_plugin_manager.qt_plugin_dialog import QtPluginDialog
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    out = Path(screenshots)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    window = viewer.window._qt_window
    menu_before = _menu_titles(viewer.window.plugins_menu)
    dialog = QtPluginDialog(window)  # what Plugins > Install/Uninstall Plugins... opens
    dialog.show()
    _pump(app, 0.5)
    QTest.keyClicks(dialog.direct_entry_edit, wheel)  # typed into the install field
    exit_codes: list[int] = []
    loop = QEventLoop()
    dialog.installer.allFinished.connect(lambda codes: (exit_codes.extend(codes), loop.quit()))
    started = time.perf_counter()
    dialog.direct_entry_btn.click()
    QTimer.singleShot(GUI_TIMEOUT_S * 1000, loop.quit)
    loop.exec()
    install_s = time.perf_counter() - started
    dialog.refresh_button.click()
    _pump(app, 2.0)
    dialog.grab().save(str(out / "plugin_dialog_after_install.png"))
    installed_list = [
        dialog.installed_list.item(i).widget.name for i in range(dialog.installed_list.count())
    ]
    # Closing the dialog after an install opens its modal "Please restart napari" dialog:
    # screenshot it and press its Okay, as a user would (the menu entries below are there
    # before any restart).
    restart_notice: list[str] = []
    QTimer.singleShot(1000, lambda: _answer_modal(app, out / "restart_notice.png", restart_notice))
    dialog.close()
    menu_after = _menu_titles(viewer.window.plugins_menu)
    _screenshot_plugins_menu(viewer, app, out / "plugins_menu_after_install.png")
    viewer.close()
    return {
        "exit_codes": exit_codes,
        "install_s": round(install_s, 1),
        "menu_before": menu_before,
        "menu_after": menu_after,
        "dialog_installed_list": installed_list,
        "restart_notice": restart_notice,
    }


def _answer_modal(app, screenshot: Path, texts: list[str]) -> None:
    """Screenshot the open modal dialog, note its labels and accept it."""
    from qtpy.QtWidgets import QLabel

    modal = app.activeModalWidget()
    if modal is None:
        return
    modal.grab().save(str(screenshot))
    texts.extend(" ".join(label.text().split()) for label in modal.findChildren(QLabel))
    modal.accept()


def _menu_titles(menu) -> dict[str, list[str]]:
    """Each entry of a menu, with the titles of its submenu's entries."""
    return {
        action.text(): [sub.text() for sub in action.menu().actions()] if action.menu() else []
        for action in menu.actions()
        if action.text()
    }


def _screenshot_plugins_menu(viewer, app, path: Path) -> None:
    """The main window with Plugins > napari LASC left atrium open (a screen grab)."""
    window = viewer.window._qt_window
    screen = app.primaryScreen().availableGeometry()  # pytest-xvfb's screen is 800x600
    window.resize(min(1100, screen.width()), min(640, screen.height()))
    _pump(app, 0.5)
    menu = viewer.window.plugins_menu
    (plugins,) = [a for a in window.menuBar().actions() if a.menu() is menu]
    window.menuBar().setActiveAction(plugins)
    _pump(app, 0.5)
    (ours,) = [a for a in menu.actions() if a.text() == PLUGIN_MENU_TITLE]
    menu.setActiveAction(ours)
    ours.menu().popup(menu.mapToGlobal(menu.actionGeometry(ours).topRight()))
    _pump(app, 1.0)
    frame = window.frameGeometry()
    app.primaryScreen().grabWindow(0, frame.x(), frame.y(), frame.width(), frame.height()).save(
        str(path)
    )
    ours.menu().hide()
    menu.hide()


def gui_sample() -> dict:
    """Open the bundled sample through the plugin, segment it and compare the result with
    the sample's labels, with the plugin's own widgets (``gui-sample``)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    image, truth = viewer.open_sample(DISTRIBUTION, "la_016")
    _, widget = viewer.window.add_plugin_dock_widget(DISTRIBUTION, PLUGIN_WIDGETS[0])
    widget._image.value = image
    started = time.perf_counter()
    widget.run()
    _wait_for_worker(app, widget)
    segment_s = time.perf_counter() - started
    predicted = viewer.layers[f"{image.name} left atrium"]
    _, compare = viewer.window.add_plugin_dock_widget(DISTRIBUTION, PLUGIN_WIDGETS[1])
    compare._prediction.value, compare._truth.value = predicted, truth
    compare.compare()
    _wait_for_worker(app, compare)
    answer = {
        "layers": [(layer.name, type(layer).__name__) for layer in viewer.layers],
        "image_scale": [float(s) for s in image.scale],
        "labels_scale": [float(s) for s in predicted.scale],
        "image_translate": [float(t) for t in image.translate],
        "labels_translate": [float(t) for t in predicted.translate],
        "truth_visible": bool(truth.visible),
        "result": str(widget._result.value),
        "dice": round(compare.metrics["dice"], 4),
        "segment_s": round(segment_s, 1),
        "plugin_file": __import__("napari_lasc").__file__,
    }
    viewer.close()
    return answer


# ----------------------------------------------------------------------------- whole check


@dataclass
class ReleaseReport:
    wheel: str = ""
    wheel_bytes: int = 0
    sdist_bytes: int = 0
    wheel_files: int = 0
    largest_files: list = field(default_factory=list)
    missing_from_wheel: list = field(default_factory=list)
    extra_in_wheel: list = field(default_factory=list)
    twine: str = ""
    dialog: dict = field(default_factory=dict)
    installed: dict = field(default_factory=dict)
    version_output: str = ""
    demo_output: str = ""
    npe2_validate: str = ""
    npe2_list: str = ""
    sample: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def check_release(out: Path, screenshots: Path) -> ReleaseReport:
    """Every step above, in order, into ``out`` (dist/, env/, work/)."""
    report, clock = ReleaseReport(), time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        report.seconds[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    sdist, wheel = build_distributions(out / "dist")
    report.wheel, report.wheel_bytes, report.sdist_bytes = (
        wheel.name,
        wheel.stat().st_size,
        sdist.stat().st_size,
    )
    report.twine = twine_check(sdist, wheel).strip()
    shipped, needed = wheel_package_files(wheel), expected_package_files()
    report.wheel_files, report.largest_files = len(shipped), largest_files(wheel)
    report.missing_from_wheel = sorted(needed - shipped)
    report.extra_in_wheel = sorted(shipped - needed)
    lap("build and check")
    environment = make_napari_user_environment(out / "env")
    lap("fresh environment")
    report.dialog = run_gui_step(environment, "gui-install", wheel, screenshots)
    lap("install through napari's dialog")
    report.installed = installed_package_files(environment)
    work = out / "work"
    work.mkdir(exist_ok=True)
    report.version_output = run([environment.bin / "lasc", "--version"], cwd=work).strip()
    report.demo_output = run([environment.bin / "lasc", "demo"], cwd=work)
    report.npe2_validate = run([environment.bin / "npe2", "validate", DISTRIBUTION], cwd=work)
    report.npe2_list = run(
        [environment.bin / "npe2", "list", "--fields", "name,version", "--format", "json"], cwd=work
    )
    lap("lasc and npe2 from outside the tree")
    report.sample = run_gui_step(environment, "gui-sample")
    lap("sample and Segment in napari")
    return report


def print_table(report: ReleaseReport) -> None:
    rows = [
        ("wheel", f"{report.wheel}: {report.wheel_bytes / 1e6:.1f} MB, {report.wheel_files} files"),
        ("sdist", f"{report.sdist_bytes / 1e6:.1f} MB"),
        ("largest files", ", ".join(f"{n} {s / 1e6:.1f} MB" for n, s in report.largest_files)),
        ("missing / extra", f"{report.missing_from_wheel} / {report.extra_in_wheel}"),
        ("twine check", re.sub(r"\x1b\[[0-9;]*m", "", report.twine).replace("\n", " ")),
        (
            "dialog install",
            f"exit {report.dialog.get('exit_codes')}, {report.dialog.get('install_s')} s",
        ),
        ("plugins menu", str(report.dialog.get("menu_after", {}).get(PLUGIN_MENU_TITLE))),
        ("lasc --version", report.version_output),
        ("napari Segment", " · ".join(str(report.sample.get("result", "")).splitlines())),
        ("napari Dice", f"{report.sample.get('dice')} against the sample's expert labels"),
        *((f"time: {name}", f"{seconds} s") for name, seconds in report.seconds.items()),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("\nlasc demo (fresh environment, outside the tree):\n" + report.demo_output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "step", nargs="?", default="all", choices=["all", "gui-install", "gui-sample"]
    )
    parser.add_argument("args", nargs="*", help="the GUI step's arguments (internal)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "release-check")
    parser.add_argument("--screenshots", type=Path, default=None, help="default: OUT/screenshots")
    options = parser.parse_args(argv)
    if options.step == "gui-install":
        print(json.dumps(gui_install(*options.args)))
        return 0
    if options.step == "gui-sample":
        print(json.dumps(gui_sample()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if options.out.exists() and any(options.out.iterdir()):
        parser.error(f"{options.out} is not empty: give a new --out folder")
    screenshots = (options.screenshots or options.out / "screenshots").resolve()
    try:
        report = check_release(options.out.resolve(), screenshots)
    except ReleaseCheckError as error:
        log.error("release check failed: %s", error)
        return 1
    (options.out / "release_check.json").write_text(json.dumps(asdict(report), indent=2))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
