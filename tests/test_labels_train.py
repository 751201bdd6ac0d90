"""Training from labels: honest folds, heads ``nemesis infer`` accepts, stop/resume (in process and as
the child process the Training widget starts), export read by ``nemesis probe``, label next."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_nemesis.cli import main
from napari_nemesis.data import ORGAN_NAMES, open_cache, write_phantom_dataset
from napari_nemesis.errors import NemesisCancelled, NemesisInputError
from napari_nemesis.labels import LabelProject, fill_from_segmentation
from napari_nemesis.labels.training import TrainOptions, plan_folds, train_from_labels
from napari_nemesis.model import build_model, load_checkpoint, save_checkpoint
from napari_nemesis.train.probe import encoder_digest, load_probe

UNLABELLED = {"img0002": [3, 5]}  # a few superpatches left for "label next"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """3 tiny phantom scans (8 superpatches of 16^3 each) filled from their label maps; a tiny model."""
    root = tmp_path_factory.mktemp("labels_train")
    write_phantom_dataset(root / "data", cases=3, seed=7, shape=(24, 32, 32))
    project = LabelProject.open(root / "proj", create=True, superpatch=16, spacing_zyx=(16, 12, 12), threshold=10)
    for img in sorted((root / "data" / "imagesTr").glob("*.nii.gz")):
        store = project.store(img)
        fill_from_segmentation(store, root / "data" / "labelsTr" / img.name.replace("img", "label"), threshold=10)
        for i in UNLABELLED.get(img.name[:7], []):
            store.set(i, (), "unlabelled")
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("tiny", superpatch=16, patch=8, depth=1), root / "tiny.safetensors")
    return root, project, ckpt


def head_tensors(path) -> dict:
    head, _ = load_probe(path)
    return {k: v.clone() for k, v in head.state_dict().items()}


def test_folds_hold_out_whole_scans_or_superpatches():
    groups = ["a"] * 4 + ["b"] * 3 + ["c"] * 5
    folds, info = plan_folds(groups, folds=5)
    assert info["cv_over"] == "scans" and info["cv_folds"] == 3 and "leave-one-scan-out" in info["estimate"]
    held = np.concatenate([te for _, te in folds])
    assert sorted(held) == list(range(12))  # every superpatch held out exactly once
    for tr, te in folds:
        assert not {groups[i] for i in tr} & {groups[i] for i in te}  # no scan on both sides
    many = [f"s{k}" for k in range(8) for _ in range(2)]
    folds, info = plan_folds(many, folds=4)
    assert info["cv_folds"] == 4 and "4-fold cross-validation over scans" in info["estimate"]
    assert all(not {many[i] for i in tr} & {many[i] for i in te} for tr, te in folds)
    folds, info = plan_folds(["a"] * 7, folds=5, seed=1)
    assert info["cv_over"] == "superpatches" and len(folds) == 5
    assert sorted(np.concatenate([te for _, te in folds])) == list(range(7))
    assert plan_folds(["a"], folds=5)[0] == []


def test_linear_training_writes_a_head_infer_accepts(setup, tmp_path, capsys):
    root, project, ckpt = setup
    events = []
    res = train_from_labels(project, tmp_path / "run", ckpt, TrainOptions(epochs=30), progress=events.append)
    n = sum(r["labelled"] for r in project.status()["scans"])
    assert res["n_labelled"] == n == 22
    assert res["estimate"] == "leave-one-scan-out cross-validation (3 scans)" and res["cv_over"] == "scans"
    assert res["auroc_mean"] is not None and 0 <= res["auroc_mean"] <= 1 and 0 <= res["f1_macro"] <= 1
    head, meta = load_probe(res["head"])
    assert meta["encoder_sha256"] == encoder_digest(load_checkpoint(ckpt))
    assert meta["organs"] == list(ORGAN_NAMES) and meta["superpatch"] == 16 and meta["spacing_zyx"] == [16, 12, 12]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("eval") == 3
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == list(range(1, 4 * 30 + 1)) and events[0]["total"] == 120  # final fit + 3 folds, a plot's x-axis
    assert all("loss" in e for e in events if e["event"] == "step")
    assert [e["what"] for e in events if e["event"] == "checkpoint"] == ["head"]
    assert json.loads((tmp_path / "run" / "train.json").read_text(encoding="utf-8"))["head"] == res["head"]
    scan = project.scans[0].image
    assert main(["infer", str(scan), "--checkpoint", str(ckpt), "--probe", res["head"], "--out",
                 str(tmp_path / "inf"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["superpatches"] == 8 and out["organs"] == list(ORGAN_NAMES)
    # the head knows its training scans by their voxels, and infer says when it is shown one of them
    assert meta["train_voxel_sha256"] == {sc.scan_id: project.store(sc, add=False).scan.voxel_sha256
                                          for sc in project.scans}
    assert out["trust"]["head_trained_on_this_scan"] == project.scans[0].scan_id
    assert "trained on this scan" in out["trust"]["warnings"][0]


def test_linear_stop_and_resume_end_where_an_uninterrupted_run_does(setup, tmp_path):
    root, project, ckpt = setup
    opts = TrainOptions(epochs=20, checkpoint_every=7)
    whole = train_from_labels(project, tmp_path / "whole", ckpt, opts)
    run = tmp_path / "run"
    # calls to cancel() before stopping -> where the run must have stopped (fit, step in it, features done)
    stops = {1: (0, 0, 8), 10: (0, 8, 22), 25: (1, 13, 22)}  # in the features, in the final fit, in fold 1
    for stop_after, where in stops.items():
        calls = {"n": 0}

        def cancel() -> bool:
            calls["n"] += 1
            return calls["n"] > stop_after

        with pytest.raises(NemesisCancelled):
            train_from_labels(None, run, None, opts, resume=True, cancel=cancel) if stop_after > 1 else \
                train_from_labels(project, run, ckpt, opts, cancel=cancel)
        state = json.loads((run / "state.json").read_text(encoding="utf-8"))
        assert (state["fit"], state["step"], state["features_done"]) == where
        assert bool(state["token"]) == (where[1] > 0)  # weights and moments saved mid-fit
    res = train_from_labels(None, run, None, resume=True)
    assert res["resumed"] and res["auroc_mean"] == whole["auroc_mean"] and res["f1_macro"] == whole["f1_macro"]
    a, b = head_tensors(whole["head"]), head_tensors(res["head"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_cut_save_and_a_missing_run(setup, tmp_path):
    root, project, ckpt = setup
    run = tmp_path / "run"
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(NemesisCancelled):
        train_from_labels(project, run, ckpt, TrainOptions(epochs=20), cancel=cancel)
    doc = json.loads((run / "state.json").read_text(encoding="utf-8"))
    assert doc["token"]
    (run / "state.json").write_text(json.dumps({**doc, "token": "0" * 32}))
    with pytest.raises(NemesisInputError, match="disagree"):
        train_from_labels(None, run, None, resume=True)
    with pytest.raises(NemesisInputError, match="no run to resume"):
        train_from_labels(None, tmp_path / "empty", None, resume=True)


@pytest.mark.slow
def test_finetune_child_process_stops_on_sigint_and_resumes(setup, tmp_path, capsys):
    """What the Training widget does: start the command, read JSON lines, Stop (SIGINT), resume."""
    root, project, ckpt = setup
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "napari_nemesis.cli", "labels", "train", str(project.root), "--out", str(run),
           "--mode", "finetune", "--checkpoint", str(ckpt), "--epochs", "1", "--batch", "4", "--folds", "2", "--events",
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    events = []
    for line in child.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "step":
            child.send_signal(signal.SIGINT)
            break
    events += [json.loads(line) for line in child.stdout]
    err = child.stderr.read()
    assert child.wait() == 130, err
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "interrupted" in kinds and "end" not in kinds
    stopped_at = next(e["step"] for e in events if e["event"] == "interrupted")
    state = json.loads((run / "state.json").read_text(encoding="utf-8"))
    assert state["token"] and (run / "state.safetensors").is_file() and state["fit"] == 0
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert logged == events  # the run folder keeps exactly what the widget saw
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["step"] == stopped_at and lines[0]["resumed"]
    result = lines[-1]
    for key in ("auroc_mean", "f1_macro", "estimate", "n_labelled", "head"):
        assert key in result
    assert result["checkpoint"] == str(run / "finetuned.safetensors")
    _, meta = load_probe(result["head"])
    assert meta["encoder_sha256"] == encoder_digest(load_checkpoint(result["checkpoint"]))
    assert meta["encoder_sha256"] != encoder_digest(load_checkpoint(ckpt))  # the encoder was trained
    assert main(["infer", str(project.scans[1].image), "--checkpoint", result["checkpoint"], "--probe",
                 result["head"], "--out", str(tmp_path / "inf"), "--json"]) == 0
    assert main(["infer", str(project.scans[1].image), "--checkpoint", str(ckpt), "--probe", result["head"],
                 "--out", str(tmp_path / "inf2")]) == 2  # the head belongs to the fine-tuned encoder
    # the resumed run ends where an uninterrupted one does
    whole = train_from_labels(project, tmp_path / "whole", ckpt, TrainOptions(mode="finetune", epochs=1, batch=4, folds=2))
    a, b = head_tensors(whole["head"]), head_tensors(result["head"])
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_export_is_read_by_nemesis_probe(setup, tmp_path, capsys):
    root, project, ckpt = setup
    out = tmp_path / "export"
    assert main(["labels", "export", str(project.root), str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["superpatches"] == 22 and summary["split_over"] == "scans"
    cache = open_cache(out)
    for sc in project.scans:
        store = project.store(sc, add=False)
        for i in store.indices("labelled"):
            cid = f"{sc.scan_id}-sp{i:04d}"
            assert (cache.presence(cid)[0] == store.presence()[i]).all()  # hand label, exactly
            assert cache.presence(cid, superpatch=32)[0].tolist() == store.presence()[i].tolist()
    test_scans = {cache.index["cases"][c]["scan_id"] for c in cache.test_ids}
    train_scans = {cache.index["cases"][c]["scan_id"] for c in cache.train_ids}
    assert len(test_scans) == 1 and not test_scans & train_scans  # a whole scan held out
    assert main(["probe", str(out), "--checkpoint", str(ckpt), "--epochs", "5", "--out", str(tmp_path / "pr"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n_train_superpatches"] + res["n_test_superpatches"] == 22
    (out / "stale.txt").write_text("from an earlier export")
    assert main(["labels", "export", str(project.root), str(out)]) == 0  # an earlier export is replaced whole
    assert not (out / "stale.txt").exists() and open_cache(out).case_ids == cache.case_ids
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left aside
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(["labels", "export", str(project.root), str(tmp_path / "foreign")]) == 2


def test_label_next_cli_ranks_the_unlabelled_superpatches(setup, tmp_path, capsys):
    root, project, ckpt = setup
    res = train_from_labels(project, tmp_path / "run", ckpt, TrainOptions(epochs=5))
    assert main(["labels", "next", str(project.root), "img0002", "--checkpoint", str(ckpt), "--probe", res["head"],
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(r["index"] for r in out["next"]) == UNLABELLED["img0002"]
    entropies = [r["entropy_bits"] for r in out["next"]]
    assert entropies == sorted(entropies, reverse=True)
