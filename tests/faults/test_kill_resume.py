"""Issue 15: a kill at any instant, saves included, leaves a run that resumes, and the resumed run
ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_nemesis.errors import NemesisCheckpointError, NemesisInputError
from napari_nemesis.model import build_model, load_checkpoint
from napari_nemesis.train import state as train_state
from napari_nemesis.train.pretrain import PretrainOptions, make_optimizer, pretrain
from napari_nemesis.train.runtime import weights_digest
from napari_nemesis.train.state import load_train_state, locate_train_state, read_train_state, save_train_state

STEPS = 24
TINY = dict(preset="tiny", batch=1, model_overrides={"superpatch": 32, "patch": 8, "depth": 1}, log_every=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from napari_nemesis.data import open_dataset, write_phantom_dataset

    root = tmp_path_factory.mktemp("killdata")
    write_phantom_dataset(root / "data", cases=3, seed=3, shape=(20, 28, 28))
    return open_dataset(root / "data", superpatch=32, cache_dir=root / "cache")


def _cmd(cache, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "napari_nemesis.cli", "pretrain", str(cache.path), "--out", str(out),
           "--preset", "tiny", "--superpatch", "32", "--steps", str(STEPS), "--batch", "1", "--device", "cpu",
           "--checkpoint-every", "1", "--log-every", "1", "--events", "--json"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _caught_in_a_save(run: Path) -> bool:
    """What a kill left shows it came during a save: a half-built checkpoint folder, two folders, or
    familiar names that do not all describe the same step yet."""
    slots = run / train_state.SLOTS_DIR
    if not slots.is_dir():
        return False
    if list(slots.glob(".step-*")) or len(list(slots.glob("step-*"))) != 1:
        return True
    try:
        train_state._check_parts(json.loads((run / "last.state.json").read_text()), run / "last.safetensors",
                                 run / "last.state.safetensors", run)
        pointer = json.loads((run / "last.state.json").read_text())["slot"]
    except (NemesisCheckpointError, OSError, ValueError, KeyError):
        return True
    return pointer != f"{slots.name}/{next(slots.glob('step-*')).name}"


@pytest.mark.slow
def test_sigkill_at_random_instants_always_resumes_to_the_same_weights(cache, tmp_path):
    straight = subprocess.run(_cmd(cache, tmp_path / "straight", False), capture_output=True, text=True,
                              env=_env(), timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    want = json.loads(straight.stdout.strip().splitlines()[-1])["rank_weight_digests"]

    rng = random.Random(15)
    run = tmp_path / "run"
    kills = in_save = resumes_ok = 0
    resume = False
    for attempt in range(40):
        child = subprocess.Popen(_cmd(cache, run, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=_env())
        # kill a few steps after this child's start, right after a step event (its save follows at
        # once) or a little later; the last segments run to the end
        target = rng.randint(1, 3)
        delay = rng.choice([0.0, 0.002, 0.005, 0.01, 0.02, rng.uniform(0, 0.05)])
        killed, start_step, steps_seen, saved = False, None, 0, False
        for line in child.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "start":
                start_step = event["step"]
            saved = saved or event.get("event") == "checkpoint"
            if event.get("event") == "step":
                steps_seen += 1
                if kills < 12 and saved and steps_seen >= target:
                    time.sleep(delay)
                    child.send_signal(signal.SIGKILL)
                    killed = True
                    break
        err = child.stderr.read()
        rc = child.wait(timeout=120)
        child.stdout.close()
        child.stderr.close()
        if resume:
            assert start_step is not None, f"resume {attempt} failed: {err[-1500:]}"
            resumes_ok += 1
        if killed:
            kills += 1
            in_save += _caught_in_a_save(run)
            resume = True
            continue
        assert rc == 0, err[-2000:]
        got = json.loads(line)["rank_weight_digests"]
        break
    else:  # pragma: no cover
        pytest.fail("the run never finished")
    print(f"\nkill/resume: {kills} SIGKILLs, {in_save} of them inside a save, {resumes_ok} resumes ok "
          f"of {resumes_ok}, final weights equal to the uninterrupted run: {got == want}")
    assert kills >= 10 and resumes_ok == kills
    assert in_save >= 1  # the random instants did catch saves in the act
    assert got == want
    assert weights_digest(load_checkpoint(run / "last.safetensors")) == \
        weights_digest(load_checkpoint(tmp_path / "straight" / "last.safetensors"))


# ---- a kill at every file-system operation of a save, in-process ------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the operation that raised it runs (no cleanup: BaseException)."""


def _save_with_kill_at(run: Path, model, opt, step: int, k: int, monkeypatch) -> bool:
    """Run one save whose k-th rename / link / replace / rmtree never happens; True if the save got that far."""
    calls = {"n": 0}

    def tick():
        calls["n"] += 1
        if calls["n"] == k:
            raise _Killed

    real = {"rename": os.rename, "replace": os.replace, "link": os.link, "rmtree": shutil.rmtree}

    def wrap(name):
        def f(*a, **kw):
            tick()
            return real[name](*a, **kw)
        return f

    monkeypatch.setattr(os, "rename", wrap("rename"))
    monkeypatch.setattr(os, "replace", wrap("replace"))
    monkeypatch.setattr(os, "link", wrap("link"))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree"))
    try:
        save_train_state(run, model, opt, step, {"options": {}, "extra": {}})
        return False
    except _Killed:
        return True
    finally:
        monkeypatch.undo()


