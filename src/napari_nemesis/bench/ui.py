"""The viewer's benchmark section (``nemesis bench --ui``): does napari stay responsive?

A shown napari window opens the packaged sample CT with the plugin's widgets (the scan prepared
and the weights loaded beforehand, as when a user has opened a scan), then the same calls the
buttons make run one after the other: the organ probabilities of every superpatch, then the
whole-scan reconstruction. Meanwhile a 10 ms Qt timer on the GUI thread records how late each of
its ticks comes; the worst delay is ``ui_max_stall_ms`` (target: under 100 ms). The time from the
call to the moment its layers are shown is ``ui_probabilities_seconds`` / ``ui_recon_seconds``.
Both jobs then run again with their layers in place (``ui_rerun_*``). ``ui_frame_ms`` is the time
one canvas frame takes on the GUI thread before any result is shown, ``ui_frame_results_ms`` with
the results shown: no stall that redraws the canvas can be shorter than a frame. What the GUI
thread handled during the worst stall is ``ui_max_stall_events`` (Qt events as
``type:receiver``, in the order they began), and the worst stall while the scan was opened (its
result layers made and drawn once, before any run) is ``ui_open_max_stall_ms``.

Then the labelling workflow: the sample CT's superpatches are labelled from its organ label map
(the Labelling dock's fill, in a throw-away project) and "Train" starts a linear probe in a child
process (the Training dock, raised so that its live plot draws). ``ui_max_stall_ms_training`` is
the worst delay while that process runs and the plot updates (target: under 100 ms), and
``label_to_heatmap_seconds`` the time from "Train" to the heatmaps of the new head.

Needs a display; without one it runs under Xvfb when that is installed, else the section reports
why it was skipped. napari and Qt are imported inside ``run`` only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any

TIMER_MS = 10
STALL_TARGET_MS = 100.0
OPEN_TARGET_MS = 250.0
#: Qt events that can take a GUI thread's time: a queued handler (a worker's result), a window
#: redraw and its paints, deferred work, layout, input.
_TELLING = {"MetaCall", "UpdateRequest", "Paint", "Timer", "LayoutRequest", "Resize", "Expose", "MouseMove",
            "MouseButtonPress", "MouseButtonRelease", "KeyPress", "Wheel"}


class _StallMeter:
    """Ticks of a periodic Qt timer on the GUI thread; each tick's delay beyond its period, and the
    Qt events the GUI thread began handling meanwhile (an application event filter)."""

    def __init__(self, interval_ms: int = TIMER_MS) -> None:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        self.interval_s = interval_ms / 1000.0
        self.ticks: list[tuple[float, float]] = []  # (time, delay ms)
        self.events: list[tuple[float, Any, str]] = []  # (time, event type, receiver class)
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._filter = _event_log(self.events)
        self._app = QApplication.instance()

    @property
    def delays_ms(self) -> list[float]:
        return [d for _, d in self.ticks]

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.ticks.append((now, max(0.0, (now - self._last - self.interval_s) * 1000.0)))
        self._last = now

    def start(self) -> None:
        self._last = None
        self.ticks.clear()
        self.events.clear()
        self._app.installEventFilter(self._filter)
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._app.removeEventFilter(self._filter)

    def worst(self) -> tuple[float, list[str]]:
        """The worst delay and the events that began during it (``type:receiver``, first ones
        first, each once)."""
        if not self.ticks:
            return 0.0, []
        end, delay = max(self.ticks, key=lambda tick: tick[1])
        start = end - delay / 1000.0 - self.interval_s
        names: list[str] = []
        for t, kind, receiver in self.events:
            kind = getattr(kind, "name", str(kind))
            name = f"{kind}:{receiver}"
            if start <= t <= end and kind in _TELLING and name != "Timer:QTimer" and name not in names:
                names.append(name)  # Timer:QTimer is this meter's own tick
        return delay, names[:8]


def _event_log(store: list):
    """An application event filter appending (time, event type, receiver class) to ``store``
    (defined here: Qt is imported only when the section runs)."""
    from qtpy.QtCore import QObject

    class EventLog(QObject):
        def eventFilter(self, receiver, event):  # noqa: N802 (Qt's name)
            store.append((time.perf_counter(), event.type(), type(receiver).__name__))
            return False

    return EventLog()


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else 0.0


def _frame_ms(viewer, frames: int = 10) -> float:
    """Median time the GUI thread spends drawing one frame of the canvas as it is (no job running)."""
    import numpy as np
    from qtpy.QtWidgets import QApplication

    layer = next((lay for lay in viewer.layers if lay.visible), None)
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        if layer is not None:
            layer.refresh()
        QApplication.processEvents()
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))


def _settle(session, timeout_s: float = 60.0) -> None:
    """Let the scene make the layers it makes ahead of any run (one per event-loop turn), as they
    are by the time a user has looked at a newly opened scan."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + timeout_s
    while session.scene.pending and time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.005)
    QApplication.processEvents()


