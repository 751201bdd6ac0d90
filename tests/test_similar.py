"""Similarity search (train/similarity.py, ``nemesis similar``): the embedding holds still under what should not
matter and tells apart what should; features are cached by content; the JSON contract; one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_nemesis.data import volume_from_array, write_volume
from napari_nemesis.errors import NemesisInputError


# ---- the embedding, with the bundled weights on the sample CT -------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample CT (2 x 2 x 2 superpatches at the weights' spacing), a copy with mild noise (sd 25 HU) and
    a copy shifted by 2 voxels (6 mm) along every axis; their superpatch features (a private cache)."""
    from napari_nemesis.data import read_volume
    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.train.similarity import scan_features
    from napari_nemesis.weights import load_default_model

    root = tmp_path_factory.mktemp("similar")
    ct = read_volume(sample_ct_path())
    noisy = ct.array + np.random.default_rng(0).normal(0, 25, ct.array.shape).astype(np.float32)
    noisy_path = write_volume(noisy, root / "noisy.nii.gz", reference=ct)
    shifted = np.ascontiguousarray(ct.array[2:, 2:, 2:])
    shifted_path = write_volume(shifted, root / "shifted.nii.gz", reference=volume_from_array(shifted, ct.spacing))
    model = load_default_model()
    paths = {"ct": sample_ct_path(), "noisy": noisy_path, "shifted": shifted_path}
    feats = {k: scan_features(p, model, device="cpu", cache_dir=root / "cache") for k, p in paths.items()}
    unit = {k: f.features / np.linalg.norm(f.features, axis=1, keepdims=True) for k, f in feats.items()}
    return {"model": model, "paths": paths, "feats": feats, "unit": unit, "root": root}


# superpatches of the sample CT at 2 x 1.5 x 1.5 mm (grid z y x): 4 = (1 0 0) holds most of the liver,
# 6 = (1 1 0) most of the lung bases, 7 = (1 1 1) lies 84 % in the padding beyond the scan
LIVER, LUNG, PADDING = 4, 6, 7


@pytest.mark.slow  # encodes three 8-superpatch scans with the bundled weights (~5 s)
def test_noise_and_small_shifts_keep_each_superpatch_nearest_to_itself(sample):
    u = sample["unit"]
    assert sample["feats"]["ct"].grid_shape == (2, 2, 2)
    for other in ("noisy", "shifted"):
        sims = u["ct"] @ u[other].T
        assert (sims.argmax(axis=1) == np.arange(8)).all(), (other, sims.round(3))
        assert np.diag(sims).min() > 0.98, (other, np.diag(sims))


@pytest.mark.slow  # shares the module's features
def test_liver_lung_and_padding_are_told_apart(sample):
    u = sample["unit"]
    same = float(u["ct"][LIVER] @ u["shifted"][LIVER])
    to_lung = float(u["ct"][LIVER] @ u["ct"][LUNG])
    to_padding = float(u["ct"][LIVER] @ u["ct"][PADDING])
    assert same > to_lung + 0.1 and same > to_padding + 0.1, (same, to_lung, to_padding)
    # and the search itself: the liver superpatch's nearest among the shifted copy is its own twin
    from napari_nemesis.train.similarity import similar

    res = similar(sample["paths"]["ct"], LIVER, [sample["paths"]["shifted"], sample["paths"]["ct"]], sample["model"],
                  k=3, device="cpu", cache_dir=sample["root"] / "cache")
    assert res["neighbours"][0] == {"scan": str(sample["paths"]["shifted"]), "superpatch": LIVER,
                                    "similarity": pytest.approx(same, abs=1e-5)}
    assert res["cache"]["computed"] == 0 and res["cache"]["hits"] == 2


# ---- the cache and the contract, on a tiny random model -------------------------------------------------
def _scan(path, seed=0, shape=(16, 16, 16)):
    rng = np.random.default_rng(seed)
    hu = rng.normal(0, 200, shape).astype(np.float32)
    return write_volume(hu, path, reference=volume_from_array(hu, spacing_zyx=(2.0, 2.0, 2.0)))


@pytest.fixture
def tiny(tiny_checkpoint, tmp_path):
    from napari_nemesis.model import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", extra={"spacing_zyx": [2.0, 2.0, 2.0]})
    return load_checkpoint(ckpt), ckpt


@pytest.fixture
def counted(monkeypatch):
    """Count the superpatches the encoder is run on."""
    from napari_nemesis.train import similarity

    calls = []
    real = similarity.encode_features

    def counting(model, patches, *args, **kwargs):
        patches = list(patches)
        calls.append(len(patches))
        return real(model, patches, *args, **kwargs)

    monkeypatch.setattr(similarity, "encode_features", counting)
    return calls


