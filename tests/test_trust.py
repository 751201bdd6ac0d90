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
    assert report == {"head_held_out_auroc": 0.8, "head_held_out_on": "held-out data", "head_trained_on_this_scan": None,
                      "warnings": []}


def test_the_bundled_head_records_its_held_out_score():
    from napari_nemesis.weights import load_default_probe

    value, where = held_out_auroc(load_default_probe()[1])
    assert value is not None and 0.5 < value <= 1 and "LIDC" in where


def test_a_scan_the_head_was_trained_on_is_named_and_warned_about():
    """The held-out AUROC shown beside probabilities does not describe a scan the head was trained on."""
    from napari_nemesis.data import ScanFingerprint

    scan, other = _ct(), _ct(offset=1.0)
    meta = {"held_out_auroc": 0.9, "train_voxel_sha256": {"0003": ScanFingerprint.of_volume(other).voxel_sha256,
                                                          "realct": ScanFingerprint.of_volume(scan).voxel_sha256}}
    report = trust_report(scan, meta, MODEL)
    assert report["head_trained_on_this_scan"] == "realct"
    assert len(report["warnings"]) == 1 and "trained on this scan (case realct)" in report["warnings"][0]
    # the same voxels read from another file format are the same scan; other voxels are not
    copy = Volume(scan.array.copy(), scan.spacing, np.eye(4))
    assert trust_report(copy, meta, MODEL)["head_trained_on_this_scan"] == "realct"
    changed = Volume(scan.array + np.float32(0.5), scan.spacing, np.eye(4))
    assert trust_report(changed, meta, MODEL)["head_trained_on_this_scan"] is None
    assert trust_report(scan, {"held_out_auroc": 0.9}, MODEL)["head_trained_on_this_scan"] is None  # older heads


def test_the_bundled_heads_know_they_were_trained_on_the_sample_ct():
    from napari_nemesis.data import read_volume
    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.weights import load_default_probe

    sample = read_volume(sample_ct_path())
    for level in ("superpatch", "patch"):
        report = trust_report(sample, load_default_probe(level)[1], MODEL)
        assert report["head_trained_on_this_scan"] is not None, level
        assert "training-set figures" in report["warnings"][0]
