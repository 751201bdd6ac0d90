"""The label-efficiency curve (``labels.curve.label_curve``, ``nemesis labels curve``): cross-validated
AUROC against the number of labelled superpatches, on a tiny project whose task is easy for the frozen
encoder (one organ is a brighter box, the other a striped one), so more labels must help."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nemesis.cli import main
from napari_nemesis.labels import LabelProject
from napari_nemesis.labels.curve import curve_trend, default_sizes, label_curve

S = 8  # the tiny model's superpatch
ORGANS = ("liver", "spleen")


def _scan(root, name, labels, seed, g=3):
    """A (8g)^3 scan of g^3 superpatches: ``liver`` brighter, ``spleen`` striped, noise over all."""
    from napari_nemesis.data import volume_from_array, write_volume

    rng = np.random.default_rng(seed)
    arr = np.zeros((S * g,) * 3, np.float32)
    for i in range(g ** 3):
        z, y, x = np.unravel_index(i, (g, g, g))
        liver, spleen = rng.random() < 0.5, rng.random() < 0.5
        block = rng.normal(0.0, 60.0, (S, S, S)) + (80.0 if liver else 0.0)
        if spleen:
            block[::2] += 60.0
        arr[z * S:(z + 1) * S, y * S:(y + 1) * S, x * S:(x + 1) * S] = block
        labels[i] = ([o for o, v in zip(ORGANS, (liver, spleen)) if v], "labelled")
    return write_volume(arr, root / f"{name}.nii.gz", volume_from_array(arr, (2.0, 2.0, 2.0)), dtype=np.float32)


def _project(root, scans=2, keep=None, organs=ORGANS):
    project = LabelProject.open(root, create=True, superpatch=S, spacing_zyx=(2, 2, 2), organs=organs, threshold=1)
    for k in range(scans):
        labels: dict = {}
        path = _scan(root.parent, f"{root.name}-scan{k}", labels, seed=k)
        if keep is not None:
            labels = keep(labels)
        store = project.store(path)
        if labels:
            store.set_many(labels)
    return project


@pytest.fixture(scope="module")
def easy(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("curve")
    project = _project(root / "proj")
    ckpt = tiny_checkpoint(root / "tiny.safetensors")
    cache: dict = {}
    events: list = []
    res = label_curve(project, ckpt, sizes=[2, 4, 8, 16, 27], seeds=3, epochs=100, cache=cache,
                      progress=events.append)
    return project, ckpt, cache, events, res


def test_points_are_ordered_by_size_with_their_spread_over_seeds(easy):
    _project_, _ckpt, _cache, events, res = easy
    assert res["status"] == "ok" and res["n_labelled"] == 54 and res["n_scans"] == 2
    assert res["cv_over"] == "scans" and res["cv_folds"] == 2 and res["held_out"] == 54
    assert res["max_labelled"] == 27 and res["sizes_left_out"] == []
    sizes = [p["labelled"] for p in res["points"]]
    assert sizes == [2, 4, 8, 16, 27]
    for p in res["points"]:
        assert p["seeds"] == 3 and len(p["aurocs"]) == 3
        assert p["auroc_min"] <= p["auroc_mean"] <= p["auroc_max"]
        assert p["auroc_std"] == pytest.approx(float(np.std(p["aurocs"])))
        assert set(p["per_organ"]) == set(ORGANS) and all(v is not None for v in p["per_organ"].values())
    assert any(p["auroc_std"] > 0 for p in res["points"])  # the seeds' subsets differ
    # progress: one start, a step per feature and per head, a point per size, then the end
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("point") == 5
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[-1] == events[0]["total"] == 54 + 5 * 3 * 2 and steps == sorted(steps)


def test_auroc_rises_with_more_labels_on_an_easy_task(easy):
    res = easy[-1]
    means = [p["auroc_mean"] for p in res["points"]]
    assert means[-1] > 0.85 and means[-1] > means[0] + 0.1, means
    assert res["points"][-1]["auroc_macro_mean"] > 0.85
    assert res["trend"]["from_labelled"] == 16 and res["trend"]["to_labelled"] == 27
    assert isinstance(res["trend"]["hint"], str) and res["trend"]["hint"]


def test_features_are_computed_once_and_reused(easy):
    project, ckpt, cache, _events, res = easy
    assert res["features_computed"] == 54 and len(cache) == 54
    again = label_curve(project, ckpt, sizes=[2, 4, 8, 16, 27], seeds=3, epochs=100, cache=cache)
    assert again["features_computed"] == 0 and again["features_cached"] == 54
    assert [p["aurocs"] for p in again["points"]] == [p["aurocs"] for p in res["points"]]  # seeded


def test_sizes_above_the_smallest_fold_are_left_out(easy):
    project, ckpt, cache, _events, _res = easy
    res = label_curve(project, ckpt, sizes=[3, 500], seeds=1, epochs=20, cache=cache)
    assert [p["labelled"] for p in res["points"]] == [3] and res["sizes_left_out"] == [500]


def test_cli_json_keys_and_table(easy, capsys):
    project, ckpt, _cache, _events, _res = easy
    args = ["labels", "curve", str(project.root), "--checkpoint", str(ckpt), "--sizes", "2", "8", "--seeds", "2",
            "--epochs", "30"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("points", "status", "message", "n_labelled", "n_scans", "estimate", "cv_over", "cv_folds",
                "held_out", "organs", "organs_scored", "positives", "max_labelled", "sizes_left_out", "seeds",
                "trend", "checkpoint", "encoder_sha256", "options"):
        assert key in out, key
    point = out["points"][0]
    for key in ("labelled", "auroc_mean", "auroc_std", "auroc_min", "auroc_max", "seeds", "aurocs",
                "auroc_macro_mean", "auroc_macro_std", "per_organ"):
        assert key in point, key
    assert set(out["trend"]) >= {"gain", "per_doubling", "spread", "more_labels_help", "hint"}
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "labels  AUROC" in text and text.strip().splitlines()[-1] == out["trend"]["hint"]


def test_too_few_labels_and_one_class_give_a_message_not_a_crash(tmp_path, capsys, tiny_checkpoint):
    none = _project(tmp_path / "none", scans=1, keep=lambda labels: {})
    res = label_curve(none, None)
    assert res["status"] == "too_few_labels" and "no labelled superpatches" in res["message"]
    assert res["points"] == []
    few = _project(tmp_path / "few", scans=1, keep=lambda labels: dict(list(labels.items())[:2]))
    res = label_curve(few, None)
    assert res["status"] == "too_few_labels" and "too few for a curve" in res["message"]
    assert main(["labels", "curve", str(few.root)]) == 0
    assert "too few for a curve" in capsys.readouterr().out
    assert main(["labels", "curve", str(few.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "too_few_labels"
    same = _project(tmp_path / "same", scans=1, keep=lambda labels: {i: (["liver"], "labelled") for i in labels})
    res = label_curve(same, None, sizes=[2, 4])
    assert res["status"] == "one_class" and "AUROC is undefined" in res["message"]
    assert [p["labelled"] for p in res["points"]] == [2, 4]
    assert all(p["auroc_mean"] is None and p["auroc_std"] is None for p in res["points"])
    assert main(["labels", "curve", str(same.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["points"][0]["auroc_mean"] is None  # null in the JSON
    # an organ with one answer everywhere has no AUROC of its own: null, the others still scored
    one = _project(tmp_path / "one", scans=1, organs=ORGANS + ("aorta",))
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    res = label_curve(one, ckpt, sizes=[4, 8], seeds=2, epochs=20)
    assert res["status"] == "ok" and res["organs_scored"] == list(ORGANS)
    assert all(p["per_organ"]["aorta"] is None and p["per_organ"]["liver"] is not None for p in res["points"])


def test_bad_options_and_a_model_of_another_grid_are_refused(easy, tmp_path, tiny_checkpoint):
    from napari_nemesis.errors import NemesisCheckpointError, NemesisInputError
    from napari_nemesis.model import build_model, save_checkpoint

    project = easy[0]
    with pytest.raises(NemesisInputError, match="folds"):
        label_curve(project, None, folds=1)
    other = save_checkpoint(build_model("tiny", superpatch=16, patch=8, depth=1), tmp_path / "other.safetensors")
    with pytest.raises(NemesisCheckpointError, match="16\\^3"):
        label_curve(project, other)
    assert main(["labels", "curve", str(project.root), "--checkpoint", str(other)]) == 2


def test_default_sizes_and_the_trend_rule():
    assert default_sizes(1) == [1] and default_sizes(3) == [1, 2, 3]
    sizes = default_sizes(100)
    assert sizes[0] == 2 and sizes[-1] == 100 and len(sizes) <= 8 and sizes == sorted(set(sizes))
    rising = [{"labelled": 4, "auroc_mean": 0.7, "auroc_std": 0.02}, {"labelled": 8, "auroc_mean": 0.8,
                                                                     "auroc_std": 0.03}]
    assert curve_trend(rising)["more_labels_help"] is True
    flat = [dict(rising[0], auroc_mean=0.79), rising[1]]
    assert curve_trend(flat)["more_labels_help"] is False and curve_trend(flat)["hint"].startswith("flat")
    assert curve_trend(rising[:1])["more_labels_help"] is None
    assert curve_trend(rising)["per_doubling"] == pytest.approx(0.1)


# ---- the Training dock: the same curve, in a worker, with its plot ------------------------------------
@pytest.mark.gui
def test_training_dock_draws_the_same_curve_in_a_worker(make_napari_viewer, qtbot, tmp_path):
    from test_project_dock import SPACING_ZYX, SUPERPATCH
    from test_viewer_gui import make_tiny_weights
    from test_viewer_routes import _scan_file

    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._napari_private import qt_window

    weights = make_tiny_weights(tmp_path / "weights")
    project = LabelProject.open(tmp_path / "proj", create=True, superpatch=SUPERPATCH, spacing_zyx=SPACING_ZYX)
    rng = np.random.default_rng(1)
    for k in range(4):
        store = project.store(_scan_file(tmp_path / f"scan{k}.nii.gz", seed=k))
        store.set_many({i: ([o for o in ("liver", "spleen") if rng.random() < 0.5], "labelled")
                        for i in range(store.n)})
    viewer = make_napari_viewer(show=True)
    qt_window(viewer).resize(1280, 800)
    session = session_for(viewer)
    session.set_weights(*weights, wait=True)
    session.feature("labelling").set_project(project.root, wait=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-nemesis", "Training")
    curve = widget.controller.curve
    widget.curve_seeds.setValue(2)
    widget.curve_button.click()
    assert curve.running and not widget.curve_button.isEnabled() and widget.curve_cancel.isEnabled()
    qtbot.waitUntil(lambda: not curve.running, timeout=120000)
    view = curve.view
    assert view.status == "done" and view.result["status"] == "ok", view.message
    core = label_curve(project, weights[0], seeds=2, folds=5)  # what 'nemesis labels curve' computes
    assert [p["aurocs"] for p in view.points] == [p["aurocs"] for p in core["points"]]
    assert [p["labelled"] for p in view.points] == [p["labelled"] for p in core["points"]]
    assert widget.curve_plot.draws >= 1 and widget.curve_bar.format() == "done"
    assert view.message == view.result["message"]
    assert view.result["trend"]["hint"][1:] in widget.curve_status.text()
    # Cancel stops it between two heads; the features are kept, so the next one encodes nothing
    widget.curve_button.click()
    widget.curve_cancel.click()
    qtbot.waitUntil(lambda: not curve.running, timeout=60000)
    assert curve.view.status == "cancelled" and widget.curve_button.isEnabled()
    widget.curve_seeds.setValue(1)
    curve.start(wait=True)
    assert curve.view.result["seeds"] == 1 and curve.view.result["features_computed"] == 0 and curve.view.result["features_cached"] == 16
    # a new label marks the curve out of date; with "again when the labels change" it is recomputed
    widget.curve_auto.setChecked(True)
    session.labels_changed([0])
    assert curve.view.stale
    qtbot.waitUntil(lambda: curve.running, timeout=10000)
    qtbot.waitUntil(lambda: not curve.running, timeout=120000)
    assert curve.view.status == "done" and not curve.view.stale
    from imageio.v3 import imwrite
    from test_project_dock import SHOTS

    widget.verticalScrollBar().setValue(widget.verticalScrollBar().maximum())  # the curve, at the bottom
    qtbot.wait(300)
    assert widget.body.minimumSizeHint().width() <= widget.viewport().width()  # fits: no part cut off
    assert widget.horizontalScrollBar().value() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    imwrite(SHOTS / "training_curve.png", viewer.screenshot(canvas_only=False, flash=False))
