"""Organ probabilities of the active scan at one of the heads' levels (``model.levels.HEAD_LEVELS``):
the job, the result, the heatmaps shown, the hover columns.

* ``superpatch``: ``train.infer_scan`` on the prepared scan, one probability per organ and
  superpatch; heatmaps ``prob:<organ>``, hover columns ``P(<organ>)``.
* ``patch``: ``train.patch_level.infer_patch_scan`` (what ``nemesis infer --level patch`` calls),
  one probability per organ and 16^3 patch; heatmaps ``patch:<organ>`` at patch resolution, and per
  superpatch the **max** over its patches that hold some of the scan (the table, the bars, the hover
  columns ``max patch P(<organ>)``): "is the organ anywhere in this box", the superpatch level's
  question; the patch under the cursor is published on ``events.patch_hover``.

One level is on screen at a time: switching hides the other level's heatmaps and hover columns; each
level's result for the active scan is kept until the scan or the weights change, so switching back
shows it again without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from ....model.levels import DEFAULT_LEVEL, HEAD_LEVELS, check_level
from ... import _layers as L
from ..._jobs import resolved_device
from ..._models import ModelStore, WeightsChoice
from .layers import ProbabilityLayers, prob_role

JOB = "probabilities"


def column_name(organ: str, level: str = DEFAULT_LEVEL) -> str:
    """The hover column of ``organ`` at ``level`` (the status bar and the grid dock show it)."""
    return f"P({organ})" if level == DEFAULT_LEVEL else f"max {level} P({organ})"


@dataclass
class Probabilities:
    """Organ probabilities of a scan at one level, and what produced them.

    ``values`` is per superpatch ``(n, K)`` at both levels (at the patch level: the max over the
    superpatch's patches inside the scan); ``patch_values`` ``(n, tokens, K)`` and ``inside``
    ``(n, tokens)`` hold the patch level's own values (None at the superpatch level)."""

    values: np.ndarray  # (n, K)
    organs: list[str]
    threshold: float
    device: str
    weights: WeightsChoice
    auroc: float | None = None  # the head's held-out AUROC, when its file records one
    auroc_on: str | None = None  # what that AUROC was measured on
    warnings: tuple[str, ...] = ()  # why this scan is unlike the training data (train.trust)
    level: str = DEFAULT_LEVEL
    head: str = ""  # the head's name for the dock: a file name or "bundled <level> head"
    patch: int | None = None  # patch size (voxels), patch level only
    patch_values: np.ndarray | None = None  # (n, tokens, K), patch level only
    inside: np.ndarray | None = None  # (n, tokens) bool: patches that hold some of the scan
    core: Any = None  # the core's result (train.InferResult / patch_level.PatchInferResult)

    @property
    def n_patches(self) -> int:
        return int(self.inside.sum()) if self.inside is not None else 0

    def describe_weights(self) -> str:
        from pathlib import Path

        ck = Path(self.weights.checkpoint).name if self.weights.checkpoint else "bundled small model"
        return f"{ck} + {self.head}" if self.head else self.weights.describe()


def probabilities_job(prepared, store: ModelStore, weights: WeightsChoice, device: str, batch: int,
                      level: str = DEFAULT_LEVEL, *, cancel, report) -> Probabilities:
    """Organ probabilities of the whole scan at ``level``: ``train.infer_scan`` (superpatch) or
    ``train.patch_level.infer_patch_scan`` (patch), on the prepared scan as it is."""
    from ....data.spacing import Spacing
    from ....train.trust import trust_report

    model = store.model(weights.checkpoint)
    head, meta, head_name = store.head(weights, level)
    used = resolved_device(device)
    organs, threshold = list(meta["organs"]), float(meta.get("threshold", 0.5))
    patch = patch_values = inside = None
    if level != DEFAULT_LEVEL:  # the patch level (model.levels.HEAD_LEVELS): one value per token
        from ....train.patch_level import infer_patch_scan

        report({"event": "stage", "name": "organ maps at patch resolution", "device": used})
        result = infer_patch_scan(prepared, model, head, organs, threshold=threshold, batch=int(batch), device=used,
                                  progress=report, cancel=cancel)
        patch, patch_values, inside = int(result.patch), result.probabilities, result.inside
        values = np.where(inside[..., None], patch_values, 0.0).max(axis=1)  # the box's most likely patch
    else:
        from ....train.inference import infer_scan

        report({"event": "stage", "name": "organ probabilities", "device": used})
        # the prepared scan as it is: read and resampled once, the probabilities on exactly its grid
        result = infer_scan(prepared, model, head, organs, threshold=threshold, batch=int(batch), device=used,
                            progress=report, cancel=cancel)
        values = result.probabilities
    trust = trust_report(prepared.volume, meta, prepared.pre.spacing_zyx, model.cfg.superpatch)
    warnings = list(trust["warnings"])
    trained_at = meta.get("spacing_zyx")
    if trained_at is not None and trained_at != "native" and \
            not Spacing.parse(trained_at).close_to(prepared.pre.spacing_zyx):
        warnings.append(f"{head_name} was trained at {Spacing.parse(trained_at).value} mm (z, y, x), the scan is "
                        f"shown at {tuple(prepared.pre.spacing_zyx)}")
    return Probabilities(np.asarray(values, dtype=np.float32), organs, float(result.threshold), used, weights,
                         trust["head_held_out_auroc"], trust["head_held_out_on"], tuple(warnings), level, head_name,
                         patch, patch_values, inside, result)


class ProbabilityEvents(SignalGroup):
    level = Signal(str)  # the level on screen changed
    patch_hover = Signal(object)  # the patch under the cursor (dict) | None, patch level only


class ProbabilitiesController:
    def __init__(self, session) -> None:
        self.session = session
        self.events = ProbabilityEvents()
        self.level: str = DEFAULT_LEVEL
        self.layer_sets = {level: ProbabilityLayers(session.scene, level) for level in HEAD_LEVELS}
        self.results: dict[str, Probabilities] = {}  # per level, for the active scan
        self.visible_organs: set[str] = {"liver"}
        self._hovered: tuple[int, int] | None = None
        session.scene.result_clearers.append(self.clear)
        session.events.scan.connect(self._on_scan)
        session.events.hover_point.connect(self._on_hover_point)

    @property
    def layers(self) -> ProbabilityLayers:
        """The heatmaps of the level on screen."""
        return self.layer_sets[self.level]

    @property
    def result(self) -> Probabilities | None:
        """The result of the level on screen (None until computed for the active scan)."""
        return self.results.get(self.level)

    def _patch_size(self, ctx) -> int:
        return int(ctx.geometry.patch)

    def _on_scan(self, ctx) -> None:
        if ctx is not None:
            self.layers.make_ahead(ctx.grid, sorted(self.visible_organs), self._patch_size(ctx))

    # ---- the level --------------------------------------------------------------------------------
    def set_level(self, level: str) -> str:
        """Show the organ probabilities at ``level`` (one of ``model.levels.HEAD_LEVELS``): the other
        level's heatmaps and hover columns leave the screen (and its run, if one is going, stops);
        this level's result for the active scan comes back if it was computed, else Compute runs it."""
        level = check_level(level, "level")
        if level == self.level:
            return level
        session = self.session
        old = self.level
        session.cancel(JOB)
        self.layer_sets[old].clear()
        self.level = level
        self._hovered = None
        ctx = session.scan
        if ctx is not None:
            columns: dict[str, Any] = {column_name(o, old): None for o in self._organs(old)}
            result = self.result
            if result is not None:
                columns.update(self._columns(result))
                self._show_later(ctx, result)
            else:
                self.layers.make_ahead(ctx.grid, sorted(self.visible_organs), self._patch_size(ctx))
            session.set_grid_columns(columns)
        self.events.level.emit(level)
        self.events.patch_hover.emit(None)
        session.events.probabilities.emit(self.result)
        return level

    def _organs(self, level: str) -> list[str]:
        result = self.results.get(level)
        if result is not None:
            return list(result.organs)
        from ....data import ORGAN_NAMES

        return list(ORGAN_NAMES)

    # ---- running ----------------------------------------------------------------------------------
    def run(self, wait: bool = True, level: str | None = None):
        """Organ probabilities of the whole scan at the level on screen (``level``: switch first):
        heatmaps, table, bars."""
        if level is not None:
            self.set_level(level)
        session = self.session
        ctx = session.need_scan()
        return session.start(JOB, probabilities_job, ctx.prepared, session.models, session.weights,
                             session.settings.device, session.settings.batch, self.level, wait=wait,
                             progress_in_dock=True, on_done=lambda result: self.ready(ctx, result),
                             description=f"organ probabilities ({self.level} level)")

    def ready(self, ctx, result: Probabilities) -> None:
        session = self.session
        if session.scan is not ctx or not session.alive:
            return
        self.results[result.level] = result
        if result.level != self.level:  # switched meanwhile: kept for when it is shown again
            return
        self._show_later(ctx, result)
        session.set_grid_columns(self._columns(result))
        session.events.probabilities.emit(result)

    def _columns(self, result: Probabilities) -> dict[str, np.ndarray]:
        return {column_name(organ, result.level): result.values[:, k] for k, organ in enumerate(result.organs)}

    def _show_later(self, ctx, result: Probabilities) -> None:
        session = self.session

        def show() -> None:  # on the next event-loop turn: the canvas's frame does not share this one
            if self.result is result and session.scan is ctx:
                self.layers.show_all(ctx.grid, self._layer_values(result), result.organs, self.visible_organs,
                                     result.patch)

        session.scene.later("probabilities", show)

    @staticmethod
    def _layer_values(result: Probabilities) -> np.ndarray:
        return result.values if result.patch_values is None else result.patch_values

    def set_organ_visible(self, organ: str, visible: bool) -> None:
        """Show or hide an organ's heatmap at the level on screen (made on first show)."""
        if visible:
            self.visible_organs.add(organ)
        else:
            self.visible_organs.discard(organ)
        result, ctx = self.result, self.session.scan
        if visible and not self.layers.exists(organ) and result is not None and organ in result.organs:
            k = result.organs.index(organ)
            self.layers.show(ctx.grid, organ, self._layer_values(result)[..., k], True, patch=result.patch)
            self.session.scene.raise_overlays()
        else:
            self.layers.set_visible(organ, visible and result is not None)

    # ---- the patch under the cursor ---------------------------------------------------------------
    def patch_at(self, world_zyx, index: int | None = None) -> dict[str, Any] | None:
        """The patch of the patch-level result under a world point (LPS z y x mm): superpatch, token
        (z, y, x in the superpatch's token grid) and its probability per organ; None elsewhere or
        at the superpatch level."""
        result, ctx = self.result, self.session.scan
        if result is None or result.patch_values is None or ctx is None:
            return None
        point = np.asarray(world_zyx, dtype=np.float64).ravel()[-3:]
        if index is None:
            index = L.superpatch_at(ctx.grid_world, ctx.grid.grid_shape, point)
        if index is None:
            return None
        g = ctx.grid.superpatch // result.patch
        token = L.token_at(L.patch_world_affine(ctx.grid, index, result.patch), g, point)
        if token is None:
            return None
        t = int(np.ravel_multi_index(token, (g, g, g)))
        if not result.inside[index, t]:
            return None
        return {"superpatch": int(index), "patch_zyx": token, "patch": t,
                "probabilities": dict(zip(result.organs, (float(p) for p in result.patch_values[index, t])))}

    def _on_hover_point(self, world_zyx, ndisplay: int, index) -> None:
        if self.result is None or self.result.patch_values is None:
            return
        info = self.patch_at(world_zyx, index) if ndisplay == 2 and index is not None else None
        key = None if info is None else (info["superpatch"], info["patch"])
        if key != self._hovered:
            self._hovered = key
            self.events.patch_hover.emit(info)

    def clear(self) -> None:
        """The results are stale (another scan, new weights): every level's, off the screen."""
        self.session.cancel(JOB)
        self.results = {}
        self._hovered = None
        for layers in self.layer_sets.values():
            layers.clear()
        self.events.patch_hover.emit(None)
        self.session.events.probabilities.emit(None)


__all__ = ["Probabilities", "ProbabilitiesController", "probabilities_job", "prob_role", "column_name"]