def _timed_runs(session, meter, strategy, ratio, noise, seed, log, label: str) -> dict[str, Any]:
    meter.start()
    log(f"ui: organ probabilities ({label})")
    t0 = time.perf_counter()
    session.run_probabilities(wait=True)
    probabilities = time.perf_counter() - t0
    log(f"ui: whole-scan reconstruction ({label})")
    t0 = time.perf_counter()
    session.run_reconstruction(strategy, ratio, noise, seed, scope="scan", wait=True)
    recon = time.perf_counter() - t0
    meter.stop()
    delays = meter.delays_ms
    worst, events = meter.worst()
    return {"probabilities_seconds": probabilities, "recon_seconds": recon, "max_stall_ms": worst,
            "stall_p99_ms": _percentile(delays, 99), "ticks": len(delays), "events": events}


def _timed_switch(session, meter, log) -> dict[str, Any]:
    """Open a second scan (the generated phantom) while the first shows its results, then pick the
    first again (what the grid dock's chooser does): the seconds until the new active scan's grid
    is drawn and its layers made, and the worst stall of each switch."""
    from ..data import volume_from_array
    from ..data.phantom import make_phantom

    first = session.scan.layer
    image, _labels, spacing, affine = make_phantom(seed=1, case_index=0, size="small")
    volume = volume_from_array(image.astype("float32"), spacing, canonical_affine=affine)
    out: dict[str, Any] = {}
    for key, switch in (("ui_switch_scan", lambda: session.open_scan(volume, wait=True)),
                        ("ui_switch_back", lambda: session.use_scan_layer(first, wait=True))):
        log(f"ui: {'a second scan' if key == 'ui_switch_scan' else 'back to the first scan'}")
        meter.start()
        t0 = time.perf_counter()
        switch()
        session.scene.settle()
        _settle(session)
        out[f"{key}_seconds"] = time.perf_counter() - t0
        meter.stop()
        out[f"{key}_max_stall_ms"], events = meter.worst()
        out[f"{key}_max_stall_events"] = ", ".join(events)
    return out


def _timed_orthoviews(session, meter, log, moves: int = 40, move_ms: float = 30.0) -> dict[str, Any]:
    """The linked orthogonal views turned on (as the grid dock's box does), then the cursor moved
    across the scan (``moves`` positions, one every ``move_ms``, through the session's own hover path,
    as the mouse does) and a superpatch selected: the worst stall with the three views on."""
    import numpy as np
    from qtpy.QtWidgets import QApplication

    log("ui: orthogonal views on, the cursor moving")
    ortho = session.feature("orthoviews")
    t0 = time.perf_counter()
    ortho.set_enabled(True)
    session.scene.settle()
    _settle(session)
    out: dict[str, Any] = {"ui_ortho_enable_seconds": time.perf_counter() - t0}
    layer = session.scan.layer
    lo, hi = (np.asarray(v, dtype=float)[-3:] for v in layer.extent.world)
    z = float(session.viewer.dims.point[-3])
    meter.start()
    for k in range(moves):
        f = k / max(1, moves - 1)
        session.hover_at(np.array([z, lo[1] + f * (hi[1] - lo[1]), hi[2] - f * (hi[2] - lo[2])]), ndisplay=2)
        end = time.perf_counter() + move_ms / 1000.0
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.002)
    session.select(0)
    session.scene.settle()
    _settle(session)
    meter.stop()
    out["ui_ortho_max_stall_ms"], events = meter.worst()
    out["ui_ortho_stall_p99_ms"] = _percentile(meter.delays_ms, 99)
    out["ui_ortho_max_stall_events"] = ", ".join(events)
    ortho.set_enabled(False)
    return out


