"""Prepared scans and streamed superpatch reconstruction (train/scan.py): what the viewer and CLI share."""

import numpy as np
import pytest
import torch

from napari_nemesis.data import read_volume, volume_from_array, write_volume
from napari_nemesis.errors import NemesisCancelled, NemesisInputError
from napari_nemesis.model import build_model
from napari_nemesis.train.scan import (
    ScanReconstruction,
    iter_reconstruction,
    prepare_for_model,
    prepare_scan,
    reconstruct_scan,
)

from conftest import CT, needs_ct

SPACING = (4.0, 4.0, 4.0)  # coarse: the synthetic scan below is 2 x 2 x 2 superpatches of 32^3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    rng = np.random.default_rng(0)
    z, y, x = np.indices((50, 60, 70))
    # a bright ball in noisy soft tissue: a scan with structure, not just noise
    hu = np.where((z - 25) ** 2 + (y - 30) ** 2 + (x - 35) ** 2 < 20**2, 150.0, 20.0) + rng.normal(0, 40, z.shape)
    vol = volume_from_array(hu.astype(np.float32), spacing_zyx=(3.0, 2.5, 2.0), file_orientation="LPS")
    scan = write_volume(vol, root / "ball.nii.gz", reference=vol)
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=32, patch=8, depth=1).eval()
    return scan, model, prepare_scan(scan, SPACING, superpatch=32)


def test_prepare_scan_reads_and_preprocesses_once(setup):
    scan, model, prepared = setup
    assert prepared.grid.n == 8 and prepared.grid.superpatch == 32 and prepared.grid.mapping is prepared.pre
    from_volume = prepare_scan(read_volume(scan), SPACING, superpatch=32)
    np.testing.assert_array_equal(from_volume.pre.array, prepared.pre.array)
    np.testing.assert_array_equal(prepared.superpatch(7), prepared.grid.superpatch_of(prepared.pre.array, 7))
    assert prepared.name == "ball.nii.gz"


def test_prepare_for_model_follows_the_checkpoints_spacing_and_superpatch(setup, tmp_path):
    from napari_nemesis.data import DEFAULT_SPACING_ZYX
    from napari_nemesis.model import load_checkpoint, save_checkpoint

    scan, model, _ = setup
    fresh = prepare_for_model(scan, model)
    assert fresh.pre.spacing_zyx == DEFAULT_SPACING_ZYX and fresh.spacing_source == "default"
    assert fresh.grid.superpatch == 32
    trained = load_checkpoint(save_checkpoint(model, tmp_path / "m.safetensors", extra={"spacing_zyx": [5.0, 4.0, 4.0]}))
    recorded = prepare_for_model(scan, trained)
    assert recorded.pre.spacing_zyx == (5.0, 4.0, 4.0) and recorded.spacing_source == "checkpoint"
    given = prepare_for_model(scan, trained, SPACING)
    assert given.pre.spacing_zyx == SPACING and given.spacing_source == "given"


def test_a_superpatch_alone_equals_the_same_superpatch_in_the_whole_scan(setup):
    _, model, prepared = setup
    whole = {r.index: r for r in iter_reconstruction(prepared, model, "dual", 0.75, noise=0.03, seed=7, batch=3,
                                                     device="cpu")}
    assert sorted(whole) == list(range(8))
    for i in (0, 5):
        (alone,) = iter_reconstruction(prepared, model, "dual", 0.75, noise=0.03, seed=7, indices=[i], device="cpu")
        ref = whole[i]
        assert alone.index == i and alone.box == ref.box
        for key in ("clean", "noisy", "masked", "masked_voxels"):
            np.testing.assert_array_equal(getattr(alone, key), getattr(ref, key))
        np.testing.assert_allclose(alone.recon, ref.recon, atol=1e-6)
        assert alone.metrics == pytest.approx(ref.metrics, rel=1e-5)
    other = next(iter_reconstruction(prepared, model, "dual", 0.75, noise=0.03, seed=8, indices=[5], device="cpu"))
    assert not np.array_equal(other.masked_voxels, whole[5].masked_voxels)


