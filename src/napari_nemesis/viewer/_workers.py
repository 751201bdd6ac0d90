"""Worker wiring: run a core job off the Qt main thread with progress, Cancel and notifications.

A job is a function (or generator) ``fn(cancel, report)``: ``cancel()`` is the core's cancel check
and ``report(event)`` takes the core's progress events. Both are safe to call from the worker
thread: events travel to the GUI thread through a Qt signal, and every handler (``on_yield``,
``on_done``, ``on_event``) runs on the GUI thread, the only place layers are touched.

``Cancel`` sets the job's flag, which the core polls between superpatches (``NemesisCancelled``)
and, for generators, also quits at the next ``yield``. A ``NemesisError`` becomes an error
notification with its one-line message; anything else also names the job.

A job's thread runs at a lower CPU priority than the GUI thread (:func:`lower_thread_priority`):
the GUI thread holds the GIL only briefly, so what slows the event loop while the model runs is
competition for the cores, and on a machine without a GPU the canvas is drawn by the CPU too.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QEventLoop, QObject, Signal

from ..errors import NemesisCancelled, NemesisError

log = logging.getLogger(__name__)

from ._runstate import CANCELLED, DONE, FAILED, IDLE, RUNNING, RunStatus  # noqa: E402,F401 (one vocabulary)

#: The niceness of a job's thread. 10 gives the GUI thread (nice 0) about 90% of a contended core,
#: and leaves the job every cycle the GUI does not use.
JOB_NICE = 10
#: At interpreter exit, how long running jobs get to see their cancel flag and end (ms).
EXIT_WAIT_MS = 10_000
#: The jobs started and not yet ended, for the exit below.
_LIVE_JOBS: set[Job] = set()


def _end_jobs_at_exit() -> None:
    """A script or napari exiting while jobs run: each is cancelled, and the exit waits (bounded) for
    their threads. Left running, a job that ends while Python tears its objects down emits through a
    deleted Qt object, and Qt aborts the process (SIGABRT) instead of exiting."""
    if not _LIVE_JOBS:
        return
    for job in list(_LIVE_JOBS):
        job.cancel()
    from qtpy.QtCore import QThreadPool

    QThreadPool.globalInstance().waitForDone(EXIT_WAIT_MS)


atexit.register(_end_jobs_at_exit)  # registered after Qt's own exit handlers: it runs before them


def lower_thread_priority(nice: int = JOB_NICE) -> bool:
    """Run the calling thread at niceness ``nice`` or lower priority; True when it does.

    Linux keeps a niceness per thread (``setpriority(2)`` on the thread id), and threads started
    from it (torch's intra-op pool, made by the first thread that uses it) inherit it. A thread's priority can only be lowered without
    privileges, so a pool thread that ran a job stays low: it only ever runs background work.
    Elsewhere (macOS, Windows) this does nothing and returns False.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:  # a sandbox without setpriority: the job still runs, at normal priority
        return False


def _in_background(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (function or generator function) lowering its thread's priority first, torch's
    libraries loaded without the GIL before any job imports torch (:mod:`._torch_preload`)."""
    from ._torch_preload import preload_torch_libraries

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any):
            lower_thread_priority()
            preload_torch_libraries()
            return (yield from fn(*args, **kwargs))

        return generator

    @functools.wraps(fn)
    def function(*args: Any, **kwargs: Any) -> Any:
        lower_thread_priority()
        preload_torch_libraries()
        return fn(*args, **kwargs)

    return function


@dataclass
class RunState:
    """What one kind of job is doing: shown by the widgets, read by tests and the benchmark."""

    job: str
    status: RunStatus = IDLE
    done: int = 0
    total: int = 0
    message: str = ""
    device: str = ""
    error: str = ""
    result: Any = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.status == RUNNING


class _Relay(QObject):
    """Carries progress events from the worker thread to the GUI thread (queued connection)."""

    event = Signal(object)


class _NoBar:
    """Stands in for napari's progress bar where a job has none (``start_job(activity=False)``)."""

    total = 0
    n = 0

    def refresh(self) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


#: A job still running after this long gets its bar in napari's activity dock; a shorter one none.
ACTIVITY_DELAY_MS = 1000


class _LateBar:
    """napari's progress bar, made only once the job has run for :data:`ACTIVITY_DELAY_MS`.

    Adding a bar to napari's activity dock processes the pending Qt events inside the handler that
    adds it: made at the job's start (the turn a scan's layers were added), it drew their controls
    and the canvas in that one turn, the 0.8 s stall of opening a scan. A job of a second or less
    (reading labels, a small scan) shows none, and none flickers."""

    def __init__(self, description: str, delay_ms: int | None = None) -> None:
        from qtpy.QtCore import QTimer

        self.description = description
        self.total = 0
        self.n = 0
        self._bar = None
        self._closed = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._make)
        self._timer.start(int(ACTIVITY_DELAY_MS if delay_ms is None else delay_ms))

    def _make(self) -> None:
        if self._closed:
            return
        from napari.utils import progress

        self._bar = progress(total=self.total, desc=self.description)
        if self.n:
            self._bar.n = self.n
            self._bar.refresh()

    def refresh(self) -> None:
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            self._bar.n = self.n
            self._bar.refresh()

    def set_description(self, text: str) -> None:
        self.description = text
        if self._bar is not None:
            self._bar.set_description(text)

    def close(self) -> None:
        self._closed = True
        self._timer.stop()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Job:
    """One started job: its worker, cancel flag, state and (optionally) a napari progress bar."""

    def __init__(self, name: str, state: RunState, worker, cancel_flag: threading.Event, relay: _Relay):
        self.name = name
        self.state = state
        self.worker = worker
        self._cancel_flag = cancel_flag
        self._relay = relay
        self.finished = False
        self.exception: BaseException | None = None
        self._loops: list[QEventLoop] = []

    def cancel(self) -> None:
        self._cancel_flag.set()
        quit_ = getattr(self.worker, "quit", None)
        if quit_ is not None:
            quit_()

    def wait(self, timeout_ms: int | None = None) -> bool:
        """Run a local event loop until the job ends (the GUI stays live). False on timeout.

        The loop is quit by the job's own end handler, not by the worker's ``finished`` signal: a
        worker that ends before a slot is connected has already queued its signal without it.
        """
        if self.finished:
            return True
        loop = QEventLoop()
        self._loops.append(loop)
        if timeout_ms is not None:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(int(timeout_ms), loop.quit)
        try:
            if not self.finished:
                loop.exec()
        finally:
            self._loops.remove(loop)
        return self.finished

    def outcome(self) -> Any:
        """What an ended job gave a script that waited for it: its result when done, None when
        cancelled; a failed job's exception is raised again (the user saw it as a notification)."""
        if self.state.status == FAILED and self.exception is not None:
            raise self.exception
        return self.state.result if self.state.status == DONE else None

    def _ended(self) -> None:
        self.finished = True
        for loop in list(self._loops):
            loop.quit()


def start_job(
    name: str,
    fn: Callable[..., Any],
    *args: Any,
    state: RunState,
    on_yield: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_end: Callable[[RunState], None] | None = None,
    description: str | None = None,
    notify: bool = True,
    activity: bool = True,
) -> Job:
    """Start ``fn(*args, cancel=..., report=...)`` in a napari thread worker.

    ``state`` is updated in place on the GUI thread (status, done/total, device, error);
    ``on_end(state)`` is called once when the job has ended, however it ended. ``activity``: a
    progress bar in napari's activity dock once the job has run a second (:class:`_LateBar`); jobs
    whose dock shows their progress go without one:
    while any is open, the status bar animates a spinner, 30 window repaints a second (each
    10-25 ms of a software-rendered window), and adding one processes events inside the handler.
    """
    from napari.qt.threading import create_worker

    flag = threading.Event()
    relay = _Relay()
    bar = _LateBar(description or name) if activity else _NoBar()

    def report(event: dict) -> None:  # worker thread -> GUI thread
        relay.event.emit(event)

    def cancel() -> bool:
        return flag.is_set()

    state.status, state.done, state.total, state.message, state.error = RUNNING, 0, 0, "starting", ""
    state.result = None
    worker = create_worker(_in_background(fn), *args, cancel=cancel, report=report, _start_thread=False,
                           _ignore_errors=True)
    job = Job(name, state, worker, flag, relay)
    _LIVE_JOBS.add(job)

    def handle_event(event: dict) -> None:
        kind = event.get("event")
        if kind in ("start", "step"):
            total = int(event.get("total") or 0)
            if total and bar.total != total:
                bar.total = total
            if total:
                state.total = total
            step = int(event.get("step") or 0)
            state.done = step
            bar.n = step
            bar.refresh()
            state.message = f"{step}/{total}" if total else ""
        elif kind == "stage":
            state.message = str(event.get("name", ""))
            bar.set_description(f"{description or name}: {state.message}")
        if "device" in event:
            state.device = str(event["device"])
        if on_event is not None:
            on_event(event)

    def handle_yield(item: Any) -> None:
        if flag.is_set():
            return
        if on_yield is not None:
            on_yield(item)

    def handle_returned(result: Any) -> None:
        if flag.is_set():
            state.status = CANCELLED
            return
        state.result = result
        state.status = DONE
        if on_done is not None:
            try:
                on_done(result)
            except Exception as exc:  # a failure while showing results: report it, keep napari alive
                _fail(exc)

    def _fail(exc: BaseException) -> None:
        job.exception = exc
        state.status = FAILED
        state.error = _one_line(name, exc)
        if notify:
            _notify_error(state.error)
        if not isinstance(exc, NemesisError):
            log.error("%s failed:\n%s", name, "".join(traceback.format_exception(exc)))

    def handle_error(exc: BaseException) -> None:
        if isinstance(exc, NemesisCancelled) or flag.is_set():
            state.status = CANCELLED
            return
        _fail(exc)

    def handle_finished() -> None:
        _LIVE_JOBS.discard(job)
        if state.status == RUNNING:  # a generator quit at a yield returns nothing
            state.status = CANCELLED if flag.is_set() else DONE
        state.message = state.status if state.status != FAILED else state.error
        bar.close()
        try:
            if on_end is not None:
                on_end(state)
        finally:
            job._ended()

    relay.event.connect(handle_event)
    if hasattr(worker, "yielded"):
        worker.yielded.connect(handle_yield)
    worker.returned.connect(handle_returned)
    worker.errored.connect(handle_error)
    worker.finished.connect(handle_finished)
    worker.start()
    return job


def _one_line(name: str, exc: BaseException) -> str:
    if isinstance(exc, NemesisError):
        return " ".join(str(exc).split())
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{name} failed: {type(exc).__name__}: {text}"


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
