"""Label-id schemes: detection, re-coding to BTCV ids, and every place labels become presence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nemesis import cli
from napari_nemesis.data import (
    LABEL_SCHEMES,
    ORGANS,
    NemesisInputError,
    detect_label_scheme,
    label_names,
    make_phantom,
    open_dataset,
    prepare_cache,
    read_labels,
    read_volume,
    to_btcv_labels,
    volume_from_array,
    write_volume,
)
from napari_nemesis.data.label_schemes import btcv_id_map

from conftest import CT, CT_DIR, CT_LABELS, needs_ct  # noqa: E402

CT_TOTALSEG = CT_DIR / "abdomen_seg_totalsegmentator.nii.gz"
ORGAN_IDS = [o.btcv_id for o in ORGANS]


def _btcv_to(scheme: str) -> dict[int, int]:
    """BTCV id -> the scheme's id, the inverse of the re-coding (to write test maps)."""
    return {b: s for s, b in btcv_id_map(scheme).items()}


def test_detection_follows_the_ids_present():
    assert detect_label_scheme([0, 1, 6, 13]) == "btcv"
    assert detect_label_scheme(np.array([[0, 2], [11, 0]], np.uint8)) == "btcv"
    assert detect_label_scheme({1: 10, 14: 3}) == "amos"  # ids as mapping keys
    assert detect_label_scheme({3, 15}) == "amos"
    assert detect_label_scheme([5, 52]) == "totalsegmentator"
    assert detect_label_scheme(np.zeros((4, 4, 4), np.uint8)) == "btcv"  # background only fits all
    with pytest.raises(NemesisInputError, match=r"^seg\.nii\.gz: label id 200 fits no known scheme"):
        detect_label_scheme(np.array([0, 3, 200], np.int32), source="seg.nii.gz")


def test_recoding_maps_each_scheme_onto_btcv_ids():
    ts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 52, 63, 10, 117], np.uint8)
    out, scheme = to_btcv_labels(ts)
    assert scheme == "totalsegmentator"
    # spleen, kidneys, gallbladder stay; TS liver 5 -> 6, stomach 6 -> 7, pancreas 7 -> 11, aorta 52 -> 8,
    # IVC 63 -> 9; a lung lobe (10) and the costal cartilages (117) are not BTCV structures -> 0
    assert out.tolist() == [0, 1, 2, 3, 4, 6, 7, 11, 8, 9, 0, 0] and out.dtype == np.uint8
    amos = np.array([0, 6, 10, 11, 13, 14, 15], np.uint8)
    out, scheme = to_btcv_labels(amos)
    assert scheme == "amos" and out.tolist() == [0, 6, 11, 12, 0, 0, 0]
    # an AMOS map without ids 14/15 reads as BTCV unless the scheme is named
    small_amos = np.array([0, 10, 6], np.uint8)
    assert to_btcv_labels(small_amos)[0].tolist() == [0, 10, 6]
    assert to_btcv_labels(small_amos, "amos")[0].tolist() == [0, 11, 6]
    btcv = np.array([0, 1, 11, 13], np.int32)
    out, scheme = to_btcv_labels(btcv, "btcv")
    assert scheme == "btcv" and out.tolist() == [0, 1, 11, 13] and out.dtype == np.uint8


def test_a_named_scheme_the_ids_contradict_is_refused():
    ts_like = np.array([0, 5, 52], np.uint8)
    with pytest.raises(NemesisInputError, match=r"^lab\.nii: --label-scheme btcv allows ids 1-13 .* id 52 "
                                                r"\(it looks like totalsegmentator\)$"):
        to_btcv_labels(ts_like, "btcv", source="lab.nii")
    with pytest.raises(NemesisInputError, match="--label-scheme amos allows ids 1-15"):
        to_btcv_labels(ts_like, "amos")
    with pytest.raises(NemesisInputError, match="--label-scheme nnunet"):
        to_btcv_labels(ts_like, "nnunet")


