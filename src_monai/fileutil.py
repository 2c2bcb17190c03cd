"""Crash-safe file writing: every output is written under a temporary name, then renamed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import LascError, OutputExistsError


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
    temporary = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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


def ensure_empty_folder(folder: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Create ``folder``, or accept it if it is empty; a non-empty one needs ``overwrite``.

    Nothing is ever deleted: with ``overwrite`` the caller writes over same-named files.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(folder, "exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(
            folder, "folder is not empty (use --overwrite to write into it; nothing is deleted)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LascError(folder, f"cannot create output folder ({exc.strerror})") from exc
    if not os.access(folder, os.W_OK):
        raise LascError(folder, "output folder is not writable")
    return folder
