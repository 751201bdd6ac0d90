"""Kept for scripts written before the viewer became a kernel and feature slices: the session is
:mod:`napari_nemesis.viewer._session`."""

from ._session import NemesisSession, ScanContext, SessionEvents, session_for

__all__ = ["NemesisSession", "ScanContext", "SessionEvents", "session_for"]