def test_each_superpatch_is_cropped_to_the_scan_and_scored_on_its_own(setup):
    _, model, prepared = setup
    for r in iter_reconstruction(prepared, model, "plane", 0.75, noise=0.02, seed=1, indices=[0, 7], device="cpu"):
        assert r.box == prepared.grid.box(r.index, clip=True)
        for key in ("clean", "noisy", "masked", "recon", "error", "masked_voxels"):
            assert getattr(r, key).shape == r.box.shape, key
        np.testing.assert_array_equal(r.clean, prepared.pre.array[r.box.slices])
        assert r.masked_voxels.dtype == bool and r.masked_voxels.any()
        if r.index == 0:  # a whole superpatch inside the scan: 25 % of it visible
            assert r.masked_voxels.mean() == pytest.approx(0.75)
        assert np.all(r.masked[r.masked_voxels] == 0)
        np.testing.assert_array_equal(r.masked[~r.masked_voxels], r.noisy[~r.masked_voxels])
        np.testing.assert_array_equal(r.recon[~r.masked_voxels], r.noisy[~r.masked_voxels])  # visible: copied
        assert r.noisy.std() > 0 and not np.array_equal(r.noisy, r.clean)
        np.testing.assert_array_equal(r.error, np.abs(r.recon - r.clean))
        # PSNR (ReconMetrics' running sums) and the error-map MSE (this module) agree
        assert r.metrics["psnr_masked"] == pytest.approx(10 * np.log10(1 / r.metrics["mse_masked"]), rel=1e-6)
        assert r.metrics["psnr_all"] == pytest.approx(10 * np.log10(1 / r.metrics["mse_all"]), rel=1e-6)
        assert r.device == "cpu"


def test_assembled_stream_equals_reconstruct_scan(setup, tmp_path):
    scan, model, prepared = setup
    events = []
    stream = iter_reconstruction(prepared, model, "axis", 0.6, noise=0.01, seed=3, batch=4, device="cpu",
                                 progress=events.append)
    items = list(stream)
    assembled = ScanReconstruction(prepared).extend(items)
    ref = reconstruct_scan(scan, model, "axis", 0.6, noise=0.01, seed=3, spacing_zyx=SPACING, batch=2, device="cpu",
                           out_dir=tmp_path / "ref")
    ours = assembled.metrics()
    for key in ("psnr_masked", "psnr_all", "ssim_masked", "ssim_all"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-6), key
    files = assembled.write(tmp_path / "ours", error_map=True)
    assert set(files) == set(ref["files"]) | {"error_map"}
    for key, path in ref["files"].items():
        np.testing.assert_allclose(read_volume(files[key]).array, read_volume(path).array, atol=1e-3, err_msg=key)
    assert [e["event"] for e in events] == ["start"] + ["step"] * 8
    assert [e["superpatch"] for e in events[1:]] == list(range(8))
    # the error map: one masked-patch MSE per superpatch, painted on that superpatch's scan voxels
    # (NaN where a superpatch has no masked voxel inside the scan, e.g. a corner one token wide)
    assert assembled.error_grid().shape == prepared.grid.grid_shape
    emap = read_volume(files["error_map"]).array
    for r in items:
        on_scan = emap[prepared.grid.box_original(r.index).slices]
        if r.masked_voxels.any():
            expected = np.mean((r.recon - r.clean)[r.masked_voxels].astype(np.float64) ** 2)
            assert assembled.mse_masked[r.index] == pytest.approx(expected, rel=1e-6)
            np.testing.assert_allclose(on_scan, expected, rtol=1e-6)
        else:
            assert np.isnan(assembled.mse_masked[r.index]) and not on_scan.any()
    assert np.isfinite(assembled.mse_masked).sum() >= 6


def test_a_partial_stream_fills_only_its_superpatches(setup):
    _, model, prepared = setup
    part = ScanReconstruction(prepared, keys=("recon", "masked_voxels"))
    items = list(iter_reconstruction(prepared, model, "random", 0.75, indices=[2], device="cpu"))
    part.extend(items)
    box = prepared.grid.box(2, clip=True)
    np.testing.assert_array_equal(part.arrays["recon"][box.slices], items[0].recon)
    rest = np.ones(prepared.pre.shape, dtype=bool)
    rest[box.slices] = False
    assert not part.arrays["recon"][rest].any() and not part.arrays["masked_voxels"][rest].any()
    assert np.isnan(part.mse_masked).sum() == 7 and part.mse_masked[2] == items[0].metrics["mse_masked"]
    assert part.metrics()["psnr_masked"] == pytest.approx(items[0].metrics["psnr_masked"])
    with pytest.raises(NemesisInputError, match="were not assembled"):
        part.write("unused")


