"""Linked orthogonal views, turned on from the grid dock opened through the Plugins-menu route:
the two other planes with the scan (its data shared), the grid and the shown heatmaps, a crosshair
following the cursor and the selection, the window/level of the main canvas, a second scan."""

from __future__ import annotations

import numpy as np
import pytest

from test_viewer_routes import Watch, _scan_file, _wait

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from test_viewer_gui import make_tiny_weights

    return make_tiny_weights(tmp_path_factory.mktemp("ortho_weights"))


@pytest.fixture
def watch():
    w = Watch()
    yield w
    w.close()


def _open(make_napari_viewer, qtbot, tiny_weights, path):
    from napari_nemesis.viewer import session_for

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 800)
    session = session_for(viewer)
    session.set_weights(*tiny_weights, wait=True)
    _dock, grid_dock = viewer.window.add_plugin_dock_widget("napari-nemesis", "Superpatch grid")
    viewer.open(str(path), plugin="napari-nemesis")
    _wait(qtbot, session, "prepare")
    return viewer, session, grid_dock


def test_orthogonal_views_follow_the_cursor_the_selection_and_the_window(make_napari_viewer, qtbot, watch,
                                                                          tiny_weights, tmp_path):
    from napari_nemesis.viewer.features.orthoviews.controller import FOLLOW_MS

    viewer, session, grid_dock = _open(make_napari_viewer, qtbot, tiny_weights,
                                       _scan_file(tmp_path / "scan.nii.gz", shape_xyz=(40, 36, 30)))
    ortho = session.feature("orthoviews")
    assert not ortho.enabled and ortho.widget is None  # off by default
    grid_dock.panels["orthoviews"].toggle.setChecked(True)  # what the user ticks
    session.scene.settle()
    assert ortho.enabled and ortho.dock is not None
    assert [v.plane.name for v in ortho.views] == ["coronal", "sagittal"]
    scan = session.layers["scan"]
    for view in ortho.views:
        copies = list(view.copies.values())
        scan_copy = next(c for c in copies if c.name == scan.name)
        assert scan_copy.data is scan.data  # shared, not a second CT in memory
        assert view.grid.visible and len(view.grid.data) > 0  # the lattice, drawn in the view's plane
        assert np.allclose(view.grid.data[:, 1, view.plane.hidden], 0.0)
        assert all(c is not session.layers["grid"] for c in copies)  # the picking layer stays on the main canvas
        assert tuple(view.model.dims.displayed) == view.plane.displayed

    # the cursor: each side view slices through the point, its crosshair through it
    lo, hi = (np.asarray(v, dtype=float)[-3:] for v in scan.extent.world)
    point = lo + 0.3 * (hi - lo)
    session.events.hover_point.emit(point, 2, None)
    qtbot.wait(FOLLOW_MS + 50)
    session.scene.settle()
    for view in ortho.views:
        h = view.plane.hidden
        spacing = float(np.asarray(scan.scale)[h])
        assert abs(float(view.model.dims.point[h]) - point[h]) <= spacing  # the slice nearest the cursor
        starts = view.crosshair.data[:, 0, :]
        for axis in view.plane.displayed:  # each line passes through the point across the other axis
            others = [a for a in view.plane.displayed if a != axis]
            assert np.any(np.isclose(starts[:, others[0]], point[others[0]], atol=1e-3))

    # the selection: both views jump to the superpatch's centre and outline it
    session.select(0)
    session.scene.settle()
    centre = session.scan.box_centre_world(0)
    for view in ortho.views:
        h = view.plane.hidden
        assert view.outline.visible and len(view.outline.data) == 4  # the box's four edges in the plane
        low, high = view.outline.span
        assert low <= float(view.model.dims.point[h]) <= high
        assert abs(float(view.model.dims.point[h]) - centre[h]) <= float(np.asarray(scan.scale)[h])

    # window/level: a preset on the main canvas reaches the side views
    scan.contrast_limits = (-100.0, 300.0)
    session.scene.settle()
    for view in ortho.views:
        copy = next(c for c in view.copies.values() if c.name == scan.name)
        assert tuple(copy.contrast_limits) == (-100.0, 300.0)

    # the grid hidden on the main canvas: gone from the side views too, and back with it
    session.layers["grid_lines"].visible = False
    session.scene.settle()
    assert not any(view.grid.visible for view in ortho.views)
    session.layers["grid_lines"].visible = True
    session.scene.settle()
    assert all(view.grid.visible for view in ortho.views)

    # the main canvas shows coronal: the side views show the two others
    viewer.dims.order = (1, 0, 2)
    session.scene.settle()
    assert sorted(v.plane.name for v in ortho.views) == ["axial", "sagittal"]

    grid_dock.panels["orthoviews"].toggle.setChecked(False)
    session.scene.settle()
    assert not ortho.enabled and ortho.widget is None
    assert watch.errors == [] and watch.ours() == []


def test_a_second_scan_replaces_the_first_in_the_side_views(make_napari_viewer, qtbot, watch, tiny_weights, tmp_path):
    viewer, session, grid_dock = _open(make_napari_viewer, qtbot, tiny_weights,
                                       _scan_file(tmp_path / "first.nii.gz", seed=1))
    ortho = session.feature("orthoviews")
    ortho.set_enabled(True)
    session.scene.settle()
    first = session.layers["scan"]
    viewer.open(str(_scan_file(tmp_path / "second.nii.gz", origin=(500.0, 0.0, 0.0), seed=2)), plugin="napari-nemesis")
    _wait(qtbot, session, "prepare")
    session.scene.settle()
    second = session.layers["scan"]
    assert second is not first
    for view in ortho.views:
        shown = [c for c in view.copies.values() if c.visible]
        assert any(c.data is second.data for c in shown)
        assert not any(c.data is first.data for c in shown)  # the old patient is not on any side view
        x = view.plane.displayed[1]
        lo, hi = (np.asarray(v, dtype=float)[-3:] for v in second.extent.world)
        assert lo[x] - 1 <= float(view.model.dims.point[x] if x == view.plane.hidden else view.crosshair.data[0, 0, x]) <= hi[x] + 1
    ortho.set_enabled(False)
    assert watch.errors == [] and watch.ours() == []
