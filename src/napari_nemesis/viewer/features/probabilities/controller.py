"""Organ probabilities of the active scan: the job (``train.infer_scan`` on the prepared scan), the
result, the heatmaps shown, the hover columns ``P(<organ>)``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..._jobs import resolved_device
from ..._models import ModelStore, WeightsChoice
from .layers import ProbabilityLayers, prob_role

JOB = "probabilities"


@dataclass
class Probabilities:
    """Organ probabilities of every superpatch of a scan, and what produced them."""

    values: np.ndarray  # (n, K)
    organs: list[str]
    threshold: float
    device: str
    weights: WeightsChoice
    auroc: float | None = None  # the head's held-out AUROC, when its file records one
    auroc_on: str | None = None  # what that AUROC was measured on
    warnings: tuple[str, ...] = ()  # why this scan is unlike the training data (train.trust)


def probabilities_job(prepared, store: ModelStore, weights: WeightsChoice, device: str, batch: int, *, cancel,
                      report) -> Probabilities:
    """Per-superpatch organ probabilities of the whole scan (``train.infer_scan``)."""
    from ....train.inference import infer_scan
    from ....train.trust import trust_report

    model = store.model(weights.checkpoint)
    head, meta = store.probe(weights.probe)
    used = resolved_device(device)
    report({"event": "stage", "name": "organ probabilities", "device": used})
    # the prepared scan as it is: read and resampled once, the probabilities on exactly its grid
    result = infer_scan(prepared, model, head, list(meta["organs"]), threshold=float(meta.get("threshold", 0.5)),
                        batch=int(batch), device=used, progress=report, cancel=cancel)
    trust = trust_report(prepared.volume, meta, prepared.pre.spacing_zyx, model.cfg.superpatch)
    return Probabilities(np.asarray(result.probabilities, dtype=np.float32), list(result.organs),
                         float(result.threshold), used, weights, trust["head_held_out_auroc"],
                         trust["head_held_out_on"], tuple(trust["warnings"]))


class ProbabilitiesController:
    def __init__(self, session) -> None:
        self.session = session
        self.layers = ProbabilityLayers(session.scene)
        self.result: Probabilities | None = None
        self.visible_organs: set[str] = {"liver"}
        session.scene.result_clearers.append(self.clear)
        session.events.scan.connect(self._on_scan)

    def _on_scan(self, ctx) -> None:
        if ctx is not None:
            self.layers.make_ahead(ctx.grid, sorted(self.visible_organs))

    def run(self, wait: bool = True):
        """Organ probabilities of every superpatch: heatmaps, table, bars."""
        session = self.session
        ctx = session.need_scan()
        return session.start(JOB, probabilities_job, ctx.prepared, session.models, session.weights,
                             session.settings.device, session.settings.batch, wait=wait, progress_in_dock=True,
                             on_done=lambda result: self.ready(ctx, result), description="organ probabilities")

    def ready(self, ctx, result: Probabilities) -> None:
        session = self.session
        if session.scan is not ctx or not session.alive:
            return
        self.result = result

        def show() -> None:  # on the next event-loop turn: the canvas's frame does not share this one
            if self.result is result and session.scan is ctx:
                self.layers.show_all(ctx.grid, result.values, result.organs, self.visible_organs)

        session.scene.later("probabilities", show)
        session.set_grid_columns({f"P({organ})": result.values[:, k] for k, organ in enumerate(result.organs)})
        session.events.probabilities.emit(result)

    def set_organ_visible(self, organ: str, visible: bool) -> None:
        """Show or hide an organ's heatmap (made on first show)."""
        if visible:
            self.visible_organs.add(organ)
        else:
            self.visible_organs.discard(organ)
        result, ctx = self.result, self.session.scan
        if visible and not self.layers.exists(organ) and result is not None and organ in result.organs:
            self.layers.show(ctx.grid, organ, result.values[:, result.organs.index(organ)], True)
            self.session.scene.raise_overlays()
        else:
            self.layers.set_visible(organ, visible and result is not None)

    def clear(self) -> None:
        self.session.cancel(JOB)
        self.result = None
        self.layers.clear()
        self.session.events.probabilities.emit(None)


__all__ = ["Probabilities", "ProbabilitiesController", "probabilities_job", "prob_role"]