def test_bad_arguments_fail_at_the_call_and_cancel_stops_the_stream(setup):
    _, model, prepared = setup
    with pytest.raises(NemesisInputError, match="ball.nii.gz: superpatch 8 is out of range 0..7"):
        iter_reconstruction(prepared, model, indices=[1, 8])
    with pytest.raises(NemesisInputError, match="unknown mask strategy"):
        iter_reconstruction(prepared, model, strategy="tube")
    with pytest.raises(NemesisInputError, match="ratio"):
        iter_reconstruction(prepared, model, ratio=1.0)
    other = build_model("tiny")  # 64^3 superpatches
    with pytest.raises(NemesisInputError, match="superpatch=64"):
        iter_reconstruction(prepared, other)
    with pytest.raises(NemesisCancelled):
        next(iter_reconstruction(prepared, model, device="cpu", cancel=lambda: True))


@pytest.mark.slow
@needs_ct
def test_real_ct_one_superpatch_with_the_bundled_model():
    from napari_nemesis.weights import load_default_model

    model = load_default_model()
    prepared = prepare_scan(CT, superpatch=model.cfg.superpatch)
    i = prepared.grid.n // 2
    (r,) = iter_reconstruction(prepared, model, "dual", 0.75, noise=0.01, seed=0, indices=[i], device="cpu")
    assert r.recon.shape == prepared.grid.box(i, clip=True).shape
    assert r.metrics["psnr_masked"] < r.metrics["psnr_all"]  # visible patches are copied from the input
    assert 0 < r.metrics["ssim_masked"] <= 1 and r.metrics["mse_masked"] > 0


def test_the_viewer_core_modules_import_no_qt():
    from test_package import _modules_loaded_by

    modules = "napari_nemesis.train.scan, napari_nemesis.train.attention, napari_nemesis.cli.explain_cmds"
    assert _modules_loaded_by(modules, ("napari", "qtpy", "PyQt6", "magicgui")) == []


def test_reconstruct_scan_of_one_superpatch_writes_one_superpatch_as_the_whole_scan_run_does(setup, tmp_path):
    scan, model, prepared = setup
    kw = dict(strategy="dual", ratio=0.75, noise=0.02, seed=4, spacing_zyx=SPACING, device="cpu")
    one = reconstruct_scan(scan, model, out_dir=tmp_path / "one", indices=[0], **kw)
    whole = reconstruct_scan(scan, model, out_dir=tmp_path / "whole", **kw)
    assert one["indices"] == [0] and one["superpatches"] == 8 and one["device"] == "cpu"
    assert one["spacing_zyx"] == list(SPACING) and one["spacing_source"] == "given"
    (row,) = one["per_superpatch"]
    assert row["superpatch"] == 0 and row["grid_zyx"] == [0, 0, 0] and row["psnr_masked"] == one["psnr_masked"]
    assert set(one["files"]) == set(whole["files"])
    # inside superpatch 0 (a margin away from where resampling mixes in its neighbours) the files agree
    box = prepared.grid.box_original(0)
    inner = tuple(slice(a + 2, b - 2) for a, b in zip(*box))
    far = np.ones(prepared.volume.shape, dtype=bool)  # the other superpatches' voxels, 2 voxels away
    far[tuple(slice(max(a - 2, 0), b + 2) for a, b in zip(*box))] = False
    for key in one["files"]:
        a, b = read_volume(one["files"][key]).array, read_volume(whole["files"][key]).array
        np.testing.assert_allclose(a[inner], b[inner], atol=1e-3, err_msg=key)
        np.testing.assert_allclose(a[far], 0.0 if key == "abs_error" else -175.0, atol=1e-3, err_msg=key)
