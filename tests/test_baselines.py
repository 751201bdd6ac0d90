"""The learning-free fills that reconstruction scores are reported beside."""

from __future__ import annotations

import numpy as np

from napari_nemesis.train.baselines import FILLS, local_fill, mean_fill

P = 4  # patch size of these toy superpatches (16 voxels = 4 x 4 x 4 patches)


def _mask(patches: list[tuple[int, int, int]], g: int = 4) -> np.ndarray:
    m = np.zeros((g, g, g), bool)
    for c in patches:
        m[c] = True
    return m.repeat(P, 0).repeat(P, 1).repeat(P, 2)


def test_mean_fill_uses_visible_voxels_inside_the_scan_only():
    clean = np.zeros((16, 16, 16), np.float32)
    clean[:8] = 1.0                       # visible inside: half ones, half zeros
    clean[12:] = 100.0                    # outside the scan (padding): never used
    masked = _mask([(0, 0, 0)])
    valid = (slice(0, 12), slice(None), slice(None))
    out = mean_fill(clean, masked, valid, P)
    inside_visible = clean[:12][~masked[:12]]
    assert np.allclose(out[masked], inside_visible.mean())
    assert np.array_equal(out[~masked], clean[~masked])


def test_local_fill_copies_the_nearest_visible_patch_and_averages_ties():
    clean = np.arange(64, dtype=np.float32).reshape(4, 4, 4).repeat(P, 0).repeat(P, 1).repeat(P, 2)
    masked = _mask([(1, 1, 1)])
    out = local_fill(clean, masked, tuple(slice(None) for _ in range(3)), P)
    # six face neighbours at distance 1, values 21 +- 16, +- 4, +- 1: their mean is the centre's value 21
    assert np.allclose(out[masked], 21.0)
    masked = _mask([(0, 0, 0), (0, 0, 1)])
    out = local_fill(clean, masked, tuple(slice(None) for _ in range(3)), P)
    # patch (0,0,0): nearest visible are (1,0,0)=16 and (0,1,0)=4 -> 10; (0,0,1): (1,0,1)=17,(0,1,1)=5,(0,0,2)=2 -> 8
    first = out[:P, :P, :P]
    second = out[:P, :P, P:2 * P]
    assert np.allclose(first, 10.0) and np.allclose(second, 8.0)


def test_local_fill_beats_mean_fill_on_smooth_data_and_keeps_visible_voxels():
    z = np.linspace(0, 1, 16, dtype=np.float32)
    clean = np.broadcast_to(z[:, None, None], (16, 16, 16)).copy()
    rng = np.random.default_rng(0)
    masked = _mask([tuple(c) for c in rng.integers(0, 4, (20, 3))])
    valid = tuple(slice(None) for _ in range(3))
    err = {name: float(((fill(clean, masked, valid, P) - clean)[masked] ** 2).mean()) for name, fill in FILLS.items()}
    assert err["local_fill"] < err["mean_fill"]
    assert np.array_equal(local_fill(clean, masked, valid, P)[~masked], clean[~masked])
