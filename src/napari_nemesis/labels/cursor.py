"""`LabelCursor`: the selected superpatch of a label store and the labelling actions, each one call, no Qt.

(Formerly ``labels/session.py`` and ``LabellingSession``; both names still work.)

The widget (and its keyboard shortcuts) only forwards: 1-9 toggle an organ of the selected
superpatch, Enter marks it labelled and moves to the next unlabelled one, ``s`` skips, arrows and
Page Up/Down move to a neighbour, ``n``/``p`` to the next/previous unlabelled superpatch, Ctrl+Z
undoes. Every action that changes a label goes straight to the store, so it is saved at once;
there is no draft to lose. A change that depends on the current label (a toggle, Enter) is decided
on the label as saved on disk at that moment (``LabelStore.modify``), so another writer's tick on
the same superpatch is kept.
"""

from __future__ import annotations

import numpy as np

from .ranking import rank_unlabelled
from .store import LabelStore, SuperpatchLabel

__all__ = ["LabelCursor", "LabellingSession", "KEYS", "key_action"]

#: Key (napari/Qt key names) -> (action, argument). Organ keys 1..9 toggle organ 0..8.
KEYS: dict[str, tuple[str, object]] = {
    **{str(k + 1): ("toggle", k) for k in range(9)},
    "Enter": ("accept", None),
    "Return": ("accept", None),
    "s": ("skip", None),
    "n": ("next_unlabelled", None),
    "p": ("previous_unlabelled", None),
    "Left": ("move", (2, -1)),
    "Right": ("move", (2, 1)),
    "Up": ("move", (1, -1)),
    "Down": ("move", (1, 1)),
    "PageUp": ("move", (0, 1)),
    "PageDown": ("move", (0, -1)),
    "Control-Z": ("undo", None),
}


def key_action(key: str, n_organs: int) -> tuple[str, tuple] | None:
    """``(cursor method, arguments)`` bound to ``key``, or None when the key is not a labelling key (or
    ticks an organ beyond ``n_organs``). The one key dispatcher: the cursor and the viewer both use it."""
    if key not in KEYS:
        return None
    action, arg = KEYS[key]
    if action == "toggle":
        return None if int(arg) >= n_organs else ("toggle", (int(arg),))  # type: ignore[arg-type]
    if action == "move":
        return "move", tuple(arg)  # type: ignore[arg-type]
    return action, ()


class LabelCursor:
    """Which superpatch is selected in a :class:`LabelStore`, and what the keys do to it."""

    def __init__(self, store: LabelStore, index: int = 0) -> None:
        self.store = store
        store._check_index(index)
        self.index = int(index)

    # ---- where we are ------------------------------------------------------------------------
    @property
    def label(self) -> SuperpatchLabel:
        return self.store.get(self.index)

    @property
    def grid_position(self) -> tuple[int, int, int]:
        """(gz, gy, gx) of the selected superpatch."""
        return tuple(int(v) for v in np.unravel_index(self.index, self.store.grid.grid_shape_zyx))  # type: ignore

    def counter(self) -> str:
        """The widget's progress line, e.g. ``"3 of 8 labelled"``."""
        return f"{self.store.counts()['labelled']} of {self.store.n} labelled"

    # ---- moving ----------------------------------------------------------------------------
    def go_to(self, index: int) -> int:
        self.store._check_index(index)
        self.index = int(index)
        return self.index

    def move(self, axis: int, step: int) -> int:
        """To the neighbour ``step`` superpatches along grid ``axis`` (0 z, 1 y, 2 x); stops at the edge."""
        pos = list(self.grid_position)
        pos[axis] = int(np.clip(pos[axis] + int(step), 0, self.store.grid.grid_shape_zyx[axis] - 1))
        self.index = int(np.ravel_multi_index(pos, self.store.grid.grid_shape_zyx))
        return self.index

    def next_unlabelled(self) -> int | None:
        """To the first unlabelled superpatch after this one (wrapping round); None if all are done."""
        return self._find_unlabelled(+1)

    def previous_unlabelled(self) -> int | None:
        return self._find_unlabelled(-1)

    def _find_unlabelled(self, direction: int) -> int | None:
        n = self.store.n
        for k in range(1, n + 1):
            i = (self.index + direction * k) % n
            if self.store.get(i).state == "unlabelled":
                self.index = i
                return i
        return None

    def label_next(self, probabilities) -> int | None:
        """To the unlabelled superpatch the current probe is least sure about (see :mod:`.ranking`)."""
        ranked = rank_unlabelled(self.store, probabilities)
        if not ranked:
            return None
        self.index = ranked[0]
        return self.index

    # ---- labelling -------------------------------------------------------------------------
    def toggle(self, organ: int | str) -> SuperpatchLabel:
        """Flip one organ (index in the store's organ list, or name); the superpatch becomes labelled."""
        # decided on the label as saved now (another writer may have ticked another organ)
        return self.store.toggle(self.index, organ)

    def accept(self) -> int:
        """Mark the selected superpatch labelled with the organs ticked (none is a valid answer), move on."""
        index = self.index

        def accept(current):
            label = current.get(index)
            organs = label.organs if label is not None and label.state == "labelled" else ()
            return {index: (organs, "labelled")}

        self.store.modify(accept)
        self.next_unlabelled()
        return self.index

    def skip(self) -> int:
        """Mark the selected superpatch skipped (undecidable), move on to the next unlabelled one."""
        self.store.set(self.index, (), "skipped")
        self.next_unlabelled()
        return self.index

    def undo(self) -> int | None:
        """Undo the last change and select the superpatch it touched."""
        restored = self.store.undo()
        if restored:
            self.index = restored[0]
            return self.index
        return None

    def handle_key(self, key: str) -> bool:
        """Run the action bound to ``key`` (:func:`key_action`); False when the key is not ours."""
        found = key_action(key, len(self.store.organs))
        if found is None:
            return False
        name, args = found
        getattr(self, name)(*args)
        return True


#: The old name of :class:`LabelCursor`.
LabellingSession = LabelCursor