def _timed_training(session, meter, log, labels) -> dict[str, Any]:
    """Label the scan from ``labels`` (a label map on it), then "Train" a linear probe (a child
    process) with the meter running: the worst stall while the process runs and its plot updates,
    and the seconds from "Train" to the new head's heatmaps."""
    from ..viewer._demo import _raise_dock, label_and_train
    from ..viewer.features.training.controller import training_for

    _raise_dock(session, "Training")  # the plot draws only while it is seen
    training = training_for(session)
    ended: list[float] = []

    def on_run(run) -> None:
        if not run.running and not ended:
            ended.append(time.perf_counter())  # the child has ended: applying the head is not training

    training.events.run.connect(on_run)
    log("ui: Train (linear probe from the labels, a child process) -> the new heatmaps")
    try:
        result = label_and_train(session, fill_from=labels, before_train=meter.start)
    finally:
        meter.stop()
        training.events.run.disconnect(on_run)
    every = meter.ticks
    meter.ticks = [tick for tick in every if not ended or tick[0] <= ended[0]]
    worst, events = meter.worst()
    delays = meter.delays_ms
    meter.ticks = every
    run = result["run"]
    return {"ui_max_stall_ms_training": worst, "ui_stall_p99_ms_training": _percentile(delays, 99),
            "ui_ticks_training": len(delays), "ui_max_stall_events_training": ", ".join(events),
            "label_to_heatmap_seconds": result["label_to_heatmap_seconds"],
            "ui_training_labelled": result["labelled"],
            "ui_training_auroc": (run.result or {}).get("auroc_mean"),
            "ui_training_seconds": (run.ended or run.started) - run.started}


def measure_ui(strategy: str = "dual", ratio: float = 0.75, noise: float = 0.03, seed: int = 0,
               log=None, scan=None, weights: tuple[str | None, str | None] | None = None,
               labels=None) -> dict[str, Any]:
    """Open the sample CT (or ``scan``) in a shown viewer and time the two jobs while watching the
    event loop: first as a user's first click (the result layers, made when the scan opened,
    get their first data), then again (layers updated in place). Also the time one frame of the
    canvas takes, the floor of any stall. Default settings, whatever the user saved;
    ``weights``: (checkpoint, probe head) instead of the bundled ones (tests). Then "Train" from the
    labels of ``labels`` (a label map on the scan; default: the sample CT's organ labels; another
    ``scan`` without ``labels`` skips it)."""
    import napari

    from ..viewer._demo import open_demo
    from ..viewer import session_for

    log = log or (lambda _msg: None)
    with _fresh_settings():
        viewer = napari.Viewer(title="NEMESIS benchmark", show=True)
        try:
            if weights is not None:
                session_for(viewer).set_weights(*weights, wait=True)
            from qtpy.QtWidgets import QApplication

            session_for(viewer).show_widgets()  # the docks are open (their making is not the scan's opening)
            for _ in range(20):
                QApplication.processEvents()
            meter = _StallMeter()
            meter.start()
            log("ui: opening the scan")
            t0 = time.perf_counter()
            session = open_demo(scan=scan, viewer=viewer, probabilities=False)
            _settle(session)
            opening_seconds = time.perf_counter() - t0
            meter.stop()
            opening, opening_events = meter.worst()
            frame = _frame_ms(viewer)
            first = _timed_runs(session, meter, strategy, ratio, noise, seed, log, "first run")
            again = _timed_runs(session, meter, strategy, ratio, noise, seed, log, "again, layers in place")
            if labels is None and scan is None:
                from ..sample_data import sample_btcv_labels_path

                labels = sample_btcv_labels_path()
            result = {
                "ui_max_stall_ms": first["max_stall_ms"],
                "ui_probabilities_seconds": first["probabilities_seconds"],
                "ui_recon_seconds": first["recon_seconds"],
                "ui_stall_p99_ms": first["stall_p99_ms"],
                "ui_ticks": first["ticks"],
                "ui_rerun_max_stall_ms": again["max_stall_ms"],
                "ui_rerun_stall_p99_ms": again["stall_p99_ms"],
                "ui_rerun_probabilities_seconds": again["probabilities_seconds"],
                "ui_rerun_recon_seconds": again["recon_seconds"],
                "ui_frame_ms": frame,
                "ui_frame_results_ms": _frame_ms(viewer),
                "ui_max_stall_events": ", ".join(first["events"]),
                "ui_rerun_max_stall_events": ", ".join(again["events"]),
                "ui_open_max_stall_ms": opening,
                "ui_open_max_stall_events": ", ".join(opening_events),
                "ui_open_seconds": opening_seconds,
                "ui_device": session.runs["reconstruction"].device or session.settings.device,
                "ui_superpatches": session.scan.n,
                "ui_scan": session.scan.name,
                "ui_reconstruction": {"strategy": strategy, "ratio": ratio, "noise": noise, "seed": seed,
                                      **session.reconstruction.metrics()},
            }
            result.update(_timed_switch(session, meter, log))
            result.update(_timed_orthoviews(session, meter, log))
            if labels is not None:  # last: the new head replaces the results above
                result.update(_timed_training(session, meter, log, labels))
            return result
        finally:
            viewer.close()


