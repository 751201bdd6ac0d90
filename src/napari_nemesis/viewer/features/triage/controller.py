"""Triage of a cohort: the job (``train.triage.triage``, the function ``nemesis triage`` calls), the
sources (scan files, folders of scans, labelling projects), the ranking, and opening an entry: its
scan becomes the active scan (read in a worker if it is not open), the superpatch is selected and
reconstructed under the same mask, its error shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psygnal import Signal, SignalGroup

from ....errors import NemesisInputError
from ..._jobs import resolved_device
from ..._io import same_file
from ..._models import ModelStore, WeightsChoice
from ....model.masking import DEFAULT_STRATEGY

JOB = "triage"


def triage_job(sources: list[str], store: ModelStore, weights: WeightsChoice, strategy: str, ratio: float,
               seeds: int, device: str, batch: int, *, cancel, report) -> dict[str, Any]:
    """The cohort's ranking (worker thread)."""
    from ....train.triage import triage

    model = store.model(weights.checkpoint)
    used = resolved_device(device)
    report({"event": "stage", "name": "triage", "device": used})
    return triage(sources, model, strategy=strategy, ratio=ratio, seeds=seeds, batch=batch, device=used,
                  checkpoint=weights.checkpoint, progress=report, cancel=cancel)


class TriageEvents(SignalGroup):
    sources = Signal(object)  # list[str]
    result = Signal(object)  # the triage result dict | None
    message = Signal(str)


class TriageController:
    def __init__(self, session) -> None:
        self.session = session
        self.events = TriageEvents()
        self.sources: list[str] = []
        self.result: dict[str, Any] | None = None
        self._pending: tuple[str, int] | None = None  # (scan path, superpatch) to select once it is open
        session.events.scan.connect(self._on_scan)

    # ---- sources ------------------------------------------------------------------------------
    def add_sources(self, paths) -> list[str]:
        """Add scan files, folders of scans or labelling project folders (each once)."""
        for p in paths:
            text = str(Path(str(p)).expanduser())
            if not Path(text).exists():
                raise NemesisInputError(f"{text}: no such file or folder")
            if text not in self.sources:
                self.sources.append(text)
        self.events.sources.emit(list(self.sources))
        return list(self.sources)

    def add_open_scans(self) -> list[str]:
        """The scans open in this viewer that were read from a file."""
        paths = []
        for layer in self.session.scan_layers():
            source = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("path")
            if source and Path(str(source)).exists():
                paths.append(str(source))
        if not paths:
            raise NemesisInputError("no scan open from a file: add a folder or files instead")
        return self.add_sources(paths)

    def clear_sources(self) -> None:
        self.sources = []
        self.events.sources.emit([])

    # ---- the job ------------------------------------------------------------------------------
    def run(self, strategy: str, ratio: float, seeds: int, wait: bool = True):
        if not self.sources:
            raise NemesisInputError("triage: add scans, a folder or a project first")
        session = self.session
        settings = session.settings
        return session.start(JOB, triage_job, list(self.sources), session.models, session.weights, strategy,
                             float(ratio), int(seeds), settings.device, settings.batch, wait=wait,
                             progress_in_dock=True, on_done=self._ready, description="triage")

    def _ready(self, result: dict[str, Any]) -> None:
        self.result = result
        self.events.result.emit(result)

    # ---- opening an entry -----------------------------------------------------------------------
    def entry(self, rank: int) -> dict[str, Any]:
        if self.result is None or not (0 <= rank < len(self.result["ranking"])):
            raise NemesisInputError(f"triage: no entry {rank + 1} in the ranking")
        return self.result["ranking"][rank]

    def open_entry(self, rank: int) -> None:
        """The entry's scan on screen (opened if needed), its superpatch selected and reconstructed."""
        entry = self.entry(rank)
        path, index = str(entry["scan"]), int(entry["superpatch"])
        ctx = self.session.scan
        if ctx is not None and same_file(ctx.prepared.volume.source, path):
            self._show(index)
            return
        layer = next((lay for lay in self.session.scan_layers() if same_file(_layer_path(lay), path)), None)
        self._pending = (path, index)
        self.events.message.emit(f"opening {Path(path).name} at superpatch {index}...")
        self.session.open_scan(layer if layer is not None else path, wait=False)

    def _on_scan(self, ctx) -> None:
        if ctx is None or self._pending is None:
            return
        path, index = self._pending
        if same_file(ctx.prepared.volume.source, path) or same_file(_layer_path(ctx.layer), path):
            self._pending = None
            self.session.scene.later("triage:show", lambda: self._show(index))

    def _show(self, index: int) -> None:
        session = self.session
        ctx = session.scan
        if ctx is None or not (0 <= index < ctx.n):
            self.events.message.emit(f"superpatch {index} is not in this scan's grid")
            return
        session.select(index)
        result = self.result or {}
        strategy = str(result.get("mask", DEFAULT_STRATEGY))
        ratio = float(result.get("ratio", 0.75))
        if not session.running("reconstruction"):
            session.run_reconstruction(strategy=strategy, ratio=ratio, scope="selected", wait=False)
        self.events.message.emit(f"{ctx.name}: superpatch {index} selected and reconstructed ({strategy}, {ratio:g})")


def _layer_path(layer) -> str | None:
    source = getattr(getattr(layer, "source", None), "path", None)
    return str(source) if source else layer.metadata.get("path") if hasattr(layer, "metadata") else None

