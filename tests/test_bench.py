"""The benchmark's pieces on the tiny preset: contract keys and sane values, never timings; and its
structure: a package that never imports the CLI, sections that register themselves, a matplotlib plot."""

import json
import math
import subprocess
import sys

import pytest
import torch
from PIL import Image

from napari_nemesis import bench
from napari_nemesis.bench import sections
from napari_nemesis.errors import NemesisInputError


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


@pytest.mark.slow  # shares the ~50 s tiny benchmark run (2 busy cores)
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


@pytest.mark.slow  # shares the ~50 s tiny benchmark run (2 busy cores)
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


@pytest.mark.slow  # shares the ~50 s tiny benchmark run (2 busy cores)
def test_sampling_rates(result):
    s = result["sampling_per_s"]
    assert _finite_positive(s["one_process"]) and _finite_positive(s["dataloader_2_workers"])


@pytest.mark.slow  # shares the ~50 s tiny benchmark run (2 busy cores)
def test_targets_and_table(result, tmp_path):
    assert all(set(t) == {"value", "met"} for t in result["targets"].values())
    table = bench.format_table(result)
    assert "encoder (superpatches/s)" in table and "targets:" in table
    assert "whole scan" in table and "sampling (superpatches/s)" in table
    png = bench.plot_scaling(result, tmp_path / "s.png")
    assert png.stat().st_size > 1000


def test_linear_fit_and_synthetic_scan():
    fit = bench.linear_fit([1, 2, 3], [1.5, 2.5, 3.5])
    assert fit["seconds_per_superpatch"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)
    vol = bench.synthetic_scan((32, 24, 8))
    assert vol.shape == (8, 24, 32) and vol.dtype.name == "int16"
    assert vol.min() <= -800 and vol.max() >= 40


def test_patch_level_inference_is_timed_per_scan(tmp_path):
    """The whole-scan job ``infer_patch`` (in this process here): patch-level inference on a scan,
    its superpatches and patches counted, one organ's map painted and timed apart; a default job."""
    import inspect

    from napari_nemesis.bench.runner import run_benchmark
    from napari_nemesis.bench.whole_scan import run_child, table_lines, targets, write_synthetic_scan

    scan = write_synthetic_scan(tmp_path / "scan.nii.gz", (48, 40, 24))
    out = run_child({"task": "infer_patch", "preset": "tiny", "scan": str(scan), "device": "cpu", "threads": 1})
    assert out["task"] == "infer_patch" and out["superpatches"] >= 1
    assert out["patches"] >= out["superpatches"] and _finite_positive(out["seconds"])
    assert _finite_positive(out["map_seconds"]) and out["seconds_per_superpatch"] > 0
    res = {"full_scan": {"infer_patch_tiny": {"runs": [dict(out, size_xyz=[48, 40, 24])], **out,
                                              "size_xyz": [48, 40, 24]}}}
    assert any("patches; one organ's map" in line for line in table_lines(res))
    assert any(name.startswith("infer_patch_tiny peak RSS") for name, _, _ in targets(res))
    assert '("infer_patch", "small")' in inspect.getsource(run_benchmark)


def test_cli_registers_bench():
    from napari_nemesis.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json", "--device", "cpu", "--out", "x"])
    assert args.quick and args.json and args.device == "cpu" and args.out == "x"
    assert args.scans and args.sampling and args.plot_from is None
    args = build_parser().parse_args(["bench", "--no-scans", "--plot-from", "r.json"])
    assert not args.scans and args.plot_from == "r.json"


def test_bench_package_never_imports_the_cli_or_qt():
    # every module of the package, loaded in a fresh interpreter; building the parser and the CLI's
    # own import of bench.command must not pull in torch
    code = (
        "import importlib, pkgutil, sys\n"
        "import napari_nemesis.bench.command as c\n"
        "c.build_arg_parser()\n"
        "assert 'torch' not in sys.modules, 'the argument parser imported torch'\n"
        "import napari_nemesis.bench as b\n"
        "names = [m.name for m in pkgutil.iter_modules(b.__path__, b.__name__ + '.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "for n in b.__all__: getattr(b, n)\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] == ['napari_nemesis', 'cli']\n"
        "       or m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6')]\n"
        "print(len(names), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_modules, bad = out.stdout.split(maxsplit=1)
    assert int(n_modules) >= 10 and bad.strip() == "[]"


