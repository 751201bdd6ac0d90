"""The Labelling dock in a real viewer: keys change the right labels, fill equals the core's presence,
label next takes the most uncertain superpatch, labels survive a new viewer, wrong grids are refused.

A tiny model (32^3 superpatches) and a small synthetic scan (2 x 2 x 3 superpatches) keep it fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_viewer_gui import _scan_volume, _value_at, make_tiny_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


def _open(make_napari_viewer, weights, project: Path):
    """A viewer with the synthetic scan, its grid and the Labelling dock labelling into ``project``."""
    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer.widgets.labelling import LabellingWidget

    viewer = make_napari_viewer()
    session = launch(viewer=viewer, widgets=False)
    session.set_weights(*weights, wait=True)
    session.open_scan(_scan_volume(), wait=True)
    widget = LabellingWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Labelling")
    widget.controller.set_project(project, wait=True)
    return session, widget, widget.controller


@pytest.fixture
def labelling(make_napari_viewer, tiny_weights, tmp_path):
    return _open(make_napari_viewer, tiny_weights, tmp_path / "proj")


def _neighbour(shape, index, axis, step):
    pos = list(np.unravel_index(index, shape))
    pos[axis] = min(max(pos[axis] + step, 0), shape[axis] - 1)
    return int(np.ravel_multi_index(pos, shape))


# ---- keys ---------------------------------------------------------------------------------------------
@pytest.mark.gui
def test_keys_in_the_dock_change_the_right_labels(labelling, qtbot):
    from qtpy.QtCore import Qt

    session, widget, c = labelling
    store = c.store
    organs = store.organs
    shape = session.scan.grid.grid_shape
    assert store.n == session.scan.n == 12 and organs[0] == "aorta"

    def key(k, mods=Qt.KeyboardModifier.NoModifier, target=None):
        qtbot.keyClick(target or widget, k, mods)

    key(Qt.Key.Key_1)  # nothing selected yet: the key only shows what it would label
    assert store.counts()["labelled"] == 0 and session.selected == 0
    session.select(5)
    key(Qt.Key.Key_1)
    key(Qt.Key.Key_3)
    assert store.get(5).state == "labelled" and store.get(5).organs == (organs[0], organs[2])
    key(Qt.Key.Key_1)
    assert store.get(5).organs == (organs[2],)
    assert [box.isChecked() for box in widget.organ_checks.values()] == [o == organs[2] for o in organs]
    key(Qt.Key.Key_8)
    assert store.get(5).organs == (organs[2], organs[7])
    key(Qt.Key.Key_9)  # only 8 organs: no ninth to toggle
    assert store.get(5).organs == (organs[2], organs[7])
    assert widget.counter.format().startswith("1 of 12 labelled")
    # Enter: the ticked organs stay, on to the next unlabelled superpatch
    key(Qt.Key.Key_Return)
    assert store.get(5).organs == (organs[2], organs[7]) and session.selected == 6
    key(Qt.Key.Key_Enter)  # an untouched superpatch marked labelled is a negative (no organ)
    assert store.get(6).state == "labelled" and store.get(6).organs == () and session.selected == 7
    key(Qt.Key.Key_S)
    assert store.get(7).state == "skipped" and session.selected == 8
    # arrows and Page Up / Down: neighbours along x, y, z (stopping at the edge)
    for k, axis, step in ((Qt.Key.Key_Right, 2, 1), (Qt.Key.Key_Left, 2, -1), (Qt.Key.Key_Left, 2, -1),
                          (Qt.Key.Key_Left, 2, -1), (Qt.Key.Key_Down, 1, 1), (Qt.Key.Key_Up, 1, -1),
                          (Qt.Key.Key_PageUp, 0, 1), (Qt.Key.Key_PageDown, 0, -1)):
        before = session.selected
        key(k)
        assert session.selected == _neighbour(shape, before, axis, step), k
    assert store.counts()["labelled"] == 2  # moving never labels
    # n / p: next / previous unlabelled, wrapping round
    session.select(4)
    key(Qt.Key.Key_N)
    assert session.selected == 8  # 5, 6 labelled and 7 skipped
    key(Qt.Key.Key_P)
    assert session.selected == 4
    session.select(11)
    key(Qt.Key.Key_N)
    assert session.selected == 0
    # Ctrl+Z: the skip, then the negative, are taken back; the selection goes to what changed
    key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert store.get(7).state == "unlabelled" and session.selected == 7
    key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert store.get(6).state == "unlabelled" and session.selected == 6
    assert store.get(5).organs == (organs[2], organs[7])
    # the grid shows the states: one map value per superpatch, a hover column
    session.scene.flush()
    states = session.layers["map:label state"]
    assert _value_at(states, session.scan.box_centre_world(5)) == 6  # the superpatch's id, outlined by state
    assert c.layer.color_of(5)[3] == 1.0 and c.layer.color_of(6)[3] == 0.0  # labelled: drawn; unlabelled: not
    hover = session.layers["grid"].features["label"].iloc[1:].tolist()
    assert hover[5] == f"labelled: {organs[2]}, {organs[7]}" and hover[6] == "unlabelled"
    # a text field keeps its keys
    before = store.get(6)
    widget.organ_list.setFocus()
    key(Qt.Key.Key_1, target=widget.organ_list)
    assert store.get(6) == before


@pytest.mark.gui
def test_keys_on_the_canvas_only_in_labelling_mode(labelling, qtbot):
    from qtpy.QtCore import Qt

    session, widget, c = labelling
    canvas = session.viewer.window._qt_viewer.canvas.native
    dims = session.viewer.dims
    session.select(2)
    step = dims.current_step
    qtbot.keyClick(canvas, Qt.Key.Key_Left)  # napari's: one slice back
    qtbot.keyClick(canvas, Qt.Key.Key_S)
    assert c.store.get(2).state == "unlabelled" and session.selected == 2
    assert dims.current_step[0] == step[0] - 1
    widget.canvas_keys.setChecked(True)  # labelling mode: the keys are ours on the canvas too
    qtbot.keyClick(canvas, Qt.Key.Key_Left)
    assert session.selected == 1
    qtbot.keyClick(canvas, Qt.Key.Key_2)
    assert c.store.get(1).organs == (c.store.organs[1],)
    qtbot.keyClick(canvas, Qt.Key.Key_S)
    assert c.store.get(1).state == "skipped" and session.selected == 2


# ---- fill from a segmentation ---------------------------------------------------------------------------
def _organ_map(shape) -> np.ndarray:
    """BTCV ids in blocks of the scan: liver (6), spleen (1) and a thin aorta (8)."""
    labels = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    labels[: z // 2, 5: y // 2, 5: x // 2] = 6
    labels[z // 3:, y // 2:, x // 2: x - 4] = 1
    labels[:, 18:21, 24:27] = 8
    return labels


def _core_presence(labels, volume, superpatch, spacing, threshold):
    """Presence computed with the data layer's functions alone."""
    from napari_nemesis.data import ORGAN_NAMES, SuperpatchGrid, presence_labels, preprocess_labels, to_btcv_labels

    btcv, _ = to_btcv_labels(labels, scheme="btcv")
    at_model = preprocess_labels(btcv, volume, spacing)
    presence = presence_labels(at_model, SuperpatchGrid(at_model.shape, superpatch), threshold)
    return presence[:, [ORGAN_NAMES.index(o) for o in ORGAN_NAMES]]


