"""Screenshots for the README and the plugin's timings, from a real napari session.

Opens the bundled sample (LASC'13 la_016) in napari, segments it with the *Segment left
atrium* widget (whole volume, then the current slice), compares with the ground truth,
adds the uncertainty map and goes to its most uncertain slice, saves the labels through the
plugin's writer, and writes window screenshots to ``docs/``.
Needs a display: on a headless machine run it under Xvfb::

    xvfb-run -a .venv/bin/python scripts/napari_screenshots.py

Prints a table of timings (whole-volume and current-slice segmentation as the widget reports
them, and the longest stall of napari's event loop while the worker ran) and writes them as
JSON next to the screenshots.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-lasc"


def wait(app, widget, stalls: list[float] | None = None) -> None:
    """Let napari run until the widget's worker is done; record event-loop gaps."""
    last = time.perf_counter()
    while widget.worker is not None:
        app.processEvents()
        now = time.perf_counter()
        if stalls is not None:
            stalls.append(now - last)
        last = now
        time.sleep(0.002)
    app.processEvents()


def event_loop_stall(app, widget, start) -> float:
    """Longest gap between ticks of a 10 ms QTimer while ``start()``'s worker runs."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start()
    wait(app, widget)
    timer.stop()
    return float(np.max(np.diff(ticks))) if len(ticks) > 1 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="screenshot folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-lasc")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    image, truth = viewer.open_sample(PLUGIN, "la_016")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment left atrium")
    segment._image.value = image
    segment._device.value = "cpu"

    results: dict[str, float | str] = {}
    # The first run also imports MONAI and loads the model (Python work that holds the GIL)
    # and creates the Labels layer's visual; later runs only predict and update the layer.
    started = time.perf_counter()
    results["first_run_longest_stall_ms"] = 1000 * event_loop_stall(app, segment, segment.run)
    results["whole_volume_first_run_s"] = time.perf_counter() - started
    results["longest_stall_ms"] = 1000 * event_loop_stall(app, segment, segment.run)
    results["whole_volume_s"] = segment.summary.seconds
    results["la_volume_ml"] = segment.summary.volume_ml
    prediction = viewer.layers["la_016 left atrium"]
    busiest = int(np.argmax(np.count_nonzero(prediction.data, axis=(1, 2))))
    viewer.dims.set_current_step(0, busiest)
    app.processEvents()
    viewer.screenshot(str(args.out / "napari_segment.png"), canvas_only=False, flash=False)

    segment._current_slice.value = True
    timings = []
    for _ in range(5):
        segment.run()
        wait(app, segment)
        timings.append(segment.summary.seconds)
    results["current_slice_median_s"] = float(np.median(timings))
    results["current_slice_max_s"] = float(np.max(timings))
    segment._current_slice.value = False

    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare with ground truth")
    compare._prediction.value = prediction
    compare._truth.value = truth
    compare.compare()
    wait(app, compare)
    results["dice"] = compare.metrics["dice"]
    results["hd95_mm"] = compare.metrics["hd95_mm"]
    prediction.visible = False
    viewer.layers.selection.active = viewer.layers[-1]
    app.processEvents()
    viewer.screenshot(str(args.out / "napari_compare.png"), canvas_only=False, flash=False)

    # The uncertainty map over the scan, on the slice where the views disagree most.
    viewer.layers[-1].visible = False  # the error layer
    prediction.visible = True
    prediction.contour = 1  # outline: the map shows through
    segment._uncertainty.value = True
    segment.run()
    wait(app, segment)
    results["uncertainty_run_s"] = segment.summary.seconds
    results["uncertain_volume_pct"] = segment.uncertainty.uncertain_volume_pct
    segment.go_to_most_uncertain_slice()
    viewer.layers.selection.active = viewer.layers["la_016 uncertainty"]
    app.processEvents()
    viewer.screenshot(str(args.out / "napari_uncertainty.png"), canvas_only=False, flash=False)

    with tempfile.TemporaryDirectory() as folder:
        saved = prediction.save(str(Path(folder) / "la_016_left_atrium.nii.gz"), plugin=PLUGIN)
        results["saved_with_writer"] = bool(saved)

    results["machine"] = f"{platform.processor() or platform.machine()}, torch threads " + str(
        torch.get_num_threads()
    )
    results["date"] = time.strftime("%Y-%m-%d")
    (args.out / "napari_timings.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    names = ("napari_segment.png", "napari_compare.png", "napari_uncertainty.png")
    print("screenshots: " + ", ".join(str(args.out / name) for name in names))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
