"""The Project dock's logic: the labelling project's scans, what is left to label, the next scan.

One :class:`ProjectController` per session (``session.feature("project")``). It shows the project
the session's labelling uses (``session.labels_project``, which the Labelling dock sets) through
the core's one account of it, ``labels.LabelProject.status()`` (what ``nemesis labels status``
prints): per scan the labelled / skipped / unlabelled superpatches and the positives per organ,
and the scan to label next. It is read again in a worker whenever the project or its labels
change (``session.events.project`` / ``session.events.labels``, a short moment after the last
change), never on the GUI thread.

*Open next unlabelled scan* opens the next scan with work left after the one being labelled
(``LabelProject.next_unlabelled``) the way File > Open does (``session.open_scan``; a scan already
open in the viewer is made active instead of being read twice); the Labelling dock then opens its
labels. *Add scans from folder* adds every scan of a folder (``LabelProject.add_folder``), starting
the project, with the grid of the weights in use, when there is none yet.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from psygnal import Signal, SignalGroup

from ....errors import NemesisInputError
from ..._workers import FAILED, RUNNING, RunState, start_job

#: After a label changes, the status is read again this long after the last change (ms).
REFRESH_DELAY_MS = 400


# ---- jobs (worker threads; core calls only) ---------------------------------------------------------
def status_job(project_dir: Path, *, cancel, report) -> dict[str, Any] | None:
    """``LabelProject.status()`` of the folder, or None when it holds no project yet."""
    from ....labels import PROJECT_FILE, LabelProject

    report({"event": "stage", "name": "reading the project"})
    if not (Path(project_dir) / PROJECT_FILE).is_file():
        return None
    return LabelProject.open(project_dir).status()


def add_folder_job(project_dir: Path, folder: Path, weights, models, *, cancel, report) -> dict[str, Any]:
    """Every scan of ``folder`` into the project (started with the weights' grid if there is none)."""
    from ....data import DEFAULT_SPACING_ZYX
    from ....labels import PROJECT_FILE, LabelProject
    from ..._models import weights_geometry

    report({"event": "stage", "name": f"adding the scans of {Path(folder).name}"})
    if (Path(project_dir) / PROJECT_FILE).is_file():
        project = LabelProject.open(project_dir)
    else:
        geometry = weights_geometry(weights, models)
        spacing = geometry.spacing_zyx if not isinstance(geometry.spacing_zyx, str) else DEFAULT_SPACING_ZYX
        project = LabelProject.open(project_dir, create=True, superpatch=geometry.superpatch, spacing_zyx=spacing)
    return project.add_folder(folder)


class ProjectEvents(SignalGroup):
    status = Signal(object)  # the project's status (LabelProject.status()), or None: no project yet
    message = Signal(str)  # one line for the dock


class ProjectController:
    """The labelling project's scans for the Project dock; open the next one, add a folder."""

    def __init__(self, session) -> None:
        from qtpy.QtCore import QTimer

        self._session = weakref.ref(session)
        self.events = ProjectEvents()
        self.status: dict[str, Any] | None = None
        self.message = ""
        self._states = {"status": RunState("project status"), "add": RunState("add scans")}
        self._jobs: dict[str, Any] = {}
        self._again = False  # a change came while the status was being read: read it once more
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_DELAY_MS)
        self._timer.timeout.connect(lambda: self.refresh(wait=False))
        session.events.project.connect(lambda _path: self.refresh(wait=False))
        session.events.labels.connect(lambda _indices: self._timer.start())
        if session.labels_project is not None:
            self.refresh(wait=False)

    @property
    def session(self):
        session = self._session()
        if session is None:
            raise NemesisInputError("this project controller's viewer was closed")
        return session

    @property
    def project_dir(self) -> Path | None:
        """The labelling project shown: the one the session's labelling uses."""
        return self.session.labels_project

    def _say(self, text: str) -> None:
        self.message = text
        self.events.message.emit(text)

    # ---- reading ------------------------------------------------------------------------------------
    def refresh(self, wait: bool = True):
        """Read the project's status again (in a worker); ``wait``: until it is shown."""
        folder = self.project_dir
        if folder is None:
            self._set_status(None)
            return None
        if "status" in self._jobs:
            self._again = True
            return self._wait_for("status") if wait else None
        job = start_job("project status", status_job, folder, state=self._states["status"],
                        on_done=self._set_status, on_end=lambda st: self._ended("status", st),
                        description="reading the labelling project", activity=False)
        self._jobs["status"] = job
        return self._wait_for("status") if wait else job

    def _wait_for(self, name: str):
        job = self._jobs.get(name)
        if job is not None:
            job.wait()
            job.outcome()
        return self.status

    def _set_status(self, status) -> None:
        if self._session() is None:
            return
        self.status = status
        self.events.status.emit(status)

    def _ended(self, name: str, state: RunState) -> None:
        self._jobs.pop(name, None)
        if state.status == FAILED:
            self._say(state.error)
        if name == "status" and self._again:
            self._again = False
            self.refresh(wait=False)

    def wait(self, timeout_s: float = 60.0) -> None:
        """Wait (GUI live) for the reading and adding jobs running now."""
        for job in list(self._jobs.values()):
            job.wait(int(timeout_s * 1000))

    # ---- the active scan ------------------------------------------------------------------------------
    def active_id(self) -> str | None:
        """The id of the scan being labelled, when it is one of the project's."""
        scan = self.session.labels_scan
        if scan is None or self.status is None:
            return None
        target = Path(scan).resolve()
        for row in self.status["scans"]:
            if Path(row["image"]).resolve() == target:
                return row["id"]
        return None

    def row(self, scan_id: str) -> dict[str, Any] | None:
        if self.status is None:
            return None
        return next((r for r in self.status["scans"] if r["id"] == scan_id), None)

    # ---- opening ------------------------------------------------------------------------------------
    def next_unlabelled(self):
        """The scan to label next after the one being labelled (``LabelProject.next_unlabelled``)."""
        from ....labels import LabelProject

        folder = self.project_dir
        if folder is None or self.status is None:
            raise NemesisInputError("no labelling project yet: label a scan (Labelling dock) or add scans from "
                                    "a folder first")
        return LabelProject.open(folder).next_unlabelled(after=self.session.labels_scan, status=self.status)

    def open_next(self, wait: bool = False):
        """Open the next scan with superpatches left to label; None when every one is done."""
        following = self.next_unlabelled()
        if following is None:
            self._say("every scan of the project is labelled or skipped")
            return None
        self._say(f"opening {following.scan_id} (next scan with unlabelled superpatches)")
        self.open(following.image, wait=wait)
        return following

    def open(self, image, wait: bool = False):
        """Open a project scan in the viewer, as File > Open does; one already open becomes active."""
        session = self.session
        target = Path(image)
        if not target.exists():
            raise NemesisInputError(f"{target}: image not found; was it moved? (the project lists it)")
        for layer in session.scan_layers():
            source = layer.metadata.get("source")
            if source and Path(str(source)).resolve() == target.resolve():
                return session.use_scan_layer(layer, wait=wait)
        return session.open_scan(target, wait=wait)

    def open_id(self, scan_id: str, wait: bool = False):
        row = self.row(scan_id)
        if row is None:
            raise NemesisInputError(f"{scan_id}: not a scan of the labelling project")
        return self.open(row["image"], wait=wait)

    # ---- adding ------------------------------------------------------------------------------------
    def add_folder(self, folder, wait: bool = True):
        """Add every scan of ``folder`` to the project (``LabelProject.add_folder``), then show it."""
        project = self.project_dir
        if project is None:
            raise NemesisInputError("no labelling project: pick one in the Labelling dock first")
        if "add" in self._jobs:
            raise NemesisInputError("scans are being added already; wait for it")
        session = self.session
        job = start_job("add scans", add_folder_job, project, Path(folder), session.weights, session.models,
                        state=self._states["add"], on_done=self._added, on_end=lambda st: self._ended("add", st),
                        description="adding scans", activity=False)
        self._jobs["add"] = job
        if wait:
            job.wait()
            result = job.outcome()
            self._wait_for("status")
            return result
        return job

    def _added(self, result: dict[str, Any]) -> None:
        added, already, left = result["added"], result["already"], result["left_out"]
        text = f"{len(added)} scan(s) added from {Path(result['folder']).name}"
        if already:
            text += f", {len(already)} already in the project"
        if left:
            text += f"; left out: {', '.join(left[:3])}{' ...' if len(left) > 3 else ''}"
        if not added and not already:
            text = f"{result['folder']}: no scans found" + (f" (left out: {', '.join(left[:3])})" if left else "")
        self._say(text)
        self.refresh(wait=False)

    @property
    def busy(self) -> bool:
        """A read or an add is running."""
        return any(state.status == RUNNING for state in self._states.values())
