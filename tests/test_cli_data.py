"""``nemesis info``, ``nemesis phantom`` and ``nemesis prepare``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nemesis import cli
from napari_nemesis.data import (
    ORGAN_NAMES,
    SuperpatchGrid,
    open_cache,
    preprocess,
    presence_labels,
    read_labels,
    read_volume,
    resample,
)

from conftest import CT, CT_LABELS, needs_ct  # noqa: E402


@pytest.fixture
def run(monkeypatch, capsys):
    """Run ``nemesis`` with only this module's commands registered (independent of the others)."""
    assert "napari_nemesis.cli.data_cmds" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["napari_nemesis.cli.data_cmds"])

    def _run(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@needs_ct
def test_info_real_ct_json(run):
    code, out, _ = run("info", CT, "--labels", CT_LABELS, "--json")
    assert code == 0
    rep = json.loads(out.strip().splitlines()[-1])
    for key in ("shape_zyx", "spacing_zyx", "orientation", "hu_min", "hu_max", "grid", "superpatches"):
        assert key in rep
    assert rep["shape_zyx"] == [112, 101, 122] and rep["spacing_zyx"] == [3.0, 3.0, 3.0]
    assert rep["orientation"] == "RAS" and (rep["hu_min"], rep["hu_max"]) == (-1207.0, 3382.0)
    assert rep["grid"]["preprocessed_shape_zyx"] == [168, 202, 244]
    assert rep["grid"]["grid_shape_zyx"] == [2, 2, 2] and len(rep["superpatches"]) == 8
    vol = read_volume(CT)
    pre = preprocess(vol)
    grid = SuperpatchGrid.for_preprocessed(pre, 128)
    lab = resample(read_labels(CT_LABELS, vol), vol.spacing, pre.spacing_zyx, order=0)
    expected = presence_labels(lab, grid)
    got = np.array([[sp["presence"][n] for n in ORGAN_NAMES] for sp in rep["superpatches"]])
    np.testing.assert_array_equal(got, expected)
    code, text, _ = run("info", CT, "--labels", CT_LABELS)
    assert code == 0 and "2 x 2 x 2 = 8 superpatches" in text and "liver" in text


def test_phantom_prepare_and_errors(run, tmp_path):
    code, out, _ = run("phantom", tmp_path / "ph", "--cases", 3, "--seed", 1, "--shape", 20, 28, 28, "--json")
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res["files"] == 6 and res["bytes"] > 0
    code, out, _ = run("prepare", tmp_path / "ph", "--out", tmp_path / "cache", "--spacing", 14, 14, 16,
                       "--superpatch", 8, "--json")
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res["cases"] == 3 and len(res["prepared"]) == 3
    assert res["spacing_zyx"] == [16.0, 14.0, 14.0]  # given x y z on the command line
    assert open_cache(tmp_path / "cache").spacing_zyx == (16.0, 14.0, 14.0)
    code, out, _ = run("prepare", tmp_path / "ph", "--out", tmp_path / "cache", "--spacing", 14, 14, 16,
                       "--superpatch", 8, "--json")
    assert json.loads(out.strip().splitlines()[-1])["skipped"] == ["0001", "0002", "0003"]
    code, out, err = run("info", tmp_path / "missing.nii.gz")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "missing.nii.gz" in err and "no such file" in err
    code, _, err = run("prepare", tmp_path / "ph", "--out", tmp_path / "c2", "--spacing", 1, 2)
    assert code == 2 and "--spacing" in err
