"""Writing files so that an interrupted run never leaves a half-written one behind.

Everything goes to a temporary name in the same folder and is renamed into place when complete
(``os.replace`` is atomic on one filesystem); on an error or Ctrl-C the temporary file is removed
and whatever was at ``path`` before is untouched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` keeps an extension some writers need (``.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1, durable: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically.

    ``durable=True`` also flushes and fsyncs the file before the rename and the folder after it:
    the rename alone survives a killed process, the fsyncs make the new state survive a power
    cut too (user data such as superpatch labels).
    """
    text = json.dumps(obj, indent=indent, default=str)
    if not durable:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_folder(Path(path).parent)
    return Path(path)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