@pytest.mark.gui
def test_fill_from_a_labels_layer_or_file_equals_the_core_presence(labelling, tmp_path):
    from napari_nemesis.data.io import write_volume
    from napari_nemesis.viewer._io import labels_layer_data

    session, widget, c = labelling
    volume = session.scan.prepared.volume
    labels = _organ_map(volume.shape)
    expected = _core_presence(labels, volume, 32, session.scan.prepared.pre.spacing_zyx, threshold=20)
    assert 0 < expected.sum() < expected.size  # some organs present, not all
    data, kwargs, _ = labels_layer_data(volume, labels, name="organs", scheme="btcv")
    layer = session.viewer.add_labels(data, **kwargs)
    assert widget.fill_layer.currentText() == "organs"
    store = c.store
    store.set(3, ["pancreas"])  # by hand: kept by a fill
    store.set(4, [], "skipped")
    res = c.fill(layer, threshold=20, wait=True)
    assert sorted(res.kept) == [3, 4]
    for i in range(store.n):
        if i in (3, 4):
            continue
        assert store.get(i).state == "labelled" and store.get(i).source == "segmentation"
        assert store.presence()[i].tolist() == expected[i].tolist(), i
    assert store.get(3).organs == ("pancreas",) and store.get(4).state == "skipped"
    assert "kept" in widget.message.text()
    # the dock's button (hand labels kept), then overwrite: every row is the segmentation's
    widget.fill_threshold.setValue(20)
    widget.fill_overwrite.setChecked(True)
    widget.fill_button.click()
    c.wait()
    assert store.presence().tolist() == expected.tolist()
    # one undo step takes the whole fill back
    c.act("undo")
    assert store.get(3).organs == ("pancreas",) and store.get(4).state == "skipped"
    # a label file on the scan's grid gives the same
    path = write_volume(labels, tmp_path / "organs.nii.gz", volume)
    c.fill(path, overwrite=True, threshold=20, wait=True)
    assert store.presence().tolist() == expected.tolist()
    # a label map that is not on the scan's grid is refused, nothing changes
    other = session.viewer.add_labels(labels[:, :, :-3], name="cropped")
    before = store.presence().copy()
    with pytest.raises(Exception, match="not on the scan's voxel grid"):
        c.fill(other, wait=True)
    assert np.array_equal(store.presence(), before)


