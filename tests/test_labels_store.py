"""LabelStore and its sidecar: changes saved before returning, undo, refusals, merges; the session's
keys; label-next ranking; projects and their status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_nemesis.cli import main
from napari_nemesis.data import ORGAN_NAMES, read_volume, write_phantom_dataset
from napari_nemesis.errors import NemesisInputError
from napari_nemesis.labels import (
    GridSpec,
    LabellingSession,
    LabelProject,
    LabelStore,
    mean_binary_entropy,
    rank_unlabelled,
    read_sidecar,
)

SHAPE = (20, 28, 28)
S = 8  # grid 3 x 4 x 4 = 48 superpatches at the phantom's own spacing


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, cases=2, seed=3, shape=SHAPE)
    return sorted((root / "imagesTr").glob("*.nii.gz"))


@pytest.fixture
def scan(scans, tmp_path) -> Path:
    """A private copy, so each test has its own sidecar beside the scan."""
    dst = tmp_path / scans[0].name
    dst.write_bytes(scans[0].read_bytes())
    return dst


def open_store(scan_path, **kw) -> LabelStore:
    vol = read_volume(scan_path)
    kw.setdefault("superpatch", S)
    kw.setdefault("spacing_zyx", vol.spacing)
    return LabelStore.for_scan(scan_path, **kw)


def content(store: LabelStore) -> dict[int, tuple[str, tuple[str, ...]]]:
    return {i: (lab.state, lab.organs) for i, lab in store.items() if lab.state != "unlabelled"}


def test_set_get_items_and_reopen(scan):
    store = open_store(scan)
    assert store.n == 48 and store.grid.grid_shape_zyx == (3, 4, 4)
    assert store.counts() == {"unlabelled": 48, "labelled": 0, "skipped": 0}
    assert not store.path.exists()  # nothing written until something is said
    store.set(5, ["liver", "aorta"])
    store.set(6, [], "labelled")  # a labelled superpatch without any of the organs: a negative
    store.set(7, (), "skipped")
    assert store.path == scan.parent / (scan.name[:-len(".nii.gz")] + ".nemesis-labels.json")
    assert store.get(5).organs == ("aorta", "liver")  # kept in the store's organ order
    assert store.get(5).source == "hand"
    assert store.get(0).state == "unlabelled"
    assert [i for i, lab in store.items()] == list(range(48))
    assert store.counts() == {"unlabelled": 45, "labelled": 2, "skipped": 1}
    assert store.indices("labelled") == [5, 6]
    assert store.state_codes().tolist() == [0] * 5 + [1, 1, 2] + [0] * 40
    expected = np.zeros((48, 8), np.uint8)
    expected[5, ORGAN_NAMES.index("liver")] = expected[5, ORGAN_NAMES.index("aorta")] = 1
    assert (store.presence() == expected).all()
    again = open_store(scan)  # a fresh process would see the same
    assert content(again) == content(store)
    assert again.revision == store.revision == 3
    doc = json.loads(store.path.read_text(encoding="utf-8"))
    assert doc["scan"]["voxel_sha256"] == store.scan.voxel_sha256
    assert doc["grid"]["superpatch"] == S and doc["organs"] == list(ORGAN_NAMES)
    assert [e["index"] for e in doc["superpatches"]] == [5, 6, 7]


def test_every_set_is_on_disk_before_it_returns(scan):
    store = open_store(scan)
    for k, i in enumerate([3, 9, 3, 47]):
        store.set(i, [ORGAN_NAMES[k]])
        on_disk = {e["index"]: e["organs"] for e in read_sidecar(store.path)["superpatches"]}
        assert on_disk[i] == [ORGAN_NAMES[k]]
    assert not list(scan.parent.glob(".*.tmp*"))  # no temporary file left behind


def test_undo_takes_back_one_change_at_a_time_and_saves(scan):
    store = open_store(scan)
    store.set(1, ["spleen"])
    store.set(1, ["spleen", "liver"])
    store.set_many({2: (["stomach"], "labelled"), 3: ((), "skipped")})
    assert store.undo() == [2, 3]  # the bulk change is one step
    assert content(open_store(scan)) == {1: ("labelled", ("spleen", "liver"))}
    assert store.undo() == [1]
    assert store.get(1).organs == ("spleen",)
    assert store.undo() == [1]
    assert store.get(1).state == "unlabelled"
    assert store.undo() == [] and not store.can_undo
    assert content(open_store(scan)) == {}


def test_bad_changes_are_refused_and_change_nothing(scan):
    store = open_store(scan)
    store.set(0, ["liver"])
    for bad in (lambda: store.set(48, ["liver"]), lambda: store.set(-1, []), lambda: store.set(1, ["heart"]),
                lambda: store.set(1, ["liver"], "skipped"), lambda: store.set(1, [], "maybe"),
                lambda: store.set(1, np.ones(7))):
        with pytest.raises(NemesisInputError):
            bad()
    assert content(open_store(scan)) == {0: ("labelled", ("liver",))}
    assert store.set(1, np.eye(8)[2]).organs == ("spleen",)  # a presence vector works too


def test_sidecar_for_another_scan_grid_or_organs_is_refused_naming_both(scans, scan, tmp_path):
    store = open_store(scan)
    store.set(2, ["liver"])
    # another scan's voxels under this scan's sidecar name
    other = tmp_path / "other" / scan.name
    other.parent.mkdir()
    other.write_bytes(scans[1].read_bytes())
    (other.parent / store.path.name).write_bytes(store.path.read_bytes())
    with pytest.raises(NemesisInputError) as err:
        open_store(other)
    msg = str(err.value)
    assert "\n" not in msg and str(scan.resolve()) in msg and str(other) in msg
    # another grid: superpatch size or spacing
    with pytest.raises(NemesisInputError, match="not on the requested") as err:
        open_store(scan, superpatch=4)
    assert "8^3" in str(err.value) and "4^3" in str(err.value)
    with pytest.raises(NemesisInputError, match="not on the requested"):
        open_store(scan, spacing_zyx=(20.0, 12.0, 12.0))
    with pytest.raises(NemesisInputError, match="organ list"):
        open_store(scan, organs=["liver", "spleen"])
    assert content(open_store(scan)) == {2: ("labelled", ("liver",))}  # nothing was touched


def test_newer_format_version_and_damaged_files_are_refused_not_overwritten(scan):
    store = open_store(scan)
    store.set(2, ["liver"])
    good = store.path.read_text(encoding="utf-8")
    doc = json.loads(good)
    doc["version"] = 2
    store.path.write_text(json.dumps(doc))
    with pytest.raises(NemesisInputError, match="newer napari-nemesis .*version 2"):
        open_store(scan)
    for damaged in (good[: len(good) // 2], "[]", json.dumps({**json.loads(good), "superpatches": [{"index": 99,
                                                                                                  "state": "labelled"}]})):
        store.path.write_text(damaged)
        with pytest.raises(NemesisInputError):
            open_store(scan)
        assert store.path.read_text(encoding="utf-8") == damaged


def test_two_writers_merge_instead_of_losing_rows(scan):
    a, b = open_store(scan), open_store(scan)
    seen = []
    a.subscribe(seen.append)
    a.set(1, ["liver"])
    b.set(2, ["spleen"])  # b has not seen a's change; it must keep it
    a.set(3, (), "skipped")
    assert content(open_store(scan)) == {1: ("labelled", ("liver",)), 2: ("labelled", ("spleen",)),
                                         3: ("skipped", ())}
    assert b.reload() == [3]
    assert content(b) == content(a)
    assert seen == [[1], [3]]


def test_unwritable_folder_is_refused_at_open(scan, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == scan.parent else real_access(p, mode))
    with pytest.raises(NemesisInputError, match="not writable"):
        open_store(scan)


def test_grid_spec_matches_the_data_layer_grid(scan):
    from napari_nemesis.data import SuperpatchGrid, preprocess

    vol = read_volume(scan)
    for superpatch, spacing in ((8, vol.spacing), (16, (2.0, 1.5, 1.5)), (5, (7.0, 9.0, 11.0))):
        spec = GridSpec.for_scan(vol.shape, vol.spacing, superpatch, spacing)
        grid = SuperpatchGrid.for_preprocessed(preprocess(vol, spacing), superpatch)
        assert spec.grid_shape_zyx == grid.grid_shape and spec.n == grid.n


# ---- the labelling widget's keys --------------------------------------------------------------
def test_keys_change_the_right_labels(scan):
    store = open_store(scan)
    ses = LabellingSession(store)
    assert ses.counter() == "0 of 48 labelled"
    for key in ("1", "6", "6", "6"):  # aorta on, liver on, off, on
        assert ses.handle_key(key)
    assert store.get(0).organs == ("aorta", "liver") and store.get(0).state == "labelled"
    assert ses.handle_key("Enter") and ses.index == 1  # accepted, on to the next unlabelled
    assert ses.handle_key("s") and store.get(1).state == "skipped" and ses.index == 2
    assert ses.handle_key("Enter") and store.get(2).state == "labelled" and store.get(2).organs == ()
    assert ses.index == 3
    ses.handle_key("Right")
    assert ses.index == 3  # (0, 0, 3) is at the grid's x edge: stays
    ses.handle_key("Left")
    assert ses.index == 2
    ses.handle_key("Down")  # + one grid row (4 superpatches)
    assert ses.index == 6 and ses.grid_position == (0, 1, 2)
    ses.handle_key("PageUp")  # + one slab (16 superpatches)
    assert ses.index == 22 and ses.grid_position == (1, 1, 2)
    ses.handle_key("3")
    assert store.get(22).organs == ("spleen",)
    ses.go_to(5)
    ses.handle_key("Control-Z")
    assert store.get(22).state == "unlabelled" and ses.index == 22
    ses.go_to(0)
    ses.handle_key("p")  # previous unlabelled, wrapping round
    assert ses.index == 47
    ses.handle_key("n")
    assert ses.index == 3
    assert not ses.handle_key("9")  # only 8 organs
    assert not ses.handle_key("x")
    assert ses.counter() == "2 of 48 labelled"
    assert content(open_store(scan)) == {0: ("labelled", ("aorta", "liver")), 1: ("skipped", ()),
                                         2: ("labelled", ())}


# ---- label next ---------------------------------------------------------------------------------
def test_label_next_returns_the_highest_entropy_unlabelled_superpatch(scan):
    from scipy.stats import entropy

    store = open_store(scan)
    rng = np.random.default_rng(0)
    prob = rng.random((48, 8))
    prob[10] = 0.5  # the most uncertain possible, but labelled below
    prob[20] = 0.45
    store.set(10, ["liver"])
    reference = np.array([np.mean([entropy([p, 1 - p], base=2) for p in row]) for row in prob])
    assert np.allclose(mean_binary_entropy(prob), reference)
    ranked = rank_unlabelled(store, prob)
    assert ranked[0] == 20 and 10 not in ranked and len(ranked) == 47
    assert list(reference[ranked]) == sorted(reference[ranked], reverse=True)
    ses = LabellingSession(store)
    assert ses.label_next(prob) == 20 and ses.index == 20
    with pytest.raises(NemesisInputError, match="do not fit"):
        rank_unlabelled(store, prob[:40])


# ---- projects ---------------------------------------------------------------------------------
def test_project_adds_scans_and_reports_status(scans, tmp_path):
    vol = read_volume(scans[0])
    proj = tmp_path / "proj"
    a = LabelStore.for_scan(scans[0], proj, superpatch=S, spacing_zyx=vol.spacing)
    assert a.path.parent == proj / "labels"
    a.set(0, ["liver", "spleen"])
    a.set(1, (), "skipped")
    b = LabelProject.open(proj).store(scans[1])
    b.set(4, ["liver"])
    assert [s.scan_id for s in LabelProject.open(proj).scans] == ["img0001", "img0002"]
    assert LabelProject.open(proj).store(scans[0]).path == a.path  # found again, not added twice
    with pytest.raises(NemesisInputError, match="project uses superpatch 8"):
        LabelStore.for_scan(scans[0], proj, superpatch=16)
    st = LabelProject.open(proj).status()
    rows = {r["id"]: r for r in st["scans"]}
    assert rows["img0001"]["labelled"] == 1 and rows["img0001"]["skipped"] == 1
    assert rows["img0001"]["unlabelled"] == a.n - 2
    assert rows["img0002"]["positives"]["liver"] == 1
    assert st["totals"]["positives"]["liver"] == 2 and st["totals"]["positives"]["spleen"] == 1
    with pytest.raises(NemesisInputError, match="not a labelling project"):
        LabelProject.open(tmp_path / "nothing")


def test_status_cli_json(scans, tmp_path, capsys):
    vol = read_volume(scans[0])
    proj = tmp_path / "proj"
    LabelStore.for_scan(scans[0], proj, superpatch=S, spacing_zyx=vol.spacing).set(3, ["aorta"])
    assert main(["labels", "status", str(proj), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["scans"][0]["labelled"] == 1 and out["totals"]["positives"]["aorta"] == 1
    assert main(["labels", "status", str(proj)]) == 0
    assert "img0001" in capsys.readouterr().out
    assert main(["labels", "status", str(tmp_path / "missing")]) == 2


def test_labels_package_imports_no_qt_and_no_torch():
    import subprocess
    import sys

    watched = ("torch", "napari", "qtpy", "PyQt6", "magicgui")
    code = f"import sys, napari_nemesis.labels; print(','.join(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
