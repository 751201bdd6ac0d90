"""The Organ probabilities dock at both levels on the real sample CT with the bundled weights: organ
maps at patch resolution (``patch:<organ>``) lie on the scan, finer than the superpatch heatmaps;
one level on screen at a time; another scan clears them; the head a level uses; the labelling fill
records its segmentation in the project.

The bundled small model on the sample CT takes ~4 s a run on two cores: one run per test at most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_nemesis.sample_data import sample_btcv_labels_path, sample_ct_path
from napari_nemesis.weights import load_default_probe


def _session(make_napari_viewer, dock: bool = False):
    from napari_nemesis.viewer import session_for

    viewer = make_napari_viewer()
    session = session_for(viewer)
    widget = None
    if dock:
        from napari_nemesis.viewer.features.probabilities.dock import ProbabilitiesWidget

        widget = ProbabilitiesWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Organ probabilities")
    session.open_scan(sample_ct_path(), wait=True)
    return session, widget


def _value_at(layer, world_point):
    idx = np.floor(np.asarray(layer.world_to_data(world_point), dtype=float) + 0.5).astype(int)
    assert all(0 <= i < s for i, s in zip(idx, layer.data.shape)), (idx, layer.data.shape)
    return float(layer.data[tuple(idx)])


def _world_extent(layer) -> np.ndarray:
    return np.asarray(layer.extent.world, dtype=float)


@pytest.mark.gui
def test_patch_level_maps_lie_on_the_scan_finer_than_superpatches(make_napari_viewer):
    from napari_nemesis.viewer._layers import preprocessed_world_affine

    session, widget = _session(make_napari_viewer, dock=True)
    ctx = session.scan
    controller = session.feature("probabilities")
    session.scene.settle()
    superpatch_liver = session.layers["prob:liver"]  # made ahead, blank, for the organ shown
    assert widget.level.count() == 2 and widget.level.currentText() == "superpatch"
    widget.level.setCurrentIndex(widget.level.findData("patch"))  # the dock's chooser switches the level
    assert controller.level == "patch" and "Patch level" in widget.summary.text()
    result = session.run_probabilities(wait=True)
    assert result.level == "patch" and result.head == "bundled patch head"
    core = result.core  # train.patch_level.PatchInferResult: what `nemesis infer --level patch` paints
    assert result.patch_values.shape == (ctx.n, (ctx.grid.superpatch // 16) ** 3, len(result.organs))
    # per superpatch: the max of its patches inside the scan
    k = result.organs.index("liver")
    assert result.values[:, k] == pytest.approx(np.where(result.inside, result.patch_values[..., k], 0).max(1))
    layer = session.layers["patch:liver"]
    assert layer.visible and not superpatch_liver.visible
    # on the scan: the same world extent as the superpatch heatmap (both end at the scan's edge)
    assert _world_extent(layer) == pytest.approx(_world_extent(superpatch_liver), abs=1e-6)
    assert np.all(_world_extent(layer)[0] <= _world_extent(session.layers["scan"])[0] + 16 * 2.0)
    # each layer voxel is the core's probability of the patch it lies in (model voxels -> world)
    grid_k = core.probability_grid(k)
    world = preprocessed_world_affine(ctx.prepared.pre)
    rng = np.random.default_rng(0)
    for idx in rng.integers(0, np.asarray(grid_k.shape), size=(40, 3)):
        point = world[:3, :3] @ idx + world[:3, 3]
        assert _value_at(layer, point) == pytest.approx(float(grid_k[tuple(idx)]), abs=1e-6), idx
    # finer: within one superpatch the patch map takes many values, in 16^3 blocks; a superpatch one
    box = ctx.grid.box(0, clip=True)
    inside_box = grid_k[box.slices]
    assert len(np.unique(inside_box)) > 8
    block = grid_k[:16, :16, :16]
    assert np.all(block == block[0, 0, 0])
    cells = np.asarray(layer.scale, dtype=float)
    assert np.all(cells <= 16 * np.asarray(ctx.prepared.pre.spacing_zyx) + 1e-6)
    # the dock says which level its values are
    assert "Patch level" in widget.summary.text() and "patches of 16" in widget.summary.text()
    assert "max of its patches" in widget.table_caption.text()
    assert widget.table.rowCount() == ctx.n
    assert "max patch P(liver)" in session.grid_columns and "P(liver)" not in session.grid_columns
    # trust: the patch head's recorded held-out AUROC travels with its maps
    recorded = load_default_probe("patch")[1]["held_out_auroc"]  # what the bundled head's file says
    assert 0.5 < recorded <= 1 and result.auroc == pytest.approx(recorded) and "voxel-level" in result.auroc_on
    assert "AUROC" in widget.summary.text()
    # hovering a patch: the dock reads that patch's probabilities
    index = int(np.argmax(result.values[:, k]))
    t = int(np.argmax(np.where(result.inside[index], result.patch_values[index, :, k], -1)))
    g = ctx.grid.superpatch // 16
    tz, ty, tx = np.unravel_index(t, (g, g, g))
    start = np.asarray(ctx.grid.box(index).start) + 16 * np.array([tz, ty, tx]) + 7.5
    session.hover_at(world[:3, :3] @ start + world[:3, 3])
    info = controller.patch_at(world[:3, :3] @ start + world[:3, 3])
    assert info["superpatch"] == index and info["patch"] == t
    assert info["probabilities"]["liver"] == pytest.approx(float(result.patch_values[index, t, k]))
    assert f"superpatch {index}" in widget.patch_info.text()


@pytest.mark.gui
def test_one_level_on_screen_and_another_scan_clears_them(make_napari_viewer):
    session, _ = _session(make_napari_viewer)
    controller = session.feature("probabilities")
    session.run_probabilities(wait=True, level="patch")
    patch_liver = session.layers["patch:liver"]
    assert patch_liver.visible
    # back to superpatch: the patch maps and their hover columns leave the screen, nothing of the
    # patch level is shown as the superpatch level's (that one is not computed yet)
    session.set_probability_level("superpatch")
    session.scene.settle()
    assert not patch_liver.visible and session.probabilities is None
    assert not any(name.startswith("max patch") for name in session.grid_columns)
    assert not any(lay.visible for role, lay in session.layers.items() if role.startswith(("prob:", "patch:")))
    # and to patch again: the kept result of this scan comes back without a run
    session.set_probability_level("patch")
    session.scene.settle()
    assert session.probabilities is not None and session.probabilities.level == "patch"
    assert session.layers["patch:liver"] is patch_liver and patch_liver.visible
    assert "max patch P(liver)" in session.grid_columns
    # another scan: every level's result and map is cleared
    from napari_nemesis.data import read_volume, volume_from_array

    ct = read_volume(sample_ct_path())
    other = volume_from_array(np.ascontiguousarray(ct.array[:, :, : ct.shape[2] // 2]), ct.spacing)
    other.source = Path("half_ct.nii.gz")
    session.open_scan(other, wait=True)
    session.scene.settle()
    assert controller.results == {} and session.probabilities is None
    assert not patch_liver.visible and not any(n.startswith("max patch") for n in session.grid_columns)


def test_the_head_each_level_uses(tiny_checkpoint, tmp_path):
    """The picked probe head serves its own level; the bundled encoder's other level gets its bundled
    head; a custom checkpoint without a head of that level is refused in one line."""
    from napari_nemesis.errors import NemesisCheckpointError
    from napari_nemesis.viewer._models import ModelStore, WeightsChoice
    from napari_nemesis.weights import default_probe_path

    store = ModelStore()
    patch_file = str(default_probe_path("patch"))
    head, meta, name = store.head(WeightsChoice(None, None), "patch")
    assert meta["level"] == "patch" and name == "bundled patch head"
    head, meta, name = store.head(WeightsChoice(None, patch_file), "patch")
    assert meta["level"] == "patch" and name == Path(patch_file).name
    head, meta, name = store.head(WeightsChoice(None, patch_file), "superpatch")
    assert meta.get("level", "superpatch") == "superpatch" and name == "bundled superpatch head"
    with pytest.raises(NemesisCheckpointError, match="no bundled patch-level head"):
        store.head(WeightsChoice(str(tiny_checkpoint(tmp_path / "tiny.safetensors")), str(default_probe_path())),
                   "patch")
    store.keep_only(WeightsChoice(None, patch_file))
    assert any(isinstance(k, str) and k.endswith("patch") for k in store._probes)  # bundled heads stay


@pytest.mark.gui
def test_a_fill_in_the_viewer_records_its_segmentation(make_napari_viewer, tmp_path):
    from napari_nemesis.labels import LabelProject
    from napari_nemesis.viewer._io import sample_abdomen_ct

    session, _ = _session(make_napari_viewer)
    labelling = session.feature("labelling")
    labelling.set_project(tmp_path / "proj", wait=True)
    store = labelling.store
    res = labelling.fill(sample_btcv_labels_path(), wait=True)
    assert len(res.filled) == store.n
    entry = LabelProject.open(tmp_path / "proj").find(store.scan_path)
    assert entry.segmentation is not None and entry.segmentation.resolve() == sample_btcv_labels_path().resolve()
    assert "recorded in the project" in labelling.message
    # a Labels layer read from that file counts as the file; painted on, it is not recorded
    project2 = tmp_path / "proj2"
    labelling.set_project(project2, wait=True)
    _image, (data, kwargs, _kind) = sample_abdomen_ct()
    layer = session.viewer.add_labels(data, **kwargs)
    labelling.fill(layer, wait=True)
    entry = LabelProject.open(project2).find(labelling.store.scan_path)
    assert entry.segmentation is not None and entry.segmentation.resolve() == sample_btcv_labels_path().resolve()
    project3 = tmp_path / "proj3"
    labelling.set_project(project3, wait=True)
    layer.data[0, 0, 0] = 0 if layer.data[0, 0, 0] else 1
    labelling.fill(layer, wait=True)
    assert LabelProject.open(project3).find(labelling.store.scan_path).segmentation is None
    assert "not recorded" in labelling.message


def test_patch_block_image_is_the_core_painting_on_the_superpatch_extent():
    """``_layers.patch_block_image_clipped`` (no napari): every model voxel of the block image holds
    the value of the patch it lies in, as ``PatchInferResult.probability_grid`` paints it, and the
    image covers what the superpatch block image covers."""
    from napari_nemesis.data import volume_from_array
    from napari_nemesis.train.patch_level import PatchInferResult
    from napari_nemesis.train.scan import prepare_scan
    from napari_nemesis.viewer import _layers as L

    vol = volume_from_array(np.zeros((30, 45, 50), np.float32), (2.0, 1.5, 1.5))
    prepared = prepare_scan(vol, (2.0, 1.5, 1.5), 32)
    grid, patch = prepared.grid, 8
    g = grid.superpatch // patch
    values = np.random.default_rng(1).random((grid.n, g ** 3)).astype(np.float32)
    image, world = L.patch_block_image_clipped(values, grid, patch)
    _, sp_world = L.block_image_clipped(np.zeros(grid.n), grid)
    sp_image, _ = L.block_image_clipped(np.zeros(grid.n), grid)
    cells = np.diag(world)[:3]
    assert np.all(cells <= patch * np.asarray(prepared.pre.spacing_zyx) + 1e-9)
    # the same world box as the superpatch image: corners of voxel edges
    lo = lambda m, shape: (m[:3, :3] @ (-0.5 * np.ones(3)) + m[:3, 3], m[:3, :3] @ (np.asarray(shape) - 0.5) + m[:3, 3])
    for a, b in zip(lo(world, image.shape), lo(sp_world, sp_image.shape)):
        assert a == pytest.approx(b)
    core = PatchInferResult(vol, prepared.pre, grid, patch, values[..., None], np.ones(values.shape, bool), ["x"])
    painted = core.probability_grid(0)
    inv = np.linalg.inv(world) @ L.preprocessed_world_affine(prepared.pre)
    for idx in np.random.default_rng(2).integers(0, painted.shape, size=(200, 3)):
        cell = np.floor(inv[:3, :3] @ idx + inv[:3, 3] + 0.5).astype(int)
        assert image[tuple(cell)] == painted[tuple(idx)], idx
