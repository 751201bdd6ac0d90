"""Similarity search (``nemesis similar``): stable under what should not matter (noise, a small
shift), telling apart what should (anatomy from air), cached by content, and its contracts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.weights import default_checkpoint_path

    return load_checkpoint(default_checkpoint_path())


def _crop(tmp_path, name, transform=None, shift_vox=0):
    """The sample CT's upper 128 mm (one superpatch layer: 4 superpatches), optionally changed."""
    import nibabel as nib

    from napari_nemesis.sample_data import sample_ct_path

    img = nib.load(str(sample_ct_path()))
    data = np.asarray(img.dataobj).astype(np.float32)
    z0 = data.shape[2] - 64 - shift_vox
    crop = data[:, :, z0: z0 + 64].copy()
    if transform is not None:
        crop = transform(crop)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([0, 0, z0]) + img.affine[:3, 3]
    path = tmp_path / name
    nib.save(nib.Nifti1Image(crop.astype(np.int16), affine), str(path))
    return path


def test_same_anatomy_is_nearest_under_noise_and_shift_and_air_is_far(model, tmp_path):
    from napari_nemesis.train.similarity import similar

    rng = np.random.default_rng(0)
    query = _crop(tmp_path, "query.nii.gz")
    noisy = _crop(tmp_path, "noisy.nii.gz", lambda a: a + rng.normal(0, 15, a.shape))
    shifted = _crop(tmp_path, "shifted.nii.gz", shift_vox=2)
    air = _crop(tmp_path, "air.nii.gz", lambda a: np.full_like(a, -1000.0))
    cache = tmp_path / "cache"
    res = similar(query, 0, [noisy, shifted, air], model, k=50, cache_dir=cache)
    near = res["neighbours"]
    assert [n["superpatch"] for n in near[:2]] == [0, 0]  # the same box of the noisy and the shifted scan first
    assert {n["scan"] for n in near[:2]} == {str(noisy), str(shifted)}
    assert all(n["similarity"] > 0.95 for n in near[:2])
    air_best = max(n["similarity"] for n in near if n["scan"] == str(air))
    assert air_best < near[1]["similarity"] - 0.1  # air is told apart from anatomy
    assert [n["similarity"] for n in near] == sorted((n["similarity"] for n in near), reverse=True)


def test_features_are_cached_by_content(model, tmp_path, monkeypatch):
    import napari_nemesis.train.probe as probe
    from napari_nemesis.train.similarity import similar

    calls = []
    real = probe.encode_features
    monkeypatch.setattr(probe, "encode_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    query = _crop(tmp_path, "q.nii.gz")
    other = _crop(tmp_path, "o.nii.gz", lambda a: a + 5)
    cache = tmp_path / "cache"
    first = similar(query, 1, [other], model, k=3, cache_dir=cache)
    assert len(calls) == 2 and first["cache"]["computed"] == 2
    moved = tmp_path / "moved.nii.gz"
    other.rename(moved)  # the same bytes under another name: still a hit
    again = similar(query, 1, [moved], model, k=3, cache_dir=cache)
    assert len(calls) == 2 and again["cache"]["hits"] == 2
    assert [n["similarity"] for n in again["neighbours"]] == pytest.approx([n["similarity"] for n in first["neighbours"]])
    _crop(tmp_path, "moved.nii.gz", lambda a: a + 50)  # new content under the old name: computed again
    similar(query, 1, [moved], model, k=3, cache_dir=cache)
    assert len(calls) == 3


def test_cli_json_keys_and_a_bad_index(tmp_path):
    query = _crop(tmp_path, "q.nii.gz")
    other = _crop(tmp_path, "o.nii.gz", lambda a: a + 5)
    env_cache = ["--cache", str(tmp_path / "cache")]
    out = subprocess.run([sys.executable, "-m", "napari_nemesis.cli", "similar", str(query), "--superpatch", "2",
                          "--among", str(tmp_path), "--k", "2", "--json", *env_cache], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(doc["neighbours"][0]) >= {"scan", "superpatch", "similarity"}
    assert len(doc["neighbours"]) == 2 and all(n["scan"] == str(other) for n in doc["neighbours"])  # not the query's own
    bad = subprocess.run([sys.executable, "-m", "napari_nemesis.cli", "similar", str(query), "--superpatch", "99",
                          "--among", str(other), *env_cache], capture_output=True, text=True)
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar's own line
    assert "no superpatch 99" in last and "0..3" in last and "q.nii.gz" in last
    assert "Traceback" not in bad.stderr