def test_a_kill_between_any_two_file_operations_of_a_save_leaves_a_complete_state(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=32, patch=8, depth=1)
    opts = PretrainOptions(**TINY)
    opt = make_optimizer(model, opts)
    base = tmp_path / "base"
    save_train_state(base, model, opt, 2, {"options": {}, "extra": {}})
    before = weights_digest(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    after = weights_digest(model)
    k, cut = 1, 0
    while True:
        run = tmp_path / f"k{k}"
        shutil.copytree(base, run)
        if not _save_with_kill_at(run, model, opt, 3, k, monkeypatch):
            break
        cut += 1
        doc, model_path, _ = locate_train_state(run)
        assert doc["step"] in (2, 3)
        loaded, _, _ = load_train_state(run, lambda m: make_optimizer(m, opts))
        assert weights_digest(loaded) == (before if doc["step"] == 2 else after)
        k += 1
    print(f"\nsave cut at each of its {cut} file operations: every cut left a complete state")
    assert cut >= 6


def test_old_layout_still_resumes_and_a_hand_edited_state_is_refused(cache, tmp_path):
    run = tmp_path / "old"
    pretrain(cache, run, PretrainOptions(**TINY, steps=3, checkpoint_every=10))
    # what earlier versions left: the three last.* files only, no checkpoint folders, no slot key
    doc = json.loads((run / "last.state.json").read_text())
    for name in ("last.safetensors", "last.state.safetensors"):  # break the hard links
        data = (run / name).read_bytes()
        (run / name).unlink()
        (run / name).write_bytes(data)
    shutil.rmtree(run / train_state.SLOTS_DIR)
    doc.pop("slot")
    (run / "last.state.json").write_text(json.dumps(doc))
    assert read_train_state(run)["step"] == 3
    more = pretrain(cache, run, PretrainOptions(**TINY, steps=5, checkpoint_every=10), resume=True)
    assert more["resumed_from"] == 3 and more["steps"] == 5
    doc = json.loads((run / "last.state.json").read_text())
    (run / "last.state.json").write_text(json.dumps({**doc, "step": 4}))
    with pytest.raises(NemesisCheckpointError, match="disagree") as err:
        pretrain(cache, run, PretrainOptions(**TINY, steps=6), resume=True)
    assert "\n" not in str(err.value)


def test_resuming_a_finished_run_or_on_another_dataset_is_refused_in_one_line(cache, tmp_path):
    from napari_nemesis.data import open_dataset, write_phantom_dataset

    run = tmp_path / "run"
    pretrain(cache, run, PretrainOptions(**TINY, steps=2, checkpoint_every=10))
    with pytest.raises(NemesisInputError, match="finished") as err:
        pretrain(cache, run, PretrainOptions(**TINY, steps=2), resume=True)
    assert "\n" not in str(err.value) and str(run) in str(err.value)
    write_phantom_dataset(tmp_path / "other", cases=2, seed=9, shape=(20, 28, 28))
    other = open_dataset(tmp_path / "other", superpatch=32, cache_dir=tmp_path / "other-cache")
    with pytest.raises(NemesisInputError, match="another dataset") as err:
        pretrain(other, run, PretrainOptions(**TINY, steps=4), resume=True)
    assert "\n" not in str(err.value)
    # the same data, more steps: fine
    assert pretrain(cache, run, PretrainOptions(**TINY, steps=3), resume=True)["steps"] == 3


def test_a_new_run_in_an_old_folder_does_not_resume_into_the_old_states(cache, tmp_path):
    run = tmp_path / "run"
    pretrain(cache, run, PretrainOptions(**TINY, steps=4, checkpoint_every=10))
    pretrain(cache, run, PretrainOptions(**TINY, steps=2, checkpoint_every=10))
    assert read_train_state(run)["step"] == 2
    assert len(list((run / train_state.SLOTS_DIR).glob("step-*"))) == 1


def test_labels_train_state_survives_a_kill_between_any_two_file_operations(tmp_path, monkeypatch):
    from napari_nemesis.labels.training import _RunState

    base = tmp_path / "base"
    base.mkdir()
    _RunState(base).save({"net.w": torch.zeros(3)}, fit=0, step=4)
    k, cut = 1, 0
    while True:
        run = tmp_path / f"k{k}"
        shutil.copytree(base, run)
        state = _RunState(run)
        state.load()
        calls = {"n": 0}
        real = {"rename": os.rename, "replace": os.replace, "link": os.link}

        def wrap(name):
            def f(*a, **kw):
                calls["n"] += 1
                if calls["n"] == k:
                    raise _Killed
                return real[name](*a, **kw)
            return f

        for name in real:
            monkeypatch.setattr(os, name, wrap(name))
        try:
            state.save({"net.w": torch.ones(3)}, fit=0, step=9)
            finished = True
        except _Killed:
            finished = False
        finally:
            monkeypatch.undo()
        if finished:
            break
        cut += 1
        again = _RunState(run)
        tensors = again.load()
        assert again.doc["step"] in (4, 9)
        assert torch.equal(tensors["net.w"], torch.full((3,), 0.0 if again.doc["step"] == 4 else 1.0))
        k += 1
    print(f"\nlabels train state: save cut at each of its {cut} file operations, every cut resumable")
    assert cut >= 3
