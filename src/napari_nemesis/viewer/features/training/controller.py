"""The Training dock's logic: a run of ``nemesis labels train`` or ``nemesis pretrain`` beside napari.

One :class:`TrainingController` per session (:func:`training_for`). A run is one or more
``nemesis`` commands in child processes (:mod:`._process`): for a dataset folder, first a
``labels fill`` per case (its label map into the labelling project), then the training command
with ``--events``. A GUI timer drains the events a reader thread collected (at most
:data:`POLL_MS` apart, never blocking), so napari's event loop only ever does bookkeeping: the
progress, the live plot's points, the ETA.

Modes: ``linear`` (probe head on the frozen encoder) and ``finetune`` (encoder + head), both
``nemesis labels train`` on the labelling project; ``pretrain`` (continued self-supervised
pretraining, ``nemesis pretrain --init`` the session's checkpoint) on the opened scan(s), the
project's scans and/or a dataset folder's images. Stop asks the run to save at its next step;
a second Stop ends it at once; closing the viewer or napari ends it too (it saves first, within
a few seconds). Every run folder keeps ``widget-run.json`` (what was asked and the commands),
``log.jsonl``, ``stderr.log`` and the command's own checkpoints, so a stopped run resumes.

When a probe run ends well, its head (and, when fine-tuned, its encoder) is offered to the
session: :meth:`TrainingController.apply` loads them (``session.set_weights``) and recomputes the
organ probabilities, so the heatmaps change; :meth:`TrainingController.use_bundled` goes back.

The label-efficiency curve (:class:`CurveController`, ``controller.curve``) is the core's
``labels.curve.label_curve`` (what ``nemesis labels curve`` prints) in a worker thread of this
process: cross-validated AUROC against the number of labelled superpatches, each point shown as it
is done; Cancel stops it between two heads; the encoder's features are kept between runs, so a
refresh after new labels encodes only those. It runs on request, and, when asked, a moment after
the labels change (``session.events.labels``).
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from psygnal import Signal, SignalGroup

from ....errors import NemesisError, NemesisInputError
from ..._process import DONE, FAILED, RUNNING, STOPPED, STOPPING, ChildRun, Command
from ..._napari_private import qt_window

MODES = ("linear", "finetune", "pretrain")
MODE_TITLES = {
    "linear": "linear probe (frozen encoder)",
    "finetune": "fine-tune (encoder + head)",
    "pretrain": "continued pretraining (self-supervised)",
}
#: How often (ms) the GUI collects a running child's events.
POLL_MS = 100
#: What the widget asked for, kept in every run folder (and read back to resume).
RUN_FILE = "widget-run.json"
DEFAULT_PRETRAIN_STEPS = 200
#: A new head replaces the heatmaps' one by itself only with at least this held-out AUROC.
MIN_AUTO_AUROC = 0.6


@dataclass
class TrainingConfig:
    """The Training dock's fields. Zero means "the command's default"."""

    mode: str = "linear"
    use_project: bool = True  # train on the labelling project's labels (pretrain: its scans)
    project: str = ""  # default: the Labelling dock's project
    dataset: str = ""  # a dataset folder: its labelled cases are filled into the project (pretrain: its images)
    steps: int = 0  # linear: full-batch steps; finetune: epochs; pretrain: steps
    lr: float = 0.0
    label_ratio: float = 1.0  # share of the dataset folder's labelled cases used (nested subsets)
    batch: int = 0
    folds: int = 5
    device: str = "auto"
    out: str = ""  # default: PROJECT/runs/<mode>-<date-time>
    checkpoint: str = ""  # the encoder to start from; default: the session's (the bundled weights)
    apply_when_done: bool = True
    log_every: int = 1
    seed: int = 0

    def checked(self) -> "TrainingConfig":
        if self.mode not in MODES:
            raise NemesisInputError(f"training mode {self.mode!r}: choose {', '.join(MODES)}")
        if not 0.0 < float(self.label_ratio) <= 1.0:
            raise NemesisInputError(f"label ratio {self.label_ratio}: must be in (0, 1]")
        if self.steps < 0 or self.batch < 0 or self.lr < 0 or self.log_every < 1 or self.folds < 2:
            raise NemesisInputError("steps, batch and learning rate must be >= 0 (0: default), folds >= 2")
        if not self.use_project and not self.dataset and self.mode != "pretrain":
            raise NemesisInputError("nothing to train on: tick the labelling project or give a dataset folder")
        return self


