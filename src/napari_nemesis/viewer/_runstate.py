"""One vocabulary of run states for every kind of work the viewer starts: thread jobs
(:mod:`._workers`) and child processes (:mod:`._process`, the Training dock's runs).

A ``str`` enum: a state compares equal to its name (``state.status == "done"``), prints as it, and
goes into JSON as it, so scripts and tests that read the plain names keep working.
"""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    IDLE = "idle"  # never started
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop; saves at its next step (child processes)
    DONE = "done"
    CANCELLED = "cancelled"  # a thread job stopped by Cancel
    STOPPED = "stopped"  # a child process stopped by Stop, its state saved (it can resume)
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @property
    def active(self) -> bool:
        """Still working (running or stopping)."""
        return self in (RunStatus.RUNNING, RunStatus.STOPPING)

    @property
    def ended(self) -> bool:
        return self in (RunStatus.DONE, RunStatus.CANCELLED, RunStatus.STOPPED, RunStatus.FAILED)


IDLE, RUNNING, STOPPING, DONE, CANCELLED, STOPPED, FAILED = (
    RunStatus.IDLE, RunStatus.RUNNING, RunStatus.STOPPING, RunStatus.DONE, RunStatus.CANCELLED,
    RunStatus.STOPPED, RunStatus.FAILED)
