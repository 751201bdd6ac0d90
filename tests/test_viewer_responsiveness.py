"""What keeps napari's event loop free while a job runs: result layers made before any run and
filled in place, arrays readied by the job's thread, job threads below the GUI's priority, and the
benchmark that watches the loop."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from test_viewer_gui import _scan_volume, make_tiny_weights

RESULTS = ("noisy", "masked", "reconstruction", "abs_error", "error_map", "prob:liver")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


# ---- no Qt -------------------------------------------------------------------------------------------
def test_reconstruction_targets_reset_fitting_arrays_in_place_and_allocate_the_rest():
    from napari_nemesis.viewer.features.reconstruction.layers import ReconstructionTargets

    fitting = np.ones((3, 4, 5), np.float32)
    other = np.ones((2, 2, 2), np.float32)
    targets = ReconstructionTargets((3, 4, 5), {"reconstruction": -1024.0, "abs_error": 0.0, "masked": -1024.0},
                                    reuse={"reconstruction": fitting, "masked": other})
    assert targets.arrays is None  # nothing done on the thread that made it
    arrays = targets.ready()
    assert arrays["reconstruction"] is fitting and np.all(fitting == -1024.0)  # reset in place
    assert arrays["masked"] is not other and np.all(other == 1.0)  # a misfit is left alone
    assert arrays["masked"].shape == arrays["abs_error"].shape == (3, 4, 5)
    assert arrays["masked"].dtype == np.float32 and np.all(arrays["abs_error"] == 0.0)
    assert targets.ready() is arrays  # readied once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lower_thread_priority_lowers_only_the_calling_thread():
    from napari_nemesis.viewer._workers import JOB_NICE, lower_thread_priority

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    seen = {}

    def work() -> None:
        seen["ok"] = lower_thread_priority()
        seen["nice"] = nice()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["ok"] and seen["nice"] >= JOB_NICE
    assert nice() == before  # this thread (the GUI's, in napari) keeps its priority


# ---- in a viewer -------------------------------------------------------------------------------------
@pytest.mark.gui
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_jobs_and_generator_jobs_run_below_the_gui_thread(qtbot):
    from napari_nemesis.viewer._workers import JOB_NICE, RunState, start_job

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def function_job(*, cancel, report):
        return nice()

    def generator_job(*, cancel, report):
        yield nice()

    gui = nice()
    job = start_job("f", function_job, state=RunState("f"), notify=False)
    assert job.wait(30000) and job.state.result >= JOB_NICE
    yielded = []
    job = start_job("g", generator_job, state=RunState("g"), on_yield=yielded.append, notify=False)
    assert job.wait(30000) and yielded and yielded[0] >= JOB_NICE
    assert nice() == gui


@pytest.fixture
def session(make_napari_viewer, tiny_weights, qtbot):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer()
    s = launch(viewer=viewer, widgets=False)
    s.set_weights(*tiny_weights, wait=True)
    s.open_scan(_scan_volume(), wait=True)
    qtbot.waitUntil(lambda: not s.scene.pending, timeout=60000)  # made one per event-loop turn
    return s


@pytest.mark.gui
def test_runs_fill_the_layers_made_when_the_scan_opened_and_add_none(session, tiny_weights):
    from napari_nemesis.viewer._scene import BLANK

    viewer = session.viewer
    session.select(2)  # (selecting draws the selection outline: a layer of its own)
    made = {role: session.layers[role] for role in RESULTS}
    for layer in made.values():  # ready before any run: hidden, holding nothing
        assert not layer.visible and layer.metadata[BLANK]
    before = list(viewer.layers)

    session.run_probabilities(wait=True)
    session.run_reconstruction("dual", 0.75, 0.0, 0, scope="scan", wait=True)
    session.run_reconstruction("plane", 0.5, 0.0, 1, scope="selected", wait=True)
    assert list(viewer.layers) == before  # no run added (or removed) a layer
    assert all(session.layers[role] is layer for role, layer in made.items())
    shown = {role for role, layer in made.items() if layer.visible}
    assert shown == {"reconstruction", "prob:liver"}  # the rest on demand (the error map: the dock's box)
    assert not any(layer.metadata[BLANK] for layer in made.values())
    box = session.scan.grid.box(2, clip=True)
    assert made["masked"].data.shape == made["reconstruction"].data.shape == box.shape

    # new weights make the results stale: the same layers are blanked and hidden, arrays freed
    session.set_weights(*tiny_weights, wait=True)
    assert list(viewer.layers) == before
    for role, layer in made.items():
        assert not layer.visible and layer.metadata[BLANK], role
    assert made["reconstruction"].data.size == 1
    session.run_reconstruction("dual", 0.75, 0.0, 0, scope="scan", wait=True)
    assert list(viewer.layers) == before and made["reconstruction"].visible
    assert made["reconstruction"].data.shape == session.scan.prepared.pre.shape


@pytest.mark.gui
def test_stall_meter_names_what_the_gui_thread_handled_during_the_worst_delay(qapp):
    from qtpy.QtCore import QEvent

    from napari_nemesis.bench.ui import _StallMeter

    meter = _StallMeter()
    meter.ticks[:] = [(1.0, 3.0), (2.0, 150.0), (3.0, 20.0)]
    T = QEvent.Type
    meter.events[:] = [(1.5, T.Paint, "Early"), (1.86, T.MetaCall, "QObject"), (1.9, T.Timer, "QTimer"),
                       (1.92, T.ChildAdded, "QWidget"), (1.95, T.UpdateRequest, "_QtMainWindow"),
                       (1.96, T.Paint, "CanvasBackendDesktop"), (1.97, T.MetaCall, "QObject"), (2.5, T.Paint, "Late")]
    worst, events = meter.worst()
    assert worst == 150.0
    # in order, each once; the meter's own ticks and bookkeeping events left out
    assert events == ["MetaCall:QObject", "UpdateRequest:_QtMainWindow", "Paint:CanvasBackendDesktop"]


@pytest.mark.gui
def test_layer_changes_wait_for_the_next_event_loop_turn(session, qtbot):
    """A result handler leaves the layers alone in its own turn (the canvas's frame would share
    its stall); the newest update of a kind replaces a waiting one; clearing results drops them."""
    import dataclasses

    scene = session.scene
    calls: list[str] = []
    scene.later("a", lambda: calls.append("a1"))
    scene.later("b", lambda: calls.append("b"))
    scene.later("a", lambda: calls.append("a2"))
    assert calls == [] and scene.busy
    qtbot.waitUntil(lambda: not scene.busy, timeout=5000)
    assert calls == ["b", "a2"]
    scene.later("c", lambda: calls.append("c"))
    scene.flush()  # what a script expects to see, now
    assert calls[-1] == "c" and not scene.busy
    scene.later("d", lambda: calls.append("d"))
    scene.clear_results()
    qtbot.wait(50)
    assert "d" not in calls

    result = session.run_probabilities(wait=True)
    layer = session.layers["prob:liver"]
    shown = layer.data.copy()
    session.feature("probabilities").ready(session.scan, dataclasses.replace(result, values=1.0 - result.values))
    assert np.array_equal(layer.data, shown)  # not in the handler's turn
    qtbot.waitUntil(lambda: not scene.busy, timeout=5000)
    assert np.allclose(layer.data, 1.0 - shown)


@pytest.mark.gui
def test_runs_a_dock_shows_open_no_activity_bar_and_colorbars_stay_put(session):
    """Probabilities and reconstruction report progress in their docks only: napari's activity
    bar animates a spinner (a window repaint 30 times a second) while one is open. Colorbars sit
    at the top left, and the error map's limits move within a fixed range: new limits then move
    no overlay and re-lay out no slider."""
    from napari.utils import progress

    opened = []
    progress._all_instances.events.changed.connect(lambda event: opened.extend(event.added))
    session.run_probabilities(wait=True)
    session.run_reconstruction("dual", 0.75, 0.0, 0, scope="scan", wait=True)
    assert opened == []
    error_map = session.layers["error_map"]
    assert tuple(error_map.contrast_limits_range) == (0.0, 425.0)  # the model's HU window, -175..250
    low, high = error_map.contrast_limits
    assert 0.0 <= low < high <= 425.0
    for role in ("prob:liver", "error_map"):
        assert str(session.layers[role].colorbar.position) == "top_left"
    canvas = session.scene._vispy_canvas()
    if canvas is not None and hasattr(canvas, "_needs_overlay_position_update"):
        assert not canvas._needs_overlay_position_update  # placed before the frame, not while drawing


@pytest.mark.gui
def test_only_jobs_with_activity_open_a_napari_activity_bar_and_only_once_they_run_long(qtbot, monkeypatch):
    """A job with ``activity`` gets napari's bar only once it has run ACTIVITY_DELAY_MS: adding a
    bar processes Qt's pending events inside the handler that adds it (the stall of opening a
    scan), and a job of a moment shows none. The bar takes the job's progress and closes at its end."""
    import threading

    from napari.utils import progress

    from napari_nemesis.viewer import _workers
    from napari_nemesis.viewer._workers import RunState, start_job

    monkeypatch.setattr(_workers, "ACTIVITY_DELAY_MS", 300)
    opened = []
    progress._all_instances.events.changed.connect(lambda event: opened.extend(event.added))

    def quick(*, cancel, report):
        report({"event": "step", "step": 1, "total": 2})
        return 1

    assert start_job("j", quick, state=RunState("j"), notify=False).wait(30000)
    qtbot.wait(500)
    assert opened == []  # done before the delay: no bar, none flickered

    release = threading.Event()

    def slow(*, cancel, report):
        report({"event": "step", "step": 1, "total": 4})
        release.wait(30)
        return 2

    job = start_job("s", slow, state=RunState("s"), notify=False)
    qtbot.waitUntil(lambda: len(opened) == 1, timeout=5000)
    assert opened[0].total == 4 and opened[0].n == 1  # the progress so far, not a blank bar
    release.set()
    assert job.wait(30000)
    qtbot.waitUntil(lambda: opened[0] not in progress._all_instances, timeout=5000)  # closed at the end

    release.clear()
    state = RunState("k")
    job = start_job("k", slow, state=state, notify=False, activity=False)
    qtbot.wait(600)
    release.set()
    assert job.wait(30000)
    assert len(opened) == 1 and state.status == "done" and state.total == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the libraries are mapped ahead on Linux only")
