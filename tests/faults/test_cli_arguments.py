"""Arguments are checked while parsing, before anything is loaded; warnings and JSON stay one line
and strict."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from napari_nemesis import cli

BAD = [
    (["reconstruct", "s.nii.gz", "--out", "o", "--ratio", "1.5"], "--ratio"),
    (["reconstruct", "s.nii.gz", "--out", "o", "--ratio", "nan"], "--ratio"),
    (["reconstruct", "s.nii.gz", "--out", "o", "--noise", "inf"], "--noise"),
    (["reconstruct", "s.nii.gz", "--out", "o", "--seed", "-1"], "--seed"),
    (["reconstruct", "s.nii.gz", "--out", "o", "--batch", "0"], "--batch"),
    (["reconstruct", "s.nii.gz", "--out", "o", "--superpatch", "-2"], "--superpatch"),
    (["infer", "s.nii.gz", "--spacing", "0", "1", "1"], "--spacing"),
    (["infer", "s.nii.gz", "--spacing", "inf", "1", "1"], "--spacing"),
    (["infer", "s.nii.gz", "--checkpoint", ""], "--checkpoint"),
    (["infer", "s.nii.gz", "--probe", " "], "--probe"),
    (["pretrain", "d", "--out", "r", "--clip", "nan"], "--clip"),
    (["pretrain", "d", "--out", "r", "--clip", "0"], "--clip"),
    (["pretrain", "d", "--out", "r", "--lr", "-1"], "--lr"),
    (["pretrain", "d", "--out", "r", "--steps", "0"], "--steps"),
    (["pretrain", "d", "--out", "r", "--mask-ratio", "1"], "--mask-ratio"),
    (["pretrain", "d", "--out", "r", "--weight-decay", "nan"], "--weight-decay"),
    (["pretrain", "d", "--out", "r", "--warmup", "-1"], "--warmup"),
    (["pretrain", "d", "--out", "r", "--log-every", "0"], "--log-every"),
    (["pretrain", "d", "--out", "r", "--init", ""], "--init"),
    (["probe", "d", "--epochs", "0"], "--epochs"),
    (["probe", "d", "--lr", "nan"], "--lr"),
    (["info", "s.nii.gz", "--superpatch", "4096"], "--superpatch"),
    (["prepare", "d", "--out", "c", "--superpatch", "0"], "--superpatch"),
    (["phantom", "o", "--shape", "0", "8", "8"], "--shape"),
    (["phantom", "o", "--seed", "-3"], "--seed"),
    (["attention", "s.nii.gz", "--superpatch", "-1", "--token", "0", "0", "0"], "--superpatch"),
    (["flops", "--superpatch", "0"], "--superpatch"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_fail_while_parsing(argv, flag, capsys, monkeypatch):
    """Nothing is loaded: reading a scan or a checkpoint here would fail the test."""
    import napari_nemesis.data.io as io
    import napari_nemesis.model as model

    def boom(*a, **k):
        raise AssertionError("loaded something before checking the arguments")

    monkeypatch.setattr(io, "read_volume", boom)
    monkeypatch.setattr(model, "load_checkpoint", boom)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nemesis {argv[0]}: error: argument {flag}"), err
    assert "Traceback" not in err and "usage:" not in err


def test_good_arguments_parse():
    args = cli.build_parser().parse_args(["reconstruct", "s.nii.gz", "--out", "o", "--ratio", "0.5", "--noise",
                                          "0.03", "--spacing", "1.5", "1.5", "2", "--seed", "7"])
    assert (args.ratio, args.noise, args.seed, args.spacing) == (0.5, 0.03, 7, ["1.5", "1.5", "2"])
    args = cli.build_parser().parse_args(["--max-voxels", "2e9", "info", "s", "--spacing", "native"])
    assert args.max_voxels == 2e9 and args.spacing == ["native"]


def test_warnings_print_as_one_line(tmp_path, capsys):
    import nibabel as nib

    a = np.full((16, 16, 12), 1024, np.uint16)  # unsigned, no rescale: values that are not HU
    a[4:12, 4:12, 3:9] = 1100
    nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "u16.nii.gz"))
    code = cli.main(["info", str(tmp_path / "u16.nii.gz")])
    err = capsys.readouterr().err
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nemesis info: warning: ") and "do not look like HU" in lines[0]
    assert warnings.showwarning.__module__ == "warnings"  # restored after main


def test_json_output_is_strict(capsys):
    from napari_nemesis.cli._common import json_safe, print_json

    print_json({"psnr": float("inf"), "auroc": float("nan"), "v": np.float32("nan"), "a": np.array([1.0, np.inf]),
                "ok": 1.5, "n": np.int64(3), "t": (1, 2)})
    line = capsys.readouterr().out.strip()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"psnr": None, "auroc": None, "v": None, "a": [1.0, None], "ok": 1.5, "n": 3,
                                "t": [1, 2]}
    assert json_safe([math.nan]) == [None]


def test_max_voxels_flag_and_env(tmp_path, capsys, monkeypatch):
    import nibabel as nib

    a = np.full((16, 16, 12), -1000, np.int16)
    a[4:12, 4:12, 3:9] = 40
    nib.save(nib.Nifti1Image(a, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    code = cli.main(["--max-voxels", "1000", "info", str(tmp_path / "ct.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "3072 voxels" in err and "1000 voxel limit" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("NEMESIS_MAX_VOXELS", "1000")
    assert cli.main(["info", str(tmp_path / "ct.nii.gz")]) == 2
    capsys.readouterr()
    assert cli.main(["--max-voxels", "1e7", "info", str(tmp_path / "ct.nii.gz")]) == 0  # the flag wins
    import os

    assert os.environ["NEMESIS_MAX_VOXELS"] == "1000"  # and is undone afterwards
