"""The MATB attention view: where the patch under the cursor looks in the last encoder block,
within its slice (plane stream) and along its column (axis stream), over the selected superpatch.

While it is on, moving the cursor inside the selected superpatch (2D) asks for the attention of
the patch under it; while one is being computed, a newer request waits and only the latest runs.
The encoder pass of the superpatch is kept (:class:`AttentionCache`), so each move costs one
attention row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ....errors import NemesisInputError
from ... import _layers as L
from ..._jobs import resolved_device
from ..._models import ModelStore
from .layers import AttentionLayers

JOB = "attention"


@dataclass
class AttentionView:
    index: int
    token_zyx: tuple[int, int, int]
    maps: Any  # train.attention.AttentionMaps


class AttentionCache:
    """The encoder pass of one superpatch, kept so each cursor move costs one attention row."""

    def __init__(self) -> None:
        self.prepared = None
        self.key = None
        self.value = None


def attention_job(prepared, store: ModelStore, checkpoint: str | None, index: int, token_zyx, device: str,
                  cache: AttentionCache, *, cancel, report):
    """The last encoder block's plane/axis attention of one token of superpatch ``index``."""
    from ....train.attention import SuperpatchAttention

    model = store.model(checkpoint)
    used = resolved_device(device)
    key = (int(index), checkpoint, used)
    if cache.prepared is not prepared or cache.key != key:
        report({"event": "stage", "name": "encoding the superpatch", "device": used})
        cache.value = SuperpatchAttention(model, prepared.superpatch(index), block=-1, device=used)
        cache.prepared, cache.key = prepared, key
    return int(index), cache.value.maps(token_zyx)


class AttentionController:
    def __init__(self, session) -> None:
        self.session = session
        self.layers = AttentionLayers(session.scene)
        self.enabled = False
        self.view: AttentionView | None = None
        self._token = None
        self._pending = None
        self._cache = AttentionCache()
        session.scene.result_clearers.append(self.clear)
        session.events.selection.connect(self._on_selection)
        session.events.scan.connect(lambda _ctx: setattr(self, "_cache", AttentionCache()))
        session.events.hover_point.connect(self._on_hover_point)

    def set_enabled(self, enabled: bool) -> None:
        """Follow the cursor with the attention view inside the selected superpatch."""
        self.enabled = bool(enabled)
        self._token = None
        if not enabled:
            self.clear()

    def show(self, token_zyx, index: int | None = None, wait: bool = True):
        """The plane and axis attention of one token (patch) of a superpatch (default: the selected
        one), as heatmap layers over that superpatch."""
        session = self.session
        ctx = session.need_scan()
        index = session.selected if index is None else ctx.prepared.check_index(index)
        if index is None:
            raise NemesisInputError("no superpatch selected: click one first")
        token = tuple(int(t) for t in token_zyx)
        if session.running(JOB):
            self._pending = token
            if not wait:
                return None
            session.wait(JOB)
        self._pending = None
        return session.start(JOB, attention_job, ctx.prepared, session.models, session.weights.checkpoint, index,
                             token, session.settings.device, self._cache, wait=wait, progress_in_dock=True,
                             on_done=lambda result: self._ready(ctx, result),
                             on_end=lambda state: self._ended(ctx), description="attention")

    def _ready(self, ctx, result) -> None:
        index, maps = result
        session = self.session
        if session.scan is not ctx or index != session.selected or not session.alive:
            return
        self.view = AttentionView(index, tuple(maps.token_zyx), maps)
        self.layers.show(maps.plane, maps.axis, L.patch_world_affine(ctx.grid, index, ctx.geometry.patch))
        session.events.attention.emit(self.view)

    def _ended(self, ctx) -> None:
        pending = self._pending
        if pending is not None and self.session.scan is ctx and self.session.selected is not None:
            self._pending = None
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self.show(pending, wait=False))

    def _on_hover_point(self, world_zyx, ndisplay: int, index) -> None:
        session = self.session
        ctx = session.scan
        if not self.enabled or ndisplay != 2 or index is None or ctx is None or index != session.selected:
            return
        token = L.token_at(L.patch_world_affine(ctx.grid, index, ctx.geometry.patch),
                           ctx.geometry.superpatch // ctx.geometry.patch, world_zyx[-3:])
        if token is not None and token != self._token:
            self._token = token
            self.show(token, wait=False)

    def _on_selection(self, index) -> None:
        if self.view is not None and self.view.index != index:
            self.clear()

    def clear(self) -> None:
        self.session.cancel(JOB)
        self._token = None
        if self.view is not None or self.session.scene.get("attention_plane") is not None:
            self.view = None
            self.layers.remove()
            self.session.events.attention.emit(None)