def test_torch_libraries_are_mapped_ahead_of_the_import_while_the_main_thread_runs(tmp_path):
    """A worker maps torch's big library through libc (no GIL held) before any job imports torch:
    the main thread keeps running meanwhile (an ``import torch`` holds the GIL through the whole
    mapping), the library is loaded, torch itself is not imported yet, and importing it afterwards
    works."""
    import subprocess

    code = (
        "import sys, threading, time\n"
        "from napari_nemesis.viewer._torch_preload import preload_torch_libraries\n"
        "assert 'torch' not in sys.modules\n"
        "done, result, turns = threading.Event(), [], [0]\n"
        "def load():\n"
        "    result.append(preload_torch_libraries()); done.set()\n"
        "threading.Thread(target=load).start()\n"
        "while not done.is_set():\n"
        "    time.sleep(0.001); turns[0] += 1\n"
        "assert result == [True], result\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'libtorch_cpu' in open('/proc/self/maps').read()\n"
        "assert preload_torch_libraries() is True  # once: the second call maps nothing again\n"
        "import torch\n"
        "assert float(torch.ones(3).sum()) == 3.0\n"
        "assert preload_torch_libraries() is False  # torch imported: nothing to do\n"
        "print('turns', turns[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    turns = int(out.stdout.split("turns")[-1])
    assert turns >= 5  # the main thread ran while the library was mapped


@pytest.mark.gui
def test_a_canvas_resized_inside_paint_after_paints_once_afterwards(make_napari_viewer, qtbot):
    """Qt repaints a GL canvas synchronously on every resize; inside ``paint_after`` the canvas is
    not drawn then, and is asked for one frame when the block ends (and none when nothing resized)."""
    from napari_nemesis.viewer._napari_private import paint_after, qt_canvas

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 8), np.float32))
    scene_canvas = qt_canvas(viewer)._scene_canvas
    native = scene_canvas.native
    qtbot.wait(200)
    draws = []
    scene_canvas.events.draw.connect(lambda _event: draws.append(1))
    with paint_after(viewer):
        native.resize(native.width() - 40, native.height() - 30)
        assert draws == []  # no synchronous frame inside the block
    qtbot.waitUntil(lambda: len(draws) >= 1, timeout=5000)  # the one frame, on the next turn
    qtbot.wait(200)
    draws.clear()
    with paint_after(viewer):
        pass
    qtbot.wait(200)
    assert draws == []  # nothing resized: nothing asked for