def test_features_are_cached_by_content(tiny, tmp_path, counted, monkeypatch):
    from napari_nemesis.train.similarity import similar

    model, _ = tiny
    a, b = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii.gz", seed=1)
    monkeypatch.setenv("NEMESIS_FEATURE_CACHE", str(tmp_path / "env-cache"))
    first = similar(a, 0, [a, b], model, k=3, device="cpu")
    assert counted == [8, 8] and first["cache"] == {"dir": str(tmp_path / "env-cache"), "hits": 0, "computed": 2}
    assert len(list((tmp_path / "env-cache").glob("*.safetensors"))) == 2
    second = similar(a, 0, [a, b], model, k=3, device="cpu")
    assert counted == [8, 8] and second["cache"]["hits"] == 2 and second["neighbours"] == first["neighbours"]
    # content, not the name: a renamed copy is a hit
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "renamed.nii.gz").write_bytes(b.read_bytes())
    similar(a, 0, [tmp_path / "copy" / "renamed.nii.gz"], model, device="cpu")
    assert counted == [8, 8]
    # one changed voxel changes the content: b is encoded again, a is not
    _scan(b, seed=2)
    third = similar(a, 0, [a, b], model, k=3, device="cpu")
    assert counted == [8, 8, 8] and third["cache"] == {"dir": str(tmp_path / "env-cache"), "hits": 1, "computed": 1}
    # other weights: another entry
    from napari_nemesis.model import build_model

    other = build_model("tiny", superpatch=8, patch=4, depth=1)
    other.checkpoint_extra = {"spacing_zyx": [2.0, 2.0, 2.0]}
    similar(a, 0, [a], other, device="cpu")
    assert counted == [8, 8, 8, 8]
    # cache_dir= wins over the environment
    similar(a, 0, [a], model, device="cpu", cache_dir=tmp_path / "given")
    assert counted[-1] == 8 and len(list((tmp_path / "given").glob("*.safetensors"))) == 1


def test_a_damaged_cache_entry_is_recomputed(tiny, tmp_path, counted):
    from napari_nemesis.train.similarity import scan_features

    model, _ = tiny
    a = _scan(tmp_path / "a.nii.gz")
    f = scan_features(a, model, device="cpu", cache_dir=tmp_path / "c")
    f.path.write_bytes(b"not safetensors")
    again = scan_features(a, model, device="cpu", cache_dir=tmp_path / "c")
    assert not again.from_cache and counted == [8, 8]
    np.testing.assert_allclose(again.features, f.features, rtol=1e-5, atol=1e-6)
    assert scan_features(a, model, device="cpu", cache_dir=tmp_path / "c").from_cache


def test_json_contract_order_and_the_query_left_out(tiny, tmp_path):
    from napari_nemesis.train.similarity import similar

    model, ckpt = tiny
    a, b = _scan(tmp_path / "s" / "a.nii.gz"), _scan(tmp_path / "s" / "b.nii.gz", seed=1)
    res = similar(a, 3, [tmp_path / "s"], model, k=20, device="cpu", cache_dir=tmp_path / "c", checkpoint=ckpt)
    assert set(res) == {"query", "neighbours", "k", "scans", "candidates", "checkpoint", "encoder_sha256",
                        "spacing_zyx", "cache"}
    assert res["query"] == {"scan": str(a), "superpatch": 3, "grid_zyx": [0, 1, 1]}
    assert res["candidates"] == 15 and len(res["neighbours"]) == 15 and res["scans"] == 2
    assert all(set(n) == {"scan", "superpatch", "similarity"} for n in res["neighbours"])
    assert (str(a), 3) not in {(n["scan"], n["superpatch"]) for n in res["neighbours"]}
    sims = [n["similarity"] for n in res["neighbours"]]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    assert res["checkpoint"] == str(ckpt) and res["spacing_zyx"] == [2.0, 2.0, 2.0]
    json.dumps(res, allow_nan=False)
    assert len(similar(a, 3, [b], model, k=2, device="cpu", cache_dir=tmp_path / "c")["neighbours"]) == 2


def test_a_bad_superpatch_index_names_the_scan_and_the_range(tiny, tmp_path):
    from napari_nemesis.train.similarity import similar

    model, _ = tiny
    a = _scan(tmp_path / "a.nii.gz")
    with pytest.raises(NemesisInputError, match=r"a\.nii\.gz: superpatch 8 is out of range 0\.\.7 \(grid 2x2x2"):
        similar(a, 8, [a], model, device="cpu", cache_dir=tmp_path / "c")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "napari_nemesis.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_similar(tiny, tmp_path):
    _, ckpt = tiny
    a, b = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii.gz", seed=1)
    common = ["--checkpoint", ckpt, "--device", "cpu", "--cache-dir", tmp_path / "c"]
    out = _cli("similar", a, "--superpatch", 1, "--among", a, b, "--k", 4, "--json", *common)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["neighbours"]) == 4 and res["query"]["superpatch"] == 1
    table = _cli("similar", a, "--superpatch", 1, "--among", b, *common)
    assert table.returncode == 0 and "cosine" in table.stdout and "2 cached, 0 computed" in table.stdout
    bad = _cli("similar", a, "--superpatch", 99, "--among", b, *common)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"nemesis similar: error: {a}: superpatch 99 is out of range 0..7 (grid 2x2x2 z y x)"]
    assert _cli("similar", a, "--among", b, *common).returncode == 2  # --superpatch is required
