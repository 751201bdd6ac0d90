"""The demo and the viewer's benchmark section: a real screenshot, the stall measurement's keys."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest


def test_ui_section_switch_table_and_target():
    from napari_nemesis.bench import sections, ui
    from napari_nemesis.bench.command import build_arg_parser

    assert "ui" not in [s.name for s in sections.enabled_sections({})]  # off unless asked for
    assert "ui" in [s.name for s in sections.enabled_sections({"ui": True})]
    assert build_arg_parser().parse_args(["--ui", "--json"]).ui is True
    res = {"ui": {}, "ui_max_stall_ms": 80.0, "ui_stall_p99_ms": 40.0, "ui_ticks": 300, "ui_frame_ms": 30.0,
           "ui_probabilities_seconds": 2.0, "ui_recon_seconds": 6.0, "ui_rerun_max_stall_ms": 50.0,
           "ui_rerun_stall_p99_ms": 30.0, "ui_rerun_probabilities_seconds": 1.0, "ui_rerun_recon_seconds": 5.0,
           "ui_device": "cpu", "ui_superpatches": 8, "ui_scan": "abdomen_ct"}
    assert ui.targets(res) == [("viewer event-loop stall < 100 ms", 80.0, True)]
    assert ui.targets({**res, "ui_max_stall_ms": 250.0})[0][2] is False
    assert "worst stall 80 ms" in "\n".join(ui.table_lines(res))
    assert ui.table_lines({"ui": {"skipped": "no display and no Xvfb"}}) == ["viewer: skipped (no display and no Xvfb)"]
    assert ui.targets({}) == [] and ui.table_lines({}) == []
    # the keys that explain a stall, when a run has them
    lines = "\n".join(ui.table_lines({**res, "ui_max_stall_events": "MetaCall:QObject, UpdateRequest:_QtMainWindow",
                                     "ui_frame_results_ms": 70.0, "ui_open_max_stall_ms": 300.0}))
    assert "handled: MetaCall:QObject, UpdateRequest:_QtMainWindow" in lines
    assert "results shown: 70 ms" in lines and "worst stall 300 ms" in lines


@pytest.mark.gui
@pytest.mark.slow
def test_ui_measurement_runs_both_jobs(tmp_path, monkeypatch):
    import test_viewer_gui as g

    from napari_nemesis.bench.ui import measure_ui

    monkeypatch.setenv("NEMESIS_CONFIG_DIR", str(tmp_path / "config"))
    weights = g.make_tiny_weights(tmp_path)
    res = measure_ui(scan=g._scan_volume(), weights=weights)
    for key in ("ui_max_stall_ms", "ui_recon_seconds", "ui_probabilities_seconds", "ui_rerun_max_stall_ms",
                "ui_open_max_stall_ms", "ui_frame_results_ms", "ui_ortho_max_stall_ms", "ui_ortho_enable_seconds"):
        assert np.isfinite(res[key]) and res[key] >= 0, key
    assert isinstance(res["ui_max_stall_events"], str)
    # default settings, the user's neither read nor written (the weights picked here stay in the run)
    assert not (tmp_path / "config" / "viewer.json").exists()
    assert os.environ["NEMESIS_CONFIG_DIR"] == str(tmp_path / "config")
    assert res["ui_ticks"] > 10 and res["ui_superpatches"] == 12
    assert res["ui_reconstruction"]["psnr_masked"] is not None


@pytest.mark.gui
@pytest.mark.slow
def test_demo_screenshot_is_not_blank(tmp_path):
    shot = tmp_path / "demo.png"
    env = {**os.environ, "NEMESIS_CONFIG_DIR": str(tmp_path / "config")}
    out = subprocess.run([sys.executable, "-m", "napari_nemesis.cli", "demo", "--screenshot", str(shot)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"screenshot: {shot}" in out.stdout
    import matplotlib.image as mpimg

    image = mpimg.imread(str(shot))
    assert image.shape[0] > 400 and image.shape[1] > 600
    rgb = (image[..., :3] * 255).astype(np.uint8)
    colours = np.unique(rgb.reshape(-1, 3)[:: 7], axis=0)
    assert len(colours) > 200  # a CT slice, widgets and overlays, not an empty canvas
    h, w = rgb.shape[:2]
    canvas = rgb[h // 4: 3 * h // 4, w // 3: 2 * w // 3]
    assert canvas.std() > 20  # the middle of the window holds an image with contrast
