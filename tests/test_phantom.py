"""The synthetic abdominal CT generator."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest

from napari_nemesis.data import (
    ORGANS,
    find_cases,
    make_phantom,
    read_labels,
    read_volume,
    write_phantom_dataset,
)


def test_phantom_is_deterministic_per_seed_and_case():
    a = make_phantom(0, 1, size="small")
    b = make_phantom(0, 1, size="small")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = make_phantom(0, 2, size="small")
    d = make_phantom(1, 1, size="small")
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    assert a[0].shape != d[0].shape or not np.array_equal(a[0], d[0])


@pytest.mark.parametrize("case", range(4))
def test_small_phantom_anatomy(case):
    image, labels, spacing, affine = make_phantom(7, case, size="small")
    assert image.dtype == np.int16 and labels.dtype == np.uint8
    assert image.shape[1:] == (128, 128) and image.shape == labels.shape
    assert 2.3 <= spacing[1] == spacing[2] <= 4.0 and 3.0 <= spacing[0] <= 5.0
    assert image.shape[0] * spacing[0] >= 300  # several superpatches of 128 at 2 mm
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), spacing)
    assert image.min() == -1024  # outside the reconstruction circle
    ids = set(np.unique(labels)) - {0}
    assert ids == {o.btcv_id for o in ORGANS}
    vox_ml = float(np.prod(spacing)) / 1000.0
    hu = {o.name: float(np.median(image[labels == o.btcv_id])) for o in ORGANS}
    ml = {o.name: np.count_nonzero(labels == o.btcv_id) * vox_ml for o in ORGANS}
    assert 40 <= hu["liver"] <= 140 and 700 <= ml["liver"] <= 2500
    assert 30 <= hu["spleen"] <= 160 and 60 <= ml["spleen"] <= 600
    assert -10 <= hu["gallbladder"] <= 60 and 8 <= ml["gallbladder"] <= 120
    assert hu["aorta"] >= 25 and ml["aorta"] >= 20
    for k in ("left_kidney", "right_kidney"):
        assert 20 <= hu[k] <= 260 and 50 <= ml[k] <= 300
    assert 20 <= ml["pancreas"] <= 150
    # fat, muscle and bone are there too
    body = image[labels == 0]
    assert np.mean((body > -150) & (body < -60)) > 0.05
    assert np.count_nonzero(image > 400) > 500
    # position: the liver is on the patient's right (low x in LPS), the spleen on the left
    xs = np.arange(image.shape[2])[None, None, :]
    liver_x = np.mean(np.broadcast_to(xs, labels.shape)[labels == 6])
    spleen_x = np.mean(np.broadcast_to(xs, labels.shape)[labels == 1])
    assert liver_x < image.shape[2] / 2 < spleen_x


def test_custom_shape_and_dataset_layout(tmp_path):
    written = write_phantom_dataset(tmp_path / "ph", cases=3, seed=2, shape=(24, 32, 32))
    assert len(written) == 6
    cases = find_cases(tmp_path / "ph")
    assert [c.case_id for c in cases] == ["0001", "0002", "0003"]
    meta = json.loads((tmp_path / "ph" / "phantom.json").read_text(encoding="utf-8"))
    assert meta["seed"] == 2 and len(meta["cases"]) == 3
    assert meta["cases"][0]["phase"] in ("native", "arterial", "portal")
    assert (tmp_path / "ph" / "README.md").exists()
    img = nib.load(str(cases[0].image))
    assert img.get_data_dtype() == np.int16 and "".join(nib.aff2axcodes(img.affine)) == "RAS"
    vol = read_volume(cases[0].image)
    lab = read_labels(cases[0].label, vol)
    image, labels, spacing, affine = make_phantom(2, 0, shape=(24, 32, 32))
    np.testing.assert_array_equal(vol.array, image.astype(np.float32))
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_allclose(vol.canonical_affine, affine, atol=1e-4)


def test_default_size_is_realistic_and_fast():
    t0 = time.perf_counter()
    image, labels, spacing, _ = make_phantom(0, 1)
    elapsed = time.perf_counter() - t0
    assert image.shape[1:] == (512, 512)
    assert 0.7 <= spacing[1] <= 0.9 and 2.5 <= spacing[0] <= 5.0
    assert image.shape[0] * spacing[0] >= 300
    assert set(np.unique(labels)) - {0} == {o.btcv_id for o in ORGANS}
    assert elapsed < 20  # a few seconds on one core; generous for a busy CI machine


def test_thirty_phantoms_get_the_standard_btcv_split():
    from napari_nemesis.data import BTCV_TEST_IDS, Case, phantom_case_id, split_cases

    ids = [phantom_case_id(k) for k in range(30)]
    assert len(set(ids)) == 30 and ids[:3] == ["0001", "0002", "0003"] and ids[10] == "0021"
    train, test = split_cases([Case(i, None, None) for i in ids])
    assert len(train) == 18 and [c.case_id for c in test] == list(BTCV_TEST_IDS)
    assert phantom_case_id(30) == "0041"
