"""What outlives one click of the Segment widget: the model in memory, the scan's prepared
session and the one running worker. It knows no controls: the widget passes values in and
says what to do with the results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from src_monai.data.crops import AtriumBox
from src_monai.inference.predictor import Predictor
from src_monai.inference.session import InteractiveSession, VolumeResult
from src_monai.progress import Job, Progress

from ._layers import from_layer_axes, layer_axis, layer_geometry, stated_orientation
from ._results import SliceResult
from ._worker import start_job


def _cached_predictor() -> Callable[[Path | None, str], Predictor]:
    cache: dict[tuple[str, float, str], Predictor] = {}

    def get(path: Path | None, device: str) -> Predictor:
        stamp = path.stat().st_mtime if path is not None and path.exists() else 0.0
        key = (str(path), stamp, device)
        if key not in cache:
            cache.clear()  # one model in memory at a time
            cache[key] = Predictor.from_checkpoint(path, device=device)
        return cache[key]

    return get


load_predictor = _cached_predictor()


class SegmentController:
    """One worker at a time, and the session of the last segmented layer."""

    def __init__(self) -> None:
        self.worker: Any = None
        self._session: tuple[tuple, InteractiveSession] | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def session(self) -> InteractiveSession | None:
        """The last run's session (its predictor, slice axis and box)."""
        return None if self._session is None else self._session[1]

    def session_for(self, layer: Any, predictor: Predictor) -> InteractiveSession:
        """The layer's session, kept while its data and the model stay the same: the scan is
        prepared once, and slice after slice answers in a fraction of a second."""
        key = (id(layer), id(layer.data), layer.data.shape, id(predictor))
        if self._session is None or self._session[0] != key:
            affine, axcodes = stated_orientation(layer)
            session = InteractiveSession(
                predictor,
                from_layer_axes(np.asarray(layer.data)),
                layer_geometry(layer).spacing,
                affine=affine,
                axcodes=axcodes,
            )
            self._session = (key, session)
        return self._session[1]

    def segmentation(
        self,
        layer: Any,
        model_path: Path | None,
        device: str,
        box: AtriumBox | None,
        point: np.ndarray | None,
        choices: dict[str, Any],
    ) -> Callable[[], Job[VolumeResult | SliceResult]]:
        """The job that segments ``layer``: the whole volume, or with ``point`` (napari data
        coordinates) the slice under it; the model loads, and the scan is prepared and
        localised, inside the worker."""

        def job():
            session = self.session_for(layer, load_predictor(model_path, device))
            session.set_box(box)
            options = session.predictor.options(**choices)
            if point is None:
                return (yield from session.segment_volume(options))
            axis = layer_axis(session.slice_axis)
            index = int(np.clip(np.round(point[axis]), 0, session.slice_count - 1))
            labels = yield from session.segment_slice(index, options)
            return SliceResult(index, labels)

        return job

    def start(
        self,
        make_job: Callable[[], Job[Any]],
        *,
        description: str,
        on_running: Callable[[bool], None],
        on_progress: Callable[[Progress], None],
        on_done: Callable[[Any], None],
        on_cancelled: Callable[[], None],
    ) -> None:
        """Run ``make_job`` in a worker unless one is running; ``on_running`` is told when it
        starts and ends (whatever the end)."""
        if self.running:
            return

        def finished() -> None:
            self.worker = None
            on_running(False)

        on_running(True)
        self.worker = start_job(
            make_job,
            description=description,
            on_progress=on_progress,
            on_done=on_done,
            on_cancelled=on_cancelled,
            on_finished=finished,
        )

    def cancel(self) -> None:
        """Stop the running job at its next progress report; nothing is added or changed."""
        if self.worker is not None:
            self.worker.quit()
