"""Progress, cancellation and JSON-lines logs shared by the CLI and the viewer.

Core loops take ``progress`` (a callable receiving one event dict) and ``cancel`` (a callable that
returns True to stop). They never print. The CLI turns events into tqdm bars; the viewer turns them
into napari progress and plots; a ``JsonlLog`` keeps them on disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import NemesisCancelled

ProgressFn = Callable[[dict[str, Any]], None]
CancelFn = Callable[[], bool]


def emit(progress: ProgressFn | None, kind: str, **fields: Any) -> None:
    """Send one event ``{"event": kind, ...}`` to ``progress`` if there is one."""
    if progress is not None:
        progress({"event": kind, "time": time.time(), **fields})


def check_cancel(cancel: CancelFn | None, what: str = "work") -> None:
    """Raise NemesisCancelled when the caller asked to stop."""
    if cancel is not None and cancel():
        raise NemesisCancelled(f"{what} cancelled")


class JsonlLog:
    """Append events as JSON lines; each line is flushed so a crash keeps what came before."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        self._fh.write(json.dumps(event, default=_plain) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def fan_out(*callbacks: ProgressFn | None) -> ProgressFn:
    """One progress callable that forwards each event to every non-None callback."""
    targets = [c for c in callbacks if c is not None]

    def _send(event: dict[str, Any]) -> None:
        for c in targets:
            c(event)

    return _send


def _plain(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return str(o)
