"""Surprise triage (train/triage.py, ``nemesis triage``): anomalies inserted into a real CT rank first, padding
never ranks, the JSON contract, sources (files, folders, projects), progress and cancel.

The anomaly test uses the bundled weights (a random model knows no anatomy) on the sample abdominal CT, resampled
to the weights' spacing and cut to its lower 128 slices: 1 x 2 x 2 superpatches, no padding along z. Into one
copy go a dense 3 cm ball (+800 HU: a calcified or contrast-filled mass) and a 3 cm cube of noise (sd 300 HU: a
corrupted block), each near the centre of its own superpatch and at least 2 cm inside the body. The cohort is
the clean scan and the altered one, so each altered superpatch competes with its own unaltered twin.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_nemesis.data import volume_from_array, write_volume
from napari_nemesis.errors import NemesisCancelled, NemesisInputError

RADIUS_MM = 15.0


def _placed(body_mm: np.ndarray, centre, reach: int = 40, clearance_mm: float = RADIUS_MM + 6):
    """The voxel nearest ``centre`` (within ``reach`` voxels) at least ``clearance_mm`` inside the body."""
    cand = np.argwhere(body_mm >= clearance_mm)
    near = np.all(np.abs(cand - np.asarray(centre)) < reach, axis=1)
    assert near.any(), f"no room for an anomaly near {centre}"
    cand = cand[near]
    return tuple(int(v) for v in cand[np.argmin(((cand - np.asarray(centre)) ** 2).sum(1))])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from scipy.ndimage import distance_transform_edt

    from napari_nemesis.data import read_volume
    from napari_nemesis.data.preprocess import resample
    from napari_nemesis.data.spacing import recorded_spacing
    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.weights import load_default_model

    model = load_default_model()
    spacing = tuple(recorded_spacing(model)[0])
    root = tmp_path_factory.mktemp("triage")
    ct = read_volume(sample_ct_path())
    hu = resample(ct.array, ct.spacing, spacing, order=1)[:128].astype(np.float32)
    vol = volume_from_array(hu, spacing_zyx=spacing)
    clean = write_volume(hu, root / "clean.nii.gz", reference=vol)

    body = distance_transform_edt(hu > -300, sampling=spacing)
    s = model.cfg.superpatch
    ball_at = _placed(body, (s // 2, s // 2, s // 2))              # superpatch 0 (grid 0 0 0)
    noise_at = _placed(body, (s // 2, s + s // 2, s // 2))         # superpatch 2 (grid 0 1 0)
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    dist = lambda c: np.sqrt(((z - c[0]) * spacing[0]) ** 2 + ((y - c[1]) * spacing[1]) ** 2  # noqa: E731
                             + ((x - c[2]) * spacing[2]) ** 2)
    altered = hu.copy()
    altered[dist(ball_at) <= RADIUS_MM] += 800.0
    half = [int(round(RADIUS_MM / sp)) for sp in spacing]
    block = tuple(slice(c - h, c + h) for c, h in zip(noise_at, half))
    altered[block] = np.random.default_rng(0).normal(40.0, 300.0, altered[block].shape)
    anomalous = write_volume(altered, root / "altered.nii.gz", reference=vol)

    from napari_nemesis.train.triage import triage

    events = []
    result = triage([clean, anomalous], model, seeds=3, device="cpu", progress=events.append)
    return {"result": result, "clean": str(clean), "altered": str(anomalous), "ball": ball_at, "noise": noise_at,
            "events": events, "model": model, "root": root}


@pytest.mark.slow  # ~10-30 s on 2 busy cores: 2 scans x 4 superpatches x 3 seeds with the bundled weights
def test_inserted_anomalies_rank_first_at_their_place(cohort):
    ranking = cohort["result"]["ranking"]
    top = {(r["scan"], r["superpatch"]) for r in ranking[:2]}
    assert top == {(cohort["altered"], 0), (cohort["altered"], 2)}, [(r["scan"], r["superpatch"], r["score"])
                                                                    for r in ranking]
    by_key = {(r["scan"], r["superpatch"]): r for r in ranking}
    for index, centre in ((0, cohort["ball"]), (2, cohort["noise"])):
        row = by_key[(cohort["altered"], index)]
        # the scan is at the model's spacing, so original voxels are model voxels: within one patch (16)
        assert np.abs(np.asarray(row["hotspot_zyx"]) - np.asarray(centre)).max() <= 16, (row, centre)
        twin = by_key[(cohort["clean"], index)]
        assert row["score"] > twin["score"] + 1.0, (row["score"], twin["score"])


@pytest.mark.slow  # shares the cohort run
def test_unaltered_superpatches_score_alike_in_both_scans(cohort):
    """The anomalies only move their own superpatches: the other two score the same in both copies (the
    reference moves a little with the cohort's windows)."""
    by_key = {(r["scan"], r["superpatch"]): r["score"] for r in cohort["result"]["ranking"]}
    for index in (1, 3):
        assert abs(by_key[(cohort["altered"], index)] - by_key[(cohort["clean"], index)]) < 0.5


@pytest.mark.slow  # shares the cohort run
def test_result_contract_and_progress(cohort):
    from napari_nemesis.cli._common import json_safe

    res = cohort["result"]
    json.dumps(json_safe(res), allow_nan=False)
    for key in ("ranking", "scans", "mask", "ratio", "seeds", "checkpoint", "score_definition", "reference",
                "min_inside", "window_voxels", "device"):
        assert key in res, key
    from napari_nemesis.model.masking import DEFAULT_STRATEGY
    from napari_nemesis.weights import default_checkpoint_path

    assert res["mask"] == DEFAULT_STRATEGY and res["ratio"] == 0.75 and res["seeds"] == [0, 1, 2]
    assert res["checkpoint"] == str(default_checkpoint_path())
    scores = [r["score"] for r in res["ranking"]]
    assert len(scores) == 8 and all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    for row in res["ranking"]:
        assert {"scan", "superpatch", "score", "psnr", "baseline_psnr", "inside_fraction", "grid_zyx", "bbox_zyx",
                "centre_zyx", "hotspot_zyx", "hotspot_world_xyz"} <= set(row)
        assert 0 < row["inside_fraction"] <= 1 and row["psnr"] > 0 and row["baseline_psnr"] > 0
    kinds = {e["event"] for e in cohort["events"]}
    assert {"stage", "start", "step"} <= kinds
    steps = [e for e in cohort["events"] if e["event"] == "step"]
    assert len(steps) == 2 * 4 * 3 and steps[-1]["step"] == steps[-1]["total"] == 12


@pytest.mark.slow  # ~10-20 s: 2 scans x 4 superpatches x 3 seeds with the bundled weights
def test_a_dense_ball_in_the_liver_ranks_above_the_lung_bases(tmp_path):
    """The sample CT's upper 128 slices: all four superpatches hold lung bases (air against the diaphragm,
    ribs and heart), the first also the liver. A 3 cm +800 HU ball in the liver outranks every one of them,
    in the altered scan and in the clean copy."""
    from scipy.ndimage import distance_transform_edt

    from napari_nemesis.data import read_volume
    from napari_nemesis.data.preprocess import resample
    from napari_nemesis.data.spacing import recorded_spacing
    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.train.triage import triage
    from napari_nemesis.weights import load_default_model

    model = load_default_model()
    spacing = tuple(recorded_spacing(model)[0])
    ct = read_volume(sample_ct_path())
    hu = resample(ct.array, ct.spacing, spacing, order=1)[-128:].astype(np.float32)
    vol = volume_from_array(hu, spacing_zyx=spacing)
    clean = write_volume(hu, tmp_path / "upper.nii.gz", reference=vol)
    ball_at = _placed(distance_transform_edt(hu > -300, sampling=spacing), (64, 64, 64))
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    inside = ((z - ball_at[0]) * spacing[0]) ** 2 + ((y - ball_at[1]) * spacing[1]) ** 2 + \
        ((x - ball_at[2]) * spacing[2]) ** 2 <= RADIUS_MM ** 2
    altered = write_volume(np.where(inside, hu + 800.0, hu), tmp_path / "upper_ball.nii.gz", reference=vol)
    ranking = triage([clean, altered], model, seeds=3, device="cpu")["ranking"]
    first, second = ranking[0], ranking[1]
    assert (first["scan"], first["superpatch"]) == (str(altered), 0), [(r["scan"], r["superpatch"], r["score"])
                                                                      for r in ranking]
    assert first["score"] > second["score"] + 1.0
    assert np.abs(np.asarray(first["hotspot_zyx"]) - np.asarray(ball_at)).max() <= 16


# ---- geometry, sources and the command line, on a tiny random model --------------------------------------
@pytest.fixture
def tiny(tiny_checkpoint, tmp_path):
    from napari_nemesis.model import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", extra={"spacing_zyx": [2.0, 2.0, 2.0]})
    return load_checkpoint(ckpt), ckpt


def _scan(path, shape=(9, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    hu = np.where((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (shape[1] / 2.5) ** 2, 40.0, -1000.0)
    hu = (hu + rng.normal(0, 20, shape)).astype(np.float32)
    vol = volume_from_array(hu, spacing_zyx=(2.0, 2.0, 2.0))
    return write_volume(hu, path, reference=vol)


def test_superpatches_mostly_in_the_padding_are_not_ranked(tiny, tmp_path):
    from napari_nemesis.train.triage import triage

    model, _ = tiny
    scan = _scan(tmp_path / "a.nii.gz", shape=(9, 16, 16))  # 8^3 superpatches: z row 1 holds 1 slice of 8
    res = triage([scan], model, seeds=1, device="cpu")
    rows = res["ranking"]
    assert len(rows) == 2 * 2 * 2
    scored = [r for r in rows if r["score"] is not None]
    unscored = [r for r in rows if r["score"] is None]
    assert {r["grid_zyx"][0] for r in unscored} == {1} and len(unscored) == 4
    assert rows[: len(scored)] == scored  # unscored ones last
    assert all("inside" in r["reason"] for r in unscored)
    assert all(r["inside_fraction"] == pytest.approx(1 / 8) for r in unscored)


def test_sources_files_folders_and_projects(tiny, tmp_path):
    from napari_nemesis.labels.project import LabelProject
    from napari_nemesis.train.cohort import cohort_scans

    a = _scan(tmp_path / "scans" / "a.nii.gz")
    b = _scan(tmp_path / "scans" / "b.nii.gz", seed=1)
    (tmp_path / "scans" / "notes.txt").write_text("not a scan")
    project = LabelProject.open(tmp_path / "project", create=True, superpatch=8, spacing_zyx=(2.0, 2.0, 2.0))
    project.add(b)
    found = cohort_scans([tmp_path / "scans", a, tmp_path / "project"])
    assert [s.path.name for s in found] == ["a.nii.gz", "b.nii.gz"]  # each file once, in order
    only_project = cohort_scans([tmp_path / "project"])
    assert only_project[0].scan_id == "b" and only_project[0].project == tmp_path / "project"
    with pytest.raises(NemesisInputError, match="notes.txt: not a scan"):
        cohort_scans([tmp_path / "scans" / "notes.txt"])
    with pytest.raises(NemesisInputError, match="missing.nii.gz: no such"):
        cohort_scans([tmp_path / "missing.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NemesisInputError, match="no scans"):
        cohort_scans([tmp_path / "empty"])


def test_project_scans_carry_their_id_and_prepared_scans_are_used_as_they_are(tiny, tmp_path):
    from napari_nemesis.labels.project import LabelProject
    from napari_nemesis.train.scan import prepare_for_model
    from napari_nemesis.train.triage import triage

    model, _ = tiny
    a = _scan(tmp_path / "a.nii.gz", shape=(16, 16, 16))
    project = LabelProject.open(tmp_path / "p", create=True, superpatch=8, spacing_zyx=(2.0, 2.0, 2.0))
    project.add(a)
    res = triage([tmp_path / "p", prepare_for_model(a, model)], model, seeds=1, device="cpu")
    ids = {r.get("scan_id") for r in res["ranking"]}
    assert ids == {"a", None} and len(res["scans"]) == 2


def test_cancel_and_bad_settings(tiny, tmp_path):
    from napari_nemesis.train.triage import triage

    model, _ = tiny
    scan = _scan(tmp_path / "a.nii.gz")
    with pytest.raises(NemesisCancelled):
        triage([scan], model, seeds=1, device="cpu", cancel=lambda: True)
    with pytest.raises(NemesisInputError, match="mask strategy"):
        triage([scan], model, strategy="nosuch")
    with pytest.raises(NemesisInputError, match="seeds"):
        triage([scan], model, seeds=0)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "napari_nemesis.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_triage_json_table_and_errors(tiny, tmp_path):
    _, ckpt = tiny
    folder = tmp_path / "scans"
    _scan(folder / "a.nii.gz", shape=(16, 16, 16))
    _scan(folder / "b.nii.gz", shape=(16, 16, 16), seed=1)
    out = _cli("triage", folder, "--checkpoint", ckpt, "--seeds", "1", "--device", "cpu", "--json", "--out",
               tmp_path / "out")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["ranking"]) == 16 and res["seeds"] == [0] and res["checkpoint"] == str(ckpt)
    assert json.loads((tmp_path / "out" / "triage.json").read_text())["ranking"] == res["ranking"]
    table = _cli("triage", folder, "--checkpoint", ckpt, "--seeds", "1", "--device", "cpu", "--top", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[1].split()[:2] == ["rank", "scan"] and len(lines) == 1 + 1 + 3 + 1
    bad = _cli("triage", tmp_path / "missing.nii.gz", "--checkpoint", ckpt)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing.nii.gz" in bad.stderr
    assert _cli("triage", folder, "--mask", "nosuch").returncode == 2


def test_reconstruction_without_ssim_scores_the_same_errors(tiny, tmp_path):
    """``iter_reconstruction(ssim=False)`` (what triage streams) skips only the SSIM."""
    from napari_nemesis.train.scan import iter_reconstruction, prepare_for_model

    model, _ = tiny
    prepared = prepare_for_model(_scan(tmp_path / "a.nii.gz", shape=(16, 16, 16)), model)
    full = list(iter_reconstruction(prepared, model, seed=1, device="cpu"))
    fast = list(iter_reconstruction(prepared, model, seed=1, device="cpu", ssim=False))
    for a, b in zip(full, fast):
        np.testing.assert_array_equal(a.recon, b.recon)
        assert a.metrics["psnr_masked"] == b.metrics["psnr_masked"] and a.metrics["mse_masked"] == b.metrics["mse_masked"]
        assert a.metrics["ssim_masked"] is not None and b.metrics["ssim_masked"] is None and b.metrics["ssim_all"] is None