@dataclass
class TrainingRun:
    """One run as the dock shows it: progress, the plot's points, the ETA, the outcome."""

    config: TrainingConfig
    out: Path
    commands: list[Command]
    status: RunStatus = RUNNING
    message: str = "starting"
    step: int = 0
    total: int = 0
    device: str = ""
    resumed: bool = False
    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    auroc_steps: list[int] = field(default_factory=list)
    auroc: list[float] = field(default_factory=list)
    stages: list[tuple[int, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    eta_s: float | None = None
    result: dict[str, Any] | None = None
    error: str = ""
    head: str | None = None  # the new probe head (probe modes)
    checkpoint: str | None = None  # its encoder: None = the bundled weights
    encoder: str | None = None  # pretraining: the new encoder checkpoint
    source_checkpoint: str | None = None  # the encoder the run started from (None: bundled)
    _rate_from: tuple[float, int] | None = None

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def running(self) -> bool:
        return self.status in (RUNNING, STOPPING)

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class TrainingEvents(SignalGroup):
    run = Signal(object)  # TrainingRun: started, progressed (at most every POLL_MS), ended
    offered = Signal(object)  # TrainingRun that ended well: its weights can be used
    curve = Signal(object)  # CurveView: the label-efficiency curve started, got a point, progressed, ended


#: The curve's progress is shown at most this often (ms); its points and its end at once.
CURVE_PROGRESS_MS = 250
#: With "refresh when labels change", the curve is computed again this long after the last change (ms).
CURVE_REFRESH_MS = 3000
#: Seeds (random subsets per size) of the dock's curve unless asked otherwise.
CURVE_SEEDS = 3


@dataclass
class CurveView:
    """The label-efficiency curve as the dock shows it: the points so far, progress, the result."""

    status: str = "idle"  # a RunStatus name
    done: int = 0
    total: int = 0
    message: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None  # label_curve's result once it ended well
    stale: bool = False  # labels changed since the curve shown was computed
    project: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running"


def curve_job(project_dir: Path, weights_checkpoint, models, seeds: int, folds: int, device: str, cache: dict,
              *, cancel, report) -> dict[str, Any]:
    """``labels.curve.label_curve`` on the project with the session's encoder (worker thread)."""
    from ....labels.curve import label_curve
    from ..._jobs import resolved_device

    report({"event": "stage", "name": "loading the encoder"})
    model = models.model(weights_checkpoint)
    return label_curve(project_dir, model, seeds=seeds, folds=folds, device=resolved_device(device), cache=cache,
                       progress=report, cancel=cancel)


class CurveController:
    """Compute (and recompute) the label-efficiency curve of the training's project."""

    def __init__(self, owner: "TrainingController", session) -> None:
        from qtpy.QtCore import QTimer

        from ..._workers import RunState

        self._owner = weakref.ref(owner)
        self.view = CurveView()
        self.seeds = CURVE_SEEDS
        self.auto = False  # recompute a moment after the labels change
        self._state = RunState("label curve")
        self._job = None
        self._cache: dict = {}  # encoder features by (encoder, scan voxels, superpatch, grid)
        self._pending = False
        self._shown_at = 0.0
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(CURVE_REFRESH_MS)
        self._timer.timeout.connect(self._auto_refresh)
        session.events.labels.connect(self._on_labels)
        session.events.weights.connect(lambda _choice: self._cache.clear())  # another encoder: other features

    @property
    def running(self) -> bool:
        return self._job is not None

    def set_seeds(self, seeds: int) -> None:
        """Random subsets per size of the next curve (the spread shown)."""
        if int(seeds) < 1:
            raise NemesisInputError(f"seeds {seeds}: at least 1")
        self.seeds = int(seeds)

    def set_auto(self, on: bool) -> None:
        """Recompute the curve a moment after the labels change (or not)."""
        self.auto = bool(on)
        if not self.auto:
            self._timer.stop()

    def start(self, config: TrainingConfig | None = None, seeds: int | None = None, wait: bool = False):
        """Compute the curve of the project in ``config`` (default: the dock's) in a worker."""
        from ..._workers import start_job

        owner = self._owner()
        if owner is None:
            raise NemesisInputError("this training controller's viewer was closed")
        if self._job is not None:
            raise NemesisInputError("the label-efficiency curve is being computed; wait for it or press Cancel")
        cfg = config or owner.config
        if seeds is not None:
            self.set_seeds(seeds)
        project = owner._project_dir(cfg)
        session = owner.session
        self.view = CurveView(status="running", message="starting", project=str(project))
        job = start_job("label curve", curve_job, project, owner._encoder(cfg), session.models, self.seeds,
                        max(2, int(cfg.folds)), cfg.device, self._cache, state=self._state,
                        on_event=self._on_event, on_done=self._done, on_end=self._ended,
                        description="label-efficiency curve", activity=False)
        self._job = None if job.finished else job
        owner.events.curve.emit(self.view)
        if wait:
            job.wait()
            return job.outcome()
        return job

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.view.message = "cancelling: stops before the next head"
            self._emit()

    def wait(self, timeout_s: float = 120.0) -> CurveView:
        """Wait (GUI live) until the curve running now has ended."""
        job = self._job
        if job is not None:
            job.wait(int(timeout_s * 1000))
        return self.view

    def _emit(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner.events.curve.emit(self.view)

    def _on_event(self, event: dict) -> None:
        view, kind = self.view, event.get("event")
        view.done, view.total = self._state.done, self._state.total
        if kind == "point":
            view.points = view.points + [event["point"]]
            p = event["point"]
            auroc = "-" if p["auroc_mean"] is None else f"{p['auroc_mean']:.3f}"
            view.message = f"{event.get('done')}/{event.get('of')} sizes: AUROC {auroc} with {p['labelled']} labels"
        elif kind == "stage":
            view.message = str(event.get("name", ""))
        elif kind != "step":
            return
        now = time.monotonic()
        if kind == "step" and now - self._shown_at < CURVE_PROGRESS_MS / 1000.0:
            return  # progress at most a few times a second: each change repaints part of the dock
        self._shown_at = now
        self._emit()

    def _done(self, result: dict[str, Any]) -> None:
        self.view.result = result
        self.view.points = list(result["points"])
        self.view.message = result["message"]

    def _ended(self, state) -> None:
        self._job = None
        self.view.status = str(state.status)
        if state.status == "failed":
            self.view.message = state.error
        elif state.status == "cancelled":
            self.view.message = "cancelled"
        self.view.done, self.view.total = state.done, state.total
        self._emit()
        if self._pending:
            self._pending = False
            self._timer.start()

    def _on_labels(self, indices) -> None:
        if indices is None:  # another scan's labels opened: the project's labels are the same
            return
        if self.view.result is not None or self.view.running:
            self.view.stale = True
            self._emit()
        if self.auto:
            self._timer.start()  # restarted by every change: runs once the labelling pauses

    def _auto_refresh(self) -> None:
        if not self.auto:
            return
        if self._job is not None:
            self._pending = True  # once the running one ends
            return
        from ....errors import NemesisError

        try:
            self.start()
        except NemesisError as exc:
            self.view.message = str(exc)
            self._emit()

    def shutdown(self) -> None:
        """The viewer is closing: stop the curve between two heads."""
        try:
            self._timer.stop()
        except RuntimeError:
            pass
        if self._job is not None:
            self._job.cancel()


class TrainingController:
    """Start, follow, stop, resume and apply training runs of one session."""

    def __init__(self, session) -> None:
        from qtpy.QtCore import QTimer

        self._session = weakref.ref(session)
        self.events = TrainingEvents()
        self.config = TrainingConfig(device=session.settings.device)
        self.run: TrainingRun | None = None
        self._child: ChildRun | None = None
        self._apply_pending: str | None = None
        self._timer = QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)
        session.events.run.connect(self._on_session_run)
        self.curve = CurveController(self, session)
        _hook_closing(self, session)

    @property
    def session(self):
        session = self._session()
        if session is None:
            raise NemesisInputError("this training controller's viewer was closed")
        return session

    @property
    def pid(self) -> int | None:
        """The running child's process id (None when none runs)."""
        return self._child.pid if self._child is not None else None

    # ---- building a run -----------------------------------------------------------------------------
    def _project_dir(self, cfg: TrainingConfig) -> Path:
        if cfg.project:
            return Path(cfg.project).expanduser()
        return self.session.labels_project or _default_project()

    def _grid_args(self, project: Path) -> list[str]:
        """``--superpatch``/``--spacing`` for a project made by a fill: the viewer's grid."""
        from ....labels import PROJECT_FILE

        ctx = self.session.scan
        if (project / PROJECT_FILE).is_file() or ctx is None:
            return []
        from ....data import Spacing

        return ["--superpatch", str(int(ctx.grid.superpatch)),
                "--spacing", *Spacing.parse(ctx.prepared.pre.spacing_zyx).cli_words()]

    def _dataset_cases(self, cfg: TrainingConfig, labelled: bool):
        from ....data import find_cases, label_ratio_subset

        cases = find_cases(Path(cfg.dataset).expanduser(), include_unlabelled=not labelled)
        if labelled:
            cases = [c for c in cases if c.label is not None]
            if cfg.label_ratio < 1.0:
                cases = label_ratio_subset(cases, float(cfg.label_ratio), cfg.seed)
        if not cases:
            raise NemesisInputError(f"{cfg.dataset}: no {'labelled ' if labelled else ''}scans found")
        return cases

    def _encoder(self, cfg: TrainingConfig) -> str | None:
        return cfg.checkpoint or self.session.weights.checkpoint or None

    def build(self, cfg: TrainingConfig, out: Path) -> list[Command]:
        """The ``nemesis`` commands of a run (see the module docstring)."""
        common = ["--device", cfg.device, "--seed", str(cfg.seed), "--log-every", str(cfg.log_every)]
        encoder = self._encoder(cfg)
        if cfg.mode == "pretrain":
            return [self._pretrain_command(cfg, out, encoder, common)]
        project = self._project_dir(cfg) if cfg.use_project else out / "dataset-project"
        commands = []
        if cfg.dataset:
            grid = self._grid_args(project)
            for case in self._dataset_cases(cfg, labelled=True):
                commands.append(Command(["labels", "fill", str(project), str(case.image), str(case.label), *grid],
                                        f"fill {case.case_id}"))
                grid = []
        args = ["labels", "train", str(project), "--out", str(out), "--mode", cfg.mode, "--folds", str(cfg.folds),
                "--events", "--json", *common]
        if encoder:
            args += ["--checkpoint", str(encoder)]
        if cfg.steps:
            args += ["--epochs", str(cfg.steps)]
        if cfg.lr:
            args += ["--lr", f"{cfg.lr:g}"]
        if cfg.batch:
            args += ["--batch", str(cfg.batch)]
        commands.append(Command(args, f"labels train ({cfg.mode})", events=True, stop_file=out / "STOP"))
        return commands

    def _pretrain_command(self, cfg: TrainingConfig, out: Path, encoder: str | None, common: list[str]) -> Command:
        from ....labels import LabelProject
        from ....weights import default_checkpoint_path

        images: list[Path] = []
        if self.session.labels_scan is not None:
            images.append(Path(self.session.labels_scan))  # the opened scan
        if cfg.use_project:
            project = self._project_dir(cfg)
            try:
                images += [s.image for s in LabelProject.open(project).scans]
            except NemesisInputError:
                pass  # no project yet: the opened scan (and the dataset) only
        if cfg.dataset:
            images += [c.image for c in self._dataset_cases(cfg, labelled=False)]
        unique = list(dict.fromkeys(Path(p).resolve() for p in images))
        if not unique:
            raise NemesisInputError("nothing to pretrain on: open a scan, or give a dataset folder")
        import hashlib

        from ....atomic import write_json_atomic

        # the scan list is named by its content, in the project: the same scans again reuse the
        # preprocessed cache ``nemesis pretrain`` keeps per data path; the run folder keeps a copy
        entries = [{"image": str(p), "id": f"scan{k:03d}"} for k, p in enumerate(unique)]
        digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:12]
        listing = self._project_dir(cfg) / "pretraining" / f"scans-{digest}.json"
        if not listing.is_file():
            write_json_atomic(listing, entries)
        write_json_atomic(out / "pretrain-scans.json", entries)
        steps = cfg.steps or DEFAULT_PRETRAIN_STEPS
        args = ["pretrain", str(listing), "--out", str(out), "--init", str(encoder or default_checkpoint_path()),
                "--steps", str(steps), "--events", "--json", *common]
        if cfg.lr:
            args += ["--lr", f"{cfg.lr:g}"]
        if cfg.batch:
            args += ["--batch", str(cfg.batch)]
        return Command(args, "pretrain", events=True)

    # ---- starting, stopping, resuming ---------------------------------------------------------------
    def start(self, config: TrainingConfig | None = None) -> TrainingRun:
        """Start a run with ``config`` (default: :attr:`config`) in a child process."""
        if self.run is not None and self.run.running:
            raise NemesisInputError("a training run is already running; stop it first")
        cfg = (config or self.config).checked()
        self.config = cfg
        project = self._project_dir(cfg)
        out = Path(cfg.out).expanduser() if cfg.out else _new_run_dir(project / "runs", cfg.mode)
        commands = self.build(cfg, out)
        out.mkdir(parents=True, exist_ok=True)
        encoder = self._encoder(cfg)
        self._write_run_file(out, cfg, commands, "started", encoder)
        return self._launch(TrainingRun(cfg, out, commands, source_checkpoint=encoder))

    def resume(self, out: str | Path | None = None) -> TrainingRun:
        """Continue a stopped run (default: the last one) where its saved state is."""
        if self.run is not None and self.run.running:
            raise NemesisInputError("a training run is already running; stop it first")
        out = Path(out) if out is not None else (self.run.out if self.run is not None else None)
        if out is None:
            raise NemesisInputError("no run to resume: start one, or pick its folder")
        try:
            doc = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise NemesisInputError(f"{out}: not a run of the Training widget (no readable {RUN_FILE})") from None
        known = {f.name for f in fields(TrainingConfig)}
        cfg = TrainingConfig(**{k: v for k, v in doc["config"].items() if k in known})
        train = doc["commands"][-1]
        saved = (out / "last.state.json") if cfg.mode == "pretrain" else (out / "options.json")
        args = list(train) + (["--resume"] if saved.is_file() else [])  # stopped before any save: again
        command = Command(args, f"{'pretrain' if cfg.mode == 'pretrain' else 'labels train'} (resumed)", events=True,
                          stop_file=None if cfg.mode == "pretrain" else out / "STOP")
        self.config = cfg
        run = TrainingRun(cfg, out, [command], resumed=True, source_checkpoint=doc.get("encoder"))
        _restore_curve(run, self.run if self.run is not None and Path(self.run.out) == out else None)
        self._write_run_file(out, cfg, [Command(train, "")], "resumed", run.source_checkpoint)
        return self._launch(run)

    def _launch(self, run: TrainingRun) -> TrainingRun:
        self.run = run
        self._child = ChildRun(run.commands, run.out).start()
        run.message = f"{run.commands[0].name}: starting (pid {self._child.pid})"
        self._timer.start()
        self.events.run.emit(run)
        return run

    def stop(self) -> str:
        """First Stop: the run saves at its next step and ends; second Stop: it ends at once."""
        if self._child is None or self.run is None or not self.run.running:
            return "nothing"
        what = self._child.stop()
        self.run.status = self._child.status
        self.run.message = ("stopping: saving at the next step (Stop again to end it now)" if what == "asked"
                            else "ended at once (the last saved state is kept)")
        self.events.run.emit(self.run)
        return what

    def shutdown(self, grace_s: float | None = None) -> None:
        """End a running child for good (the viewer or napari is closing); it saves first. A
        label-efficiency curve being computed stops too."""
        self.curve.shutdown()
        child = self._child
        if child is None:
            return
        from ..._process import SHUTDOWN_GRACE_S

        child.shutdown(SHUTDOWN_GRACE_S if grace_s is None else grace_s)
        try:
            self._timer.stop()
        except RuntimeError:  # Qt objects already deleted (the application is ending)
            pass
        if self.run is not None and self.run.running:
            self.run.status = STOPPED
            self.run.ended = time.monotonic()

    def wait(self, timeout_s: float = 120.0) -> TrainingRun | None:
        """Wait (GUI live) until the run has ended and, if it is applied, its heatmaps are shown."""
        from qtpy.QtCore import QEventLoop, QTimer

        deadline = time.monotonic() + timeout_s
        loop = QEventLoop()
        while time.monotonic() < deadline and ((self.run is not None and self.run.running) or self._apply_pending):
            QTimer.singleShot(20, loop.quit)
            loop.exec()
        return self.run

    # ---- events -----------------------------------------------------------------------------------------
    def _poll(self) -> None:
        child, run = self._child, self.run
        if child is None or run is None:
            self._timer.stop()
            return
        events = child.poll()
        for event in events:
            _apply_event(run, event)
        if child.status in (DONE, STOPPED, FAILED):
            self._timer.stop()
            self._finish(run, child)
        elif events:
            if child.status == STOPPING:
                run.status = STOPPING
            self.events.run.emit(run)

    def _finish(self, run: TrainingRun, child: ChildRun) -> None:
        run.status = child.status
        run.ended = time.monotonic()
        run.eta_s = None
        run.result = child.result
        if child.status == DONE:
            self._succeeded(run)
        elif child.status == STOPPED:
            run.message = (f"stopped at step {run.step} of {run.total}; its state is saved in {run.out}: "
                           "Resume continues")
        else:
            run.error = child.error
            run.message = child.error
            _notify_error(child.error)
        train = [a for a in run.commands[-1].args if a != "--resume"]
        self._write_run_file(run.out, run.config, [Command(train, "")], run.status, run.source_checkpoint)
        self.events.run.emit(run)
        if child.status == DONE:
            self.events.offered.emit(run)
            if run.config.apply_when_done and run.head:
                auroc = (run.result or {}).get("auroc_mean")
                if auroc is None or float(auroc) < MIN_AUTO_AUROC:
                    run.message += (f"; not used for the heatmaps: its held-out AUROC "
                                    f"{'is unknown' if auroc is None else f'{float(auroc):.2f}'} (below "
                                    f"{MIN_AUTO_AUROC:g}: near chance). 'Use the new head' applies it anyway")
                    self.events.run.emit(run)
                    return
                try:
                    self.apply(run)
                except NemesisError as exc:
                    _notify_error(str(exc))

    def _succeeded(self, run: TrainingRun) -> None:
        result = run.result or _read_json(run.out / ("pretrain.json" if run.mode == "pretrain" else "train.json"))
        run.result = result
        if run.mode == "pretrain":
            run.encoder = str(result.get("checkpoint") or run.out / "last.safetensors")
            run.message = (f"done: new encoder {run.encoder}; train a linear probe on it (Use as encoder) to see "
                           "its heatmaps")
            return
        run.head = str(result["head"])
        run.checkpoint = str(result["checkpoint"]) if run.mode == "finetune" else run.source_checkpoint
        auroc = result.get("auroc_mean")
        estimate = "-" if auroc is None else f"{auroc:.3f}"
        run.message = (f"done: {result.get('n_labelled')} labelled superpatches, held-out AUROC {estimate} "
                       f"({result.get('estimate')}); new head {Path(run.head).name} in the run folder")

    # ---- using the result -------------------------------------------------------------------------------
    def apply(self, run: TrainingRun | None = None, remember: bool = False) -> None:
        """Use the run's head (and encoder) for the organ probabilities, then recompute them; for
        this session only unless ``remember`` (:meth:`keep`): the next napari starts with the
        weights the user picked, not with every head a trial run made."""
        run = run or self.run
        if run is None or not run.head:
            raise NemesisInputError("no new probe head to use: a probe run must end first")
        self._apply_pending = "weights"
        self.session.set_weights(run.checkpoint, run.head, wait=False, remember=remember)

    def keep(self, run: TrainingRun | None = None) -> None:
        """Use the run's head and keep it for the next sessions too."""
        self.apply(run, remember=True)

    def use_bundled(self) -> None:
        """Back to the bundled weights and head; the heatmaps are recomputed."""
        self._apply_pending = "weights"
        self.session.set_weights(None, None, wait=False)

    def use_as_encoder(self, run: TrainingRun | None = None) -> str:
        """A pretraining run's new checkpoint becomes the encoder of the next run."""
        run = run or self.run
        if run is None or not run.encoder:
            raise NemesisInputError("no new encoder: a pretraining run must end first")
        self.config.checkpoint = run.encoder
        return run.encoder

    def _on_session_run(self, job: str, state) -> None:
        from ..._workers import DONE as JOB_DONE
        from ..._workers import RUNNING as JOB_RUNNING

        pending = self._apply_pending
        if pending is None or job != pending or state.status == JOB_RUNNING:
            return
        session = self._session()
        if session is None or state.status != JOB_DONE:
            self._apply_pending = None
            return
        if job == "weights" and session.running("prepare"):
            self._apply_pending = "prepare"  # the new weights need the scan prepared again
            return
        if job in ("weights", "prepare"):
            if session.scan is None:
                self._apply_pending = None
                return
            self._apply_pending = "probabilities"
            try:
                session.run_probabilities(wait=False)
            except NemesisError as exc:
                self._apply_pending = None
                _notify_error(str(exc))
            return
        self._apply_pending = None  # the probabilities are shown

    def _write_run_file(self, out: Path, cfg: TrainingConfig, commands: list[Command], status: str,
                        encoder: str | None) -> None:
        from ....atomic import write_json_atomic

        doc = {"format": "napari-nemesis/training-widget-run", "version": 1, "mode": cfg.mode,
               "config": asdict(cfg), "encoder": encoder, "commands": [c.args for c in commands], "status": status,
               "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            write_json_atomic(out / RUN_FILE, doc)
        except OSError:
            pass


def _restore_curve(run: TrainingRun, before: TrainingRun | None) -> None:
    """A resumed run's plot starts with the curve so far: the stopped run's points (same folder),
    else the run folder's event log up to the step its saved state holds."""
    if before is not None:
        run.loss_steps, run.loss = list(before.loss_steps), list(before.loss)
        run.auroc_steps, run.auroc = list(before.auroc_steps), list(before.auroc)
        run.step, run.total = before.step, before.total
        return
    log = Path(run.out) / "log.jsonl"
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") in ("step", "eval", "fold", "epoch"):
            _apply_event(run, event)


def _apply_event(run: TrainingRun, event: dict[str, Any]) -> None:
    """One event of the child (the core's event format) into the run's progress and points."""
    kind = event.get("event")
    if kind == "start":
        run.total = int(event.get("total") or run.total)
        run.step = int(event.get("step") or 0)
        run.device = str(event.get("device") or run.device)
        run._rate_from = None
        run.message = f"{'resumed' if event.get('resumed') or run.resumed else 'started'} on {run.device}"
        if run.resumed:  # the curve so far, up to the step the run resumes from (later points are redone)
            keep = [k for k, s in enumerate(run.loss_steps) if s <= run.step]
            run.loss_steps, run.loss = [run.loss_steps[k] for k in keep], [run.loss[k] for k in keep]
            keep = [k for k, s in enumerate(run.auroc_steps) if s <= run.step]
            run.auroc_steps, run.auroc = [run.auroc_steps[k] for k in keep], [run.auroc[k] for k in keep]
    elif kind == "item":
        run.message = f"features {event.get('done')}/{event.get('total')}"
    elif kind == "stage":
        run.stages.append((run.step, str(event.get("name", ""))))
        run.message = f"fit: {event.get('name')}"
    elif kind == "step":
        run.step = int(event.get("step") or run.step)
        run.total = int(event.get("total") or run.total)
        if event.get("loss") is not None:
            run.loss_steps.append(run.step)
            run.loss.append(float(event["loss"]))
        now = time.monotonic()
        if run._rate_from is None:
            run._rate_from = (now, run.step)
        else:
            t0, s0 = run._rate_from
            if run.step > s0 and now > t0:
                run.eta_s = (run.total - run.step) * (now - t0) / (run.step - s0)
    elif kind == "eval":
        if event.get("auroc_mean") is not None:
            run.auroc_steps.append(int(event.get("step") or run.step))
            run.auroc.append(float(event["auroc_mean"]))
        run.message = f"held-out fold {int(event.get('fold', 0))}/{event.get('folds')}: AUROC so far " + (
            "-" if event.get("auroc_mean") is None else f"{event['auroc_mean']:.3f}")
    elif kind == "checkpoint":
        run.message = f"saved {event.get('what', 'checkpoint')} at step {event.get('step')}"
    elif kind == "interrupted":
        run.message = f"stopping: state saved at step {event.get('step', run.step)}"
    elif kind == "end":
        run.step = int(event.get("total") or event.get("steps") or run.step)


def _new_run_dir(runs: Path, mode: str) -> Path:
    """``RUNS/<mode>-<date-time>`` (``-2``, ``-3``, ... when started within the same second)."""
    base = runs / f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise NemesisInputError(f"{path}: the run ended without its result file") from None


def _notify_error(text: str) -> None:
    from napari.utils.notifications import show_error

    show_error(" ".join(str(text).split()))


def _hook_closing(controller: TrainingController, session) -> None:
    """Closing the viewer's window, or quitting napari, ends a running child (no orphan)."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QApplication

    ref = weakref.ref(controller)

    def end(*_args) -> None:
        c = ref()
        if c is not None:
            c.shutdown()

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(end)
    window = qt_window(session.viewer)
    if window is None:
        return

    class _CloseWatch(QObject):
        def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Close:
                from qtpy.QtCore import QTimer

                closing = weakref.ref(obj)  # never keep a closing window alive
                QTimer.singleShot(0, lambda: None if _visible(closing()) else end())
            return False

    watch = _CloseWatch(window)
    window.installEventFilter(watch)
    window.destroyed.connect(end)


def _visible(widget) -> bool:
    if widget is None:
        return False
    try:
        return bool(widget.isVisible())
    except RuntimeError:  # already deleted: closed
        return False


def _default_project() -> Path:
    from ..._settings import load_project_dir  # the same default as the Labelling dock

    return load_project_dir()


def training_for(session) -> TrainingController:
    """The training controller of a session (made on first use)."""
    return session.feature("training")
