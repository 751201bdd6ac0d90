"""Fill from a segmentation: the core's presence rule, every label scheme, hand labels kept."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CT, CT_DIR

from napari_nemesis.cli import main
from napari_nemesis.data import ORGAN_NAMES, open_dataset, read_labels, read_volume
from napari_nemesis.errors import NemesisInputError
from napari_nemesis.labels import LabelProject, LabelStore, fill_from_segmentation


@pytest.fixture(scope="module")
def ct():
    if not CT.is_file():
        pytest.skip(f"real CT not found at {CT_DIR}")
    return CT_DIR


@pytest.fixture(scope="module")
def volume(ct):
    return read_volume(ct / "abdomen_ct.nii.gz")


@pytest.fixture(scope="module")
def cache_counts(ct, tmp_path_factory):
    """Organ voxel counts per superpatch of the real CT as the data layer's cache computes them."""
    root = tmp_path_factory.mktemp("realct")
    (root / "data").mkdir()
    (root / "data" / "cases.json").write_text(json.dumps(
        [{"image": str(ct / "abdomen_ct.nii.gz"), "label": str(ct / "abdomen_label_btcv.nii.gz"), "id": "0001"}]))
    cache = open_dataset(root / "data", superpatch=128, cache_dir=root / "cache")
    return np.asarray(cache.index["cases"]["0001"]["organ_voxels"])


def store_in(tmp_path, ct, volume, **kw) -> LabelStore:
    # a project folder: nothing is written beside the shared scan
    return LabelStore.for_scan(ct / "abdomen_ct.nii.gz", tmp_path / "proj", volume=volume, **kw)


@pytest.mark.parametrize("threshold", [100, 5000])
def test_fill_equals_the_data_layer_presence(tmp_path, ct, volume, cache_counts, threshold):
    store = store_in(tmp_path, ct, volume)
    res = fill_from_segmentation(store, ct / "abdomen_label_btcv.nii.gz", threshold=threshold)
    expected = (cache_counts >= threshold).astype(np.uint8)
    assert res.scheme == "btcv" and store.n == len(expected) == 8
    assert (store.presence() == expected).all()
    assert store.counts()["labelled"] == 8
    assert all(lab.source == "segmentation" for _, lab in store.items())


def test_totalsegmentator_and_amos_maps_give_the_btcv_presence(tmp_path, ct, volume, cache_counts):
    expected = (cache_counts >= 100).astype(np.uint8)
    ts = store_in(tmp_path / "ts", ct, volume)
    res = fill_from_segmentation(ts, ct / "abdomen_seg_totalsegmentator.nii.gz")
    assert res.scheme == "totalsegmentator"
    assert (ts.presence() == expected).all()
    # an AMOS map of the same organs (pancreas is 10 there, 11 in BTCV; 14 = bladder marks AMOS)
    btcv = read_labels(ct / "abdomen_label_btcv.nii.gz", volume)
    amos = btcv.copy()
    amos[btcv == 11] = 10
    amos[-1, -1, -1] = 14
    am = store_in(tmp_path / "amos", ct, volume)
    res = fill_from_segmentation(am, amos)  # an array on the scan's grid, as from a Labels layer
    assert res.scheme == "amos"
    assert (am.presence() == expected).all()
    # read as BTCV it would count AMOS's 10 (the portal vein there) as nothing: pancreas lost
    wrong = store_in(tmp_path / "wrong", ct, volume)
    fill_from_segmentation(wrong, np.where(amos == 14, 0, amos), scheme="btcv")
    pancreas = ORGAN_NAMES.index("pancreas")
    assert wrong.presence()[:, pancreas].sum() == 0 < expected[:, pancreas].sum()


def test_hand_labels_are_kept_unless_overwrite_and_a_fill_is_one_undo(tmp_path, ct, volume, cache_counts):
    expected = (cache_counts >= 100).astype(np.uint8)
    store = store_in(tmp_path, ct, volume)
    store.set(0, ["aorta"])
    store.set(1, (), "skipped")
    res = fill_from_segmentation(store, ct / "abdomen_label_btcv.nii.gz")
    assert res.kept == [0, 1] and res.filled == list(range(2, 8))
    assert store.get(0).organs == ("aorta",) and store.get(1).state == "skipped"
    assert (store.presence()[2:] == expected[2:]).all()
    # a second fill (another threshold) replaces the earlier fill, not the hand labels
    fill_from_segmentation(store, ct / "abdomen_label_btcv.nii.gz", threshold=5000)
    assert (store.presence()[2:] == (cache_counts[2:] >= 5000)).all() and store.get(0).organs == ("aorta",)
    assert store.undo() == [k for k in range(2, 8) if (expected[k] != (cache_counts[k] >= 5000)).any()]
    assert (store.presence()[2:] == expected[2:]).all()
    fill_from_segmentation(store, ct / "abdomen_label_btcv.nii.gz", overwrite=True)
    assert (store.presence() == expected).all() and store.get(1).state == "labelled"


def test_organ_subset_projects_and_bad_maps(tmp_path, ct, volume, cache_counts):
    store = store_in(tmp_path, ct, volume, organs=["liver", "spleen"])
    fill_from_segmentation(store, ct / "abdomen_label_btcv.nii.gz")
    cols = [ORGAN_NAMES.index("liver"), ORGAN_NAMES.index("spleen")]
    assert (store.presence() == (cache_counts[:, cols] >= 100)).all()
    with pytest.raises(NemesisInputError, match="shape"):
        fill_from_segmentation(store, np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(NemesisInputError, match="label scheme|--label-scheme"):
        fill_from_segmentation(store, ct / "abdomen_seg_totalsegmentator.nii.gz", scheme="btcv")
    other = store_in(tmp_path / "odd", ct, volume, organs=["liver", "heart"])
    with pytest.raises(NemesisInputError, match="heart"):
        fill_from_segmentation(other, ct / "abdomen_label_btcv.nii.gz")


def test_fill_cli_starts_the_project_and_reports(tmp_path, ct, cache_counts, capsys):
    proj = tmp_path / "proj"
    argv = ["labels", "fill", str(proj), str(ct / "abdomen_ct.nii.gz"), str(ct / "abdomen_seg_totalsegmentator.nii.gz"),
            "--threshold", "100", "--label-scheme", "totalsegmentator", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["scheme"] == "totalsegmentator" and out["filled"] == 8 and out["counts"]["labelled"] == 8
    assert out["positives"] == dict(zip(ORGAN_NAMES, (cache_counts >= 100).sum(0).tolist()))
    project = LabelProject.open(proj)
    assert [s.scan_id for s in project.scans] == ["abdomen_ct"]
    assert main(argv[:-1]) == 0  # again: same project, the scan is not added twice
    assert len(LabelProject.open(proj).scans) == 1
    assert main(["labels", "fill", str(proj), str(ct / "abdomen_ct.nii.gz"), str(ct / "abdomen_ct.nii.gz")]) == 2
    assert "error" in capsys.readouterr().err
