"""Writing files so that an interrupted run never leaves a half-written one behind.

Everything goes to a temporary name in the same folder and is renamed into place when complete
(``os.replace`` is atomic on one filesystem); on an error or Ctrl-C the temporary file is removed
and whatever was at ``path`` before is untouched. Writers that share a file take :func:`file_lock` on it
(the label sidecars and the project file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import NemesisInputError


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


def os_problem(exc: OSError) -> str:
    """A few words for why an OS call failed: full disk, read-only folder, else the OS's own words."""
    import errno

    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "the folder is read-only"
    return exc.strerror or exc.__class__.__name__


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock on ``.<name>.lock`` beside ``path`` (POSIX ``flock``; elsewhere none).

    A lock file that cannot be created (read-only folder, full disk) is a one-line
    :class:`NemesisInputError` naming it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one writer per sidecar is assumed
        yield
        return
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise NemesisInputError(f"{lock}: cannot create the lock file for {path.name} ({os_problem(exc)}); "
                                "nothing was written") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # under the lock no writer is half-way: a temporary file left now is from a killed one
        for stale in path.parent.glob(f".{path.name}.tmp*"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)