# ---- label next -----------------------------------------------------------------------------------------
@pytest.mark.gui
def test_label_next_selects_the_most_uncertain_unlabelled_superpatch(labelling):
    session, widget, c = labelling
    c.label_next(wait=True)  # no probabilities yet: computed first, then the jump
    probs = session.probabilities.values
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    entropy = (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean(axis=1)
    order = [int(i) for i in np.argsort(-entropy, kind="stable")]
    assert session.selected == order[0]
    c.store.set(order[0], ["liver"])  # the most uncertain one is labelled now
    c.store.set(order[1], [], "skipped")
    widget.label_next_button.click()
    assert session.selected == order[2]
    assert f"superpatch {order[2]}" in widget.message.text()


# ---- reopening, refusals, where labels live -------------------------------------------------------------
@pytest.mark.gui
def test_reopening_restores_labels_and_a_project_of_another_grid_is_refused(make_napari_viewer, tiny_weights,
                                                                             tmp_path):
    from napari_nemesis.data import read_volume
    from napari_nemesis.labels import LabelProject, ScanFingerprint

    project = tmp_path / "proj"
    session, widget, c = _open(make_napari_viewer, tiny_weights, project)
    c.store.set(1, ["liver", "spleen"])
    c.store.set(2, [], "skipped")
    path = c.store.path
    assert str(path) in widget.saved_at.text() and path.is_file()
    # the scan had no file: a copy was written into the project, with the very same voxels
    image = Path(c.store.scan_path)
    assert image.parent == project / "images"
    assert ScanFingerprint.of_volume(read_volume(image)).voxel_sha256 == c.store.scan.voxel_sha256
    session.viewer.close()

    session2, widget2, c2 = _open(make_napari_viewer, tiny_weights, project)
    assert c2.store.path == path
    assert c2.store.get(1).organs == ("spleen", "liver")  # in the project's organ order
    assert c2.store.get(2).state == "skipped"
    assert widget2.counter.format().startswith("1 of 12 labelled")
    # a project made for 128^3 superpatches cannot take labels on this 32^3 grid
    LabelProject.open(tmp_path / "big", create=True, superpatch=128)
    with pytest.raises(Exception, match="superpatch 128"):
        c2.set_project(tmp_path / "big", wait=True)
    assert c2.store is None and "superpatch 128" in c2.message  # nothing is labelled into the wrong place


def test_modules_named_by_the_manifest_do_not_import_torch():
    import yaml

    manifest = yaml.safe_load((SRC / "napari.yaml").read_text(encoding="utf-8"))
    modules = sorted({c["python_name"].split(":")[0] for c in manifest["contributions"]["commands"]})
    assert "napari_nemesis.viewer.features.labelling.dock" in modules
    assert "napari_nemesis.viewer.features.training.dock" in modules
    code = f"import sys, {', '.join(modules)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- the label-state map -----------------------------------------------------------------------------
@pytest.mark.gui
def test_shown_label_state_map_sits_above_the_result_layers(labelling, qtbot):
    """The map is made ahead, before results layers made later; once shown it must not lie under
    the error map or a heatmap (their colours would mix with the label states)."""
    session, _widget, c = labelling
    session.scene.settle()
    layer = session.layers["map:label state"]
    layers = session.viewer.layers
    results = [lay for role, lay in session.layers.items()
               if role in ("noisy", "masked", "reconstruction", "abs_error", "error_map") or role.startswith("prob:")]
    assert results, "the result layers are made when the scan opens"
    layers.move(layers.index(layer), 0)  # as made ahead: below everything
    session.select(2)
    c.act("skip")
    qtbot.waitUntil(lambda: layer.visible, timeout=10000)
    assert all(layers.index(layer) > layers.index(lay) for lay in results)
    grid = session.layers["grid"]
    assert layers.index(grid) > layers.index(layer)  # the grid's overlays stay on top


def test_label_state_map_is_hidden_until_something_is_labelled(labelling, qtbot):
    """An all-unlabelled map draws nothing but would cost every canvas frame a layer: it shows
    with the first labelled or skipped superpatch and hides again when that is undone."""
    session, _widget, c = labelling
    layer = session.layers["map:label state"]
    assert not layer.visible and all(c.layer.color_of(i)[3] == 0.0 for i in range(session.scan.n))
    session.select(3)
    c.act("skip")
    qtbot.waitUntil(lambda: layer.visible, timeout=10000)
    assert c.layer.color_of(3)[3] > 0
    c.act("undo")
    qtbot.waitUntil(lambda: not layer.visible, timeout=10000)
    c.set_show_states(False)  # the dock's tick box: hidden even with labels
    session.select(4)
    c.act("skip")
    qtbot.wait(50)
    assert not layer.visible
    c.set_show_states(True)
    assert layer.visible
