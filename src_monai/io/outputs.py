"""Outputs that can never lose data: planned and checked before any work, written as units,
summaries merged rather than rewritten.

A command that writes one result per input (``lasc infer``) first plans every file it will
write (:class:`CaseOutputs`), then :func:`check_planned_outputs` refuses, before any compute,
plans in which an output would replace an input, two inputs would write the same file, or an
existing result would be replaced without ``--overwrite``. Each case's files are written by
:func:`write_unit`: all to temporary names first, renamed only when every one is complete, so
a failure leaves the case's earlier files as they were. Tables of one row per input
(``summary.csv``) go through :func:`merge_rows`, under a lock, so earlier runs' rows and a
concurrent run's rows survive.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src_monai.errors import LascError, OutputExistsError
from src_monai.io.files import (
    PARTIAL_PREFIX,
    partial_owner,
    partial_path,
    process_alive,
    write_text,
)
from src_monai.io.tables import csv_text, read_csv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseOutputs:
    """Every file one input's result consists of: derived files first, the main file last
    (its presence marks the case complete)."""

    source: Path
    main: Path
    derived: tuple[Path, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.derived, self.main)

    @property
    def complete(self) -> bool:
        return all(path.exists() for path in self.files)

    @property
    def started(self) -> bool:
        return any(path.exists() for path in self.files)


def _key(path: Path) -> Path:
    """One spelling per file: absolute, symbolic links and ``..`` resolved."""
    return Path(os.path.realpath(path))


def check_planned_outputs(
    plans: Sequence[CaseOutputs],
    *,
    overwrite: bool,
    skip_existing: bool,
    extra_outputs: Sequence[Path] = (),
) -> None:
    """Refuse, before any work, a plan that would lose data (one line naming the files).

    An input given twice, an output that is an input (any case's, e.g. ``--out`` equal to the
    input folder), two inputs writing one file; existing results unless ``overwrite`` or
    ``skip_existing``. ``extra_outputs``: files the command writes besides the cases'
    (``summary.csv``), which must not be inputs either.
    """
    sources: dict[Path, Path] = {}
    for plan in plans:
        key = _key(plan.source)
        if key in sources:
            raise LascError(plan.source, f"given twice (also as {sources[key]}): give it once")
        sources[key] = plan.source
    writers: dict[Path, Path] = {}
    for plan in plans:
        for output in (plan.main, *plan.derived):
            key = _key(output)
            if key in sources:
                also = "" if Path(sources[key]) == output else f" (the input {sources[key]})"
                raise LascError(
                    output,
                    f"is an input{also} and would be replaced by an output: choose an --out "
                    "folder that holds no input",
                )
            if key in writers:
                raise LascError(
                    output,
                    f"both {writers[key]} and {plan.source} would be written here: rename one "
                    "input or segment them into separate --out folders",
                )
            writers[key] = plan.source
    for output in extra_outputs:
        if _key(output) in sources:
            raise LascError(output, f"would replace the input {sources[_key(output)]}")
    if overwrite or skip_existing:
        return
    existing = [path for plan in plans for path in plan.files if path.exists()]
    if existing:
        raise OutputExistsError(
            existing[0],
            f"already exists ({len(existing)} output files exist; use --overwrite to replace "
            "them or --skip-existing to keep complete results)",
        )


def write_unit(writers: Mapping[Path, Callable[[Path], None]], *, overwrite: bool) -> None:
    """Write several files as one unit: each writer fills a temporary path beside its file;
    only when all succeeded are they renamed, in the mapping's order (the main file last).
    Any failure removes the temporaries and leaves every existing file as it was."""
    if not overwrite:
        for path in writers:
            if path.exists():
                raise OutputExistsError(path, "already exists (use --overwrite to replace it)")
    temporaries = {path: partial_path(path) for path in writers}
    for folder in dict.fromkeys(path.parent for path in writers):
        try:
            folder.mkdir(parents=True, exist_ok=True)  # a new folder appears with its first file
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise LascError(folder, f"could not be created ({reason})") from exc
    try:
        for path, write in writers.items():
            write(temporaries[path])
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except OSError as exc:
        _remove(temporaries.values())
        reason = exc.strerror or type(exc).__name__
        raise LascError(path, f"could not be written ({reason}); earlier files kept") from exc
    except BaseException:
        _remove(temporaries.values())
        raise


def _remove(paths) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock shared by every process merging a table in ``folder``: POSIX
    ``flock`` on the folder itself, so no lock file is left in a user's output folder (where
    there is no ``flock``, e.g. Windows, the rows are still merged, without the lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on this platform
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


CLAIM = "claim-"  # after PARTIAL_PREFIX and the pid: a case a run is segmenting


@contextlib.contextmanager
def claimed(plan: CaseOutputs, *, replace: bool) -> Iterator[None]:
    """This run segments ``plan``'s case: refused when another live run is segmenting it
    into the same folder, or (without ``replace``) when its result appeared since the
    outputs were checked; the claim (``.partial-<pid>-claim-<labels>``, removed like any
    partial file of a killed run) is dropped when done."""
    folder, name = plan.main.parent, plan.main.name
    mine = partial_path(plan.main, CLAIM)
    # The folders made here go again if the first case fails: a failed run leaves none.
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        for other in folder.glob(f"{PARTIAL_PREFIX}*-{CLAIM}{name}"):
            pid = partial_owner(other)
            if other != mine and pid is not None and process_alive(pid):
                raise LascError(
                    plan.main,
                    f"another lasc infer run (process {pid}) is segmenting {plan.source.name} "
                    "into this folder: wait for it, or choose another --out",
                )
        if not replace and plan.started:
            raise OutputExistsError(
                plan.main, "was written by another run since this one started (use --overwrite)"
            )
        mine.touch()
    try:
        yield
    except BaseException:
        mine.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another run's files are there
            for made_folder in made:  # innermost first
                made_folder.rmdir()
        raise
    mine.unlink(missing_ok=True)


def merge_rows(path: Path, rows: Sequence[Mapping[str, Any]], key: str) -> list[dict[str, str]]:
    """Merge ``rows`` into the CSV at ``path`` by the ``key`` column: earlier rows of other
    keys kept in their order, a row of the same key replaced; written atomically under
    :func:`folder_lock`. Returns the table as written."""
    with folder_lock(path.parent):
        try:
            table = read_csv(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LascError(path, f"cannot be merged into ({exc}); move it away") from exc
        if table and key not in table[0]:
            raise LascError(path, f"has no {key!r} column: not a table this command wrote")
        new = {str(row[key]): {k: str(v) for k, v in row.items()} for row in rows}
        merged = [row for row in table if row.get(key) not in new] + list(new.values())
        write_text(path, csv_text(merged), overwrite=True)
    return merged
