"""Tables and figures written the one way: atomically, so a reader never sees half a file.

Every CSV the package writes (summaries, metrics, statistics) and every figure (curves,
previews, charts) goes through these two functions.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from src_monai.io.files import atomic_destination, write_text


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text; columns in first-seen order unless given (missing cells empty)."""
    rows = list(rows)
    names = list(columns) if columns else list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a CSV file this package wrote (an absent file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


def write_csv(
    path: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write ``rows`` (dicts) as a CSV file, atomically."""
    return write_text(path, csv_text(rows, columns), overwrite=overwrite)


def save_figure(
    path: str | os.PathLike[str], figure: Any, *, dpi: int = 100, overwrite: bool = True
) -> Path:
    """Save a Matplotlib figure as PNG, atomically."""
    with atomic_destination(path, overwrite=overwrite) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    return Path(path)


def new_figure(width: float, height: float):
    """A Matplotlib figure drawn off-screen (Agg): no GUI backend is ever touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure
