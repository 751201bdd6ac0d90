"""Cases, splits, label ratios, the superpatch cache and its reuse."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from napari_nemesis.data import (
    BTCV_TEST_IDS,
    Case,
    NemesisCancelled,
    NemesisInputError,
    SuperpatchGrid,
    find_cases,
    label_ratio_subset,
    open_cache,
    open_dataset,
    prepare_cache,
    presence_labels,
    split_cases,
    split_description,
    split_rule,
    SPLIT_RULES,
    write_phantom_dataset,
)
from napari_nemesis.bench.sampling_rate import measure_sampling_rate

SHAPE = (20, 28, 28)  # tiny phantoms: every organ, a few ms each
SPACING = (16.0, 14.0, 14.0)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(out, cases=5, seed=3, shape=SHAPE)
    return out


def _fake(ids) -> list[Case]:
    return [Case(i, Path(f"/x/img{i}.nii.gz"), Path(f"/x/label{i}.nii.gz")) for i in ids]


def test_standard_split_and_fallback():
    cases = _fake(
        ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0021",
         "0022", "0023", "0024", "0025", "0026", "0027", "0028", "0029", "0030", "0031", "0032",
         "0033", "0034", "0035", "0036", "0037", "0038", "0039", "0040"])
    train, test = split_cases(cases[::-1])
    assert len(train) == 18 and len(test) == 12
    assert [c.case_id for c in test] == list(BTCV_TEST_IDS)
    assert not {c.case_id for c in train} & set(BTCV_TEST_IDS)
    other = _fake([f"p{i:02d}" for i in range(10)])
    tr, te = split_cases(other)
    assert len(te) == 4 and len(tr) == 6
    assert [c.case_id for c in te] == ["p01", "p03", "p06", "p08"]
    assert split_cases(list(reversed(other))) == (tr, te)


def test_btcv_split_only_for_btcv_itself():
    """Issue 9.6: the 12 BTCV test ids used to apply as soon as one id matched."""
    btcv = [f"{i:04d}" for i in list(range(1, 11)) + list(range(21, 41))]
    four = _fake(btcv[:4])
    assert split_rule(four) == "fallback"
    train, test = split_cases(four)
    assert [c.case_id for c in test] == ["0002", "0004"] and len(train) == 2  # was 0 train / 4 test
    hundred = _fake([f"{i:04d}" for i in range(1, 101)])
    train, test = split_cases(hundred)
    assert len(test) == 40 and len(train) == 60  # was 12 test (12 %)
    # BTCV with its unlabelled imagesTs scans keeps the standard split; an extra labelled case does not
    with_ts = _fake(btcv) + [Case("ts0061", Path("/x/img0061.nii.gz"), None)]
    assert split_rule(with_ts) == "btcv"
    assert [c.case_id for c in split_cases(with_ts)[1]] == list(BTCV_TEST_IDS)
    assert split_rule(_fake(btcv + ["0041"])) == "fallback"
    assert "TransUNet" in SPLIT_RULES["btcv"]


def test_a_pinned_case_keeps_its_split_and_the_rule_splits_the_rest():
    """Issue 16: a real labelled scan added to BTCV's 30 cases for training used to drop the whole
    set to the fallback split; pinned to "train" it joins training and BTCV keeps its 12 test cases."""
    btcv = _fake([f"{i:04d}" for i in list(range(1, 11)) + list(range(21, 41))])
    real = Case("realct", Path("/x/realct.nii.gz"), Path("/x/realct_label.nii.gz"), "train")
    assert split_rule(btcv + [real]) == "btcv"
    train, test = split_cases(btcv + [real])
    assert [c.case_id for c in test] == list(BTCV_TEST_IDS)
    assert "realct" in [c.case_id for c in train] and len(train) == 19
    # unpinned, the same scan drops the set to the fallback (the rule itself is unchanged)
    assert split_rule(btcv + [Case("realct", real.image, real.label)]) == "fallback"
    # a case pinned to test is test whatever the rule says, and the fallback splits the others alone
    five = _fake(["0001", "0002", "0003", "0004", "0005"])
    free_train, free_test = split_cases(five[:4])
    pinned = five[:4] + [Case("0005", five[4].image, five[4].label, "test")]
    train, test = split_cases(pinned)
    assert [c.case_id for c in test] == sorted([c.case_id for c in free_test] + ["0005"])
    assert [c.case_id for c in train] == [c.case_id for c in free_train]
    text = split_description("btcv", {"realct": "train"})
    assert text.startswith(SPLIT_RULES["btcv"]) and "realct -> train" in text
    assert split_description("btcv", {}) == SPLIT_RULES["btcv"]


def test_prepare_honours_splits_pinned_in_the_case_list(phantoms, tmp_path):
    entries = [{"image": str(p), "label": str(phantoms / "labelsTr" / p.name.replace("img", "label"))}
               for p in sorted((phantoms / "imagesTr").glob("img*.nii.gz"))]
    assert [c.case_id for c in split_cases(find_cases(phantoms))[1]] == ["0002", "0004"]  # test under the fallback rule
    entries[1]["split"] = "train"
    (tmp_path / "list.json").write_text(json.dumps(entries))
    index = prepare_cache(tmp_path / "list.json", tmp_path / "c", spacing_zyx=(14, 14, 16), superpatch=8)
    assert index.cases["0002"]["split"] == "train" and index.pinned == {"0002": "train"}
    summary = index.summary()
    assert summary["pinned"] == {"0002": "train"} and "0002 -> train" in summary["split_description"]
    cache = open_cache(tmp_path / "c")
    # the rule splits the 4 unpinned cases as a 4-case set: 0003 and 0005 are its test cases
    assert cache.train_ids == ["0001", "0002", "0004"] and cache.test_ids == ["0003", "0005"]
    assert cache.pinned == {"0002": "train"}
    assert "pinned by the case list: 0002 -> train" in cache.split_description
    assert [c.split for c in cache.cases()] == [None, "train", None, None, None]
    entries[1]["split"] = "validation"
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    with pytest.raises(NemesisInputError, match=r"bad\.json: entry 1 has split 'validation'"):
        find_cases(tmp_path / "bad.json")


def test_the_cache_records_each_scans_voxel_digest_and_adds_it_to_old_caches(phantoms, tmp_path):
    from napari_nemesis.data import ScanFingerprint, read_volume

    prepare_cache(phantoms, tmp_path / "c", spacing_zyx=(14, 14, 16), superpatch=8)
    cache = open_cache(tmp_path / "c")
    for case in find_cases(phantoms):
        assert cache.voxel_sha256(case.case_id) == ScanFingerprint.of_volume(read_volume(case.image)).voxel_sha256
    index_path = tmp_path / "c" / "index.json"
    doc = json.loads(index_path.read_text())
    for entry in doc["cases"].values():
        del entry["voxel_sha256"]                       # a cache written before the digest was recorded
    index_path.write_text(json.dumps(doc))
    assert open_cache(tmp_path / "c").voxel_sha256("0001") is None
    again = prepare_cache(phantoms, tmp_path / "c", spacing_zyx=(14, 14, 16), superpatch=8)
    assert len(again.skipped) == 5                      # nothing preprocessed again, only the digest added
    assert open_cache(tmp_path / "c").voxel_sha256("0001") == cache.voxel_sha256("0001")


def test_prepare_reports_the_split(phantoms, tmp_path, capsys, monkeypatch):
    from napari_nemesis import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["napari_nemesis.cli.data_cmds"])
    assert cli.main(["prepare", str(phantoms), "--out", str(tmp_path / "c"), "--spacing", "14", "14", "16",
                     "--superpatch", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["split"] == "fallback" and summary["train"] == 3 and summary["test"] == 2
    assert cli.main(["prepare", str(phantoms), "--out", str(tmp_path / "c"), "--spacing", "14", "14", "16",
                     "--superpatch", "8"]) == 0
    assert "fallback split: round(0.4 n) of n cases" in capsys.readouterr().out


def test_label_ratio_subsets_are_nested_and_seeded():
    train = _fake([f"{i:04d}" for i in range(100, 118)])  # 18 cases
    subsets = [label_ratio_subset(train, r, seed=4) for r in (10, 25, 50, 100)]
    assert [len(s) for s in subsets] == [2, 5, 9, 18]
    for small, big in zip(subsets, subsets[1:]):
        assert {c.case_id for c in small} <= {c.case_id for c in big}
    assert label_ratio_subset(train, 0.25, seed=4) == subsets[1]
    assert label_ratio_subset(list(reversed(train)), 0.25, seed=4) == subsets[1]
    assert any(label_ratio_subset(train, 0.25, seed=s) != subsets[1] for s in range(5, 10))
    with pytest.raises(NemesisInputError):
        label_ratio_subset(train, 0)


def test_find_cases_btcv_and_json_list(phantoms, tmp_path):
    cases = find_cases(phantoms)
    assert [c.case_id for c in cases] == ["0001", "0002", "0003", "0004", "0005"]
    assert all(c.label is not None and c.label.exists() for c in cases)
    # any folder with a JSON list of image/label pairs
    other = tmp_path / "mine"
    other.mkdir()
    entries = []
    for c in cases[:3]:
        img = other / f"scan_{c.case_id}_ct.nii.gz"
        lab = other / f"seg_{c.case_id}.nii.gz"
        img.write_bytes(c.image.read_bytes())
        lab.write_bytes(c.label.read_bytes())
        entries.append({"image": img.name, "label": lab.name})
    (other / "cases.json").write_text(json.dumps(entries))
    found = find_cases(other)
    assert [c.case_id for c in found] == ["0001", "0002", "0003"]
    (other / "cases.json").write_text(json.dumps({"training": entries[:2]}))
    assert len(find_cases(other)) == 2
    with pytest.raises(NemesisInputError, match="no cases found"):
        find_cases(tmp_path / "mine" / "..")


def test_find_cases_nnunet_layout(phantoms, tmp_path):
    """Issue 9.5: ``BTCV_0001_0000`` took the channel suffix as its case id and paired with nothing."""
    nn = tmp_path / "Dataset001_BTCV"
    (nn / "imagesTr").mkdir(parents=True)
    (nn / "labelsTr").mkdir()
    (nn / "imagesTs").mkdir()
    for c in find_cases(phantoms)[:3]:
        (nn / "imagesTr" / f"BTCV_{c.case_id}_0000.nii.gz").write_bytes(c.image.read_bytes())
        (nn / "labelsTr" / f"BTCV_{c.case_id}.nii.gz").write_bytes(c.label.read_bytes())
    (nn / "imagesTs" / "BTCV_0061_0000.nii.gz").write_bytes(find_cases(phantoms)[0].image.read_bytes())
    found = find_cases(nn)
    assert [c.case_id for c in found] == ["0001", "0002", "0003"]
    assert [c.label.name for c in found] == ["BTCV_0001.nii.gz", "BTCV_0002.nii.gz", "BTCV_0003.nii.gz"]
    assert [c.case_id for c in find_cases(nn, include_unlabelled=True)][-1] == "ts0061"
    # a second channel is another modality, not another case
    (nn / "imagesTr" / "BTCV_0001_0001.nii.gz").write_bytes(found[0].image.read_bytes())
    with pytest.warns(Warning, match="extra-channel"):
        assert len(find_cases(nn)) == 3
    # nothing pairs up: say which files did not
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    (bad / "labelsTr").mkdir()
    (bad / "imagesTr" / "scanA.nii.gz").write_bytes(found[0].image.read_bytes())
    (bad / "labelsTr" / "segB.nii.gz").write_bytes(found[0].label.read_bytes())
    with pytest.raises(NemesisInputError, match=r"no cases found: none of the 1 image\(s\) .* "
                                                r"\(e\.g\. scanA\.nii\.gz vs segB\.nii\.gz\)"):
        find_cases(bad)


def test_prepare_cache_reuse_and_superpatch_change(phantoms, tmp_path):
    cache_dir = tmp_path / "cache"
    idx = prepare_cache(phantoms, cache_dir, SPACING, superpatch=8)
    assert idx.prepared == ["0001", "0002", "0003", "0004", "0005"] and idx.skipped == []
    doc = json.loads((cache_dir / "index.json").read_text(encoding="utf-8"))
    assert doc["spacing"] == list(SPACING) and doc["superpatch"] == 8
    entry = doc["cases"]["0002"]
    assert entry["split"] == "test" and doc["cases"]["0005"]["split"] == "train"
    assert len(entry["sources"]["image"]["sha256"]) == 64
    stamp = {c: (cache_dir / "cases" / c / "image.npy").stat().st_mtime_ns for c in idx.cases}

    again = prepare_cache(phantoms, cache_dir, SPACING, superpatch=8)
    assert again.prepared == [] and len(again.skipped) == 5
    assert stamp == {c: (cache_dir / "cases" / c / "image.npy").stat().st_mtime_ns for c in idx.cases}

    # same bytes, new mtime: hash says unchanged
    img3 = phantoms / "imagesTr" / "img0003.nii.gz"
    os.utime(img3, ns=(img3.stat().st_atime_ns, img3.stat().st_mtime_ns + 10**9))
    assert prepare_cache(phantoms, cache_dir, SPACING, superpatch=8).prepared == []

    # a changed label map: only that case is redone
    lab4 = phantoms / "labelsTr" / "label0004.nii.gz"
    original = lab4.read_bytes()
    try:
        write_phantom_dataset(tmp_path / "other", cases=1, seed=99, shape=SHAPE)
        other_img = tmp_path / "other" / "imagesTr" / "img0001.nii.gz"
        other_lab = tmp_path / "other" / "labelsTr" / "label0001.nii.gz"
        img4 = phantoms / "imagesTr" / "img0004.nii.gz"
        img4_bytes = img4.read_bytes()
        img4.write_bytes(other_img.read_bytes())
        lab4.write_bytes(other_lab.read_bytes())
        redo = prepare_cache(phantoms, cache_dir, SPACING, superpatch=8)
        assert redo.prepared == ["0004"] and len(redo.skipped) == 4
    finally:
        lab4.write_bytes(original)
        img4.write_bytes(img4_bytes)

    # another superpatch size: nothing re-read, presence recomputed from the cached labels
    bigger = prepare_cache(phantoms, cache_dir, SPACING, superpatch=16)
    assert bigger.prepared == ["0004"] or bigger.prepared == []
    cache = open_cache(cache_dir)
    assert cache.superpatch == 16
    for cid in cache.case_ids:
        lab = np.asarray(cache.labels(cid))
        grid = SuperpatchGrid(lab.shape, 16)
        np.testing.assert_array_equal(cache.presence(cid), presence_labels(lab, grid))
        np.testing.assert_array_equal(cache.presence(cid, 8),
                                      presence_labels(lab, SuperpatchGrid(lab.shape, 8)))


def test_cancel_leaves_no_half_written_entry(phantoms, tmp_path):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] == 4  # after case 0002 is computed, before it is renamed into place

    cache_dir = tmp_path / "c"
    with pytest.raises(NemesisCancelled):
        prepare_cache(phantoms, cache_dir, SPACING, superpatch=8, cancel=cancel)
    doc = json.loads((cache_dir / "index.json").read_text(encoding="utf-8"))
    assert list(doc["cases"]) == ["0001"]
    assert sorted(p.name for p in (cache_dir / "cases").iterdir()) == ["0001"]
    done = prepare_cache(phantoms, cache_dir, SPACING, superpatch=8)
    assert done.skipped == ["0001"] and len(done.prepared) == 4


def test_cache_sampling_iteration_and_pickling(phantoms, tmp_path, monkeypatch):
    monkeypatch.setenv("NEMESIS_CACHE_DIR", str(tmp_path / "usercache"))
    cache = open_dataset(phantoms, superpatch=8, spacing_zyx=SPACING)
    assert str(cache.path).startswith(str(tmp_path / "usercache"))
    assert not any(p.suffix == ".npy" for p in phantoms.rglob("*"))  # data dir untouched
    # 5 cases are not BTCV, even with BTCV's ids: the fallback split
    assert cache.train_ids == ["0001", "0003", "0005"] and cache.test_ids == ["0002", "0004"]
    assert cache.split_rule == "fallback"
    img = cache.image("0001")
    assert isinstance(img, np.memmap) and img.dtype == np.float16
    a = cache.sample(np.random.default_rng(7), return_info=True)
    b = cache.sample(np.random.default_rng(7), return_info=True)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (8, 8, 8) and a[0].dtype == np.float32 and a[0].mean() >= 0.05
    patch, cid, origin = a
    crop = np.zeros((8, 8, 8), np.float32)
    region = np.asarray(cache.image(cid)[tuple(slice(o, o + 8) for o in origin)], np.float32)
    crop[tuple(slice(0, s) for s in region.shape)] = region
    np.testing.assert_array_equal(patch, crop)
    only = {cache.sample(np.random.default_rng(k), case_ids=["0003"], return_info=True)[1]
            for k in range(10)}
    assert only == {"0003"}
    items = list(cache.superpatches(["0002", "0005"]))
    assert len(items) == cache.n_superpatches(["0002", "0005"])
    for cid, i, p, lab in items[:20]:
        assert p.shape == (8, 8, 8) and lab.shape == (8,) and lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, cache.presence(cid)[i])
        np.testing.assert_array_equal(p, cache.grid(cid).superpatch_of(cache.image(cid), i).astype(np.float32))
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.sample(np.random.default_rng(7)), a[0])
    # the grid knows the original scan: boxes partition it
    grid = cache.grid("0001")
    cover = np.zeros(grid.mapping.source_shape_zyx, np.int32)
    for i in range(grid.n):
        cover[grid.box_original(i).slices] += 1
    assert (cover == 1).all()
    # an explicit, different spacing is refused for an existing cache
    with pytest.raises(NemesisInputError, match="spacing"):
        open_dataset(cache.path, superpatch=8, spacing_zyx=(2.0, 1.5, 1.5))
    rate = measure_sampling_rate(cache, seconds=0.05, repeats=3)
    assert rate["median_per_s"] > 0 and len(rate["rates_per_s"]) == 3


def test_torch_datasets_with_workers(phantoms, tmp_path):
    torch = pytest.importorskip("torch")
    from napari_nemesis.data.torch_dataset import GridSuperpatchDataset, RandomSuperpatchDataset

    prepare_cache(phantoms, tmp_path / "c", SPACING, superpatch=8)
    ds = RandomSuperpatchDataset(tmp_path / "c", length=12, seed=3)
    single = torch.stack([ds[i] for i in range(12)])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    multi = torch.cat(list(loader))
    assert multi.shape == (12, 1, 8, 8, 8)
    assert torch.equal(single, multi)
    grid = GridSuperpatchDataset(tmp_path / "c", ["0001"])
    patch, labels = grid[0]
    assert patch.shape == (1, 8, 8, 8) and labels.shape == (8,)
    assert len(grid) == open_cache(tmp_path / "c").grid("0001").n


def test_replace_folder_swaps_in_a_whole_folder(tmp_path):
    from napari_nemesis.data.datasets import replace_folder

    dest, new = tmp_path / "dest", tmp_path / ".new"
    new.mkdir()
    (new / "b.txt").write_text("new")
    replace_folder(new, dest)  # no folder there yet
    assert [p.name for p in dest.iterdir()] == ["b.txt"] and not new.exists()
    new.mkdir()
    (new / "c.txt").write_text("newer")
    replace_folder(new, dest)  # the old folder goes whole, not merged
    assert [p.name for p in dest.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]  # nothing left aside


def test_the_old_bench_sampling_path_still_works():
    from napari_nemesis.bench.sampling_rate import measure_sampling_rate as new
    from napari_nemesis.data.bench_sampling import measure_sampling_rate as old

    assert old is new
