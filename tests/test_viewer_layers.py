"""The viewer's numbers without a display: world transforms, grid layers, picking, features, settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nemesis.data import SuperpatchGrid, preprocess, volume_from_array
from napari_nemesis.viewer import _layers as L


def _oblique_ras(spacing_zyx=(3.0, 1.2, 0.9), degrees=12.0, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A canonical (z, y, x) index -> RAS matrix, rotated about the S axis (still closest to LPS)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    sz, sy, sx = spacing_zyx
    lin = rot @ np.array([[0, 0, -sx], [0, -sy, 0], [sz, 0, 0]], dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = origin
    return m


def _apply(kwargs: dict, index_zyx) -> np.ndarray:
    """What napari does with the layer keywords: data index -> world."""
    idx = np.asarray(index_zyx, dtype=np.float64)
    if "affine" in kwargs:
        m = np.asarray(kwargs["affine"])
        return idx @ m[:3, :3].T + m[:3, 3]
    return idx * np.asarray(kwargs["scale"]) + np.asarray(kwargs["translate"])


def _lps_zyx(ras_xyz) -> np.ndarray:
    ras = np.asarray(ras_xyz, dtype=np.float64)
    return np.stack([ras[..., 2], -ras[..., 1], -ras[..., 0]], axis=-1)


@pytest.mark.parametrize("oblique", [False, True])
def test_world_transform_is_lps_mm_zyx(oblique):
    canonical = _oblique_ras() if oblique else None
    vol = volume_from_array(np.zeros((6, 7, 8), np.float32), (3.0, 1.2, 0.9), (10.0, -20.0, 30.0),
                            canonical_affine=canonical)
    kwargs = L.transform_kwargs(L.world_affine(vol.canonical_affine))
    assert ("affine" in kwargs) == oblique
    if not oblique:
        assert kwargs["scale"] == pytest.approx((3.0, 1.2, 0.9))  # positive: LPS+ voxel axes
    for idx in [(0, 0, 0), (5, 6, 7), (2, 3, 1), (4, 0, 6)]:
        expected = _lps_zyx(vol.voxel_to_world(np.asarray(idx)))
        assert _apply(kwargs, idx) == pytest.approx(expected, abs=1e-9)
    assert L.ras_affine(L.world_affine(vol.canonical_affine)) == pytest.approx(vol.canonical_affine)


def _small_grid(superpatch=16, oblique=False):
    canonical = _oblique_ras((3.0, 2.0, 2.0), 9.0) if oblique else None
    vol = volume_from_array(np.zeros((13, 17, 30), np.float32), (3.0, 2.0, 2.0), (5.0, 6.0, -7.0),
                            canonical_affine=canonical)
    pre = preprocess(vol, (2.0, 1.5, 1.5))
    return SuperpatchGrid.for_preprocessed(pre, superpatch)


@pytest.mark.parametrize("oblique", [False, True])
def test_grid_layer_cells_are_the_core_boxes(oblique):
    grid = _small_grid(oblique=oblique)
    assert grid.n > 4 and len(set(grid.grid_shape)) > 1
    world = L.grid_world_affine(grid)
    ids = L.grid_ids(grid.grid_shape)
    for i in range(grid.n):
        c = np.asarray(grid.grid_index(i), dtype=np.float64)
        assert ids[tuple(grid.grid_index(i))] == i + 1
        # the cell's 8 corners (voxel edges at c +- 1/2) are the superpatch's box in world mm
        corners = np.array([[c[0] + dz, c[1] + dy, c[2] + dx] for dz in (-0.5, 0.5) for dy in (-0.5, 0.5)
                            for dx in (-0.5, 0.5)])
        got = corners @ world[:3, :3].T + world[:3, 3]
        expected = _lps_zyx(grid.box_world(i))
        assert got == pytest.approx(expected, abs=1e-6)
        centre = expected.mean(axis=0)
        assert L.superpatch_at(world, grid.grid_shape, centre) == i
    outside = _lps_zyx(grid.box_world(0)).min(axis=0) - 5.0
    assert L.superpatch_at(world, grid.grid_shape, outside) is None


def test_ray_picks_the_front_superpatch():
    grid = _small_grid()
    world = L.grid_world_affine(grid)
    gz, gy, gx = grid.grid_shape
    target = int(np.ravel_multi_index((1, gy - 1, 0), grid.grid_shape))
    centre = _lps_zyx(grid.box_world(target)).mean(axis=0)
    # looking along +y (anterior to posterior) the first cell entered has grid y = 0
    front = int(np.ravel_multi_index((1, 0, 0), grid.grid_shape))
    assert L.superpatch_on_ray(world, grid.grid_shape, centre, (0.0, 1.0, 0.0)) == front
    # looking along -y the first cell is the posterior one, the target itself
    assert L.superpatch_on_ray(world, grid.grid_shape, centre, (0.0, -1.0, 0.0)) == target
    far = centre + np.array([0.0, 0.0, 1e4])
    assert L.superpatch_on_ray(world, grid.grid_shape, far, (0.0, 1.0, 0.0)) is None


def test_lattice_vectors_draw_every_grid_line_of_any_slice():
    shape = (2, 3, 4)
    vec = L.grid_lattice_vectors(shape)
    edges = 2 * 4 * 5 + 3 * 3 * 5 + 4 * 3 * 4  # edges along z, y, x: cells x lattice points across
    assert vec.shape == (edges, 2, 3)
    for axis in range(3):  # a slice normal to `axis` at any position inside the grid
        others = [a for a in range(3) if a != axis]
        for position in np.linspace(-0.5, shape[axis] - 0.5, 7):
            # napari shows a vector when its start lies within half a data unit of the slice
            shown = vec[np.abs(vec[:, 0, axis] - position) <= 0.5]
            lines = shown[np.abs(shown[:, 1, others]).sum(axis=1) > 0]  # not seen end-on
            assert np.all(np.abs(lines[:, 1, axis]) == 0)  # they lie in the slice's plane
            for k, a in enumerate(others):  # every lattice line across the other axis is drawn
                b = others[1 - k]
                along = lines[lines[:, 1, b] != 0]
                assert set(np.round(along[:, 0, a], 3)) == set(np.arange(shape[a] + 1) - 0.5)
                for level in np.arange(shape[a] + 1) - 0.5:  # each line spans the whole grid
                    seg = along[np.isclose(along[:, 0, a], level)]
                    covered = np.unique(np.round(seg[:, 0, b], 3))
                    assert len(covered) == shape[b]


def test_block_image_features_and_tokens():
    grid = _small_grid()
    n = grid.n
    values = np.linspace(0, 1, n)
    img = L.block_image(values, grid.grid_shape)
    for i in range(n):
        assert img[grid.grid_index(i)] == pytest.approx(values[i])
    partial = L.block_image(values[:2], grid.grid_shape)
    assert np.isnan(partial.ravel()[2:]).all()
    feats = L.grid_features(grid.grid_shape, {"P(liver)": values})
    assert list(feats["index"]) == list(range(n + 1))
    assert np.isnan(feats["P(liver)"][0]) and feats["P(liver)"][1:] == pytest.approx(values)
    assert feats["grid_zyx"][n] == ",".join(map(str, grid.grid_index(n - 1)))
    with pytest.raises(ValueError):
        L.grid_features(grid.grid_shape, {"bad": values[:-1]})
    # tokens: patch (z, y, x) of superpatch i under a world point
    patch = 4
    pw = L.patch_world_affine(grid, n - 1, patch)
    for token in [(0, 0, 0), (3, 1, 2)]:
        p = pw[:3, :3] @ np.asarray(token, float) + pw[:3, 3]
        assert L.token_at(pw, grid.superpatch // patch, p) == token
        assert L.superpatch_at(L.grid_world_affine(grid), grid.grid_shape, p) == n - 1
    assert L.neighbour(grid.grid_shape, 0, 2, -1) == 0
    assert L.neighbour(grid.grid_shape, 0, 2, 1) == 1


def test_window_presets():
    assert L.window_limits(*L.WINDOW_PRESETS["abdomen"]) == (-160.0, 240.0)
    assert set(L.WINDOW_PRESETS) == {"abdomen", "liver", "soft tissue", "lung", "bone"}
    for level, width in L.WINDOW_PRESETS.values():
        lo, hi = L.window_limits(level, width)
        assert hi - lo == width and (lo + hi) / 2 == level


def test_settings_round_trip(tmp_path, monkeypatch):
    from napari_nemesis.viewer._settings import Settings, load_settings, save_settings, settings_path

    monkeypatch.setenv("NEMESIS_CONFIG_DIR", str(tmp_path))
    assert load_settings() == Settings()
    save_settings(Settings(device="cpu", checkpoint="/a.safetensors", probe="/b.safetensors", batch=4))
    assert settings_path() == tmp_path / "viewer.json"
    assert load_settings() == Settings("cpu", "/a.safetensors", "/b.safetensors", 4)
    settings_path().write_text("{not json")
    assert load_settings() == Settings()
    settings_path().write_text(json.dumps({"device": "tpu", "batch": "x", "unknown": 1}))
    assert load_settings() == Settings()


def test_remembered_weights_that_are_gone_are_forgotten(tmp_path, monkeypatch):
    """A run folder deleted since (the demo's throw-away project, a moved disk) must not make every
    run fail: the checkpoint/probe pair is dropped and the bundled weights used."""
    from napari_nemesis.viewer._settings import Settings, forget_missing_weights

    probe = tmp_path / "probe.safetensors"
    probe.write_bytes(b"x")
    kept = Settings(checkpoint="", probe=str(probe))
    assert forget_missing_weights(kept) == [] and kept.probe == str(probe)
    gone = Settings(checkpoint=str(tmp_path / "gone.safetensors"), probe=str(probe))
    assert forget_missing_weights(gone) == [str(tmp_path / "gone.safetensors")]
    assert (gone.checkpoint, gone.probe) == ("", "")
    only_probe_gone = Settings(probe=str(tmp_path / "run" / "probe.safetensors"))
    assert forget_missing_weights(only_probe_gone) and only_probe_gone.probe == ""


def test_model_store_keeps_only_the_weights_in_use(tmp_path, tiny_checkpoint):
    from napari_nemesis.viewer._models import ModelStore, WeightsChoice

    a = str(tiny_checkpoint(tmp_path / "a.safetensors", seed=1))
    b = str(tiny_checkpoint(tmp_path / "b.safetensors", seed=2))
    store = ModelStore()
    model_a, model_b = store.model(a), store.model(b)
    assert store.model(a) is model_a  # cached while both are in use
    store.keep_only(WeightsChoice(b, None))
    assert store.model(b) is model_b
    assert store.model(a) is not model_a  # dropped: read again


def test_viewer_modules_named_by_the_manifest_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import napari_nemesis.viewer._io, napari_nemesis.viewer; "
            "import napari_nemesis.viewer._layers, napari_nemesis.viewer.widgets.grid, "
            "napari_nemesis.viewer.widgets.reconstruction, napari_nemesis.viewer.widgets.probabilities; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
