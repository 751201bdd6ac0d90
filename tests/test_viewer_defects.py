"""The viewer defects users met (issue: the viewer on the user's own path), each as a test that
failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_viewer_gui import _scan_volume, _value_at, make_tiny_weights

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("defect_weights"))


@pytest.fixture
def session(make_napari_viewer, tiny_weights):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer(show=True)
    s = launch(viewer=viewer, widgets=True)
    s.set_weights(*tiny_weights, wait=True)
    s.open_scan(_scan_volume(), wait=True)
    return s


def _thin_volume(slices: int = 6):
    """A thin stack: far fewer slices than one superpatch is deep (a 20-slice DICOM at the bundled size)."""
    from napari_nemesis.data import volume_from_array

    z, y, x = np.meshgrid(np.arange(slices), np.arange(40), np.arange(40), indexing="ij")
    hu = np.where((y - 20) ** 2 + (x - 20) ** 2 < 300, 40.0, -1000.0).astype(np.float32)
    return volume_from_array(hu, (2.0, 1.5, 1.5))


def test_first_selection_in_3d_without_a_mouse_move(session, qtbot):
    """napari hands a click in 3D a view direction only once the mouse moved over the canvas: the
    click used to fail ("len() of unsized object") and leave the Labelling dock behind."""
    from napari_nemesis.viewer._interaction import click

    session.viewer.dims.ndisplay = 3
    centre = session.scan.box_centre_world(5)
    for direction in (None, np.float64(np.nan), (np.nan, np.nan, np.nan)):
        session.select(None)
        assert click(session, centre, direction, ndisplay=3) == 5
        assert session.selected == 5
    labelling = session.feature("labelling")
    labelling.wait()
    assert "superpatch 5" in session.widgets["Labelling"].title.text()


def test_error_map_never_covers_the_reconstruction_by_itself(session):
    session.select(2)
    session.run_reconstruction("dual", 0.75, 0.0, 0, scope="scan", wait=True)
    error_map, recon = session.layers["error_map"], session.layers["reconstruction"]
    assert recon.visible and not error_map.visible
    dock = session.widgets["Reconstruction"]
    dock.error_map.setChecked(True)  # the user asks for it
    assert error_map.visible
    session.run_reconstruction("plane", 0.5, 0.0, 1, scope="scan", wait=True)
    assert error_map.visible  # kept as the user left it
    dock.error_map.setChecked(False)
    assert not error_map.visible and recon.visible


def test_a_chance_level_head_is_not_applied_and_no_head_is_remembered_unless_kept(session, tiny_weights, tmp_path):
    from napari_nemesis.viewer._runstate import DONE
    from napari_nemesis.viewer._process import Command
    from napari_nemesis.viewer._settings import load_settings
    from napari_nemesis.viewer.features.training.controller import TrainingConfig, TrainingRun

    ckpt, probe = tiny_weights
    training = session.feature("training")
    before = load_settings()
    for auroc, applied in ((0.51, False), (0.9, True)):
        out = tmp_path / f"run-{auroc}"
        out.mkdir()
        run = TrainingRun(TrainingConfig(mode="linear", apply_when_done=True), out,
                          [Command(["labels", "train", "PROJECT"], "labels train")], source_checkpoint=ckpt)
        child = SimpleNamespace(status=DONE, error="", result={"head": probe, "checkpoint": ckpt,
                                                               "auroc_mean": auroc, "n_labelled": 9, "estimate": "cv"})
        training.run = run
        session.set_weights(None, None, wait=True, remember=False)  # the bundled head in use
        training._finish(run, child)
        training.wait(60)
        assert (session.weights.probe == probe) is applied, auroc
        if not applied:
            assert "near chance" in run.message
    assert not session.weights_remembered
    assert load_settings() == before  # the next session starts with the user's weights
    training.keep(run)
    training.wait(60)
    assert session.weights_remembered and load_settings().probe == probe


def test_label_states_do_not_mix_with_the_heatmaps(session, qtbot):
    """Once everything is labelled, the label-state colour used to cover the whole scan, mixed into
    the organ heatmap under it; the states are outlines now and the inside of a box shows the heatmap."""
    session.run_probabilities(wait=True)
    labelling = session.feature("labelling")
    labelling.wait()
    store = labelling.ensure_store()
    for i in range(store.n):
        store.set(i, (store.organs[0],), "labelled")
    session.select(4)
    session.centre_on(4)
    session.scene.settle()
    layer = session.layers["map:label state"]
    qtbot.waitUntil(lambda: layer.visible, timeout=10000)
    assert layer.contour > 0  # outlines only
    with_states = session.viewer.screenshot(canvas_only=True, flash=False)
    layer.visible = False
    without = session.viewer.screenshot(canvas_only=True, flash=False)
    h, w = with_states.shape[:2]
    centre = (slice(h // 2 - 3, h // 2 + 3), slice(w // 2 - 3, w // 2 + 3))
    assert np.array_equal(with_states[centre], without[centre])  # the inside: the heatmap, untouched
    assert not np.array_equal(with_states, without)  # the outlines are drawn


def test_sliders_cover_the_scan_not_the_padded_grid(make_napari_viewer, tiny_weights):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer(show=True)
    session = launch(viewer=viewer, widgets=True)
    session.set_weights(*tiny_weights, wait=True)
    session.open_scan(_thin_volume(6), wait=True)  # 6 slices of 2 mm; one superpatch is 32 voxels deep
    session.select(0)
    session.run_probabilities(wait=True)
    session.feature("labelling").wait()
    scan = session.layers["scan"]
    z = viewer.dims.range[0]
    positions = int(round((z.stop - z.start) / z.step)) + 1
    lo, hi = (np.asarray(e)[0] for e in scan.extent.world)
    assert positions <= int(round((hi - lo) / z.step)) + 3  # the scan's slices, not 32 voxels' worth
    for role, layer in session.layers.items():
        if layer.visible:
            assert np.asarray(layer.extent.world[1])[0] <= hi + z.step + 1e-6, role


def test_resume_keeps_the_curve(tmp_path):
    from napari_nemesis.viewer.features.training.controller import TrainingConfig, TrainingRun, _apply_event, \
        _restore_curve

    out = tmp_path / "run"
    out.mkdir()
    events = [{"event": "start", "total": 10, "step": 0}] + [
        {"event": "step", "step": k, "total": 10, "loss": 1.0 / k} for k in range(1, 7)] + [
        {"event": "eval", "step": 5, "auroc_mean": 0.7}]
    (out / "log.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    run = TrainingRun(TrainingConfig(), out, [], resumed=True)
    _restore_curve(run, None)
    assert run.loss_steps == [1, 2, 3, 4, 5, 6] and run.auroc == [0.7]
    _apply_event(run, {"event": "start", "total": 10, "step": 4, "resumed": True})  # saved at step 4
    assert run.loss_steps == [1, 2, 3, 4]  # the points after the saved state are redone
    _apply_event(run, {"event": "step", "step": 5, "total": 10, "loss": 0.2})
    assert run.loss_steps == [1, 2, 3, 4, 5]
    again = TrainingRun(TrainingConfig(), out, [], resumed=True)
    _restore_curve(again, run)  # resumed from the dock: the stopped run's own points
    assert again.loss == run.loss


def test_labelling_panel_and_status_bar_agree(session, qtbot):
    labelling = session.feature("labelling")
    labelling.wait()
    session.select(3)
    labelling.act("toggle", 1)
    labelling.act("toggle", 0)
    session.scene.settle()
    organs = labelling.store.get(3).organs
    dock = session.widgets["Labelling"]
    ticked = tuple(o for o, box in dock.organ_checks.items() if box.isChecked())
    assert set(ticked) == set(organs)
    hover = session.layers["grid"].features["label"].iloc[4]  # row 0 is the background
    assert hover == "labelled: " + ", ".join(organs)
    info = session.superpatch_info(3)
    assert info["label"] == hover


def test_reconstruction_dock_says_what_is_on_screen(session):
    dock = session.widgets["Reconstruction"]
    dock.scope.setCurrentText("selected superpatch")
    session.run_reconstruction("axis", 0.5, 0.0, 3, scope="scan", wait=True)  # a script's run
    assert dock.scope.currentText() == "whole scan" and dock.strategy.currentText() == "axis"
    assert dock.seed.value() == 3 and "whole scan" in dock.metrics.text()


def test_launch_leaves_the_grid_dock_in_front(session, qtbot):
    qtbot.wait(100)
    shown = {title for title, widget in session.widgets.items() if not widget.visibleRegion().isEmpty()}
    assert shown == {"Superpatch grid"}  # the other docks are tabs behind it


def test_a_cancelled_whole_scan_run_shows_what_it_counts(session, qtbot):
    from napari_nemesis.viewer.features.reconstruction.layers import EMPTY_HU

    session.update_settings(batch=1)
    session.run_reconstruction("dual", 0.75, 0.0, 0, scope="scan", wait=False)
    run = session.reconstruction
    qtbot.waitUntil(lambda: run.done >= 1, timeout=60000)
    session.cancel("reconstruction")
    qtbot.waitUntil(lambda: not session.running("reconstruction"), timeout=60000)
    session.scene.settle()
    assert session.runs["reconstruction"].status == "cancelled"
    data = session.layers["reconstruction"].data
    grid = session.scan.grid
    shown = [i for i in range(grid.n) if np.any(data[grid.box(i, clip=True).slices] != EMPTY_HU)]
    assert sorted(shown) == sorted(run.received) and len(shown) == run.done
    assert f"{run.done}/{run.total}" in session.widgets["Reconstruction"].metrics.text()


def test_dicom_folder_with_two_series_offers_a_chooser(make_napari_viewer, tiny_weights, tmp_path, qtbot):
    from test_data_io import _write_dicom_series

    from napari_nemesis.viewer import launch

    folder = tmp_path / "dicom"
    vol = np.full((6, 20, 20), -1000, dtype=np.int16)
    vol[:, 5:15, 5:15] = 40
    _write_dicom_series(vol, (2.0, 1.5, 1.5), (0.0, 0.0, 0.0), folder, "1.2.3.4.100")
    _write_dicom_series(vol[:4] + 100, (3.0, 1.5, 1.5), (0.0, 0.0, 0.0), folder, "1.2.3.4.200")
    viewer = make_napari_viewer(show=True)
    session = launch(viewer=viewer, widgets=True)
    session.set_weights(*tiny_weights, wait=True)
    from napari.utils.notifications import notification_manager

    said = []
    notification_manager.notification_ready.connect(lambda n: said.append(str(n.message)))
    viewer.open(str(folder), plugin="napari-nemesis")
    qtbot.waitUntil(lambda: session.scan is not None, timeout=60000)
    assert any("2 DICOM series" in m for m in said)  # never a silent pick
    dock = session.widgets["Superpatch grid"]
    assert dock.series_combo.count() == 2 and not dock.series_combo.isHidden()
    row = [dock.series_combo.itemData(k) for k in range(2)].index("1.2.3.4.200")
    dock._use_series(row)
    qtbot.waitUntil(lambda: session.scan is not None and session.scan.prepared.volume.meta.get("series_uid")
                    == "1.2.3.4.200", timeout=60000)
    assert len(session.scan_layers()) == 2 and session.scan.prepared.volume.shape[0] == 4


def test_labelling_dock_writes_nothing_before_the_first_label(session, tmp_path):
    """Opening scans with the Labelling dock used to add each one to the user's default project."""
    from napari_nemesis.viewer._settings import default_project_dir

    labelling = session.feature("labelling")
    labelling.wait()
    project = default_project_dir()
    assert labelling.store is None and labelling.pending is not None
    assert not project.exists() or not any(project.rglob("*"))  # no project file, no image copy, no sidecar
    dock = session.widgets["Labelling"]
    assert len(dock.organ_checks) == 8 and dock.accept_button.isEnabled()
    session.select(2)
    labelling.act("skip")  # the first label starts the scan's labels
    assert labelling.store is not None and labelling.store.get(2).state == "skipped"
    assert (project / "nemesis-labels-project.json").is_file()
