"""Training in a child process: start it, read its JSON-line events, stop it, never leave it behind.

The Training widget runs the very entry point of the ``nemesis`` command (``labels fill``,
``labels train``, ``pretrain``) in a child process, started by this module::

    python -m napari_nemesis.viewer._process labels train PROJECT --out RUN --events --json

which is ``nemesis labels train ...`` after two preparations for life under a GUI:

* its priority is lowered (``nice``), so napari's event loop always wins the CPU;
* a watcher thread reads standard input, a pipe from napari. A line ``stop`` on it asks the run to
  save at its next step and stop (``train.runtime.request_stop``: honoured whatever the child's
  SIGINT disposition, e.g. when napari was started with SIGINT ignored, ``nohup napari &``, which
  its children inherit). When napari ends in any way (closed, crashed, ``kill -9``) the system
  closes the pipe, the read returns, and the child asks itself to stop the same way (and with
  SIGINT), saves at its next step and exits; :data:`ORPHAN_GRACE_S` seconds later it ends itself
  in any case, but never in the middle of a checkpoint save. No orphan is left;
* SIGINT, if inherited as ignored, is given back its default (KeyboardInterrupt), so Ctrl-C-like
  stops behave the same however napari was started.

Training never shares napari's process, so when the child ends all its memory, GPU included,
is gone with it. :class:`ChildRun` (no Qt) runs a list of such commands one after the other; a
thread per process reads its standard output into a queue the GUI drains with :meth:`poll`.
Stop is a ``stop`` line on the child's standard input, SIGINT, and the run folder's ``STOP`` file
where the command has one (``labels train``; ``pretrain`` watches ``OUT/STOP`` too): the run saves
at its next step and exits with status 130; a second Stop kills it at once (the last saved state
stays valid: saves are atomic as a whole, see ``train.state``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Exit status of a run stopped on request with its state saved (the CLI's, as for Ctrl-C).
EXIT_STOPPED = 130
#: Seconds a child whose parent has gone may take to save before it ends itself.
ORPHAN_GRACE_S = 20.0
#: Set in the child's environment: watch the standard-input pipe for the parent's end.
WATCH_ENV = "NEMESIS_WATCH_PARENT"
#: How much lower the child's scheduling priority is than napari's (POSIX ``nice``).
CHILD_NICENESS = 5
#: The line on a child's standard input that asks it to save and stop.
STOP_LINE = b"stop\n"
#: Seconds a child ending itself (parent gone) waits at most for a checkpoint save in progress.
SAVE_WAIT_S = 60.0
#: Seconds :meth:`ChildRun.shutdown` lets a stopped child save before it is killed.
SHUTDOWN_GRACE_S = 10.0

from ._runstate import DONE, FAILED, RUNNING, STOPPED, STOPPING, RunStatus  # noqa: E402,F401 (one vocabulary)


@dataclass
class Command:
    """One ``nemesis`` command of a run: its arguments (after ``nemesis``), a name for the
    progress line, whether it prints JSON-line events (``--events``), and the run folder whose
    ``STOP`` file it watches (``labels train``), if any."""

    args: list[str]
    name: str
    events: bool = False
    stop_file: Path | None = None


@dataclass
class ChildExit:
    """A child process ended: which command, its exit status, the end of its standard error."""

    index: int
    returncode: int
    stderr_tail: str = ""


@dataclass(eq=False)
class ChildRun:
    """Commands run one after the other in child processes; events read by a thread.

    ``log_dir`` receives ``stderr.log`` (every child's standard error, appended). Call
    :meth:`start`, then :meth:`poll` regularly (from one thread, e.g. a GUI timer): it returns the
    events that arrived, starts the next command when one ends well, and keeps :attr:`status`.
    """

    commands: list[Command]
    log_dir: Path
    env: dict[str, str] | None = None
    status: RunStatus | str = ""
    current: int = -1
    returncode: int | None = None
    result: dict[str, Any] | None = None  # the last JSON line without an "event" key (``--json``)
    error: str = ""
    exits: list[ChildExit] = field(default_factory=list)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _queue: "queue.Queue[tuple[str, Any]]" = field(default_factory=queue.Queue, repr=False)
    _stops: int = 0

    # ---- starting ---------------------------------------------------------------------------------
    def start(self) -> "ChildRun":
        if self.status:
            raise RuntimeError("this run was started already")
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.status = RUNNING
        _LIVE.add(self)
        self._start_next()
        return self

    def _start_next(self) -> None:
        self.current += 1
        command = self.commands[self.current]
        if command.stop_file is not None:
            Path(command.stop_file).unlink(missing_ok=True)
        env = {**os.environ, **(self.env or {}), WATCH_ENV: "1", "PYTHONUNBUFFERED": "1"}
        stderr = open(self.log_dir / "stderr.log", "ab")
        try:
            stderr.write(f"$ nemesis {' '.join(command.args)}\n".encode())
            stderr.flush()
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "napari_nemesis.viewer._process", *command.args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE if command.events else subprocess.DEVNULL,
                stderr=stderr, env=env, start_new_session=(os.name == "posix"),
            )
        finally:
            stderr.close()
        threading.Thread(target=_read_child, args=(self._proc, self.current, command.events, self._queue),
                         name=f"nemesis child {self._proc.pid}", daemon=True).start()

    @property
    def pid(self) -> int | None:
        """The process id of the command running now (None when none is)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.status in (RUNNING, STOPPING)

    @property
    def command(self) -> Command | None:
        return self.commands[self.current] if 0 <= self.current < len(self.commands) else None

    # ---- reading ----------------------------------------------------------------------------------
    def poll(self) -> list[dict[str, Any]]:
        """The events that arrived since the last call (each a dict with ``"event"``); also moves
        the run on when a child has ended. Never blocks."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                return events
            if kind == "event":
                events.append(item)
            elif kind == "result":
                self.result = item
            elif kind == "exit":
                self._child_ended(item)
                events.append({"event": "_exit", "command": item.index, "returncode": item.returncode,
                               "time": time.time()})

    def _child_ended(self, ended: ChildExit) -> None:
        self.exits.append(ended)
        self._close_stdin()
        self._proc = None
        last = self.current == len(self.commands) - 1
        if ended.returncode == 0 and not last and self.status == RUNNING:
            self._start_next()
            return
        self.returncode = ended.returncode
        if ended.returncode == 0 and last:
            self.status = DONE
        elif self.status == STOPPING or ended.returncode == EXIT_STOPPED:
            self.status = STOPPED
        else:
            self.status = FAILED
            name = self.commands[ended.index].name
            ended.stderr_tail = stderr_tail(self.log_dir)
            self.error = f"{name} failed (exit status {ended.returncode}): {ended.stderr_tail or 'no message'}"
        _LIVE.discard(self)

    # ---- stopping ---------------------------------------------------------------------------------
    def stop(self) -> str:
        """First call: ask the running command to save at its next step and exit (SIGINT, and the
        ``STOP`` file where it has one); no later command starts. Second call: kill it now.
        Returns what was done: ``"asked"``, ``"killed"`` or ``"nothing"``."""
        proc = self._proc
        if not self.running or proc is None:
            return "nothing"
        self._stops += 1
        if self._stops == 1:
            self.status = STOPPING
            command = self.command
            if command is not None and command.stop_file is not None:
                try:
                    Path(command.stop_file).touch()
                except OSError:
                    pass
            # the channel a child always honours, whatever its signal dispositions; then SIGINT
            if proc.stdin is not None:
                try:
                    proc.stdin.write(STOP_LINE)
                    proc.stdin.flush()
                except (OSError, ValueError):
                    pass
            _signal(proc, signal.SIGINT if os.name == "posix" else signal.SIGTERM)
            return "asked"
        _kill(proc)
        return "killed"

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """End the run for good (napari or the viewer is closing): ask it to save, wait up to
        ``grace_s`` seconds, then kill it; returns when no child of this run is alive."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._close_stdin()
            return
        if self._stops == 0:
            self.stop()
        try:
            proc.wait(timeout=max(0.0, grace_s))
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
        self._close_stdin()
        self.status = STOPPED if self.status in (RUNNING, STOPPING) else self.status
        _LIVE.discard(self)

    def _close_stdin(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except (ProcessLookupError, OSError):
        pass


def _read_child(proc: subprocess.Popen, index: int, events: bool, out: "queue.Queue") -> None:
    """Reader thread: JSON lines of standard output into ``out``, then the exit status."""
    if events and proc.stdout is not None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("{"):
                continue
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.put(("event" if "event" in item else "result", item))
        proc.stdout.close()
    returncode = proc.wait()
    out.put(("exit", ChildExit(index, returncode)))


def stderr_tail(log_dir: Path, lines: int = 3) -> str:
    """The last lines a run's children wrote to standard error, as one line."""
    try:
        text = (Path(log_dir) / "stderr.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("$ ")]
    return " | ".join(kept[-lines:])


# Runs with a live child, so that a Python exit (napari's last window closed) ends them too.
_LIVE: "set[ChildRun]" = set()


def shutdown_all(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """End every run of this process (at interpreter exit, and when napari quits)."""
    for run in list(_LIVE):
        run.shutdown(grace_s)


def _at_exit() -> None:
    shutdown_all(grace_s=3.0)


import atexit  # noqa: E402

atexit.register(_at_exit)


# ---- the child side ----------------------------------------------------------------------------------
_ORPHANED = threading.Event()


def _ask_run_to_stop() -> None:
    """In the child: the training loop saves at its next step and stops (no signal involved)."""
    runtime = sys.modules.get("napari_nemesis.train.runtime")
    if runtime is None:
        from ..train import runtime  # the run has not loaded it yet; it will see the request
    runtime.request_stop()


def _parent_gone() -> None:
    """In the child, once: the parent has gone. Ask the run to stop (it saves at its next step and
    exits 130), also with SIGINT, and end the process ``ORPHAN_GRACE_S`` seconds later at the latest,
    waiting for a checkpoint save in progress to finish first."""
    if _ORPHANED.is_set():
        return
    _ORPHANED.set()
    try:  # later writes to standard output (events) go nowhere instead of failing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass

    def end_later() -> None:
        time.sleep(ORPHAN_GRACE_S)
        runtime = sys.modules.get("napari_nemesis.train.runtime")
        if runtime is not None:  # never cut a save short: hold the lock, then end
            runtime.SAVE_LOCK.acquire(timeout=SAVE_WAIT_S)
        os._exit(EXIT_STOPPED)

    threading.Thread(target=end_later, name="nemesis orphan end", daemon=True).start()
    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
        os.kill(os.getpid(), signal.SIGINT)
    try:
        _ask_run_to_stop()
    except Exception:  # pragma: no cover - the SIGINT above and the deadline still end the run
        pass


def _watch_parent() -> None:
    """In the child: a ``stop`` line on standard input asks the run to stop; when standard input
    closes (the parent is gone), stop (save) and end."""

    def watch() -> None:
        pending = b""
        try:  # the raw descriptor: a buffered reader's lock would block the interpreter's exit
            while True:
                chunk = os.read(0, 4096)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip() == STOP_LINE.strip():
                        _ask_run_to_stop()
                pending = pending[-64:]
        except OSError:
            pass
        _parent_gone()

    threading.Thread(target=watch, name="nemesis parent watch", daemon=True).start()


class _ToParent:
    """The child's standard output: when the parent has gone (a broken pipe), the run is asked to
    stop and its events go nowhere, instead of the next event killing the run before it saves."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not _ORPHANED.is_set():
            try:
                return self._stream.write(text)
            except (BrokenPipeError, OSError, ValueError):
                _parent_gone()
        return len(text)

    def flush(self) -> None:
        if not _ORPHANED.is_set():
            try:
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                _parent_gone()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def child_main(argv: list[str]) -> int:
    """``nemesis ARGV`` at a lower priority, ending itself when its parent is gone."""
    if hasattr(os, "nice"):
        try:
            os.nice(CHILD_NICENESS)
        except OSError:
            pass
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # inherited (``nohup napari &``): Stop must work
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get(WATCH_ENV) == "1":
        sys.stdout = _ToParent(sys.stdout)
        _watch_parent()
    from ..cli import main

    return main(argv)


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(child_main(sys.argv[1:]))