@pytest.mark.gui
def test_changes_inside_no_frame_asked_ask_no_frame_and_an_offscreen_draw_keeps_it_so(make_napari_viewer, qtbot):
    """A layer shown, drawn off screen and hidden again leaves the canvas as it was: no frame is
    asked for it, not even by the off-screen draw putting the canvas's transforms back."""
    from napari_nemesis.viewer._napari_private import draw_offscreen, no_frame_asked, qt_canvas

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((8, 8), np.float32))
    hidden = viewer.add_image(np.ones((8, 8), np.float32), visible=False)
    scene_canvas = qt_canvas(viewer)._scene_canvas
    qtbot.wait(300)
    draws = []
    scene_canvas.events.draw.connect(lambda _event: draws.append(1))
    with no_frame_asked(viewer):
        hidden.visible = True
        assert draw_offscreen(viewer, (16, 16)) is True
        hidden.visible = False
    assert "update" not in vars(scene_canvas)  # given back as it was
    qtbot.wait(300)
    assert draws == []
    hidden.visible = True  # outside the block a change asks for its frame
    qtbot.waitUntil(lambda: len(draws) >= 1, timeout=5000)


@pytest.mark.gui
def test_a_canvas_never_shown_is_not_drawn_off_screen(make_napari_viewer, qtbot):
    """Before its first show a canvas has no GL context: an off-screen draw would send its textures
    to another viewer's context and break the frames of both (GL_INVALID_VALUE ever after)."""
    from napari_nemesis.viewer._napari_private import draw_offscreen

    shown = make_napari_viewer(show=True)
    shown.add_image(np.zeros((8, 8), np.float32))
    hidden = make_napari_viewer(show=False)
    hidden.add_image(np.ones((8, 8), np.float32))
    assert draw_offscreen(hidden) is False
    assert draw_offscreen(shown) is True
    shown.screenshot(canvas_only=True, flash=False)  # the shown one still draws


