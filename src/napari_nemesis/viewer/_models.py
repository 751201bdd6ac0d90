"""The weights a session uses: which files, the geometry they imply, loaded once and shared.

Runs in worker threads (loading imports torch); a lock makes the cache safe when the probability
and reconstruction jobs start together. Empty paths mean the bundled weights
(``weights.load_default_model`` / ``load_default_probe(level)``); picked files go through the core's
loaders, whose one-line ``NemesisCheckpointError`` the widgets show as notifications. The probe
head picked may work at either level (``model.levels``); :meth:`ModelStore.head` says which head a
run at a level uses.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.levels import DEFAULT_LEVEL

#: cache key prefix of the bundled heads of levels other than the default
_BUNDLED = "bundled:"

@dataclass(frozen=True)
class WeightsChoice:
    """A checkpoint and a probe head; ``None`` = the bundled one."""

    checkpoint: str | None = None
    probe: str | None = None

    def describe(self) -> str:
        ck = Path(self.checkpoint).name if self.checkpoint else "bundled small model"
        pr = Path(self.probe).name if self.probe else "bundled probe head"
        return f"{ck} + {pr}"


@dataclass(frozen=True)
class Geometry:
    """What the weights need from a scan: spacing (z, y, x mm, or ``"native"``) and the superpatch
    and patch sizes (voxels)."""

    spacing_zyx: tuple[float, float, float] | str
    superpatch: int
    patch: int


def weights_geometry(choice: WeightsChoice, store: "ModelStore") -> Geometry:
    """The geometry of a checkpoint + probe head: the spacing the head was trained at, else the
    checkpoint's, else the default (``data.spacing.recorded_spacing``, the CLI's rule);
    superpatch and patch from the checkpoint's config."""
    from ..data.spacing import Spacing, recorded_spacing

    model = store.model(choice.checkpoint)
    head, meta = store.probe(choice.probe)
    spacing, _source = recorded_spacing(model, meta, getattr(head, "path", None))
    spacing = Spacing.parse(spacing).value
    return Geometry(spacing, int(model.cfg.superpatch), int(model.cfg.patch))


def _key(path: str | None):
    """A file by path and modification time: a checkpoint rewritten in place is loaded again."""
    if not path:
        return None
    try:
        return (str(path), Path(path).stat().st_mtime_ns)
    except OSError:
        return (str(path), None)  # the loader names the missing file


class ModelStore:
    """Loaded models and probe heads, by file, shared by every job of a session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[Any, Any] = {}
        self._probes: dict[Any, tuple[Any, dict]] = {}

    def model(self, checkpoint: str | None):
        key = _key(checkpoint)
        with self._lock:
            if key not in self._models:
                if checkpoint:
                    from ..model import load_checkpoint

                    self._models[key] = load_checkpoint(checkpoint).eval()
                else:
                    from ..weights import load_default_model

                    self._models[key] = load_default_model().eval()
            return self._models[key]

    def probe(self, probe: str | None, level: str = DEFAULT_LEVEL):
        """``(head, meta)`` of a probe head file; ``None``: the bundled head of ``level``."""
        key = _key(probe) if probe else (None if level == DEFAULT_LEVEL else f"{_BUNDLED}{level}")
        with self._lock:
            if key not in self._probes:
                if probe:
                    from ..train.probe import load_probe

                    self._probes[key] = load_probe(probe)
                else:
                    from ..weights import load_default_probe

                    self._probes[key] = load_default_probe(level)
            return self._probes[key]

    def head(self, choice: WeightsChoice, level: str) -> tuple[Any, dict, str]:
        """The head a run at ``level`` (``model.levels.HEAD_LEVELS``) uses with ``choice``, its
        metadata and its name for the docks: the chosen probe head when it works at that level (a
        patch-level head picked as the probe serves the patch level), else the bundled head of that
        level when the checkpoint is the bundled one; a custom checkpoint without a head of that
        level is refused (one line)."""
        from ..errors import NemesisCheckpointError
        from ..model.levels import check_level, head_level

        check_level(level, "level")
        head, meta = self.probe(choice.probe)
        if head_level(meta) == level:
            return head, meta, (Path(choice.probe).name if choice.probe else f"bundled {level} head")
        if not choice.checkpoint:
            head, meta = self.probe(None, level)
            return head, meta, f"bundled {level} head"
        picked = Path(choice.probe).name if choice.probe else "the bundled probe head"
        raise NemesisCheckpointError(
            f"{picked} is a {head_level(meta)}-level head and {Path(choice.checkpoint).name} has no bundled "
            f"{level}-level head: pick one trained for it as the probe head (nemesis probe DATA --level {level} "
            "--checkpoint CKPT)")

    def keep_only(self, choice: WeightsChoice) -> None:
        """Drop the weights other than ``choice``'s: each checkpoint a user tries would otherwise
        stay in memory for the session's life (a job still running keeps its own reference)."""
        model_key, probe_key = _key(choice.checkpoint), _key(choice.probe)
        with self._lock:  # the bundled heads of the other levels are small: kept
            self._models = {k: v for k, v in self._models.items() if k == model_key}
            self._probes = {k: v for k, v in self._probes.items()
                            if k == probe_key or (isinstance(k, str) and k.startswith(_BUNDLED))}
