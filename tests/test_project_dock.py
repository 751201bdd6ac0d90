"""The Project dock, opened from the Plugins menu: its counts are ``labels status``'s, "Open next
unlabelled scan" opens that scan as the active one (its labels then open in the Labelling dock),
new labels show up, and "Add scans from folder..." adds a folder's scans (not its label maps). Plus
the core it reads: ``LabelProject.next_unlabelled`` and ``add_folder``.

Tiny model (32^3 superpatches) and small synthetic NIfTI scans of 2 x 2 x 1 superpatches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from test_viewer_gui import make_tiny_weights
from test_viewer_routes import _scan_file

SUPERPATCH, SPACING_ZYX = 32, (2.0, 1.5, 1.5)  # the tiny weights' grid
SHOTS = Path(os.environ.get("NEMESIS_SHOTS", "/tmp/shots"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("project_weights"))


def _cohort(tmp_path: Path):
    """A project of three scans: ``done`` (every superpatch labelled or skipped), ``half`` (one
    labelled), ``fresh`` (added, nothing labelled yet)."""
    from napari_nemesis.labels import LabelProject

    scans = tmp_path / "scans"
    scans.mkdir()
    project = LabelProject.open(tmp_path / "proj", create=True, superpatch=SUPERPATCH, spacing_zyx=SPACING_ZYX)
    paths = {name: _scan_file(scans / f"{name}.nii.gz", seed=k) for k, name in enumerate(("done", "half", "fresh"))}
    done = project.store(paths["done"])
    done.set_many({i: ((["liver"] if i % 2 else []), "labelled" if i else "skipped") for i in range(done.n)})
    project.store(paths["half"]).set(1, ["liver", "spleen"])
    project.add(paths["fresh"])
    return project, paths


# ---- the core the dock and ``labels status`` read --------------------------------------------------
def test_next_unlabelled_and_add_folder(tmp_path, capsys):
    from napari_nemesis.cli import main

    project, paths = _cohort(tmp_path)
    assert project.next_unlabelled().scan_id == "half"  # "done" has nothing left
    assert project.next_unlabelled(after="half").scan_id == "fresh"
    assert project.next_unlabelled(after=paths["fresh"]).scan_id == "half"  # round to the start
    st = project.status()
    assert st["next_unlabelled"] == "half" and all(r["image_found"] for r in st["scans"])
    assert main(["labels", "status", str(project.root)]) == 0
    assert "next unlabelled scan: half" in capsys.readouterr().out
    folder = tmp_path / "more"
    folder.mkdir()
    _scan_file(folder / "b.nii.gz", seed=5)
    _scan_file(folder / "a.nii.gz", seed=4)
    _scan_file(folder / "a_label.nii.gz", seed=6)  # a label map by its name: left out
    (folder / "notes.txt").write_text("not a scan")
    res = project.add_folder(folder)
    assert res["added"] == ["a", "b"] and res["already"] == [] and res["left_out"] == ["a_label.nii.gz (named like a "
                                                                                       "label map)"]
    assert project.add_folder(folder)["already"] == ["a", "b"]  # nothing twice
    assert [s.scan_id for s in project.scans] == ["done", "half", "fresh", "a", "b"]
    for sc in project.scans:  # every superpatch labelled or skipped: nothing next
        store = project.store(sc)
        store.set_many({i: ([], "labelled") for i in range(store.n)})
    assert project.next_unlabelled() is None and project.status()["next_unlabelled"] is None


# ---- the dock ----------------------------------------------------------------------------------------
def _shown_equals_status(widget, project) -> None:
    st = project.status()
    shown = widget.table_counts()
    assert list(shown) == [r["id"] for r in st["scans"]]
    for row in st["scans"]:
        cells = shown[row["id"]]
        for title, key in (("n", "superpatches"), ("labelled", "labelled"), ("skipped", "skipped"),
                           ("todo", "unlabelled")):
            assert cells[title] == ("-" if row[key] is None else str(row[key])), (row["id"], title)
    totals = {widget.positives.item(r, 0).text(): widget.positives.item(r, 2).text()
              for r in range(widget.positives.rowCount())}
    assert totals == {o.replace("_", " "): str(v) for o, v in st["totals"]["positives"].items()}


@pytest.mark.gui
def test_project_dock_from_the_plugins_menu(make_napari_viewer, qtbot, tiny_weights, tmp_path, monkeypatch, capsys):
    from napari_nemesis.cli import main
    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._napari_private import qt_window

    project, paths = _cohort(tmp_path)
    viewer = make_napari_viewer(show=True)
    qt_window(viewer).resize(1280, 800)
    session = session_for(viewer)
    session.set_weights(*tiny_weights, wait=True)
    session.feature("labelling").set_project(project.root, wait=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-nemesis", "Project")  # Plugins > NEMESIS > Project
    assert widget.session is session
    controller = widget.controller
    qtbot.waitUntil(lambda: controller.status is not None and not controller.busy, timeout=30000)
    _shown_equals_status(widget, project)
    assert main(["labels", "status", str(project.root), "--json"]) == 0  # the CLI reads the same function
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["id"]: r["labelled"] for r in cli["scans"]} == {k: int(v["labelled"])
                                                              for k, v in widget.table_counts().items()}
    assert "next: half" in widget.summary.text()

    # open next unlabelled: "half" becomes the active scan, its labels open in the project
    widget.open_next.click()
    labelling = session.feature("labelling")
    qtbot.waitUntil(lambda: session.scan is not None and session.scan.name == "half"
                    and labelling.store is not None and not session.running("prepare"), timeout=60000)
    assert Path(session.labels_scan).resolve() == paths["half"].resolve()
    assert labelling.store.counts()["labelled"] == 1  # the project's labels of that scan
    qtbot.waitUntil(lambda: controller.active_id() == "half", timeout=10000)
    bold = {widget.scans.item(r, 0).text(): widget.scans.item(r, 0).font().bold() for r in range(3)}
    assert bold == {"done": False, "half": True, "fresh": False}

    # a new label shows up in the counts (the same numbers as labels status)
    labelling.store.set(0, ["liver"])
    qtbot.waitUntil(lambda: widget.table_counts()["half"]["labelled"] == "2", timeout=10000)
    _shown_equals_status(widget, project)

    # next again: after "half" comes "fresh"; a scan open already is made active, not read twice
    widget.open_next.click()
    qtbot.waitUntil(lambda: session.scan is not None and session.scan.name == "fresh"
                    and not session.running("prepare"), timeout=60000)
    controller.open_id("half", wait=True)
    assert session.scan.name == "half" and len(session.scan_layers()) == 2

    # add scans from a folder (the button's dialog answered by the test)
    folder = tmp_path / "more"
    folder.mkdir()
    _scan_file(folder / "new1.nii.gz", seed=7)
    _scan_file(folder / "new1_seg.nii.gz", seed=8)
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder)))
    widget.add_folder.click()
    qtbot.waitUntil(lambda: "new1" in widget.table_counts() and not controller.busy, timeout=30000)
    from napari_nemesis.labels import LabelProject

    assert [s.scan_id for s in LabelProject.open(project.root).scans] == ["done", "half", "fresh", "new1"]
    assert "1 scan(s) added" in widget.message.text() and "new1_seg.nii.gz" in widget.message.text()
    _shown_equals_status(widget, LabelProject.open(project.root))

    # the dock at 1280 x 800: it fits (scrolls rather than forcing its height)
    qtbot.wait(300)
    window = qt_window(viewer)
    assert window.height() <= window.screen().availableGeometry().height()
    assert widget.body.minimumSizeHint().width() <= widget.viewport().width()  # nothing cut off at the side
    SHOTS.mkdir(parents=True, exist_ok=True)
    from imageio.v3 import imwrite

    imwrite(SHOTS / "project_dock.png", viewer.screenshot(canvas_only=False, flash=False))
