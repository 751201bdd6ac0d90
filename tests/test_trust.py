"""How far to trust a probability: the head's held-out AUROC and the reasons a scan is unlike training data."""

from __future__ import annotations

import numpy as np

from napari_nemesis.data import Volume
from napari_nemesis.train.trust import held_out_auroc, scan_warnings, trust_report

MODEL = (2.0, 1.5, 1.5)


def _ct(shape=(60, 120, 120), spacing=(2.0, 1.5, 1.5), offset=0.0) -> Volume:
    rng = np.random.default_rng(0)
    arr = np.full(shape, -1000.0, np.float32)                      # air around
    z, y, x = (s // 2 for s in shape)
    arr[:, y // 2: y + y // 2, x // 2: x + x // 2] = 40 + 20 * rng.standard_normal((shape[0], y, x))  # body
    return Volume(arr + offset, tuple(map(float, spacing)), np.eye(4))


def test_a_ct_like_the_training_data_raises_nothing():
    assert scan_warnings(_ct(), MODEL) == []


def test_coarse_slices_are_named_with_the_factor():
    lines = scan_warnings(_ct(shape=(12, 120, 120), spacing=(10.0, 1.5, 1.5)), MODEL)
    assert len(lines) == 1 and "10 mm apart along z" in lines[0] and "5.0x" in lines[0]


def test_a_tiny_field_of_view_is_named():
    lines = scan_warnings(_ct(shape=(20, 120, 120)), MODEL)         # 40 mm of z, a superpatch is 256 mm
    assert len(lines) == 1 and "field of view z 40 mm" in lines[0]


def test_intensities_that_are_not_hounsfield_units_are_named():
    assert "no air" in scan_warnings(_ct(offset=1024.0), MODEL)[0]   # a lost rescale intercept
    dark = _ct()
    dark.array[:] = -1000.0
    assert "soft-tissue window" in scan_warnings(dark, MODEL)[0]


def test_held_out_auroc_prefers_the_recorded_held_out_figure():
    assert held_out_auroc({}) == (None, None)
    assert held_out_auroc({"auroc_mean_test": 0.97})[0] == 0.97
    value, where = held_out_auroc({"auroc_mean_test": 0.97, "held_out_auroc": 0.91, "held_out_on": "scan X"})
    assert (value, where) == (0.91, "scan X")
    assert held_out_auroc({"held_out_auroc": "nan"}) == (None, None)
    report = trust_report(_ct(), {"held_out_auroc": 0.8}, MODEL)
    assert report == {"head_held_out_auroc": 0.8, "head_held_out_on": "held-out data", "warnings": []}


def test_the_bundled_head_records_its_held_out_score():
    from napari_nemesis.weights import load_default_probe

    value, where = held_out_auroc(load_default_probe()[1])
    assert value is not None and 0.5 < value <= 1 and "LIDC" in where
