"""Run a core job (a generator of :class:`~src_monai.progress.Progress`) in a napari worker.

The same generator the CLI drives with tqdm runs here in a ``thread_worker``: its progress
goes to napari's activity bar and the widget's own bar, its result back to the main thread.
An expected failure (:class:`~src_monai.errors.LascError`: bad input, missing model...) ends
the job with a one-line notification instead of a traceback; Cancel aborts at the next yield
and nothing is added to the viewer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from src_monai.errors import LascError
from src_monai.progress import Job, Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failed:
    """A job that stopped on an expected error; ``message`` names the file and the problem."""

    message: str


def _guarded(make_job: Callable[[], Job[Any]], description: str) -> Job[Any]:
    try:
        return (yield from make_job())
    except LascError as exc:
        return Failed(str(exc))
    except Exception as exc:
        # Anything else is a bug or the machine (e.g. CUDA out of memory): the traceback
        # goes to the log, the user gets one line. Returned, not raised: superqt drops a
        # worker's RuntimeError (torch raises those) without emitting `finished`, which
        # would leave the widget "running" for ever.
        logger.exception("%s failed", description)
        first_line = (str(exc).splitlines() or [""])[0]
        return Failed(f"{description} failed: {type(exc).__name__}: {first_line}")


class _InOrder:
    """napari's activity bar processes Qt events while it redraws, so a worker's next signals
    (its result, its end) can be delivered inside a progress report, before the widget has
    seen that report; they wait here until the report is handled, in the worker's order."""

    def __init__(self) -> None:
        self._reporting = False
        self._waiting: list[Callable[[], None]] = []

    @contextmanager
    def reporting(self) -> Iterator[None]:
        self._reporting = True
        try:
            yield
        finally:
            self._reporting = False
        while self._waiting:
            self._waiting.pop(0)()

    def after_reports(self, action: Callable[..., None]) -> Callable[..., None]:
        def deliver(*args: Any) -> None:
            if self._reporting:
                self._waiting.append(lambda: action(*args))
            else:
                action(*args)

        return deliver


def start_job(
    make_job: Callable[[], Job[Any]],
    *,
    description: str,
    on_progress: Callable[[Progress], None],
    on_done: Callable[[Any], None],
    on_cancelled: Callable[[], None],
    on_finished: Callable[[], None],
):
    """Start ``make_job()`` in a worker thread; callbacks run in the main thread.

    ``make_job`` itself is called in the worker, so slow set-up (loading a model) does not
    block napari either. Returns the started worker (``worker.quit()`` cancels).
    """
    from napari.qt.threading import create_worker
    from napari.utils import progress
    from napari.utils.notifications import show_error

    bar = progress(total=0, desc=description)
    order = _InOrder()

    def progressed(report: Progress) -> None:
        with order.reporting():
            if bar.total != report.total:
                bar.total = report.total
            bar.set_description(f"{description}: {report.message}")
            bar.update(report.done - bar.n)
            on_progress(report)

    def returned(result: Any) -> None:
        if isinstance(result, Failed):
            show_error(result.message)
            return
        on_done(result)

    def finished() -> None:
        bar.close()
        on_finished()

    worker = create_worker(_guarded, make_job, description, _start_thread=False)
    worker.yielded.connect(progressed)
    worker.returned.connect(order.after_reports(returned))
    worker.aborted.connect(order.after_reports(on_cancelled))
    worker.finished.connect(order.after_reports(finished))
    worker.start()
    return worker
