"""The levels a head works at, torch-free, so choosers (the CLI's ``--level``, a dock's switch) read them
without importing torch: ``superpatch`` (one set of organ logits per 128^3 superpatch, the mean token)
and ``patch`` (one per encoder token, i.e. per 16^3 patch). The heads themselves are in ``heads.py``.
"""

from __future__ import annotations

from typing import Any

from ..errors import NemesisCheckpointError

__all__ = ["HEAD_LEVELS", "DEFAULT_LEVEL", "check_level", "head_level"]

#: The levels a head works at, in the order the CLI lists them.
HEAD_LEVELS: tuple[str, ...] = ("superpatch", "patch")
#: What a head without a recorded level is (every head saved before patch heads existed).
DEFAULT_LEVEL = "superpatch"


def check_level(level: str, what: str = "--level") -> str:
    """``level`` if it is one of :data:`HEAD_LEVELS`; a one-line error otherwise."""
    if level not in HEAD_LEVELS:
        raise NemesisCheckpointError(f"{what} {level!r}: choose one of {', '.join(HEAD_LEVELS)}")
    return level


def head_level(meta: dict[str, Any] | None) -> str:
    """The level a head's metadata records (:data:`DEFAULT_LEVEL` when it records none)."""
    if not meta or meta.get("level") is None:
        return DEFAULT_LEVEL
    return str(meta["level"])
