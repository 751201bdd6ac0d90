"""The Training dock: each mode runs in a child process, the plot gets its points, Stop saves and
Resume continues, a second Stop or closing the viewer ends the child, the Organ probabilities widget
picks up the new head; and a child whose parent is killed saves and ends (no orphan).

Tiny model (32^3 superpatches, one block) and the small synthetic scan of the GUI tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from test_viewer_gui import _scan_volume, make_tiny_weights

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMESIS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NEMESIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children share two cores with the GUI
    monkeypatch.delenv("NEMESIS_LABELS_PROJECT", raising=False)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_until(condition, timeout_s: float, qtbot=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if qtbot is not None:
            qtbot.wait(50)
        else:
            time.sleep(0.05)


@pytest.fixture
def trainer(make_napari_viewer, tiny_weights, tmp_path):
    """A viewer with the scan, Labelling and Training docks, 10 of 12 superpatches labelled."""
    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer.widgets.labelling import LabellingWidget
    from napari_nemesis.viewer.widgets.probabilities import ProbabilitiesWidget
    from napari_nemesis.viewer.widgets.training import TrainingWidget

    viewer = make_napari_viewer()
    session = launch(viewer=viewer, widgets=False)
    session.set_weights(*tiny_weights, wait=True)
    session.open_scan(_scan_volume(), wait=True)
    docks = {}
    for name, cls in (("Labelling", LabellingWidget), ("Training", TrainingWidget),
                      ("Organ probabilities", ProbabilitiesWidget)):
        docks[name] = cls(viewer)
        viewer.window.add_dock_widget(docks[name], name=name)
    labelling = docks["Labelling"].controller
    labelling.set_project(tmp_path / "proj", wait=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        labelling.store.set(i, [o for o in labelling.store.organs if rng.random() < 0.4])
    return session, docks["Training"], docks


def _wait_for_steps(run, qtbot, timeout_s=120.0) -> None:
    _wait_until(lambda: run.loss or not run.running, timeout_s, qtbot)
    assert run.loss, (run.status, run.message)


# ---- linear probe: Stop, Resume, plot, the new head in the probabilities widget ----------------------------
@pytest.mark.gui
def test_linear_probe_stops_resumes_and_updates_the_heatmaps(trainer, qtbot, tiny_weights):
    session, widget, docks = trainer
    controller = widget.controller
    session.viewer.window.show()  # the plot draws only while it can be seen
    widget.parent().raise_()
    widget.steps.setValue(3000)  # long enough to stop in the middle (each full-batch step ~1 ms)
    widget.device.setCurrentText("cpu")
    widget.train_button.click()
    run = controller.run
    pid = controller.pid
    assert pid is not None and _alive(pid) and widget.stop_button.isEnabled()
    _wait_for_steps(run, qtbot)
    widget.stop_button.click()
    assert controller.wait(60).status == "stopped", run.message
    assert not _alive(pid)
    stopped_at = run.step
    assert 0 < stopped_at < run.total
    state = json.loads((run.out / "state.json").read_text(encoding="utf-8"))
    assert state["token"] and (run.out / "state.safetensors").is_file()  # saved at the step it stopped
    qtbot.waitUntil(lambda: widget.plot.draws > 0, timeout=5000)
    x, y = widget.plot.loss_line.get_data()
    assert len(x) == len(run.loss) > 0 and list(y) == run.loss  # the plot holds the points received
    assert widget.plot.full_draws <= 2  # the axes once or twice; the points blitted over them
    assert widget.resume_button.isEnabled() and "Resume" in widget.status.text()
    widget.out.setText(str(run.out))  # as after a restart of napari: the run named by its folder
    controller.run = None
    widget.resume_button.click()
    resumed = controller.run
    assert resumed.resumed and resumed.out == run.out
    assert controller.wait(180).status == "done", resumed.message
    steps = resumed.loss_steps
    assert steps[0] <= stopped_at < steps[-1]  # the curve so far is kept, and it went on from the saved step
    assert all(a < b for a, b in zip(steps, steps[1:]))  # no step twice
    assert resumed.auroc and all(0.0 <= a <= 1.0 for a in resumed.auroc)  # held-out points plotted
    head = resumed.head
    assert head == str(run.out / "probe.safetensors") and Path(head).is_file()
    if session.weights.probe != head:  # a head near chance is used only when asked for
        assert "near chance" in resumed.message
        widget.use_new.click()
    # applied: the session and the Organ probabilities widget use the new head, heatmaps recomputed
    _wait_until(lambda: session.probabilities is not None and session.probabilities.weights.probe == head, 60, qtbot)
    assert session.weights.probe == head and session.weights.checkpoint == tiny_weights[0]
    assert docks["Organ probabilities"].probe.text() == head
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.train.inference import infer_scan
    from napari_nemesis.train.probe import load_probe

    new_head, meta = load_probe(head)
    expected = infer_scan(session.scan.prepared.volume, load_checkpoint(tiny_weights[0]), new_head, meta["organs"],
                          spacing_zyx=session.scan.prepared.pre.spacing_zyx).probabilities
    assert np.allclose(session.probabilities.values, expected, atol=1e-5)
    # the run folder keeps what was asked, the events and the checkpoints
    doc = json.loads((run.out / "widget-run.json").read_text(encoding="utf-8"))
    assert doc["mode"] == "linear" and doc["status"] == "done" and doc["commands"][-1][:2] == ["labels", "train"]
    assert (run.out / "log.jsonl").is_file() and (run.out / "train.json").is_file()


# ---- fine-tune and continued pretraining ------------------------------------------------------------
@pytest.mark.gui
def test_finetune_and_pretraining_run_in_a_child_process(trainer, qtbot):
    session, widget, _docks = trainer
    controller = widget.controller
    widget.mode.setCurrentIndex(1)  # fine-tune
    widget.steps.setValue(1)
    widget.batch.setValue(4)
    widget.device.setCurrentText("cpu")
    widget.train_button.click()
    run = controller.run
    assert controller.wait(240).status == "done", run.message
    assert run.loss and run.checkpoint == str(run.out / "finetuned.safetensors")
    if session.weights.probe != run.head:  # a head near chance is used only when asked for
        assert "near chance" in run.message
        widget.use_new.click()
    _wait_until(lambda: session.probabilities is not None and session.probabilities.weights.probe == run.head, 60,
                qtbot)
    assert session.weights.checkpoint == run.checkpoint  # the fine-tuned encoder with its head

    widget.mode.setCurrentIndex(2)  # continued self-supervised pretraining on the opened scan
    widget.steps.setValue(300)
    widget.batch.setValue(1)
    widget.train_button.click()
    run = controller.run
    _wait_for_steps(run, qtbot, 240)
    controller.stop()
    assert controller.wait(60).status == "stopped", run.message
    assert (run.out / "last.state.json").is_file() and run.step < 300
    scans = json.loads((run.out / "pretrain-scans.json").read_text(encoding="utf-8"))
    listing = Path(run.commands[0].args[1])  # named by its content in the project: its cache is reused
    assert listing.parent.name == "pretraining" and json.loads(listing.read_text(encoding="utf-8")) == scans
    assert [Path(s["image"]) for s in scans] == [Path(controller_labelling_image(session)).resolve()]
    controller.resume()
    resumed = controller.run
    assert controller.wait(300).status == "done", resumed.message
    steps = resumed.loss_steps
    assert steps[0] <= run.step < steps[-1] and resumed.step == 300  # the curve kept, then on from the save
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert resumed.encoder and Path(resumed.encoder).is_file() and not resumed.head
    assert widget.use_encoder.isEnabled()
    widget.use_encoder.click()
    assert widget.encoder.text() == resumed.encoder and widget.mode.currentIndex() == 0


@pytest.mark.gui
def test_a_dataset_folder_is_filled_into_a_project_then_trained(trainer, qtbot, tmp_path):
    from napari_nemesis.data import write_phantom_dataset
    from napari_nemesis.labels import LabelProject

    session, widget, _docks = trainer
    controller = widget.controller
    write_phantom_dataset(tmp_path / "data", cases=2, seed=5, shape=(40, 48, 48))
    widget.dataset.setText(str(tmp_path / "data"))
    widget.use_project.setChecked(False)
    widget.label_ratio.setValue(0.5)
    widget.steps.setValue(5)
    widget.apply_when_done.setChecked(False)
    planned = controller.build(widget.config(), tmp_path / "planned")
    assert [c.args[:2] for c in planned] == [["labels", "fill"], ["labels", "train"]]  # half of the 2 cases
    widget.label_ratio.setValue(1.0)
    widget.train_button.click()
    run = controller.run
    assert [c.args[:2] for c in run.commands] == [["labels", "fill"]] * 2 + [["labels", "train"]]
    assert controller.wait(300).status == "done", run.message
    project = LabelProject.open(run.out / "dataset-project")  # made with the viewer's grid
    assert len(project.scans) == 2 and project.superpatch == 32
    assert project.spacing_zyx == tuple(session.scan.prepared.pre.spacing_zyx)
    result = json.loads((run.out / "train.json").read_text(encoding="utf-8"))
    assert result["n_scans"] == 2 and result["cv_over"] == "scans" and run.head == result["head"]
    assert session.weights.probe != run.head  # not applied when not asked


def controller_labelling_image(session) -> str:
    from napari_nemesis.viewer.features.labelling.controller import labelling_for

    return str(labelling_for(session).store.scan_path)


# ---- no orphans ------------------------------------------------------------------------------------------
@pytest.mark.gui
def test_second_stop_and_closing_the_viewer_end_the_child(trainer, qtbot):
    session, widget, _docks = trainer
    controller = widget.controller
    widget.steps.setValue(10**6)
    widget.train_button.click()
    pid = controller.pid
    _wait_for_steps(controller.run, qtbot)
    assert controller.stop() == "asked"
    assert controller.stop() == "killed"  # a second Stop ends it at once
    assert controller.wait(10).status == "stopped"
    _wait_until(lambda: not _alive(pid), 5)
    widget.train_button.click()
    pid = controller.pid
    _wait_for_steps(controller.run, qtbot)
    session.viewer.close()  # closing the viewer ends the run: it saves, then ends
    qtbot.wait(100)
    _wait_until(lambda: not _alive(pid), 15, qtbot)
    assert json.loads((controller.run.out / "state.json").read_text(encoding="utf-8"))["token"]


_PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from napari_nemesis.viewer._process import ChildRun, Command
    project, out, ckpt = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    args = ["labels", "train", project, "--out", str(out), "--checkpoint", ckpt, "--epochs", "1000000", "--folds", "2",
            "--events", "--device", "cpu"]
    run = ChildRun([Command(args, "train", events=True, stop_file=out / "STOP")], out).start()
    while not any(e.get("event") == "step" for e in run.poll()):
        time.sleep(0.05)
    print(run.pid, flush=True)
    time.sleep(600)
""")


