"""Issue 15: project files and sidecars that are hostile, malformed or on a disk that refuses writes
give one line naming the file and the problem: no traceback, nothing written outside the project."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from napari_nemesis.cli import main
from napari_nemesis.data import read_volume, write_phantom_dataset
from napari_nemesis.errors import NemesisInputError
from napari_nemesis.labels import PROJECT_FILE, LabelProject, read_sidecar


@pytest.fixture
def labelled(tmp_path):
    write_phantom_dataset(tmp_path / "data", cases=2, seed=5, shape=(20, 28, 28))
    scans = sorted((tmp_path / "data" / "imagesTr").glob("*.nii.gz"))
    vol = read_volume(scans[0])
    root = tmp_path / "work" / "project"
    project = LabelProject.open(root, create=True, superpatch=4, spacing_zyx=vol.spacing)
    store = project.store(scans[0], volume=vol)
    store.set(0, ["liver"])
    store.set(1, [], "skipped")
    return project, scans, store


def _one_line(exc: BaseException, path: Path) -> str:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def _edit_project(project, edit) -> Path:
    doc = json.loads(project.file.read_text())
    edit(doc)
    project.file.write_text(json.dumps(doc))
    return project.file


@pytest.mark.parametrize("bad, expect", [
    (dict(labels="../OUTSIDE"), "leaves the project"),
    (dict(labels="labels/../../OUTSIDE.json"), "leaves the project"),
    (dict(labels="/tmp/ABSOLUTE.nemesis-labels.json"), "leaves the project"),
    (dict(id="../../ESCAPED/x"), "not a plain name"),
    (dict(id="/abs"), "not a plain name"),
    (dict(id=".."), "not a plain name"),
])
def test_paths_leaving_the_project_are_refused_in_one_line(labelled, tmp_path, capsys, bad, expect):
    project, scans, _ = labelled
    file = _edit_project(project, lambda d: d["scans"][0].update(bad))
    with pytest.raises(NemesisInputError, match=expect) as err:
        LabelProject.open(project.root)
    _one_line(err.value, file)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for argv in (["labels", "export", str(project.root), str(tmp_path / "export")],
                 ["labels", "status", str(project.root)],
                 ["labels", "fill", str(project.root), str(scans[1]), str(scans[1])]):
        assert main(argv) == 2
        err_text = capsys.readouterr().err.strip()
        assert len(err_text.splitlines()) == 1 and expect in err_text and str(file) in err_text
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not (tmp_path / "work" / "OUTSIDE").exists() and not (tmp_path / "ESCAPED").exists()


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d.update(revision="abc"), "revision"),
    (lambda d: d.update(revision=True), "revision"),
    (lambda d: d.update(scan=[1, 2]), "scan"),
    (lambda d: d.update(organs="liver"), "organs"),
    (lambda d: d["grid"].update(superpatch="4"), "superpatch"),
    (lambda d: d["grid"].update(grid_shape_zyx="5x7x7"), "grid_shape_zyx"),
    (lambda d: d["superpatches"][0].update(index="0"), "index"),
    (lambda d: d["superpatches"][0].update(organs="liver"), "organs"),
    (lambda d: d["superpatches"][0].update(state=3), "state"),
    (lambda d: d["superpatches"][0].update(state="maybe"), "maybe"),
    (lambda d: d["superpatches"][0].update(source=["hand"]), "source"),
    (lambda d: d["superpatches"].append(7), "not an object"),
    (lambda d: d.pop("superpatches"), "superpatches"),
])
def test_wrong_typed_sidecar_values_are_one_line_errors_naming_the_file(labelled, capsys, edit, expect):
    project, scans, store = labelled
    doc = json.loads(store.path.read_text())
    edit(doc)
    store.path.write_text(json.dumps(doc))
    with pytest.raises(NemesisInputError, match=expect) as err:
        project.store(scans[0])
    _one_line(err.value, store.path)
    assert main(["labels", "status", str(project.root)]) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and str(store.path) in err_text


def test_deeply_nested_json_is_a_one_line_error(labelled, capsys):
    project, scans, store = labelled
    deep = "[" * 100_000 + "]" * 100_000
    store.path.write_text(deep)
    with pytest.raises(NemesisInputError, match="nested too deeply") as err:
        read_sidecar(store.path)
    _one_line(err.value, store.path)
    project.file.write_text(deep)
    with pytest.raises(NemesisInputError, match="nested too deeply") as err:
        LabelProject.open(project.root)
    _one_line(err.value, project.file)
    assert main(["labels", "status", str(project.root)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d["scans"][0].pop("labels"), "no 'labels'"),
    (lambda d: d["scans"][0].update(labels=None), "no 'labels'"),
    (lambda d: d["scans"].append("img0002"), "not an object"),
    (lambda d: d.update(scans={"a": 1}), "scans is not a list"),
    (lambda d: d.update(organs="liver"), "organs"),
    (lambda d: d.update(superpatch="128"), "superpatch"),
    (lambda d: d.update(presence_threshold=-1), "presence_threshold"),
    (lambda d: d.update(spacing_zyx=[1, "a", 2]), "spacing_zyx"),
    (lambda d: d.update(version="1"), "version"),
    (lambda d: d["scans"].append(dict(d["scans"][0])), "twice"),
])
def test_wrong_typed_project_values_are_one_line_errors_naming_the_file(labelled, edit, expect):
    project, scans, _ = labelled
    file = _edit_project(project, edit)
    with pytest.raises(NemesisInputError, match=expect) as err:
        LabelProject.open(project.root)
    _one_line(err.value, file)


def _refuse(real, errno_code, match):
    def fake(path, *a, **kw):
        if match(str(path)):
            raise OSError(errno_code, os.strerror(errno_code), str(path))
        return real(path, *a, **kw)
    return fake


def test_a_read_only_folder_or_a_full_disk_gives_one_line(labelled, monkeypatch, capsys):
    project, scans, store = labelled
    # the lock file cannot be made (read-only folder): a change, adding a scan, the CLI fill
    monkeypatch.setattr(os, "open", _refuse(os.open, errno.EROFS, lambda p: p.endswith(".lock")))
    with pytest.raises(NemesisInputError, match="read-only") as err:
        store.set(2, ["spleen"])
    _one_line(err.value, store.path.parent)
    with pytest.raises(NemesisInputError, match="read-only"):
        project.add(scans[1])
    assert main(["labels", "fill", str(project.root), str(scans[1]), str(scans[1])]) == 2
    err_text = capsys.readouterr().err.strip()
    assert len(err_text.splitlines()) == 1 and "read-only" in err_text
    monkeypatch.undo()
    assert [s.scan_id for s in LabelProject.open(project.root).scans] == [project.scans[0].scan_id]  # unchanged
    assert store.reload() == [] and store.get(2).state == "unlabelled"

    # a full disk: the new-scan write and the sidecar write fail, the files on disk stay as they were
    import napari_nemesis.atomic as atomic

    before_project, before_labels = project.file.read_bytes(), store.path.read_bytes()
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda *a, **kw: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(NemesisInputError, match="disk is full") as err:
        project.add(scans[1])
    _one_line(err.value, project.file)
    with pytest.raises(NemesisInputError, match="disk is full") as err:
        store.set(3, ["liver"])
    _one_line(err.value, store.path)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert project.file.read_bytes() == before_project and store.path.read_bytes() == before_labels
