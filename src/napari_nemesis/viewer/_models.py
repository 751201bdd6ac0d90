"""The weights a session uses: which files, the geometry they imply, loaded once and shared.

Runs in worker threads (loading imports torch); a lock makes the cache safe when the probability
and reconstruction jobs start together. Empty paths mean the bundled weights
(``weights.load_default_model`` / ``load_default_probe``); picked files go through the core's
loaders, whose one-line ``NemesisCheckpointError`` the widgets show as notifications.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    """What the weights need from a scan: spacing (z, y, x mm), superpatch and patch size (voxels)."""

    spacing_zyx: tuple[float, float, float]
    superpatch: int
    patch: int


def weights_geometry(choice: WeightsChoice) -> Geometry:
    """Spacing from the probe head's metadata (else the checkpoint's, else the default), superpatch
    and patch from the checkpoint's config. Reads metadata only."""
    from ..data import DEFAULT_SPACING_ZYX
    from ..model.checkpoint import read_metadata
    from ..weights import default_checkpoint_path, default_probe_path

    ck_meta = read_metadata(choice.checkpoint or default_checkpoint_path())
    cfg = json.loads(ck_meta.get("config", "{}"))
    extra = json.loads(ck_meta.get("extra", "{}") or "{}")
    pr_meta = json.loads(read_metadata(choice.probe or default_probe_path()).get("meta", "{}") or "{}")
    spacing = pr_meta.get("spacing_zyx") or extra.get("spacing_zyx") or DEFAULT_SPACING_ZYX
    return Geometry(tuple(float(s) for s in spacing), int(cfg.get("superpatch", 128)), int(cfg.get("patch", 16)))


class ModelStore:
    """Loaded models and probe heads, by file, shared by every job of a session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str | None, Any] = {}
        self._probes: dict[str | None, tuple[Any, dict]] = {}

    def model(self, checkpoint: str | None):
        with self._lock:
            if checkpoint not in self._models:
                if checkpoint:
                    from ..model import load_checkpoint

                    self._models[checkpoint] = load_checkpoint(checkpoint).eval()
                else:
                    from ..weights import load_default_model

                    self._models[checkpoint] = load_default_model().eval()
            return self._models[checkpoint]

    def probe(self, probe: str | None):
        with self._lock:
            if probe not in self._probes:
                if probe:
                    from ..train.probe import load_probe

                    self._probes[probe] = load_probe(probe)
                else:
                    from ..weights import load_default_probe

                    self._probes[probe] = load_default_probe()
            return self._probes[probe]

    def forget(self) -> None:
        with self._lock:
            self._models.clear()
            self._probes.clear()
