"""Organ maps at patch resolution (issue 18.1): patch labels, the patch-level head, its maps on the scan's
grid, ``infer --level patch``, the identity checks, training from a project, and the bundled patch head."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_nemesis.cli import main
from napari_nemesis.data import (
    PATCH_THRESHOLD,
    SuperpatchGrid,
    open_dataset,
    patch_inside,
    patch_labels,
    patch_voxel_counts,
    presence_labels,
    read_volume,
)
from napari_nemesis.errors import NemesisCheckpointError
from napari_nemesis.model import build_model, load_checkpoint
from napari_nemesis.model.heads import PatchHead, ProbeHead
from napari_nemesis.model.levels import head_level
from napari_nemesis.train.inference import infer_scan, write_infer_outputs
from napari_nemesis.train.patch_level import infer_patch_scan
from napari_nemesis.train.probe import ProbeOptions, encoder_digest, load_probe, run_probe

SPACING = (16.0, 14.0, 14.0)  # z, y, x mm: the phantoms become a few 8^3 superpatches of 4^3 patches
LIVER, SPLEEN, LEFT_KIDNEY = 6, 1, 3  # BTCV ids
ORGAN = {"spleen": 2, "left_kidney": 3, "liver": 5}  # columns in data.ORGANS order


@pytest.fixture(scope="module")
def setup(tmp_path_factory, phantom_data, tiny_checkpoint):
    """A tiny checkpoint with a patch-level head (and a superpatch head) beside it, and another encoder."""
    root = tmp_path_factory.mktemp("patch_level")
    cache = open_dataset(phantom_data, superpatch=8, spacing_zyx=SPACING, cache_dir=root / "cache")
    ckpt = tiny_checkpoint(root / "a" / "model.safetensors", seed=0)
    other = tiny_checkpoint(root / "b" / "model.safetensors", seed=1)
    model = load_checkpoint(ckpt)
    from napari_nemesis.train.patch_level import run_patch_probe

    res = run_patch_probe(cache, model, ProbeOptions(epochs=10, batch=16, level="patch", patch_threshold=5),
                          out_dir=ckpt.parent)
    run_probe(cache, load_checkpoint(ckpt), ProbeOptions(epochs=2, batch=16), out_dir=ckpt.parent)
    return {"data": phantom_data, "cache": cache, "ckpt": ckpt, "other": other, "result": res,
            "scan": phantom_data / "imagesTr" / "img0005.nii.gz"}


# ---- patch labels ------------------------------------------------------------------------------------
def test_patch_labels_count_a_synthetic_block_right_at_the_threshold():
    lab = np.zeros((8, 8, 8), np.uint8)  # one 8^3 superpatch of 4^3 patches: tokens in raster (z, y, x) order

    def block(organ: int, n: int) -> np.ndarray:
        flat = np.zeros(64, np.uint8)
        flat[:n] = organ
        return flat.reshape(4, 4, 4)

    lab[0:4, 0:4, 0:4] = block(LIVER, 10)    # token 0: exactly 10 liver voxels (all in its first slice)
    lab[4:8, 4:8, 4:8] = block(SPLEEN, 9)    # token 7: 9 spleen voxels, one short
    lab[2, 3, 2:6] = LEFT_KIDNEY             # 2 voxels in token 0 (x 2, 3), 2 in token 1 (x 4, 5)
    lab[3, 3, 2:6] = LEFT_KIDNEY
    counts = patch_voxel_counts(lab, 4)
    assert counts.shape == (8, 8)
    assert counts[0, ORGAN["liver"]] == 10 and counts[:, ORGAN["liver"]].sum() == 10
    assert counts[7, ORGAN["spleen"]] == 9 and counts[:, ORGAN["spleen"]].sum() == 9
    assert counts[0, ORGAN["left_kidney"]] == 4 and counts[1, ORGAN["left_kidney"]] == 4
    at10 = patch_labels(lab, 4, threshold=10)
    assert at10[0, ORGAN["liver"]] == 1 and at10[7, ORGAN["spleen"]] == 0 and at10[:, ORGAN["left_kidney"]].sum() == 0
    assert patch_labels(lab, 4, threshold=9)[7, ORGAN["spleen"]] == 1
    assert patch_labels(lab, 4, threshold=11)[0, ORGAN["liver"]] == 0
    # the superpatch holds 8 kidney voxels in all: present at 8 voxels, though no patch holds more than 4
    assert presence_labels(lab[None], threshold=8)[0, ORGAN["left_kidney"]] == 1
    assert patch_labels(lab, 4, threshold=5)[:, ORGAN["left_kidney"]].sum() == 0
    # a batch of superpatches gives the same per superpatch; the default threshold is the 100
    both = patch_labels(np.stack([lab, np.zeros_like(lab)]), 4, threshold=10)
    assert both.shape == (2, 8, 8) and (both[0] == at10).all() and both[1].sum() == 0
    assert PATCH_THRESHOLD == 100


def test_patch_order_is_the_encoders_token_order():
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=8, patch=4, depth=1)
    rng = np.random.default_rng(0)
    lab = rng.choice([0, LIVER, SPLEEN], size=(8, 8, 8), p=[0.6, 0.3, 0.1]).astype(np.uint8)
    tokens = model.patchify(torch.from_numpy(lab.astype(np.float32))[None, None])[0].numpy()  # (N, p^3)
    counts = patch_voxel_counts(lab, 4)
    assert (counts[:, ORGAN["liver"]] == (tokens == LIVER).sum(1)).all()
    assert (counts[:, ORGAN["spleen"]] == (tokens == SPLEEN).sum(1)).all()


def test_patches_in_the_padding_are_outside_the_scan():
    grid = SuperpatchGrid((10, 8, 5), superpatch=8)  # grid 2 x 1 x 1; the second superpatch holds 2 slices
    first, second = patch_inside(grid, 0, 4), patch_inside(grid, 1, 4)
    assert first.reshape(2, 2, 2)[:, :, 1].sum() == 4  # x 4..7 holds x = 4 of the scan
    assert first.all()
    assert second.reshape(2, 2, 2)[0].all() and not second.reshape(2, 2, 2)[1].any()


# ---- the head, its maps and the CLI ------------------------------------------------------------------
def test_tiny_patch_head_trains_and_its_map_has_the_scans_shape_and_affine(setup, tmp_path):
    res = setup["result"]
    assert res["level"] == "patch" and res["patch"] == 4 and res["patch_threshold"] == 5
    assert res["n_train_patches"] > 0 and res["n_test_patches"] > 0 and "patches" in res["mean_over"]
    assert Path(res["probe"]).name == "probe_patch.safetensors"
    head, meta = load_probe(res["probe"])
    assert isinstance(head, PatchHead) and meta["level"] == "patch" and meta["patch"] == 4
    assert meta["encoder_sha256"] == encoder_digest(load_checkpoint(setup["ckpt"])) and meta["patch_threshold"] == 5
    model = load_checkpoint(setup["ckpt"])
    out = infer_patch_scan(setup["scan"], model, head, meta["organs"])
    vol = read_volume(setup["scan"])
    assert out.probabilities.shape == (out.grid.n, 8, len(meta["organs"]))
    assert out.info["spacing_zyx"] == list(SPACING) and out.info["patches"] == int(out.inside.sum()) > 0
    liver = out.probability_map(ORGAN["liver"])
    assert liver.shape == vol.shape and liver.dtype == np.float32
    # every voxel holds the probability of a patch inside the scan, and patches differ (not one value per superpatch)
    inside = set(np.round(out.probabilities[out.inside][:, ORGAN["liver"]], 6).tolist())
    assert set(np.round(np.unique(liver), 6).tolist()) <= inside
    per_superpatch = max(len(np.unique(liver[out.grid.box_original(i).slices])) for i in range(out.grid.n))
    assert per_superpatch > 1
    files = write_infer_outputs(out, tmp_path)
    written, scan = nib.load(files["maps"]["liver"]), nib.load(str(setup["scan"]))
    assert written.shape == scan.shape and np.allclose(written.affine, scan.affine)
    assert Path(files["csv"]).name == "img0005_patch_organs.csv"
    rows = out.rows()
    assert len(rows) == out.info["patches"] and {"superpatch", "patch", "patch_zyx", "liver"} <= set(rows[0])


def test_infer_level_patch_json_keys_mirror_the_superpatch_level(setup, tmp_path, capsys):
    scan, ckpt = str(setup["scan"]), str(setup["ckpt"])
    assert main(["infer", scan, "--checkpoint", ckpt, "--level", "patch", "--out", str(tmp_path / "p"), "--json"]) == 0
    patch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["infer", scan, "--checkpoint", ckpt, "--out", str(tmp_path / "s"), "--json"]) == 0
    sp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert patch["level"] == "patch" and sp["level"] == "superpatch"
    assert set(patch) - {"patch", "patches", "present_patches"} == set(sp) - {"present_superpatches"}
    assert {"scan", "checkpoint", "probe", "level", "maps", "csv", "organs", "trust", "max_probability", "grid",
            "superpatches", "spacing_zyx"} <= set(patch)
    assert Path(patch["probe"]).name == "probe_patch.safetensors" and patch["patch"] == 4
    assert set(patch["maps"]) == set(patch["organs"]) == set(patch["present_patches"])
    for path in patch["maps"].values():
        assert Path(path).is_file() and "_patch_prob_" in Path(path).name
        assert nib.load(path).shape == nib.load(scan).shape
    assert (tmp_path / "p" / "infer_patch.json").is_file()
    # --probe alone: the level is the head's
    assert main(["infer", scan, "--checkpoint", ckpt, "--probe", patch["probe"], "--out", str(tmp_path / "q"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["level"] == "patch"


def test_identity_checks_refuse_a_patch_head_of_another_encoder_or_level(setup, tmp_path, capsys):
    head, meta = load_probe(setup["result"]["probe"])
    with pytest.raises(NemesisCheckpointError, match="was trained on encoder"):
        infer_patch_scan(setup["scan"], load_checkpoint(setup["other"]), head, meta["organs"])
    with pytest.raises(NemesisCheckpointError, match="patch-level head, not a superpatch-level one"):
        infer_scan(setup["scan"], load_checkpoint(setup["ckpt"]), head, meta["organs"])
    sp_head, sp_meta = load_probe(setup["ckpt"].parent / "probe.safetensors")
    with pytest.raises(NemesisCheckpointError, match="superpatch-level head, not a patch-level one"):
        infer_patch_scan(setup["scan"], load_checkpoint(setup["ckpt"]), sp_head, sp_meta["organs"])
    rc = main(["infer", str(setup["scan"]), "--checkpoint", str(setup["other"]), "--probe", setup["result"]["probe"],
               "--level", "patch", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "was trained on encoder" in err[0]
    rc = main(["infer", str(setup["scan"]), "--checkpoint", str(setup["other"]), "--level", "patch", "--out",
               str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "probe_patch.safetensors is missing" in err[0]


def test_probe_level_patch_refuses_finetuning(setup, capsys):
    rc = main(["probe", str(setup["cache"].path), "--checkpoint", str(setup["ckpt"]), "--level", "patch",
               "--mode", "finetune"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "linear head on the frozen encoder" in err[0]


# ---- training from a labelling project ----------------------------------------------------------------
def test_level_patch_on_a_project_without_segmentations_is_one_line(setup, tmp_path, capsys):
    from napari_nemesis.labels import LabelProject

    project = LabelProject.open(tmp_path / "proj", create=True, superpatch=8, spacing_zyx=SPACING)
    store = project.store(setup["scan"])
    store.set(0, ("liver",), "labelled")
    store.set(1, (), "labelled")
    rc = main(["labels", "train", str(project.root), "--out", str(tmp_path / "run"), "--checkpoint",
               str(setup["ckpt"]), "--level", "patch"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--level patch needs label maps" in err[0] and "nemesis labels fill" in err[0]


def test_labels_train_level_patch_from_filled_scans(setup, tmp_path, capsys):
    from napari_nemesis.labels import LabelProject

    proj = tmp_path / "proj"
    for case in ("img0001", "img0005"):
        seg = setup["data"] / "labelsTr" / f"{case.replace('img', 'label')}.nii.gz"
        assert main(["labels", "fill", str(proj), str(setup["data"] / "imagesTr" / f"{case}.nii.gz"), str(seg),
                     "--superpatch", "8", "--spacing", *[str(v) for v in SPACING[::-1]], "--json"]) == 0
    capsys.readouterr()
    scans = LabelProject.open(proj).scans
    assert all(s.segmentation is not None and s.segmentation.is_file() for s in scans)
    assert main(["labels", "train", str(proj), "--out", str(tmp_path / "run"), "--checkpoint", str(setup["ckpt"]),
                 "--level", "patch", "--patch-threshold", "5", "--epochs", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["level"] == "patch" and res["patch_threshold"] == 5 and res["cv_over"] == "scans"
    assert res["n_patches"] > res["n_labelled"] > 0 and res["skipped_scans"] == []
    head, meta = load_probe(res["head"])
    assert isinstance(head, PatchHead) and Path(res["head"]).name == "probe_patch.safetensors"
    assert meta["level"] == "patch" and meta["encoder_sha256"] == encoder_digest(load_checkpoint(setup["ckpt"]))
    out = infer_patch_scan(setup["scan"], load_checkpoint(setup["ckpt"]), head, meta["organs"])
    assert out.probability_map(0).shape == read_volume(setup["scan"]).shape


# ---- the bundled heads ----------------------------------------------------------------------------------
def test_the_bundled_patch_head_loads_and_matches_the_bundled_encoder():
    from napari_nemesis.train.probe import check_probe_matches
    from napari_nemesis.weights import default_probe_path, load_default_model, load_default_probe

    head, meta = load_default_probe("patch")
    model = load_default_model()
    assert isinstance(head, PatchHead) and meta["level"] == "patch" and meta["patch"] == model.cfg.patch == 16
    check_probe_matches(model, meta, level="patch")
    assert meta["encoder_sha256"] == load_default_probe()[1]["encoder_sha256"] == encoder_digest(model)
    assert head.norm.normalized_shape[0] == model.cfg.embed_dim and head.fc.out_features == len(meta["organs"])
    assert 0.5 < meta["held_out_auroc"] <= 1 and "LIDC" in meta["held_out_on"]
    assert default_probe_path("patch").stat().st_size < 64_000  # a few kB
    # the superpatch head is one; a head saved before levels existed (no "level" key) reads as one too
    sp_head, sp_meta = load_default_probe()
    assert head_level(sp_meta) == "superpatch" and sp_meta.get("level", "superpatch") == "superpatch"
    assert head_level({k: v for k, v in sp_meta.items() if k != "level"}) == "superpatch"
    assert type(sp_head) is ProbeHead
    with pytest.raises(NemesisCheckpointError, match="superpatch-level head"):
        check_probe_matches(model, sp_meta, level="patch")