@pytest.mark.gui
def test_the_cursors_line_never_asks_its_dock_for_a_relayout(qtbot):
    """The grid dock's "Under the cursor" line: new text repaints its box alone, where a QLabel's
    new text asks the dock for a relayout (and a relayout repaints the whole window)."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

    from napari_nemesis.viewer._controls import PaintedText

    box = QWidget()
    layout = QVBoxLayout(box)
    painted, label = PaintedText(lines=3), QLabel()
    label.setWordWrap(True)
    layout.addWidget(painted)
    layout.addWidget(label)
    qtbot.addWidget(box)
    box.show()
    qtbot.wait(50)
    requests = []

    class Log(QObject):
        def eventFilter(self, receiver, event):  # noqa: N802
            if receiver is box and event.type() == QEvent.Type.LayoutRequest:
                requests.append(1)
            return False

    log = Log()
    box.installEventFilter(log)
    height = painted.height()
    for text in ("one line", "a much longer line of text " * 8, ""):
        painted.setText(text)
        qtbot.wait(30)
    assert requests == [] and painted.height() == height > 0 and painted.text() == ""
    label.setText("a much longer line of text " * 8)
    qtbot.wait(50)
    assert requests  # what the painted box avoids


@pytest.mark.gui
def test_the_scene_inserts_each_layer_where_it_belongs_and_moves_none(make_napari_viewer, qtbot):
    """A result layer goes just under the grid's overlays, an overlay to its own place among them:
    napari rebuilds its scene graph for every move, as for every insert. Image layers keep
    ``add_image``'s defaults; a label layer's drawing-tool overlays wait for their mode."""
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer()
    scene = launch(viewer=viewer, widgets=False).scene
    assert scene.overlay_roles == ["grid_lines", "selection", "grid"]
    world = np.eye(4)
    segment = np.zeros((1, 2, 3), np.float32)
    scene.put("grid_lines", "vectors", segment, world, name="lines")
    ids = scene.put("grid", "labels", np.zeros((4, 4, 4), np.int32), world, name="ids")
    moves = []
    viewer.layers.events.moved.connect(moves.append)
    heat = scene.put("heat", "image", np.zeros((4, 4, 4), np.float32), world, name="heat")
    scene.put("selection", "vectors", segment, world, name="selection")
    scene.raise_overlays()
    assert moves == []
    assert [layer.name for layer in viewer.layers] == ["heat", "lines", "selection", "ids"]
    assert heat.colormap.name == "gray" and str(heat.blending) == "translucent_no_depth"
    assert not ids._overlays["polygon"].visible and not ids._overlays["brush_stroke"].visible
    ids.mode = "paint"
    assert ids._overlays["brush_stroke"].visible and not ids._overlays["polygon"].visible
    # the picking layer becomes active on a turn of its own, not in the turn that made it
    qtbot.waitUntil(lambda: viewer.layers.selection.active is ids, timeout=5000)


@pytest.mark.gui
def test_unseen_work_asks_a_frame_only_when_the_sliders_range_changed(make_napari_viewer, qtbot):
    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer._napari_private import qt_canvas

    viewer = make_napari_viewer(show=True)
    session = launch(viewer=viewer, widgets=False)
    viewer.add_image(np.zeros((4, 8, 8), np.float32))
    scene_canvas = qt_canvas(viewer)._scene_canvas
    qtbot.wait(300)
    draws = []
    scene_canvas.events.draw.connect(lambda _event: draws.append(1))
    with session.scene.unseen():
        viewer.add_image(np.zeros((4, 8, 8), np.float32), opacity=0.0)  # the same range
    qtbot.wait(300)
    assert draws == []
    with session.scene.unseen():
        viewer.add_image(np.zeros((9, 8, 8), np.float32), opacity=0.0)  # a longer z slider
    qtbot.waitUntil(lambda: len(draws) >= 1, timeout=5000)


@pytest.mark.gui
def test_layers_added_inside_added_inactive_leave_the_active_layer_alone(make_napari_viewer):
    from napari_nemesis.viewer._napari_private import added_inactive

    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((8, 8), np.float32))
    with added_inactive(viewer):
        second = viewer.add_image(np.zeros((8, 8), np.float32))
    assert viewer.layers.selection.active is first and second in viewer.layers
    third = viewer.add_image(np.zeros((8, 8), np.float32))  # napari's own habit again afterwards
    assert viewer.layers.selection.active is third


@pytest.mark.gui
def test_a_hidden_layers_colorbar_comes_on_a_turn_of_its_own_and_survives_stale_results(make_napari_viewer, qtbot):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer()
    scene = launch(viewer=viewer, widgets=False).scene
    shown = viewer.add_image(np.zeros((8, 8), np.float32))
    hidden = viewer.add_image(np.zeros((8, 8), np.float32), visible=False)
    scene.colorbar_for(shown)
    assert shown.colorbar.visible and str(shown.colorbar.position) == "top_left"  # at once
    scene.colorbar_for(hidden)
    assert not hidden.colorbar.visible and scene.turns.waiting("colorbar:")
    scene.clear_results()  # a new scan or new weights: the colorbar is not a result
    assert scene.turns.waiting("colorbar:")
    qtbot.waitUntil(lambda: hidden.colorbar.visible, timeout=5000)
    assert str(hidden.colorbar.position) == "top_left"


@pytest.mark.gui
def test_warm_up_renders_the_colorbar_glyphs_a_few_a_turn_then_each_blank_layer(make_napari_viewer, tiny_weights,
                                                                                 qtbot):
    """The glyphs in chunks first (each chunk a turn), then each hidden blank layer once; the text
    overlay and the layers are left as they were."""
    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer._napari_private import text_overlay
    from napari_nemesis.viewer._scene import _GLYPH_CHUNKS, _WARM, BLANK

    session = launch(viewer=make_napari_viewer(show=True), widgets=False)
    session.set_weights(*tiny_weights, wait=True)
    session.open_scan(_scan_volume(), wait=True)
    scene = session.scene
    assert "".join(_GLYPH_CHUNKS) == "0123456789.-+e" and all(len(c) <= 6 for c in _GLYPH_CHUNKS)
    qtbot.waitUntil(lambda: not scene.turns.waiting("warm"), timeout=60000)
    assert scene._glyphs_left == []
    blanks = [lay for lay in scene.layers.values() if lay.metadata.get(BLANK)]
    assert blanks and all(lay.metadata.get(_WARM) and not lay.visible for lay in blanks)
    text = text_overlay(session.viewer)
    assert text is None or not text.visible or text.text not in _GLYPH_CHUNKS


def test_the_objects_alive_before_the_first_scan_are_kept_out_of_the_collector_once(monkeypatch):
    """``gc.freeze`` once per process and moment (a full collection would walk napari's and torch's
    objects holding the GIL), and not where ``NEMESIS_NO_GC_FREEZE`` is set (the suite's own
    setting)."""
    import gc

    from napari_nemesis.viewer import _session

    assert os.environ.get("NEMESIS_NO_GC_FREEZE")
    monkeypatch.setattr(_session, "_frozen", set())
    _session.keep_out_of_collector()
    assert gc.get_freeze_count() == 0 and not _session._frozen
    monkeypatch.delenv("NEMESIS_NO_GC_FREEZE")
    try:
        _session.keep_out_of_collector("reading")
        frozen = gc.get_freeze_count()
        assert frozen > 10_000 and _session._frozen == {"reading"}
        kept = [[object()] for _ in range(100)]
        _session.keep_out_of_collector("reading")  # once: nothing more is frozen
        assert gc.get_freeze_count() == frozen
        _session.keep_out_of_collector("first scan")  # what the reading made
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()  # the suite's later viewers must be collectable


@pytest.mark.gui
def test_with_the_grid_dock_open_a_scan_is_read_and_prepared_without_an_activity_bar(
        make_napari_viewer, qtbot, tiny_weights, tmp_path, monkeypatch):
    """Adding a bar to napari's activity dock re-lays out the whole window: while the grid dock is
    open, it shows the reading and the preparing of a scan instead."""
    from napari.utils import progress

    from napari_nemesis.viewer import _workers, session_for
    from test_viewer_routes import _scan_file

    monkeypatch.setattr(_workers, "ACTIVITY_DELAY_MS", 0)  # any job with a bar shows it at once
    viewer = make_napari_viewer(show=True)
    session = session_for(viewer)
    session.set_weights(*tiny_weights, wait=True)
    viewer.window.add_plugin_dock_widget("napari-nemesis", "Superpatch grid")
    grid = session.widgets["Superpatch grid"]
    opened, shown = [], []
    progress._all_instances.events.changed.connect(lambda event: opened.extend(event.added))
    session.events.run.connect(lambda job, _state: shown.append(grid.active.text()))
    session.open_scan(_scan_file(tmp_path / "scan.nii.gz"), wait=True)
    assert session.scan is not None
    scan_bars = [bar for bar in opened if str(bar.desc).startswith(("reading", "preparing"))]
    assert scan_bars == []
    assert any("reading" in text for text in shown) and any("preparing" in text for text in shown)
    assert "scan" in grid.active.text()  # then the active scan's name
