"""The viewer started the ways users start it: the Plugins menu (one dock at a time, any order),
``add_plugin_dock_widget`` (napari's proxy viewer), File > Open with our reader, a second scan,
closing mid-job, and ``napari -w`` as a real process. Each fails on an exception, an error
notification or a warning raised from our code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TITLES = ("Superpatch grid", "Reconstruction", "Organ probabilities", "Labelling", "Training", "Project", "Triage")
REPO = Path(__file__).resolve().parents[1]


def _scan_file(path: Path, shape_xyz=(40, 36, 24), spacing=(1.5, 1.5, 2.0), origin=(0.0, 0.0, 0.0), seed=0) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_xyz), indexing="ij")
    body = (x ** 2 + y ** 2) < 0.8
    data = np.where(body, 40 + 30 * np.sin(6 * z + seed), -1000).astype(np.int16)
    data += rng.integers(-5, 5, size=data.shape, dtype=np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS voxel axes as most CT files
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny checkpoint (8^3 superpatches) and its probe head: the viewer then works in seconds."""
    from test_viewer_gui import make_tiny_weights

    return make_tiny_weights(tmp_path_factory.mktemp("route_weights"))


class Watch:
    """Error notifications and warnings raised from napari_nemesis while a route runs."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self.errors: list[str] = []
        self._manager = notification_manager
        self._manager.notification_ready.connect(self._on_notification)
        self._warnings = warnings.catch_warnings(record=True)
        self.caught = self._warnings.__enter__()
        warnings.simplefilter("always")

    def _on_notification(self, notification) -> None:
        severity = str(getattr(notification, "severity", ""))
        if "error" in severity.lower():
            self.errors.append(str(notification.message))

    def ours(self) -> list[str]:
        return [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in self.caught
                if "napari_nemesis" in str(w.filename) or "napari_nemesis" in str(w.message)
                or "PublicOnlyProxy" in str(w.message) or "Private attribute" in str(w.message)]

    def close(self) -> None:
        self._warnings.__exit__(None, None, None)
        try:
            self._manager.notification_ready.disconnect(self._on_notification)
        except (TypeError, ValueError):
            pass


@pytest.fixture
def watch():
    w = Watch()
    yield w
    w.close()


def _wait(qtbot, session, *jobs, timeout=60000):
    for job in jobs:
        qtbot.waitUntil(lambda job=job: not session.running(job), timeout=timeout)
    session.scene.settle()


@pytest.mark.parametrize("order", [TITLES, TITLES[::-1], ("Triage", "Training", "Labelling", "Project",
                                                          "Superpatch grid",
                                                          "Organ probabilities", "Reconstruction")])
def test_plugins_menu_one_dock_at_a_time_tabs_them_and_the_window_fits(make_napari_viewer, qtbot, watch, order,
                                                                       tiny_weights, tmp_path):
    from qtpy.QtWidgets import QApplication

    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._window import nemesis_docks
    from napari_nemesis.viewer._napari_private import qt_window

    viewer = make_napari_viewer(show=True)
    window = qt_window(viewer)
    window.resize(1280, 760)
    session_for(viewer).set_weights(*tiny_weights, wait=True)
    widgets = {}
    for title in order:  # what Plugins > NEMESIS > <title> does
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-nemesis", title)
        widgets[title] = widget
        qtbot.wait(30)
    qtbot.wait(200)
    docks = nemesis_docks(viewer)
    assert len(docks) == len(TITLES)
    tabbed = set(window.tabifiedDockWidgets(docks[0])) | {docks[0]}
    assert tabbed == set(docks)  # one tab group, whatever the order
    screen = window.screen().availableGeometry()
    assert window.height() <= screen.height() and window.width() <= screen.width()
    from napari_nemesis.viewer._napari_private import canvas_widget

    assert canvas_widget(viewer).width() >= window.width() / 2
    from napari_nemesis.viewer._dock import DOCK_MIN_WIDTH_PX
    from napari_nemesis.viewer._window import dock_of

    for title, widget in widgets.items():  # each dock in front in turn: nothing of it cut off at its right edge
        dock_of(widget).raise_()
        qtbot.wait(30)
        assert widget.body.width() <= widget.viewport().width(), title
        # and it fits the narrowest a dock gets, beside its scroll bar
        narrowest = DOCK_MIN_WIDTH_PX - widget.verticalScrollBar().sizeHint().width()
        assert widget.body.minimumSizeHint().width() <= narrowest, title
    # every dock shares the one session of the viewer behind napari's proxy
    session = session_for(viewer)
    assert all(w.session is session for w in widgets.values())
    viewer.open(str(_scan_file(tmp_path / "scan.nii.gz")), plugin="napari-nemesis")
    _wait(qtbot, session, "prepare")
    assert session.scan is not None and session.scan.name == "scan"
    session.select(1)
    widgets["Organ probabilities"].controls.run_button.click()
    _wait(qtbot, session, "probabilities")
    assert session.probabilities is not None
    for title, widget in widgets.items():  # with a scan, its labels and results: still nothing cut off
        dock_of(widget).raise_()
        qtbot.wait(30)
        assert widget.body.minimumSizeHint().width() <= DOCK_MIN_WIDTH_PX - widget.verticalScrollBar().sizeHint().width(), title
    QApplication.processEvents()
    assert watch.errors == [] and watch.ours() == []


def test_a_second_scan_becomes_the_one_truth_on_screen(make_napari_viewer, qtbot, watch, tiny_weights, tmp_path):
    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer._napari_private import viewer_camera

    viewer = make_napari_viewer(show=True)
    session = launch(viewer=viewer, widgets=True)
    session.set_weights(*tiny_weights, wait=True)
    first = _scan_file(tmp_path / "first.nii.gz", origin=(0.0, 0.0, 0.0), seed=1)
    second = _scan_file(tmp_path / "second.nii.gz", shape_xyz=(30, 30, 20), origin=(-400.0, -300.0, 500.0), seed=2)
    viewer.open(str(first), plugin="napari-nemesis")  # File > Open
    _wait(qtbot, session, "prepare")
    session.select(0)
    session.run_probabilities(wait=True)
    assert session.probabilities is not None and session.layers["prob:liver"].visible
    first_layer = session.scan.layer
    viewer.open(str(second), plugin="napari-nemesis")
    _wait(qtbot, session, "prepare")
    ctx = session.scan
    assert ctx.name == "second" and ctx.layer is not first_layer
    assert not first_layer.visible and ctx.layer.visible  # the old patient is not on screen
    order = list(viewer.layers)
    for role in ("grid_lines", "grid", "prob:liver", "reconstruction"):  # drawn over the new scan, not under it
        assert order.index(session.layers[role]) > order.index(ctx.layer), role
    # results of the first scan are gone everywhere
    assert session.probabilities is None and session.selected is None
    assert not session.layers["prob:liver"].visible
    assert not any(name.startswith("P(") for name in session.grid_columns)  # only the new scan's label column
    probs = session.widgets["Organ probabilities"]
    assert probs.table.rowCount() == 0
    assert "second" in session.widgets["Superpatch grid"].active.text()
    # the camera and the slice are inside the new scan, its grid drawn over it
    lo, hi = (np.asarray(e) for e in ctx.layer.extent.world)
    point = np.asarray(viewer.dims.point)[-3:]
    hidden = list(viewer.dims.not_displayed)
    assert np.all(point[hidden] >= lo[hidden] - 1e-6) and np.all(point[hidden] <= hi[hidden] + 1e-6)
    centre = np.asarray(viewer_camera(viewer).center)[-2:]
    displayed = list(viewer.dims.displayed)[-2:]
    assert np.all(centre >= lo[displayed] - 1) and np.all(centre <= hi[displayed] + 1)
    grid_lo, grid_hi = (np.asarray(e) for e in session.layers["grid"].extent.world)
    assert np.all(grid_lo >= lo - 3.0) and np.all(grid_hi <= hi + 3.0)
    # the z slider covers the scans, not the padding beyond them
    z_range = viewer.dims.range[0]
    assert z_range.stop <= max(hi[0], np.asarray(first_layer.extent.world[1])[0]) + 2 * z_range.step
    # picking the first scan in the layer list brings it back, alone
    viewer.layers.selection.active = first_layer
    qtbot.waitUntil(lambda: session.scan is not None and session.scan.layer is first_layer, timeout=60000)
    _wait(qtbot, session, "prepare")
    assert first_layer.visible and not ctx.layer.visible
    assert watch.errors == [] and watch.ours() == []


def test_reader_alone_shows_head_up_with_markers(make_napari_viewer, qtbot, tmp_path):
    from napari_nemesis.viewer._napari_private import viewer_camera
    from napari_nemesis.viewer._session import existing_session
    from napari_nemesis.viewer.features.radiology.controller import install_for_viewer

    viewer = make_napari_viewer(show=True)
    viewer.open(str(_scan_file(tmp_path / "alone.nii.gz")), plugin="napari-nemesis")
    qtbot.wait(100)
    assert existing_session(viewer) is None  # no NEMESIS dock: nothing but the reader ran
    markers = install_for_viewer(viewer)  # what the reader installed (the same object)
    assert markers.letters() == {"top": "A", "bottom": "P", "left": "R", "right": "L"}  # axial
    viewer.dims.order = (1, 0, 2)  # coronal: z vertical
    qtbot.wait(50)
    assert str(viewer_camera(viewer).orientation2d[0]) in ("up", "VerticalAxisOrientation.UP")
    assert markers.letters() == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    viewer.dims.order = (2, 0, 1)  # sagittal
    qtbot.wait(50)
    assert markers.letters() == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    viewer.dims.ndisplay = 3
    qtbot.wait(50)
    assert markers.letters() is None  # no markers in 3D


def test_empty_folder_gets_our_message(make_napari_viewer, tmp_path):
    from napari_nemesis.viewer._io import get_reader

    empty = tmp_path / "empty"
    empty.mkdir()
    reader = get_reader(str(empty))
    assert reader is not None
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(str(n.message)))
    assert reader(str(empty)) == [(None,)]
    assert any("no DICOM series or scan file" in m and "empty" in m for m in seen)
    (tmp_path / "store.zarr").mkdir()
    assert get_reader(str(tmp_path / "store.zarr")) is None  # left to the readers that know it


def test_window_level_by_right_drag(make_napari_viewer, qtbot, tiny_weights, tmp_path):
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer.features.radiology.controller import window_of

    viewer = make_napari_viewer(show=True)
    session = launch(viewer=viewer, widgets=True)
    session.set_weights(*tiny_weights, wait=True)
    session.open_scan(str(_scan_file(tmp_path / "wl.nii.gz")), wait=True)
    scan = session.layers["scan"]
    level, width = window_of(scan.contrast_limits)

    class Event:
        def __init__(self, kind, pos):
            self.type, self.pos, self.position = kind, np.asarray(pos, float), (0.0, 0.0, 0.0)
            self.button, self.modifiers, self.handled = 2, [], False
            self.view_direction, self.dims_displayed, self.is_dragging = None, [1, 2], kind == "mouse_move"

    event = Event("mouse_press", (100, 100))  # napari updates one event object through a drag
    mouse_press_callbacks(viewer, event)
    event.type, event.pos, event.is_dragging = "mouse_move", np.array([250.0, 40.0]), True
    mouse_move_callbacks(viewer, event)  # right 150 px: width x2; up 60 px: level up
    new_level, new_width = window_of(scan.contrast_limits)
    event.type, event.is_dragging = "mouse_release", False
    mouse_release_callbacks(viewer, event)
    assert new_width == pytest.approx(2 * width)
    assert new_level == pytest.approx(level + 60 * width / 300)
    panel = session.widgets["Superpatch grid"].panels["radiology"]
    assert f"width {new_width:.0f} HU" in panel.readout.text()
    markers = session.feature("radiology").markers
    assert markers.readout.text() == f"W {new_width:.0f}  L {new_level:.0f}"


def test_closing_the_viewer_while_jobs_run_does_not_abort(tmp_path):
    """A script closing napari while the scan is prepared (and a reconstruction runs) exits cleanly."""
    scan = _scan_file(tmp_path / "close.nii.gz")
    code = f"""
