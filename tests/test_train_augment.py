"""Which scans pretraining draws from (case weights) and how crops are varied (intensity, scale)."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_PRETRAIN

from napari_nemesis.errors import NemesisInputError
from napari_nemesis.data import crop_box, crop_superpatch
from napari_nemesis.train.augment import Augment, case_weights, pattern_shares
from napari_nemesis.train.pretrain import PretrainOptions, pretrain
from napari_nemesis.train.state import read_train_state

TINY = TINY_PRETRAIN


@pytest.fixture
def phantoms(pretrain_phantoms):
    return pretrain_phantoms


def test_case_weights_first_matching_pattern_and_clear_refusals():
    ids = ["ph0001", "ph0002", "realct", "realchest"]
    assert case_weights(ids, {}) is None
    w = case_weights(ids, {"realct": 10, "real*": 4})
    assert w == pytest.approx(np.array([1, 1, 10, 4]) / 16)
    assert pattern_shares(ids, w, {"realct": 10, "real*": 4}) == {"realct": 0.625, "real*": 0.25}
    assert pattern_shares(ids, None, {}) == {}
    with pytest.raises(NemesisInputError, match="lidc.*matches no case") as err:
        case_weights(ids, {"lidc*": 3}, "cache")
    assert "\n" not in str(err.value) and str(err.value).startswith("cache:")
    with pytest.raises(NemesisInputError, match="every case has weight 0"):
        case_weights(ids, {"*": 0})


def test_weighted_sampling_draws_cases_in_proportion(phantoms):
    ids = phantoms.case_ids
    heavy = ids[0]
    w = case_weights(ids, {heavy: 9.0})  # 9 / (9 + 3) = 0.75 of the draws
    draws = [phantoms.sample(np.random.default_rng([0, i]), return_info=True, weights=w)[1] for i in range(400)]
    share = draws.count(heavy) / len(draws)
    assert 0.66 < share < 0.84
    uniform = [phantoms.sample(np.random.default_rng([0, i]), return_info=True)[1] for i in range(400)]
    assert uniform.count(heavy) / 400 < 0.4
    with pytest.raises(NemesisInputError, match="case weights for"):
        phantoms.sample(np.random.default_rng(0), weights=[1.0])


def test_crop_box_pads_outside_the_volume():
    vol = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    box = crop_box(vol, (-1, 1, 2), (3, 3, 3))
    assert box.shape == (3, 3, 3)
    assert box[0].max() == 0  # the slice before the volume is padding
    assert box[1, 0, 0] == vol[0, 1, 2] and box[1, 0, 1] == 0  # beyond the last column: padding
    assert crop_box(vol, (5, 5, 5), (2, 2, 2)).max() == 0
    # a superpatch crop is the cubic case of it
    assert np.array_equal(crop_superpatch(vol, (1, 0, 2), 3), crop_box(vol, (1, 0, 2), (3, 3, 3)))


def test_intensity_jitter_is_reproducible_bounded_and_varies_contrast():
    rng = np.random.default_rng(1)
    vol = rng.uniform(0.2, 0.8, (40, 40, 40)).astype(np.float32)
    plain = Augment().crop(vol, (4, 4, 4), 32, np.random.default_rng(3))
    assert np.array_equal(plain, vol[4:36, 4:36, 4:36])
    aug = Augment(intensity=0.3)
    a = aug.crop(vol, (4, 4, 4), 32, np.random.default_rng(3))
    b = aug.crop(vol, (4, 4, 4), 32, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == (32, 32, 32)
    assert 0.0 <= a.min() and a.max() <= 1.0
    stds = [aug.crop(vol, (4, 4, 4), 32, np.random.default_rng(s)).std() for s in range(20)]
    assert max(stds) / min(stds) > 1.2  # the contrast changes from crop to crop
    # a linear map of the crop (before the clip): the correlation with the original stays 1
    assert np.corrcoef(a.ravel(), plain.ravel())[0, 1] > 0.99


def test_scale_jitter_changes_the_spacing_per_axis_within_bounds():
    s = 32
    z = np.arange(80, dtype=np.float32)[:, None, None] * np.ones((1, 80, 80), np.float32) / 80
    aug = Augment(scale=0.2)
    spans = []
    for seed in range(30):
        crop = aug.crop(z, (24, 24, 24), s, np.random.default_rng(seed))
        assert crop.shape == (s, s, s)
        # the length of the source region along z: trilinear resizing n -> s voxels puts the first and
        # last slice n * (s - 1) / s source voxels apart
        spans.append((crop[-1, 0, 0] - crop[0, 0, 0]) * 80 * s / (s - 1))
        assert np.allclose(crop[:, 0, 0], crop[:, -1, -1], atol=1e-5)  # a ramp along z only stays one
    spans = np.array(spans)
    assert spans.min() >= 0.8 * s - 1 and spans.max() <= 1.2 * s + 1
    assert spans.max() - spans.min() > 0.15 * s  # really varied
    with pytest.raises(NemesisInputError, match="scale jitter"):
        Augment(scale=0.9)


def test_pretraining_with_weights_and_jitter_records_them_and_resume_keeps_them(phantoms, tmp_path):
    ids = phantoms.case_ids
    opts = PretrainOptions(**TINY, steps=3, checkpoint_every=10, case_weights={ids[0]: 3.0},
                           intensity_jitter=0.1, scale_jitter=0.1)
    res = pretrain(phantoms, tmp_path / "run", opts)
    assert res["case_share"] == {ids[0]: pytest.approx(3 / (3 + len(ids) - 1), abs=1e-3)}
    assert res["augment"] == {"intensity_jitter": 0.1, "scale_jitter": 0.1}
    assert read_train_state(tmp_path / "run")["options"]["case_weights"] == {ids[0]: 3.0}
    for change, flag in ((dict(intensity_jitter=0.2), "--intensity-jitter"), (dict(scale_jitter=0.0), "--scale-jitter"),
                         (dict(case_weights={}), "--case-weight")):
        more = PretrainOptions(**{**TINY, "steps": 4, "case_weights": {ids[0]: 3.0}, "intensity_jitter": 0.1,
                                  "scale_jitter": 0.1, **change})
        with pytest.raises(NemesisInputError, match=flag):
            pretrain(phantoms, tmp_path / "run", more, resume=True)
    # the same options continue
    more = PretrainOptions(**{**TINY, "steps": 4, "case_weights": {ids[0]: 3.0}, "intensity_jitter": 0.1,
                              "scale_jitter": 0.1})
    assert pretrain(phantoms, tmp_path / "run", more, resume=True)["steps"] == 4


def test_cli_refuses_bad_case_weights_in_one_line(phantoms, tmp_path):
    cmd = [sys.executable, "-m", "napari_nemesis.cli", "pretrain", str(phantoms.path), "--out", str(tmp_path / "r"),
           "--preset", "tiny", "--superpatch", "32", "--steps", "1"]
    bad = subprocess.run(cmd + ["--case-weight", "real"], capture_output=True, text=True)
    assert bad.returncode == 2 and "PATTERN=WEIGHT" in bad.stderr and "Traceback" not in bad.stderr
    nomatch = subprocess.run(cmd + ["--case-weight", "lidc*=3"], capture_output=True, text=True)
    assert nomatch.returncode != 0 and "matches no case" in nomatch.stderr
    assert "Traceback" not in nomatch.stderr and len(nomatch.stderr.strip().splitlines()) == 1
