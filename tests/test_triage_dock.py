"""The Triage dock through the Plugins-menu route: a folder triaged with the same core function as
``nemesis triage``, the ranking listed, a click opens that scan at that superpatch (read if it was
not open, never shown over another) and reconstructs it."""

from __future__ import annotations

import pytest

from test_viewer_routes import Watch, _scan_file, _wait

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from test_viewer_gui import make_tiny_weights

    return make_tiny_weights(tmp_path_factory.mktemp("triage_weights"))


def test_triage_ranks_a_folder_and_a_click_opens_the_scan_at_the_superpatch(make_napari_viewer, qtbot, tiny_weights,
                                                                            tmp_path):
    from napari_nemesis.viewer import session_for

    watch = Watch()
    try:
        cohort = tmp_path / "cohort"
        cohort.mkdir()
        first = _scan_file(cohort / "first.nii.gz", seed=1)
        second = _scan_file(cohort / "second.nii.gz", shape_xyz=(36, 40, 28), seed=4)
        viewer = make_napari_viewer(show=True)
        viewer.window.resize(1280, 800)
        session = session_for(viewer)
        session.set_weights(*tiny_weights, wait=True)
        _dock, dock = viewer.window.add_plugin_dock_widget("napari-nemesis", "Triage")
        viewer.open(str(first), plugin="napari-nemesis")
        _wait(qtbot, session, "prepare")
        dock.controller.add_sources([cohort])
        assert dock.sources.count() == 1
        dock.seeds.setValue(2)
        dock.controls.run_button.click()
        _wait(qtbot, session, "triage")
        result = dock.controller.result
        assert result is not None and result["mask"] == dock.strategy.currentText()
        ranking = result["ranking"]
        assert {r["scan"] for r in ranking} == {str(first), str(second)}
        scores = [r["score"] for r in ranking if r["score"] is not None]
        assert scores == sorted(scores, reverse=True)
        assert dock.table.rowCount() == len(ranking)

        # a row of the scan that is not open: it opens, becomes the only scan shown, that box selected
        row = next(k for k, r in enumerate(ranking) if r["scan"] == str(second))
        dock.table.cellClicked.emit(row, 0)
        qtbot.waitUntil(lambda: session.scan is not None and session.scan.name == "second", timeout=60000)
        _wait(qtbot, session, "prepare")
        qtbot.waitUntil(lambda: session.selected == ranking[row]["superpatch"], timeout=30000)
        assert [lay.name for lay in session.scan_layers() if lay.visible] == ["second"]
        _wait(qtbot, session, "reconstruction")
        assert session.reconstruction is not None

        # a row of the open scan: selected in place, nothing read again
        back = next(k for k, r in enumerate(ranking) if r["scan"] == str(second) and r["superpatch"] != session.selected)
        layers_before = len(viewer.layers)
        dock.table.cellClicked.emit(back, 0)
        session.scene.settle()
        assert session.selected == ranking[back]["superpatch"] and len(viewer.layers) == layers_before
        _wait(qtbot, session, "reconstruction")
        assert watch.errors == [] and watch.ours() == []
    finally:
        watch.close()
