"""The one "next event-loop turn" queue of a viewer's layer work.

A changed napari layer redraws the canvas (a frame: 40-90 ms under software OpenGL) on the turn
after the change, and adding or first showing a layer costs a frame or more of its own. So layer work
never shares a turn with the handler that asked for it, and costly pieces get a turn each:

- :meth:`TurnQueue.later` (key, work): runs on the next turn; a newer work of the same key replaces a
  waiting one (the newest result wins). Every waiting ``later`` work runs in the same turn.
- :meth:`TurnQueue.step` (key, work): costly pieces (making a layer, giving one a whole-scan array,
  drawing one once off screen), one per turn, in order, after that turn's ``later`` work.

After each turn ``after_turn`` runs (the scene places its canvas overlays). :meth:`flush` runs
everything now (a script expects to see it); :attr:`busy` says whether anything waits.
"""

from __future__ import annotations

from collections.abc import Callable


#: The next turn is a timer this many ms away, not a zero-timer: Qt 6 posts a zero-timer as an event,
#: and a chain of posted events runs before the window's input and timers get their turn, so the
#: steps of a scan's opening (a layer each) ran back to back as one 0.8 s stall. With a real timer the
#: mouse, the keyboard and the paint events come in between the steps.
_GAP_MS = 1


class TurnQueue:
    def __init__(self, alive: Callable[[], bool], after_turn: Callable[[], None] | None = None) -> None:
        self._alive = alive
        self._after_turn = after_turn
        self._later: dict[str, Callable[[], None]] = {}
        self._steps: dict[str, Callable[[], None]] = {}
        self._scheduled = False
        self._running = False

    # ---- asking ------------------------------------------------------------------------------
    def later(self, key: str, work: Callable[[], None]) -> None:
        self._later.pop(key, None)
        self._later[key] = work
        self._schedule()

    def step(self, key: str, work: Callable[[], None]) -> None:
        """One costly piece a turn; a waiting piece of the same key keeps its place and takes the
        newer work."""
        self._steps[key] = work
        self._schedule()

    def drop(self, prefix: str = "") -> None:
        """Forget waiting work whose key starts with ``prefix`` (all of it by default)."""
        for queue in (self._later, self._steps):
            for key in [k for k in queue if k.startswith(prefix)]:
                del queue[key]

    def waiting(self, prefix: str = "") -> list[str]:
        return [k for k in (*self._later, *self._steps) if k.startswith(prefix)]

    @property
    def busy(self) -> bool:
        return bool(self._later or self._steps or self._running)

    # ---- running -----------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._scheduled:
            return
        from qtpy.QtCore import QTimer

        self._scheduled = True
        QTimer.singleShot(_GAP_MS, self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        if not self._alive():
            self._later.clear()
            self._steps.clear()
            return
        self._running = True
        try:
            waiting, self._later = self._later, {}
            for work in waiting.values():
                work()
            if self._steps:
                key = next(iter(self._steps))
                self._steps.pop(key)()
            if self._after_turn is not None:
                self._after_turn()
        finally:
            self._running = False
        if self._later or self._steps:
            self._schedule()

    def flush(self, steps: bool = False) -> None:
        """Run the waiting ``later`` work now (and, with ``steps``, every waiting step)."""
        if not self._alive():
            return
        while self._later or (steps and self._steps):
            waiting, self._later = self._later, {}
            for work in waiting.values():
                work()
            if steps:
                while self._steps:
                    key = next(iter(self._steps))
                    self._steps.pop(key)()
        if self._after_turn is not None:
            self._after_turn()
