"""Moved to :mod:`napari_nemesis.labels.cursor` (it holds a cursor, not a session); this old path keeps
working."""

from __future__ import annotations

from .cursor import KEYS, LabelCursor, LabellingSession, key_action

__all__ = ["LabelCursor", "LabellingSession", "KEYS", "key_action"]
