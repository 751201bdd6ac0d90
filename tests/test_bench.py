"""The benchmark's pieces on the tiny preset: contract keys and sane values, never timings."""

import json
import math

import pytest
import torch

from napari_nemesis import bench


def _finite_positive(v):
    return isinstance(v, float) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    wd = tmp_path_factory.mktemp("bench")
    return bench.run_benchmark(
        quick=True, presets=["tiny"], heavy_presets=["tiny"], repeats=2,
        scan_sizes_xyz=[(64, 64, 32), (128, 128, 32), (192, 192, 48)],
        scan_jobs=[("infer", "tiny"), ("reconstruct", "tiny")], workdir=wd,
    )


def test_contract_keys_and_values(result):
    json.loads(json.dumps(result))  # JSON-able as it is
    for key in ("encoder_speed_ratio_vs_vit", "train_step_ratio_vs_vit", "encoder_mfu", "full_scan_seconds",
                "full_scan_peak_rss_mb", "scaling", "flops", "matmul_peak_gflops", "sampling_per_s", "threads",
                "torch_version", "device", "peer", "peer_train", "targets"):
        assert key in result, key
    assert result["device"] == "cpu" and result["threads"] == torch.get_num_threads()
    assert result["torch_version"] == torch.__version__
    assert _finite_positive(result["matmul_peak_gflops"]["fp32"])
    assert _finite_positive(result["encoder_speed_ratio_vs_vit"]["tiny"])
    assert _finite_positive(result["encoder_speed_ratio_vs_plain_sdpa_vit"]["tiny"])
    assert _finite_positive(result["train_step_ratio_vs_vit"]["tiny"])
    assert 0 < result["encoder_mfu"]["tiny"] < 2
    f = result["flops"]["tiny"]
    assert f["paper_gmacs"] == 31.0 and 0 < f["forward_gmacs"] < 1 and _finite_positive(f["forward_gflops_per_s"])
    runs = result["encoder"]["tiny"]["runs"]
    assert {"b1_fp32", "b4_fp32"} <= set(runs)
    for r in runs.values():
        assert len(r["nemesis"]["times_s"]) == 2


def test_whole_scan_runs_in_child_processes(result):
    for key in ("infer_tiny", "reconstruct_tiny"):
        assert _finite_positive(result["full_scan_seconds"][key])
        rss = result["full_scan_peak_rss_mb"][key]
        assert 50 < rss < 8192
    runs = result["full_scan"]["infer_tiny"]["runs"]
    assert [r["size_xyz"] for r in runs] == [[64, 64, 32], [128, 128, 32], [192, 192, 48]]
    sp = [r["superpatches"] for r in runs]
    assert sp == sorted(sp) and sp[-1] > sp[0]
    s = result["scaling"]["infer_tiny"]
    assert s["superpatches"] == sp and len(s["seconds"]) == 3 and "r2" in s
    assert all(r["process_seconds"] >= r["seconds"] for r in runs)


def test_sampling_rates(result):
    s = result["sampling_per_s"]
    assert _finite_positive(s["one_process"]) and _finite_positive(s["dataloader_2_workers"])


def test_targets_and_table(result, tmp_path):
    assert all(set(t) == {"value", "met"} for t in result["targets"].values())
    table = bench.format_table(result)
    assert "encoder (superpatches/s)" in table and "targets:" in table
    png = bench.plot_scaling(result, tmp_path / "s.png")
    assert png.stat().st_size > 1000


def test_linear_fit_and_synthetic_scan():
    fit = bench._linear_fit([1, 2, 3], [1.5, 2.5, 3.5])
    assert fit["seconds_per_superpatch"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    vol = bench.synthetic_scan((32, 24, 8))
    assert vol.shape == (8, 24, 32) and vol.dtype.name == "int16"
    assert vol.min() <= -800 and vol.max() >= 40


def test_cli_registers_bench():
    from napari_nemesis.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json", "--device", "cpu", "--out", "x"])
    assert args.quick and args.json and args.device == "cpu" and args.out == "x"