def test_a_child_whose_parent_is_killed_saves_and_ends(tmp_path):
    """napari killed (SIGKILL): the child sees its standard input close, saves at its next step, ends."""
    from napari_nemesis.data import write_phantom_dataset
    from napari_nemesis.labels import LabelProject, fill_from_segmentation
    from napari_nemesis.model import build_model, save_checkpoint

    write_phantom_dataset(tmp_path / "data", cases=1, seed=3, shape=(24, 32, 32))
    project = LabelProject.open(tmp_path / "proj", create=True, superpatch=16, spacing_zyx=(16, 12, 12), threshold=10)
    image = next((tmp_path / "data" / "imagesTr").glob("*.nii.gz"))
    fill_from_segmentation(project.store(image), tmp_path / "data" / "labelsTr" / image.name.replace("img", "label"),
                           threshold=10)
    ckpt = save_checkpoint(build_model("tiny", superpatch=16, patch=8, depth=1), tmp_path / "ckpt.safetensors")
    out = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(project.root), str(out), str(ckpt)],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_until(lambda: not _alive(child), 30)
    finally:
        parent.kill()
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "interrupted" in events  # it stopped on its own, saving first
    assert json.loads((out / "state.json").read_text(encoding="utf-8"))["token"]


def test_pretrain_events_flag_prints_json_lines(tmp_path):
    from napari_nemesis.data import write_phantom_dataset
    from napari_nemesis.model import build_model, save_checkpoint

    write_phantom_dataset(tmp_path / "data", cases=1, seed=3, shape=(24, 32, 32))
    ckpt = save_checkpoint(build_model("tiny", superpatch=16, patch=8, depth=1), tmp_path / "tiny.safetensors")
    out = subprocess.run([sys.executable, "-m", "napari_nemesis.cli", "pretrain", str(tmp_path / "data"), "--out",
                          str(tmp_path / "run"), "--init", str(ckpt), "--steps", "3", "--batch", "1",
                          "--log-every", "1", "--events", "--json", "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = [line.get("event") for line in lines]
    assert kinds[0] == "start" and kinds.count("step") == 3 and kinds[-2] == "end" and kinds[-1] is None
    assert lines[-1]["steps"] == 3  # the --json result comes last, without an "event" key
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert logged == lines[:-1]
    assert "it/s" not in out.stderr  # no progress bar beside the events


# ---- the benchmark's training figures --------------------------------------------------------------------
@pytest.mark.gui
def test_bench_times_train_to_heatmaps_while_watching_the_event_loop(trainer):
    from test_viewer_labelling import _organ_map

    from napari_nemesis.bench.ui import _StallMeter, _timed_training, table_lines, targets

    session, widget, _docks = trainer
    labels = _organ_map(session.scan.prepared.volume.shape)
    res = _timed_training(session, _StallMeter(), lambda _m: None, labels)
    run = widget.controller.run
    assert run.status == "done" and session.probabilities.weights.probe == run.head  # the heatmaps changed
    assert res["ui_ticks_training"] > 10 and np.isfinite(res["ui_max_stall_ms_training"])
    assert 0 < res["ui_training_seconds"] < res["label_to_heatmap_seconds"]
    assert res["ui_training_labelled"] == 12  # the fill labelled every superpatch
    # the GUI thread never waited for the training: no stall near the length of the run
    assert res["ui_max_stall_ms_training"] < 1000 * res["ui_training_seconds"] / 2
    full = {"ui": {}, "ui_max_stall_ms": 50.0, "ui_stall_p99_ms": 20.0, "ui_frame_ms": 30.0, "ui_scan": "s",
            "ui_superpatches": 12, "ui_device": "cpu", "ui_probabilities_seconds": 1.0, "ui_recon_seconds": 2.0,
            "ui_rerun_max_stall_ms": 40.0, "ui_rerun_stall_p99_ms": 20.0, "ui_rerun_probabilities_seconds": 1.0,
            "ui_rerun_recon_seconds": 2.0, **res}
    assert "Train -> new heatmaps" in "\n".join(table_lines(full))
    assert [name for name, _v, _ok in targets(full)][-1] == "viewer stall while training < 100 ms"