SMALL_RESULT = {
    "device": "cpu", "processor": "test CPU", "threads": 2, "full_scan_spacing_xyz_mm": [0.8, 0.8, 2.5],
    "scaling": {
        "infer_small": {"sizes_xyz": [[256, 256, 64], [512, 512, 128]], "superpatches": [4, 18],
                        "seconds": [0.6, 2.3], "intercept_s": 0.11, "seconds_per_superpatch": 0.12, "r2": 1.0},
        "reconstruct_small": {"sizes_xyz": [[512, 512, 128]], "superpatches": [18], "seconds": [7.5]},
    },
}


def _is_matplotlib_png(path):
    with Image.open(path) as im:
        im.load()
        return im.format == "PNG" and im.info.get("Software", "").startswith("Matplotlib"), im.size


def test_scaling_plot_is_drawn_by_matplotlib(tmp_path):
    png = bench.plot_scaling(SMALL_RESULT, tmp_path / "sub" / "scaling.png", "a title")
    drawn_by_mpl, size = _is_matplotlib_png(png)
    assert drawn_by_mpl and size[0] >= 600 and size[1] >= 400


def test_plot_from_saved_json(tmp_path):
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(SMALL_RESULT))
    assert bench.main(["--plot-from", str(saved), "--out", str(tmp_path / "re.png")]) == 0
    assert _is_matplotlib_png(tmp_path / "re.png")[0]
    assert bench.main(["--plot-from", str(saved), "--out", str(tmp_path / "folder")]) == 0
    assert _is_matplotlib_png(tmp_path / "folder" / "scaling.png")[0]

    no_scans = tmp_path / "no_scans.json"
    no_scans.write_text(json.dumps({"device": "cpu"}))
    args = bench.build_arg_parser().parse_args(["--plot-from", str(no_scans), "--out", str(tmp_path)])
    with pytest.raises(NemesisInputError, match="no_scans.json"):
        bench.run_from_args(args)
    assert bench.main(["--plot-from", str(tmp_path / "missing.json"), "--out", str(tmp_path)]) == 2


def test_section_switches():
    names = [s.name for s in sections.enabled_sections({})]
    assert names == ["peers", "scans", "sampling"]
    assert [s.name for s in sections.enabled_sections({"scans": False})] == ["peers"]  # sampling needs scans
    assert [s.name for s in sections.enabled_sections({"sampling": False})] == ["peers", "scans"]
    with pytest.raises(TypeError, match="nosuch"):
        bench.run_benchmark(nosuch=True)


FAKE_SECTION = '''
def run(ctx, res):
    res["fake_seconds"] = 0.25 * ctx.repeats


def table_lines(res):
    return [f"fake section: {res['fake_seconds']:.2f} s"] if "fake_seconds" in res else []


def targets(res):
    return [("fake < 1 s", res["fake_seconds"], res["fake_seconds"] < 1)] if "fake_seconds" in res else []
'''


def test_a_new_section_plugs_in_with_one_registry_entry(tmp_path, monkeypatch):
    """What the viewer's UI section will do: a module and one ``Section`` give the flag, the run,
    the table lines and the targets."""
    (tmp_path / "fake_bench_section.py").write_text(FAKE_SECTION)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sections, "SECTIONS", (
        *[s for s in sections.SECTIONS if s.name != "peers"],  # keep the test cheap
        sections.Section("fake", "fake_bench_section", False, "run the fake section"),
    ))
    args = bench.build_arg_parser().parse_args(["--fake", "--no-scans"])
    assert args.fake is True and not bench.build_arg_parser().parse_args([]).fake

    off = bench.run_benchmark(quick=True, scans=False, workdir=tmp_path / "wd")
    assert "fake_seconds" not in off and off["targets"] == {}
    res = bench.run_benchmark(quick=True, repeats=2, scans=False, fake=True, workdir=tmp_path / "wd")
    assert res["fake_seconds"] == 0.5 and "full_scan" not in res and "sampling" not in res
    assert res["targets"] == {"fake < 1 s": {"value": 0.5, "met": True}}
    assert "fake section: 0.50 s" in bench.format_table(res)