import napari
from qtpy.QtWidgets import QApplication
from napari_nemesis.viewer import launch
viewer = napari.Viewer(show=True)
session = launch(viewer=viewer, widgets=True)
session.open_scan({str(scan)!r}, wait=False)
viewer.close()
import time
end = time.time() + 3
while time.time() < end:
    QApplication.processEvents(); time.sleep(0.02)
viewer = napari.Viewer(show=True)
session = launch({str(scan)!r}, viewer=viewer, widgets=False)
session.run_reconstruction("dual", 0.75, 0.0, 0, "scan", wait=False)
viewer.close()
end = time.time() + 3
while time.time() < end:
    QApplication.processEvents(); time.sleep(0.02)
print("closed cleanly")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NEMESIS_CONFIG_DIR": str(tmp_path / "config")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "closed cleanly" in proc.stdout
    assert "Fatal Python error" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_script_exiting_while_a_job_runs_exits_cleanly(tmp_path):
    """The interpreter exits with a whole-scan reconstruction still running (no close, no wait): the job
    is cancelled and waited for at exit. Before, the job's thread emitted through Qt objects Python
    had already torn down, and the process died of SIGSEGV or SIGABRT."""
    code = f"""
import time
import napari
from qtpy.QtWidgets import QApplication
from napari_nemesis.sample_data import sample_ct_path
from napari_nemesis.viewer import launch
viewer = napari.Viewer(show=True)
session = launch(str(sample_ct_path()), viewer=viewer, widgets=False)
session.run_reconstruction("dual", 0.75, 0.0, 0, "scan", wait=False)
end = time.time() + 0.3
while time.time() < end:
    QApplication.processEvents(); time.sleep(0.02)
print("running at exit:", session.running("reconstruction"), flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NEMESIS_CONFIG_DIR": str(tmp_path / "config")})
    assert "running at exit: True" in proc.stdout  # else the test proves nothing
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "has been deleted" not in proc.stderr and "Fatal Python error" not in proc.stderr


@pytest.mark.slow
def test_napari_dash_w_as_a_real_process(tmp_path):
    """``napari -w napari-nemesis Training "Superpatch grid" -- scan.nii.gz`` starts, docks both, opens
    the scan and runs until it is told to quit, without a traceback or a warning of ours."""
    import shutil

    napari_exe = shutil.which("napari", path=str(Path(sys.executable).parent)) or shutil.which("napari")
    if napari_exe is None:
        pytest.skip("no napari executable")
    scan = _scan_file(tmp_path / "dashw.nii.gz")
    env = {**os.environ, "NEMESIS_CONFIG_DIR": str(tmp_path / "config"), "PYTHONWARNINGS": "default"}
    proc = subprocess.Popen([napari_exe, "-w", "napari-nemesis", "Training", "Superpatch grid", "--", str(scan)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
            if time.time() > deadline - 60:  # 30 s up: napari has started, docked and opened the scan
                break
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert alive, f"napari exited early: {err[-2000:]}"
    ours = [line for line in err.splitlines() if "napari_nemesis" in line or "PublicOnlyProxy" in line]
    assert "Traceback" not in err, err[-3000:]
    assert ours == [], "\n".join(ours)
