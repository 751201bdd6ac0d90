"""Find similar in the Triage dock (opened through the Plugins-menu route): the selected superpatch's
neighbours among a folder, a click shows the neighbour's scan side by side, another scan clears the
list (neighbours of one scan's superpatch are never shown over another)."""

from __future__ import annotations

import numpy as np
import pytest

from test_viewer_routes import Watch, _scan_file, _wait

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from test_viewer_gui import make_tiny_weights

    return make_tiny_weights(tmp_path_factory.mktemp("similar_weights"))


def test_find_similar_lists_neighbours_and_shows_one_side_by_side(make_napari_viewer, qtbot, tiny_weights, tmp_path,
                                                                   monkeypatch):
    from napari_nemesis.viewer import session_for

    monkeypatch.setenv("NEMESIS_FEATURE_CACHE", str(tmp_path / "cache"))
    watch = Watch()
    try:
        cohort = tmp_path / "cohort"
        cohort.mkdir()
        query = _scan_file(cohort / "query.nii.gz", seed=1)
        twin = _scan_file(cohort / "twin.nii.gz", seed=1)  # the same anatomy: its boxes must come first
        _scan_file(cohort / "other.nii.gz", shape_xyz=(30, 30, 20), seed=5)
        viewer = make_napari_viewer(show=True)
        viewer.window.resize(1280, 800)
        session = session_for(viewer)
        session.set_weights(*tiny_weights, wait=True)
        _dock, triage_dock = viewer.window.add_plugin_dock_widget("napari-nemesis", "Triage")
        panel = triage_dock.panels["similar"]
        viewer.open(str(query), plugin="napari-nemesis")
        _wait(qtbot, session, "prepare")
        session.select(0)
        panel.among.setText(str(cohort))
        panel.controls.run_button.click()
        _wait(qtbot, session, "similar")
        result = panel.controller.result
        assert result is not None and result["query"]["superpatch"] == 0
        first = result["neighbours"][0]
        assert first["scan"] == str(twin) and first["superpatch"] == 0 and first["similarity"] > 0.999
        assert all(n["scan"] != str(query) for n in result["neighbours"])
        assert panel.table.rowCount() == len(result["neighbours"]) and panel.table.item(0, 0).text() == "twin.nii.gz"

        panel.table.cellClicked.emit(0, 0)  # what a click on the first row does
        _wait(qtbot, session, "neighbour")
        view = panel.controller.view
        assert view is not None and "twin.nii.gz" in view.title.text()
        image = view.model.layers[0]
        assert image.data.shape == session.layers["scan"].data.shape  # the twin's voxels, its own canvas
        assert session.layers["scan"].name == "query"  # the main canvas still shows the scan being read

        viewer.open(str(_scan_file(tmp_path / "next.nii.gz", seed=3)), plugin="napari-nemesis")
        _wait(qtbot, session, "prepare")
        assert panel.controller.result is None and panel.table.rowCount() == 0
        panel.controller.close_neighbour()
        assert panel.controller.view is None
        assert watch.errors == [] and watch.ours() == []
    finally:
        watch.close()