def test_label_names_cover_each_scheme_and_agree_with_the_organs():
    assert set(LABEL_SCHEMES) == {"btcv", "totalsegmentator", "amos"}
    ts, amos, btcv = label_names("totalsegmentator"), label_names("amos"), label_names("btcv")
    assert sorted(ts) == list(range(1, 118)) and sorted(amos) == list(range(1, 16)) and sorted(btcv) == list(range(1, 14))
    assert (ts[5], ts[6], ts[52], ts[117]) == ("liver", "stomach", "aorta", "costal_cartilages")
    assert (amos[10], amos[14]) == ("pancreas", "bladder")
    for organ in ORGANS:
        assert btcv[organ.btcv_id] == organ.name
        # the re-coding sends each scheme's organ of that name to the organ's BTCV id
        for scheme in ("amos", "totalsegmentator"):
            names = label_names(scheme)
            src = [k for k, b in btcv_id_map(scheme).items() if b == organ.btcv_id]
            assert len(src) == 1
            want = organ.name.replace("left_kidney", "kidney_left").replace("right_kidney", "kidney_right") \
                if scheme == "totalsegmentator" else organ.name
            assert names[src[0]] == want


@needs_ct
def test_real_totalsegmentator_map_reduces_to_the_shipped_btcv_map():
    vol = read_volume(CT)
    ts = read_labels(CT_TOTALSEG, vol)
    assert detect_label_scheme(ts) == "totalsegmentator"
    btcv, scheme = to_btcv_labels(ts, source=CT_TOTALSEG)
    shipped = read_labels(CT_LABELS, vol)
    assert scheme == "totalsegmentator"
    organs_only = np.where(np.isin(btcv, ORGAN_IDS), btcv, 0)
    np.testing.assert_array_equal(organs_only, shipped)


@needs_ct
def test_info_counts_organs_of_a_totalsegmentator_map(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["napari_nemesis.cli.data_cmds"])
    assert cli.main(["info", str(CT), "--labels", str(CT_TOTALSEG), "--json"]) == 0
    ts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli.main(["info", str(CT), "--labels", str(CT_LABELS), "--json"]) == 0
    btcv = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ts["label_scheme"] == "totalsegmentator" and btcv["label_scheme"] == "btcv"
    assert [sp["voxels"] for sp in ts["superpatches"]] == [sp["voxels"] for sp in btcv["superpatches"]]
    assert cli.main(["info", str(CT), "--labels", str(CT_TOTALSEG), "--label-scheme", "btcv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "abdomen_seg_totalsegmentator.nii.gz" in err and "btcv" in err


def _write_case(folder, k: int, scheme: str):
    """A tiny phantom written as NIfTI with its labels in ``scheme``'s ids."""
    image, labels, spacing, affine = make_phantom(5, k, shape=(20, 28, 28))
    if scheme != "btcv":
        lut = np.zeros(256, np.uint8)
        for b, s in _btcv_to(scheme).items():
            lut[b] = s
        labels = lut[labels]
    ref = volume_from_array(image.astype(np.float32), spacing, canonical_affine=affine)
    write_volume(image, folder / f"ct{k}.nii.gz", ref, dtype=np.int16)
    write_volume(labels, folder / f"seg{k}.nii.gz", ref, dtype=np.uint8)
    return {"image": f"ct{k}.nii.gz", "label": f"seg{k}.nii.gz", "id": f"c{k}"}


@pytest.mark.parametrize("scheme", ["totalsegmentator", "amos"])
def test_prepare_records_the_scheme_and_counts_the_same_organs(tmp_path, scheme):
    btcv_dir, other_dir = tmp_path / "btcv", tmp_path / scheme
    btcv_dir.mkdir()
    other_dir.mkdir()
    for folder, s in ((btcv_dir, "btcv"), (other_dir, scheme)):
        (folder / "cases.json").write_text(json.dumps([_write_case(folder, k, s) for k in range(2)]))
    spacing = (16.0, 14.0, 14.0)
    named = scheme if scheme == "amos" else "auto"  # these tiny AMOS maps hold no id 14/15: name it
    ref = prepare_cache(btcv_dir, tmp_path / "c1", spacing, superpatch=8)
    got = prepare_cache(other_dir, tmp_path / "c2", spacing, superpatch=8, label_scheme=named)
    for cid in ("c0", "c1"):
        assert got.cases[cid]["label_scheme"] == scheme and ref.cases[cid]["label_scheme"] == "btcv"
        assert got.cases[cid]["organ_voxels"] == ref.cases[cid]["organ_voxels"]
        assert sum(map(sum, got.cases[cid]["organ_voxels"])) > 0
    cache = open_dataset(tmp_path / "c2", superpatch=8)
    assert cache.label_scheme("c0") == scheme
    with pytest.raises(NemesisInputError, match="was cached as label scheme"):
        open_dataset(tmp_path / "c2", superpatch=8, label_scheme="btcv")