@contextmanager
def _fresh_settings():
    """Default viewer settings (bundled weights, auto device), neither read from nor written to the
    user's: the figures do not depend on what a user last picked, nor on a file since deleted."""
    import os
    import tempfile

    previous = os.environ.get("NEMESIS_CONFIG_DIR")
    with tempfile.TemporaryDirectory(prefix="nemesis-bench-ui-") as folder:
        os.environ["NEMESIS_CONFIG_DIR"] = folder
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("NEMESIS_CONFIG_DIR", None)
            else:
                os.environ["NEMESIS_CONFIG_DIR"] = previous


def run(ctx, res: dict[str, Any]) -> None:
    from ..viewer._display import has_display, virtual_display, xvfb_path

    if has_display():
        display = nullcontext()
    elif xvfb_path():
        display = virtual_display()
    else:
        res["ui"] = {"skipped": "no display and no Xvfb"}
        return
    with display:
        res.update(measure_ui(log=ctx.log))
    res["ui"] = {"timer_ms": TIMER_MS, "stall_target_ms": STALL_TARGET_MS}


def table_lines(res: dict[str, Any]) -> list[str]:
    if "ui" not in res:
        return []
    if "skipped" in res["ui"]:
        return [f"viewer: skipped ({res['ui']['skipped']})"]
    return [
        f"viewer ({res['ui_scan']}, {res['ui_superpatches']} superpatches, {res['ui_device']}), a {TIMER_MS} ms "
        f"timer on the GUI thread; one canvas frame takes {res['ui_frame_ms']:.0f} ms here",
        f"  first run (layers made): worst stall {res['ui_max_stall_ms']:.0f} ms (p99 {res['ui_stall_p99_ms']:.0f}); "
        f"Run -> layers shown: probabilities {res['ui_probabilities_seconds']:.1f} s, whole-scan reconstruction "
        f"{res['ui_recon_seconds']:.1f} s",
        f"  again (layers in place): worst stall {res['ui_rerun_max_stall_ms']:.0f} ms "
        f"(p99 {res['ui_rerun_stall_p99_ms']:.0f}); probabilities {res['ui_rerun_probabilities_seconds']:.1f} s, "
        f"reconstruction {res['ui_rerun_recon_seconds']:.1f} s",
    ] + ([f"  worst stall (first run) handled: {res['ui_max_stall_events']}"] if res.get("ui_max_stall_events") else []) + (
        [f"  one frame with the results shown: {res['ui_frame_results_ms']:.0f} ms; opening the scan (its result "
         f"layers made ahead): worst stall {res['ui_open_max_stall_ms']:.0f} ms"]
        if "ui_open_max_stall_ms" in res else []) + (
        [f"  a second scan opened: worst stall {res['ui_switch_scan_max_stall_ms']:.0f} ms, its grid and layers in "
         f"{res['ui_switch_scan_seconds']:.1f} s; back to the first: worst stall "
         f"{res['ui_switch_back_max_stall_ms']:.0f} ms, {res['ui_switch_back_seconds']:.1f} s"]
        if "ui_switch_scan_seconds" in res else []) + (
        [f"  orthogonal views on ({res['ui_ortho_enable_seconds']:.1f} s), the cursor moving: worst stall "
         f"{res['ui_ortho_max_stall_ms']:.0f} ms (p99 {res['ui_ortho_stall_p99_ms']:.0f})"]
        if "ui_ortho_max_stall_ms" in res else []) + (
        [f"  training (linear probe from {res['ui_training_labelled']} labelled superpatches, a child process, "
         f"{res['ui_training_seconds']:.1f} s): worst stall {res['ui_max_stall_ms_training']:.0f} ms "
         f"(p99 {res['ui_stall_p99_ms_training']:.0f}); Train -> new heatmaps {res['label_to_heatmap_seconds']:.1f} s"]
        if "ui_max_stall_ms_training" in res else [])


def targets(res: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    if "ui_max_stall_ms" not in res:
        return []
    v = float(res["ui_max_stall_ms"])
    out = [(f"viewer event-loop stall < {STALL_TARGET_MS:.0f} ms", v, v < STALL_TARGET_MS)]
    if "ui_open_max_stall_ms" in res:
        o = float(res["ui_open_max_stall_ms"])
        out.append((f"viewer stall opening a scan < {OPEN_TARGET_MS:.0f} ms", o, o < OPEN_TARGET_MS))
    if "ui_ortho_max_stall_ms" in res:
        v3 = float(res["ui_ortho_max_stall_ms"])
        out.append((f"viewer stall with the orthogonal views on < {STALL_TARGET_MS:.0f} ms", v3, v3 < STALL_TARGET_MS))
    if "ui_max_stall_ms_training" in res:
        t = float(res["ui_max_stall_ms_training"])
        out.append((f"viewer stall while training < {STALL_TARGET_MS:.0f} ms", t, t < STALL_TARGET_MS))
    return out
