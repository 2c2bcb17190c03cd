"""Progress reports of long jobs.

Long work is a generator that yields :class:`Progress` and returns its result; the CLI drives
it with a tqdm bar, napari with a ``thread_worker``, tests by exhausting it. One code path.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps finished; ``message`` says what was just done.

    ``metrics`` carries figures a front end may plot live (e.g. a training epoch's loss and
    validation Dice).
    """

    message: str
    done: float
    """Steps finished; a fraction within a step when a front end can show it (a file's
    batches of slices in ``lasc infer``)."""
    total: int
    metrics: Mapping[str, float] = field(default_factory=dict)


Job = Generator[Progress, None, T]


def run_to_end(job: Job[T]) -> T:
    """Exhaust a job without reporting progress and return its result."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value
