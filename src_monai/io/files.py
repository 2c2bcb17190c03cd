"""Crash-safe file writing: every output is written under a temporary name, then renamed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from src_monai.errors import LascError, OutputExistsError


@contextmanager
def atomic_destination(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    A crash or an exception inside the block leaves no partial file under the final name,
    and removes the temporary one. The temporary name keeps the final suffixes, so writers
    that choose the format from the extension (nibabel, SimpleITK, Pillow) still work.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path, "already exists (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise LascError(path.parent, "output folder does not exist")
    temporary = path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        # Disk full, file too large, folder gone: the environment, not a bug. One line.
        temporary.unlink(missing_ok=True)
        reason = exc.strerror or type(exc).__name__
        raise LascError(path, f"could not be written ({reason}); nothing was left") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


PARTIAL_PREFIX = ".partial-"


def current_umask() -> int:
    """The process's file-creation mask (read by setting it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed runs (SIGKILL, power loss) left in ``folder``.

    Only ``.partial-<pid>-*`` files whose process is gone are removed: they are our own
    unfinished writes, never a result.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for candidate in folder.glob(f"{PARTIAL_PREFIX}*"):
        owner = partial_owner(candidate)
        if owner is None or process_alive(owner):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def partial_path(path: Path, tag: str = "") -> Path:
    """This process's temporary file for ``path``, beside it: ``.partial-<pid>-<tag><name>``
    (removed by :func:`remove_stale_partials` once the process is gone)."""
    return path.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{tag}{path.name}")


def partial_owner(path: Path) -> int | None:
    """The process a :func:`partial_path` file belongs to (``None``: not such a file)."""
    if not path.name.startswith(PARTIAL_PREFIX):
        return None
    pid_text = path.name[len(PARTIAL_PREFIX) :].split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and prove it takes files (before any long work starts).

    A probe file is written and removed: permission bits alone say nothing for root, nor for
    read-only or full file systems.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(folder, "exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{PARTIAL_PREFIX}{os.getpid()}-probe"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LascError(folder, f"output folder is not writable ({reason})") from exc
    return folder


def creatable_folder(folder: str | os.PathLike[str]) -> Path:
    """Check that ``folder`` exists and takes files, or could be created, without creating it
    (a probe file in the nearest existing folder is written and removed)."""
    folder = Path(folder)
    if folder.is_dir():
        return writable_folder(folder)
    if folder.exists():
        raise OutputExistsError(folder, "exists and is not a folder")
    existing = next((p for p in folder.absolute().parents if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise LascError(folder, f"is not writable: {existing} is not a folder")
    try:
        writable_folder(existing)
    except LascError as exc:
        raise LascError(folder, f"cannot be created in {existing} ({exc.problem})") from exc
    return folder


def write_json(path: str | os.PathLike[str], payload: Any, *, overwrite: bool = False) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_destination(path, overwrite=overwrite) as temporary:
        temporary.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` atomically."""
    with atomic_destination(path, overwrite=overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _refuse_occupied(folder: Path, *, overwrite: bool) -> Path:
    """A file where the folder should be, or a non-empty folder without ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(folder, "exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(
            folder, "folder is not empty (use --overwrite to write into it; nothing is deleted)"
        )
    return folder


def check_empty_folder(folder: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """What :func:`ensure_empty_folder` checks, creating nothing: before the work, so that a
    refused input leaves no empty report folder behind."""
    return creatable_folder(_refuse_occupied(Path(folder), overwrite=overwrite))


def ensure_empty_folder(folder: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Create ``folder``, or accept it if it is empty; a non-empty one needs ``overwrite``.

    Nothing is ever deleted: with ``overwrite`` the caller writes over same-named files.
    """
    return writable_folder(_refuse_occupied(Path(folder), overwrite=overwrite))
