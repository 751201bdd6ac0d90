import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN
import torch

from napari_nemesis.errors import NemesisCancelled, NemesisCheckpointError, NemesisInputError
from napari_nemesis.model import load_checkpoint, make_mask
from napari_nemesis.train.pretrain import PretrainOptions, learning_rate, pretrain
from napari_nemesis.train.runtime import weights_digest
from napari_nemesis.train.state import read_train_state

TINY = TINY_PRETRAIN


@pytest.fixture
def phantoms(pretrain_phantoms):
    return pretrain_phantoms


def _opts(**kw):
    return PretrainOptions(**{**TINY, **kw})


def test_learning_rate_schedule():
    o = PretrainOptions(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    assert learning_rate(0, o) == pytest.approx(1e-4)
    assert learning_rate(9, o) == pytest.approx(1e-3)
    assert learning_rate(55, o) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-3)
    assert learning_rate(100, o) == pytest.approx(1e-5)


def test_pretraining_reduces_the_loss_on_fixed_data(phantoms, tmp_path):
    torch.manual_seed(0)
    batch = torch.from_numpy(phantoms.sample(__import__("numpy").random.default_rng(5)))[None, None].float()

    def fixed_loss(model):
        mask = make_mask("dual", model.grid, 0.75, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return float(model(batch, mask=mask, noise_sigma=0.0).loss)

    events = []
    res = pretrain(phantoms, tmp_path / "run", _opts(steps=40, lr=3e-3, warmup=4, checkpoint_every=1000),
                   progress=events.append)
    from napari_nemesis.model import NemesisMAE, preset_config

    torch.manual_seed(0)
    untrained = NemesisMAE(preset_config("tiny", superpatch=32, patch=8, depth=1))
    trained = load_checkpoint(res["checkpoint"])
    assert fixed_loss(trained) < 0.7 * fixed_loss(untrained)
    kinds = {e["event"] for e in events}
    assert {"start", "step", "checkpoint", "end"} <= kinds
    assert res["steps"] == 40 and res["superpatches_per_s"] > 0
    # the log says how much of each batch was scan rather than padding
    steps = [e for e in events if e["event"] == "step"]
    assert all(0.0 < e["inside_fraction"] <= 1.0 for e in steps)
    assert 0.0 < res["inside_fraction_mean"] <= 1.0
    doc = read_train_state(tmp_path / "run")
    assert doc["step"] == 40


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(phantoms, tmp_path):
    straight = pretrain(phantoms, tmp_path / "a", _opts(steps=12, checkpoint_every=4))

    seen = []

    def cancel():
        return len(seen) >= 7

    with pytest.raises(NemesisCancelled):
        pretrain(phantoms, tmp_path / "b", _opts(steps=12, checkpoint_every=4),
                 progress=lambda e: seen.append(e) if e["event"] == "step" else None, cancel=cancel)
    assert read_train_state(tmp_path / "b")["step"] == 7  # saved where it stopped
    resumed = pretrain(phantoms, tmp_path / "b", _opts(steps=12, checkpoint_every=4), resume=True)
    assert resumed["resumed_from"] == 7 and resumed["steps"] == 12
    assert resumed["rank_weight_digests"] == straight["rank_weight_digests"]
    a = load_checkpoint(tmp_path / "a" / "last.safetensors")
    b = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert weights_digest(a) == weights_digest(b)


def test_resume_refuses_options_that_break_exactness(phantoms, tmp_path):
    """Issue 9.7: resuming with another batch, mask, learning rate... used to be accepted silently."""
    run = tmp_path / "run"
    first = pretrain(phantoms, run, _opts(steps=3, checkpoint_every=10))
    assert load_checkpoint(first["checkpoint"]).checkpoint_extra["spacing_zyx"] == list(phantoms.spacing_zyx)
    for change, flag in ((dict(batch=3), "--batch 3"), (dict(mask_strategy="plane"), "--mask plane"),
                         (dict(lr=5e-4), "--lr 0.0005"), (dict(seed=1), "--seed 1"), (dict(noise=False), "--no-noise"),
                         (dict(warmup=2), "--warmup 2"), (dict(steps=2), "--steps 2")):
        with pytest.raises(NemesisInputError) as err:
            pretrain(phantoms, run, _opts(**{"steps": 3, **change}), resume=True)
        msg = str(err.value)
        assert flag in msg and "\n" not in msg and "only --steps may grow" in msg
    # safe: more steps (said so in the result), another checkpoint / log interval
    more = pretrain(phantoms, run, _opts(steps=4, checkpoint_every=2, log_every=2), resume=True)
    assert more["resumed_from"] == 3 and more["steps"] == 4
    assert more["resume_changes"]["steps"] == [3, 4] and "stretched" in more["resume_changes"]["note"]
    assert read_train_state(run)["options"]["warmup"] == 1  # the run's own warm-up, kept


def test_interrupted_save_is_detected_and_last_good_checkpoint_stays(phantoms, tmp_path):
    run = tmp_path / "run"
    pretrain(phantoms, run, _opts(steps=4, checkpoint_every=2))
    good = (run / "last.safetensors").read_bytes()
    # a crash mid-save leaves a temporary file behind: the real checkpoint is untouched and loads
    (run / "last.safetensors.tmp").write_bytes(good[: len(good) // 3])
    assert load_checkpoint(run / "last.safetensors") is not None
    # a state whose parts disagree (stopped between renames) is refused on resume
    doc = json.loads((run / "last.state.json").read_text(encoding="utf-8"))
    doc["step"] = 3
    (run / "last.state.json").write_text(json.dumps(doc))
    with pytest.raises(NemesisCheckpointError, match="disagree"):
        pretrain(phantoms, run, _opts(steps=6), resume=True)


def test_resume_without_state_and_bad_data_are_clear_errors(phantoms, tmp_path):
    with pytest.raises(NemesisInputError, match="no last.state.json"):
        pretrain(phantoms, tmp_path / "empty", _opts(steps=2), resume=True)
    with pytest.raises(NemesisInputError):
        pretrain(tmp_path / "does-not-exist", tmp_path / "x", _opts(steps=2))


@pytest.mark.slow
def test_two_process_gloo_run_ends_with_identical_weights(phantoms, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "napari_nemesis.cli", "pretrain", str(phantoms.path), "--out", str(out), "--preset", "tiny",
           "--superpatch", "32", "--steps", "6", "--batch", "1", "--device", "cpu", "--checkpoint-every", "3", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world_size"] == 2
    digests = result["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (out / "last.safetensors").is_file() and (out / "log.jsonl").is_file()
    assert Path(out / "pretrain.json").is_file()


def test_ctrl_c_saves_the_step_reached_and_leaves_loadable_files(phantoms, tmp_path):
    run = tmp_path / "run"
    steps = []

    def interrupt():
        if len(steps) >= 5:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        pretrain(phantoms, run, _opts(steps=20, checkpoint_every=3),
                 progress=lambda e: steps.append(e) if e["event"] == "step" else None, cancel=interrupt)
    assert read_train_state(run)["step"] == 5
    assert load_checkpoint(run / "last.safetensors").cfg.depth == 1
    assert not list(run.glob(".*tmp*")) and not list(run.glob("*.tmp"))


def test_init_starts_from_given_weights(phantoms, tmp_path):
    from napari_nemesis.model import build_model, save_checkpoint

    torch.manual_seed(123)
    start = build_model("tiny", superpatch=32, patch=8, depth=1)
    ckpt = save_checkpoint(start, tmp_path / "start.safetensors")
    # lr 0: the step changes nothing, so the result must be exactly the initial weights
    res = pretrain(phantoms, tmp_path / "run", _opts(steps=1, lr=0.0, min_lr=0.0, init_checkpoint=str(ckpt)))
    assert res["rank_weight_digests"][0] == weights_digest(start)
    fresh = pretrain(phantoms, tmp_path / "fresh", _opts(steps=1, lr=0.0, min_lr=0.0))
    assert fresh["rank_weight_digests"][0] != weights_digest(start)
