"""Preprocessing, the superpatch grid, sampling and presence labels."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

from napari_nemesis.data import (
    DEFAULT_SPACING_ZYX,
    ORGAN_IDS,
    ORGAN_NAMES,
    SuperpatchGrid,
    preprocess,
    presence_labels,
    read_labels,
    read_volume,
    resample,
    sample_superpatch,
    sample_superpatch_origin,
    inside_fraction,
    volume_from_array,
    window_hu,
)

from conftest import CT, CT_LABELS, needs_ct  # noqa: E402


def test_data_package_imports_no_torch_or_qt():
    import subprocess

    code = ("import sys, napari_nemesis.data, napari_nemesis.data.bench_sampling; "
            "bad = [m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_window_hu():
    hu = np.array([-2000, -175, 37.5, 250, 3000], dtype=np.float32)
    w = window_hu(hu)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [0, 0, 0.5, 1, 1], atol=1e-6)


def test_resample_linear_and_nearest():
    # a linear ramp stays a linear ramp under linear interpolation (away from the edges)
    z = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((1, 6, 6), np.float32)
    out = resample(z, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=1)
    assert out.shape == (40, 6, 6) and out.dtype == np.float32
    centres = (np.arange(40) + 0.5) * 0.5 - 0.5  # edge-aligned: output voxel o sits at (o+.5)/2-.5
    np.testing.assert_allclose(out[1:-1, 0, 0], centres[1:-1], atol=1e-5)
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[2:4, 1:5, 3] = 7
    up = resample(labels, (3.0, 3.0, 3.0), (1.5, 1.5, 1.5), order=0)
    assert up.dtype == np.uint8 and up.shape == (12, 12, 12)
    assert set(np.unique(up)) == {0, 7}
    assert np.count_nonzero(up) == np.count_nonzero(labels) * 8  # exact factor 2: each voxel x8
    same = resample(labels, (3.0, 3.0, 3.0), "native", order=0)
    assert same is labels


def test_preprocess_mapping_back_to_the_original():
    arr = (np.random.default_rng(0).normal(0, 100, (15, 20, 24))).astype(np.float32)
    vol = volume_from_array(arr, spacing_zyx=(3.0, 0.8, 0.8), origin_xyz=(5.0, 6.0, 7.0))
    pre = preprocess(vol)
    assert pre.spacing_zyx == DEFAULT_SPACING_ZYX
    assert pre.shape == (round(15 * 3 / 2), round(20 * 0.8 / 1.5), round(24 * 0.8 / 1.5))
    assert 0.0 <= pre.array.min() and pre.array.max() <= 1.0
    # the preprocessed affine: its voxel spacing is the target, and the field of view's
    # first edge coincides with the original's
    np.testing.assert_allclose(np.linalg.norm(pre.affine[:3, :3], axis=0), DEFAULT_SPACING_ZYX)
    edge_pre = pre.affine @ np.array([-0.5, -0.5, -0.5, 1])
    edge_src = vol.canonical_affine @ np.array([-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(edge_pre, edge_src, atol=1e-9)
    back = pre.to_original(pre.array, order=1)
    assert back.shape == vol.shape
    native = preprocess(vol, "native")
    assert native.shape == vol.shape
    np.testing.assert_allclose(native.array, window_hu(arr))


@pytest.mark.parametrize("shape,s", [((40, 50, 33), 16), ((32, 32, 32), 32), ((5, 70, 9), 32)])
def test_split_stitch_round_trip(shape, s):
    vol = np.random.default_rng(1).random(shape).astype(np.float32)
    grid = SuperpatchGrid(shape, s)
    assert grid.padded_shape == tuple(-(-d // s) * s for d in shape)
    assert grid.n == int(np.prod(grid.grid_shape))
    patches = grid.split(vol)
    assert patches.shape == (grid.n, s, s, s)
    np.testing.assert_array_equal(grid.stitch(patches), vol)
    # every patch is the box's content, padding 0
    for i in range(grid.n):
        b = grid.box(i)
        ref = grid.pad(vol)[b.slices]
        np.testing.assert_array_equal(patches[i], ref)
    # streaming gives the same patches, one at a time
    streamed = list(grid.iter_superpatches(vol))
    assert [k for k, _, _ in streamed] == list(range(grid.n))
    np.testing.assert_array_equal(np.stack([p for _, _, p in streamed]), patches)
    # extra trailing channels stitch too
    two = np.stack([patches, 1 - patches], axis=-1)
    np.testing.assert_array_equal(grid.stitch(two)[..., 1], 1 - vol)


def test_boxes_partition_the_original_scan_and_world_corners():
    arr = np.zeros((23, 40, 37), np.float32)
    vol = volume_from_array(arr, spacing_zyx=(3.0, 0.7, 0.9), origin_xyz=(100.0, -50.0, 20.0))
    pre = preprocess(vol)
    grid = SuperpatchGrid.for_preprocessed(pre, 8)
    cover = np.zeros(vol.shape, np.int32)
    for i in range(grid.n):
        b = grid.box_original(i)
        cover[b.slices] += 1
    assert (cover == 1).all()
    # world corners of superpatch 0: the lower corner is the scan's first voxel edge
    corners = grid.box_world(0)
    assert corners.shape == (8, 3)
    first_edge = vol.canonical_affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    assert np.any(np.all(np.isclose(corners, first_edge[:3], atol=1e-6), axis=1))
    # adjacent superpatches share a face: box 0's upper x face is box 1's lower x face
    c0, c1 = grid.box_world(0), grid.box_world(1)
    shared = [c for c in c0 if np.any(np.all(np.isclose(c1, c, atol=1e-6), axis=1))]
    assert len(shared) == 4
    assert grid.boxes_world().shape == (grid.n, 8, 3)


def test_sampling_is_seeded_uniform_and_bounded():
    vol = np.zeros((40, 40, 40), np.float32)
    vol[:20] = 0.5  # the lower half is "body"
    rng = np.random.default_rng(0)
    origins = np.array([sample_superpatch_origin(vol.shape, 16, rng) for _ in range(2000)])
    # the crop stays inside the 40-voxel scan: origins 0..24, never into the padding (up to 48)
    assert origins.min() == 0 and origins.max() == 40 - 16
    assert abs(origins.mean() - 12) < 1.0
    assert all(inside_fraction(vol.shape, o, 16) == 1.0 for o in origins)
    a = sample_superpatch(vol, 16, np.random.default_rng(5))
    b = sample_superpatch(vol, 16, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    for k in range(50):
        patch, origin = sample_superpatch(vol, 16, np.random.default_rng(k))
        assert patch.shape == (16, 16, 16) and patch.dtype == np.float32
        assert patch.mean() >= 0.05
    # all air: never loops forever, returns the best crop it saw
    air = np.zeros((20, 20, 20), np.float32)
    patch, _ = sample_superpatch(air, 16, np.random.default_rng(0), max_tries=7)
    assert patch.shape == (16, 16, 16)


def test_presence_labels_from_superpatches_and_from_a_volume():
    s = 8
    lab = np.zeros((16, 16, 8), np.uint8)
    lab[0:5, 0:5, 0:4] = 6      # 100 voxels of liver in superpatch 0
    lab[8:12, 8:12, 0:6] = 1    # 96 voxels of spleen in superpatch 3 -> absent
    lab[0:2, 8:10, 0:2] = 5     # esophagus: not a target organ
    grid = SuperpatchGrid(lab.shape, s)
    pres = presence_labels(grid.split(lab))
    assert pres.shape == (4, 8) and pres.dtype == np.uint8
    liver, spleen = ORGAN_NAMES.index("liver"), ORGAN_NAMES.index("spleen")
    assert pres[0, liver] == 1 and pres[:, spleen].sum() == 0 and pres.sum() == 1
    np.testing.assert_array_equal(presence_labels(lab, grid), pres)
    assert presence_labels(lab, grid, threshold=96)[3, spleen] == 1


@needs_ct
def test_real_ct_superpatch_labels_against_an_independent_count():
    """Presence on the real CT, counted independently via world coordinates and nibabel."""
    s = 64
    vol = read_volume(CT)
    lab = read_labels(CT_LABELS, vol)
    pre = preprocess(vol)
    grid = SuperpatchGrid.for_preprocessed(pre, s)
    lab_pre = resample(lab, vol.spacing, pre.spacing_zyx, order=0)
    ours = presence_labels(lab_pre, grid)

    # independent: preprocessed voxel centres -> world (target spacing, same field of view)
    # -> file voxel of the label map via its own affine -> nearest (ties to the lower index)
    img = nib.load(str(CT_LABELS))
    data = np.asanyarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    counts = np.zeros((grid.n, 8), np.int64)
    tz, ty, tx = DEFAULT_SPACING_ZYX
    # world of the scan's first voxel edge, and LPS axes in RAS world for this axis-aligned scan
    edge = vol.canonical_affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    for k in range(pre.shape[0]):
        zz = np.full(pre.shape[1:], k, float)
        yy, xx = np.meshgrid(np.arange(pre.shape[1]), np.arange(pre.shape[2]), indexing="ij")
        world = np.stack([
            edge[0] - (xx + 0.5) * tx,      # x index grows toward L = -R
            edge[1] - (yy + 0.5) * ty,      # y index grows toward P = -A
            edge[2] + (zz + 0.5) * tz,      # z index grows toward S
        ], axis=-1)
        ijk = world @ inv[:3, :3].T + inv[:3, 3]
        ijk = np.floor(ijk + 0.5 - 1e-6).astype(int)
        for a in range(3):
            np.clip(ijk[..., a], 0, data.shape[a] - 1, out=ijk[..., a])
        vals = data[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
        gz = k // s
        for gy in range(grid.grid_shape[1]):
            for gx in range(grid.grid_shape[2]):
                block = vals[gy * s:(gy + 1) * s, gx * s:(gx + 1) * s]
                i = (gz * grid.grid_shape[1] + gy) * grid.grid_shape[2] + gx
                for o, oid in enumerate(ORGAN_IDS):
                    counts[i, o] += int(np.count_nonzero(block == oid))
    expected = (counts >= 100).astype(np.uint8)
    np.testing.assert_array_equal(ours, expected)
    assert expected.sum() > 10  # the test means something: several organs in several patches


def test_crops_leave_the_scan_only_along_axes_shorter_than_a_superpatch():
    # z shorter than the superpatch, y exactly one, x longer
    shape = (10, 16, 37)
    rng = np.random.default_rng(1)
    origins = np.array([sample_superpatch_origin(shape, 16, rng) for _ in range(500)])
    assert set(origins[:, 0]) == {0} and set(origins[:, 1]) == {0}
    assert origins[:, 2].min() == 0 and origins[:, 2].max() == 37 - 16
    # only the short z axis contributes padding: 10 of 16 slices are scan
    assert {inside_fraction(shape, o, 16) for o in origins} == {10 / 16}
    assert inside_fraction((40, 40, 40), (30, 0, 0), 16) == 10 / 16


@needs_ct
def test_pretraining_crops_of_the_real_ct_are_scan_not_padding(tmp_path):
    """Every axis of the real CT at 2 x 1.5 x 1.5 mm is longer than 128: crops hold no padding
    (uniform origins over the padded volume gave a mean inside fraction of 0.68 here)."""
    from napari_nemesis.data import open_dataset

    data = tmp_path / "data"
    data.mkdir()
    (data / "list.json").write_text('[{"image": "%s", "id": "ct"}]' % CT)
    cache = open_dataset(data, cache_dir=tmp_path / "cache", include_unlabelled=True)
    fractions = []
    for k in range(40):
        _, cid, origin = cache.sample(np.random.default_rng([0, k]), return_info=True)
        fractions.append(inside_fraction(cache.image(cid).shape, origin, 128))
    assert min(fractions) == 1.0


def test_window_upper_end_maps_to_exactly_one():
    """Issue 9.9: multiplying by a rounded 1/425 gave 0.99999994 at 250 HU."""
    out = window_hu(np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0]))
    assert out.dtype == np.float32 and out[3] == 1.0 and out[4] == 1.0 and out[1] == 0.0
    assert out[2] == np.float32(0.5)
    assert float(window_hu(250)) == 1.0  # a scalar works too
    hu = np.linspace(-175, 250, 10001, dtype=np.float32)
    assert window_hu(hu).max() == 1.0 and np.all(np.diff(window_hu(hu)) >= 0)
