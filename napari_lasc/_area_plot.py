"""A small plot of the LA area per slice under the Segment widget; a click goes to the slice."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class AreaCurve:
    """Matplotlib canvas (Qt) showing area (mm²) against slice; clicking calls ``go_to``."""

    def __init__(self, go_to: Callable[[int], None]) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=90, layout="tight")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.axes = self.figure.add_subplot()
        self.slices = np.zeros(0)
        self.areas = np.zeros(0)
        self._go_to = go_to
        self.canvas.mpl_connect("button_press_event", self._clicked)
        self.canvas.setVisible(False)

    def show(self, areas_mm2: Sequence[float], title: str) -> None:
        self.slices = np.arange(len(areas_mm2))
        self.areas = np.asarray(areas_mm2, dtype=float)
        self.axes.clear()
        self.axes.plot(self.slices, self.areas, color="#c000c0", linewidth=1.5)
        self.axes.fill_between(self.slices, self.areas, color="#c000c0", alpha=0.2)
        self.axes.set_xlabel("slice (click to go there)", fontsize=8)
        self.axes.set_ylabel("LA area (mm²)", fontsize=8)
        self.axes.set_title(title, fontsize=8)
        self.axes.tick_params(labelsize=7)
        self.canvas.setVisible(True)
        self.canvas.draw_idle()

    def _clicked(self, event) -> None:
        if event.inaxes is not self.axes or event.xdata is None or not self.slices.size:
            return
        self._go_to(int(np.clip(round(event.xdata), 0, self.slices.size - 1)))
