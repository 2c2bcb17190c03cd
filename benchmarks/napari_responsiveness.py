"""napari's event loop while the Segment widget works: the longest stall of a 10 ms timer.

    xvfb-run -a .venv/bin/python benchmarks/napari_responsiveness.py [--runs 3]

A QTimer ticks every 10 ms in napari's main thread; the largest gap between ticks while a
whole-volume segmentation of the bundled sample runs in the widget's worker is the longest
time napari could not respond. The first run (model loading, first Labels layer) is reported
apart from the warm runs. Prints a table and writes
``benchmarks/results/napari_responsiveness.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import napari
    import torch
    from napari_screenshots import event_loop_stall, wait
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    image, _ = viewer.open_sample("napari-lasc", "la_016")
    started = time.perf_counter()
    _, segment = viewer.window.add_plugin_dock_widget("napari-lasc", "Segment left atrium")
    dock_s = time.perf_counter() - started
    segment._image.value = image
    segment._device.value = "cpu"
    first = 1000 * event_loop_stall(app, segment, segment.run)
    warm, seconds = [], []
    for _ in range(args.runs):
        warm.append(1000 * event_loop_stall(app, segment, segment.run))
        seconds.append(segment.summary.seconds)
    segment._current_slice.value = True
    slice_stalls, slice_seconds = [], []
    for _ in range(args.runs):
        slice_stalls.append(1000 * event_loop_stall(app, segment, segment.run))
        slice_seconds.append(segment.summary.seconds)
    wait(app, segment)
    viewer.close()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dock_widget_s": dock_s,
        "first_run_longest_stall_ms": first,
        "whole_volume_longest_stall_ms": warm,
        "whole_volume_s": seconds,
        "current_slice_longest_stall_ms": slice_stalls,
        "current_slice_s": slice_seconds,
    }
    out = args.out or REPO / "benchmarks" / "results" / "napari_responsiveness.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| run | longest stall (ms) | run time (s) |")
    print("|---|---|---|")
    print(f"| first whole volume (model load, first layer) | {first:.0f} | |")
    print(
        f"| whole volume, warm (median of {args.runs}) | {statistics.median(warm):.0f} "
        f"(max {max(warm):.0f}) | {statistics.median(seconds):.2f} |"
    )
    print(
        f"| current slice (median of {args.runs}) | {statistics.median(slice_stalls):.0f} "
        f"(max {max(slice_stalls):.0f}) | {statistics.median(slice_seconds):.3f} |"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
