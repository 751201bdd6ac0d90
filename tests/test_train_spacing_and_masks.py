"""Recorded spacings (issue 9.2) and the smaller fixes of 9.9: mask before noise, clipped CSV boxes,
norm_pix reconstruction without the answer, caches keyed by what they hold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from napari_nemesis.cli import main
from napari_nemesis.data import (
    NATIVE_SPACING,
    NemesisInputError,
    as_spacing,
    open_dataset,
    preprocess,
    read_volume,
)
from napari_nemesis.model import build_model, load_checkpoint, make_mask
from napari_nemesis.train.inference import (
    infer_scan,
    reconstruct_superpatches,
    write_infer_outputs,
)
from napari_nemesis.train.scan import reconstruct_scan
from napari_nemesis.train.probe import ProbeHead, ProbeOptions, load_probe, run_probe

COARSE = (16.0, 14.0, 14.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, phantom_data, tiny_checkpoint):
    # a checkpoint that records the (coarse) spacing it was pretrained at, as pretrain writes it
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("spacing") / "run" / "last.safetensors",
                           extra={"spacing_zyx": list(COARSE)})
    return phantom_data, ckpt


def test_spacing_has_one_explicit_representation():
    assert as_spacing([2, 1.5, 1.5]) == (2.0, 1.5, 1.5)
    assert as_spacing("native") == as_spacing("None") == NATIVE_SPACING
    for bad in (None, (1.0, 2.0), (0.0, 1.0, 1.0), "default"):
        with pytest.raises(NemesisInputError):
            as_spacing(bad)


def test_reconstruct_uses_the_checkpoints_spacing_unless_told(setup, tmp_path, capsys):
    data, ckpt = setup
    scan = data / "imagesTr" / "img0001.nii.gz"
    model = load_checkpoint(ckpt)
    res = reconstruct_scan(scan, model, "plane", 0.5, batch=16)
    assert res["spacing_zyx"] == list(COARSE) and res["spacing_source"] == "checkpoint"
    # --spacing on the command line (x y z) overrides it
    assert main(["reconstruct", str(scan), "--checkpoint", str(ckpt), "--mask", "plane", "--ratio", "0.5",
                 "--spacing", "21", "21", "24", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["spacing_zyx"] == [24.0, 21.0, 21.0] and out["spacing_source"] == "given"


def test_a_probe_trained_at_native_spacing_is_applied_at_native_spacing(setup, tmp_path):
    data, ckpt = setup
    cache = open_dataset(data, superpatch=8, spacing_zyx="native", cache_dir=tmp_path / "native")
    res = run_probe(cache, load_checkpoint(ckpt), ProbeOptions(epochs=2, batch=32), out_dir=tmp_path)
    head, meta = load_probe(res["probe"])
    assert meta["spacing_zyx"] == "native" and res["spacing_zyx"] == "native"
    scan = data / "imagesTr" / "img0002.nii.gz"
    out = infer_scan(scan, load_checkpoint(ckpt), head, meta["organs"], batch=32)
    native = read_volume(scan).spacing
    assert out.info["spacing_source"] == "probe"
    np.testing.assert_allclose(out.info["spacing_zyx"], native)
    assert tuple(out.grid.shape) == preprocess(read_volume(scan), "native").shape == read_volume(scan).shape
    with pytest.warns(UserWarning, match="was trained at spacing native"):  # overriding it is allowed, but said
        infer_scan(scan, load_checkpoint(ckpt), head, meta["organs"], spacing_zyx=COARSE, batch=32)


def test_probe_on_a_raw_folder_prepares_at_the_checkpoints_spacing(setup, tmp_path, monkeypatch):
    data, ckpt = setup
    monkeypatch.setenv("NEMESIS_CACHE_DIR", str(tmp_path / "usercache"))
    res = run_probe(data, load_checkpoint(ckpt), ProbeOptions(epochs=2, batch=32))
    assert res["spacing_zyx"] == list(COARSE)


def test_pretraining_from_a_checkpoint_prepares_a_raw_folder_at_its_spacing(setup, tmp_path, monkeypatch):
    from napari_nemesis.train.pretrain import PretrainOptions, pretrain

    data, ckpt = setup
    monkeypatch.setenv("NEMESIS_CACHE_DIR", str(tmp_path / "usercache"))
    opts = PretrainOptions(steps=1, batch=1, init_checkpoint=str(ckpt), log_every=1, checkpoint_every=10)
    res = pretrain(data, tmp_path / "run", opts)
    # the continued run sees the scans as the --init weights did, and records that spacing
    assert load_checkpoint(res["checkpoint"]).checkpoint_extra["spacing_zyx"] == list(COARSE)


def test_the_noise_level_never_changes_the_mask(setup):
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=8, patch=4, depth=1)
    x = torch.rand(2, 1, 8, 8, 8)
    masks = [model(x, "dual", 0.75, noise_sigma=s, generator=torch.Generator().manual_seed(3)).mask
             for s in (0.0, 0.05, None)]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    clean = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    vox = {}
    for noise in (0.0, 0.03):
        items = list(enumerate(clean))
        vox[noise] = [v for *_, v in reconstruct_superpatches(model, items, "random", 0.5, noise, seed=7,
                                                               device=torch.device("cpu"))]
    for a, b in zip(vox[0.0], vox[0.03]):
        np.testing.assert_array_equal(a, b)


def test_norm_pix_reconstruction_does_not_use_the_masked_patches_own_statistics():
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=8, patch=4, depth=1, norm_pix_loss=True).eval()
    x = torch.rand(1, 1, 8, 8, 8)
    mask = make_mask("random", model.grid, 0.5, generator=torch.Generator().manual_seed(1))
    changed = model.patchify(x).clone()
    hidden = mask[0].nonzero()[:, 0]
    changed[0, hidden] = changed[0, hidden] * 3.0 + 0.5  # other content where the model cannot see
    with torch.no_grad():
        a = model.reconstruct(x, mask)
        b = model.reconstruct(model.unpatchify(changed), mask)
    torch.testing.assert_close(a, b)  # nothing of a masked patch reaches the reconstruction


def test_csv_world_boxes_stop_at_the_scan(setup, tmp_path):
    data, ckpt = setup
    scan = data / "imagesTr" / "img0003.nii.gz"
    model = build_model("tiny", superpatch=8, patch=4, depth=1)
    res = infer_scan(scan, model, ProbeHead(model.cfg.embed_dim), ["a"] * 8, spacing_zyx=COARSE, batch=32)
    rows = list(csv.DictReader(open(write_infer_outputs(res, tmp_path)["csv"])))
    vol = res.volume
    edges = np.array([[-0.5, n - 0.5] for n in vol.shape])  # the scan's outer voxel edges, (z, y, x) index
    corners = np.array([[edges[0][i], edges[1][j], edges[2][k]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    world = corners @ vol.canonical_affine[:3, :3].T + vol.canonical_affine[:3, 3]
    lo, hi = world.min(0), world.max(0)
    mins = np.array([[float(v) for v in r["world_min_xyz_clipped"].split()] for r in rows])
    maxs = np.array([[float(v) for v in r["world_max_xyz_clipped"].split()] for r in rows])
    assert (mins >= lo - 0.06).all() and (maxs <= hi + 0.06).all()
    np.testing.assert_allclose(mins.min(0), lo, atol=0.06)
    np.testing.assert_allclose(maxs.max(0), hi, atol=0.06)
    padded = res.grid.boxes_world()  # the unclipped superpatches do reach beyond the scan here
    assert (padded.max(axis=(0, 1)) > hi + 1).any() or (padded.min(axis=(0, 1)) < lo - 1).any()


def test_pretraining_and_probing_caches_do_not_evict_each_other(setup, tmp_path, monkeypatch):
    source, _ = setup
    monkeypatch.setenv("NEMESIS_CACHE_DIR", str(tmp_path / "usercache"))
    data = tmp_path / "data"
    (data / "imagesTs").mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir()
        for f in (source / sub).iterdir():
            (data / sub / f.name).write_bytes(f.read_bytes())
    (data / "imagesTs" / "img0061.nii.gz").write_bytes((source / "imagesTr" / "img0001.nii.gz").read_bytes())
    pre = open_dataset(data, superpatch=8, spacing_zyx=COARSE, include_unlabelled=True)
    probe = open_dataset(data, superpatch=8, spacing_zyx=COARSE)
    assert pre.path != probe.path
    assert "ts0061" in open_dataset(pre.path, superpatch=8).case_ids and "ts0061" not in probe.case_ids
