"""The viewer's benchmark section (``nemesis bench --ui``): does napari stay responsive?

A shown napari window opens the packaged sample CT with the plugin's widgets (the scan prepared
and the weights loaded beforehand, as when a user has opened a scan), then the same calls the
buttons make run one after the other: the organ probabilities of every superpatch, then the
whole-scan reconstruction. Meanwhile a 10 ms Qt timer on the GUI thread records how late each of
its ticks comes; the worst delay is ``ui_max_stall_ms`` (target: under 100 ms). The time from the
call to the moment its layers are shown is ``ui_probabilities_seconds`` / ``ui_recon_seconds``.
Both jobs then run again with their layers in place (``ui_rerun_*``), and ``ui_frame_ms`` is the
time one canvas frame takes on the GUI thread: no stall can be shorter than a frame.

Needs a display; without one it runs under Xvfb when that is installed, else the section reports
why it was skipped. napari and Qt are imported inside ``run`` only.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

TIMER_MS = 10
STALL_TARGET_MS = 100.0


class _StallMeter:
    """Ticks of a periodic Qt timer on the GUI thread; each tick's delay beyond its period."""

    def __init__(self, interval_ms: int = TIMER_MS) -> None:
        from qtpy.QtCore import QTimer

        self.interval_s = interval_ms / 1000.0
        self.delays_ms: list[float] = []
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.delays_ms.append(max(0.0, (now - self._last - self.interval_s) * 1000.0))
        self._last = now

    def start(self) -> None:
        self._last = None
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()


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


def _timed_runs(session, meter, strategy, ratio, noise, seed, log, label: str) -> dict[str, float]:
    meter.delays_ms.clear()
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
    delays = list(meter.delays_ms)
    return {"probabilities_seconds": probabilities, "recon_seconds": recon,
            "max_stall_ms": max(delays) if delays else 0.0, "stall_p99_ms": _percentile(delays, 99),
            "ticks": len(delays)}


def measure_ui(strategy: str = "dual", ratio: float = 0.75, noise: float = 0.03, seed: int = 0,
               log=None, scan=None, weights: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
    """Open the sample CT (or ``scan``) in a shown viewer and time the two jobs while watching the
    event loop: first as a user's first click (the result layers are made then), then again
    (layers updated in place). Also the time one frame of the canvas takes, the floor of any
    stall. ``weights``: (checkpoint, probe head) instead of the bundled ones (tests)."""
    import napari

    from ..viewer._demo import open_demo
    from ..viewer._state import session_for

    log = log or (lambda _msg: None)
    viewer = napari.Viewer(title="NEMESIS benchmark", show=True)
    try:
        if weights is not None:
            session_for(viewer).set_weights(*weights, wait=True)
        session = open_demo(scan=scan, viewer=viewer, probabilities=False)
        frame = _frame_ms(viewer)
        meter = _StallMeter()
        first = _timed_runs(session, meter, strategy, ratio, noise, seed, log, "first run")
        again = _timed_runs(session, meter, strategy, ratio, noise, seed, log, "again, layers in place")
        return {
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
            "ui_device": session.runs["reconstruction"].device or session.settings.device,
            "ui_superpatches": session.scan.n,
            "ui_scan": session.scan.name,
            "ui_reconstruction": {"strategy": strategy, "ratio": ratio, "noise": noise, "seed": seed,
                                  **session.reconstruction.metrics()},
        }
    finally:
        viewer.close()


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
    ]


def targets(res: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    if "ui_max_stall_ms" not in res:
        return []
    v = float(res["ui_max_stall_ms"])
    return [(f"viewer event-loop stall < {STALL_TARGET_MS:.0f} ms", v, v < STALL_TARGET_MS)]
