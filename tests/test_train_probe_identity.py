"""Probe heads know their encoder (issue 9.1) and spacing (9.2); reusable probe-training pieces."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from napari_nemesis.cli import main
from napari_nemesis.data import ORGAN_NAMES, open_dataset
from napari_nemesis.errors import NemesisCheckpointError
from napari_nemesis.model import build_model, load_checkpoint, save_checkpoint
from napari_nemesis.train.inference import infer_scan
from napari_nemesis.train.probe import (
    ProbeHead,
    ProbeOptions,
    check_probe_matches,
    encode_features,
    encoder_digest,
    extract_features,
    finetune,
    finetune_items,
    load_probe,
    probe_metadata,
    run_probe,
    save_probe,
)

SPACING = (16.0, 14.0, 14.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, phantom_data, tiny_checkpoint):
    root = tmp_path_factory.mktemp("identity")
    cache = open_dataset(phantom_data, superpatch=8, spacing_zyx=SPACING, cache_dir=root / "cache")
    ckpt = tiny_checkpoint(root / "a" / "model.safetensors", seed=0)
    other = tiny_checkpoint(root / "b" / "model.safetensors", seed=1)
    return phantom_data, cache, ckpt, other


def test_encoder_digest_covers_the_encoder_only_and_survives_float16_storage(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=8, patch=4, depth=1)
    d = encoder_digest(model)
    assert len(d) == 64 and d == encoder_digest(copy.deepcopy(model))
    with torch.no_grad():
        model.decoder_pred.weight.add_(1.0)
    assert encoder_digest(model) == d  # the decoder does not feed a probe
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert encoder_digest(model) != d  # a fine-tuned encoder is another encoder
    half = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert encoder_digest(load_checkpoint(half)) == encoder_digest(load_checkpoint(half))


def test_probe_records_its_encoder_spacing_and_superpatch(setup, tmp_path):
    data, cache, ckpt, _ = setup
    model = load_checkpoint(ckpt)
    res = run_probe(cache, model, ProbeOptions(epochs=5, batch=16), out_dir=tmp_path)
    head, meta = load_probe(res["probe"])
    assert meta["encoder_sha256"] == encoder_digest(load_checkpoint(ckpt)) == res["encoder_sha256"]
    assert meta["spacing_zyx"] == list(SPACING) and meta["superpatch"] == 8
    assert meta["checkpoint"] == str(ckpt)
    assert head.meta == meta and head.path == tmp_path / "probe.safetensors"
    json.dumps(meta)


def test_infer_scan_refuses_a_head_of_another_encoder(setup, tmp_path):
    data, cache, ckpt, other = setup
    res = run_probe(cache, load_checkpoint(ckpt), ProbeOptions(epochs=2, batch=16), out_dir=tmp_path)
    head, meta = load_probe(res["probe"])
    scan = data / "imagesTr" / "img0005.nii.gz"
    ok = infer_scan(scan, load_checkpoint(ckpt), head, meta["organs"])
    assert ok.info["spacing_source"] == "probe" and ok.info["spacing_zyx"] == list(SPACING)
    with pytest.raises(NemesisCheckpointError) as err:
        infer_scan(scan, load_checkpoint(other), head, meta["organs"])
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "probe.safetensors") in msg and str(other) in msg
    assert meta["encoder_sha256"][:12] in msg and encoder_digest(load_checkpoint(other))[:12] in msg


def test_a_head_without_an_encoder_digest_is_refused(setup, tmp_path):
    data, cache, ckpt, _ = setup
    model = load_checkpoint(ckpt)
    legacy = {"organs": list(ORGAN_NAMES), "threshold": 0.5, "superpatch": 8, "spacing_zyx": list(SPACING)}
    with pytest.raises(NemesisCheckpointError, match="records no encoder digest"):
        check_probe_matches(model, legacy, probe="old_probe.safetensors")
    with pytest.raises(ValueError, match="encoder_sha256"):
        save_probe(ProbeHead(model.cfg.embed_dim), tmp_path / "p.safetensors", legacy)
    meta = probe_metadata(model, "native")
    assert meta["spacing_zyx"] == "native"
    save_probe(ProbeHead(model.cfg.embed_dim), tmp_path / "p.safetensors", meta)
    check_probe_matches(model, load_probe(tmp_path / "p.safetensors")[1])


def test_infer_cli_pairs_a_checkpoint_with_the_probe_beside_it(setup, tmp_path, capsys):
    data, cache, ckpt, other = setup
    scan = data / "imagesTr" / "img0005.nii.gz"
    out = tmp_path / "infer_out"
    # no probe beside the other checkpoint: refused rather than silently using the bundled head
    assert main(["infer", str(scan), "--checkpoint", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no probe head beside this checkpoint" in err
    # nemesis probe saves beside --checkpoint by default; infer then finds it
    assert main(["probe", str(cache.path), "--checkpoint", str(ckpt), "--epochs", "2", "--json"]) == 0
    capsys.readouterr()
    assert (ckpt.parent / "probe.safetensors").is_file()
    assert main(["infer", str(scan), "--checkpoint", str(ckpt), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["probe"] == str(ckpt.parent / "probe.safetensors") and res["spacing_zyx"] == list(SPACING)
    assert set(res["trust"]) == {"head_held_out_auroc", "head_held_out_on", "head_trained_on_this_scan", "warnings"}
    trained_on = "0005" if "0005" in cache.train_ids else None      # the head knows its training scans
    assert res["trust"]["head_trained_on_this_scan"] == trained_on
    assert res["trust"]["head_held_out_auroc"] is not None     # the probe records its test-split AUROC
    # a named probe of another encoder: one line naming both files
    assert main(["infer", str(scan), "--checkpoint", str(other), "--probe", str(ckpt.parent / "probe.safetensors"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "probe.safetensors" in err


def test_bundled_probe_matches_the_bundled_model():
    from napari_nemesis.weights import default_probe_path, load_default_model, load_default_probe

    model = load_default_model()
    head, meta = load_default_probe()
    check_probe_matches(model, meta, probe=default_probe_path())
    assert meta["spacing_zyx"] == [2.0, 1.5, 1.5] and meta["superpatch"] == model.cfg.superpatch == 128
    torch.manual_seed(0)
    with pytest.raises(NemesisCheckpointError, match="was trained on encoder"):
        check_probe_matches(build_model("small"), meta)


@pytest.mark.slow
def test_encode_features_and_finetune_items_work_on_any_superpatches(setup):
    data, cache, ckpt, _ = setup
    model = load_checkpoint(ckpt)
    ids = cache.train_ids[:1]
    feats, labels, where = extract_features(model, cache, ids, batch=5)
    patches = [p for _, _, p, _ in cache.superpatches(ids)]
    # the features are the mean-pooled encoder tokens, whatever the batching
    direct = encode_features(model, iter(patches), batch=3)
    with torch.no_grad():
        ref = model.encode(torch.from_numpy(np.stack(patches[:4]))[:, None].float()).mean(1).numpy()
    np.testing.assert_allclose(direct, feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(direct[:4], ref, rtol=1e-5, atol=1e-6)
    assert len(where) == len(patches) == len(labels)
    opts = ProbeOptions(mode="finetune", epochs=1, batch=8)
    via_cache = finetune(copy.deepcopy(model), cache, ids, opts, torch.device("cpu"))
    items = [(p, lab) for _, _, p, lab in cache.superpatches(ids)]
    via_items = finetune_items(copy.deepcopy(model), items, opts, "cpu")
    for a, b in zip(via_cache.state_dict().values(), via_items.state_dict().values()):
        assert torch.equal(a, b)
    assert encoder_digest(via_items.encoder) != encoder_digest(model)
    # any number of classes: a 3-label head
    three = finetune_items(copy.deepcopy(model), [(p, lab[:3]) for p, lab in items[:6]], opts, "cpu")
    assert three.head.fc.out_features == 3
