"""Hostile inputs through the ``nemesis`` command line, in process: every kind must end in a
non-zero exit and exactly one error line on standard error that names the file or flag and the
problem, and no traceback. The module prints how many kinds it tried and how many were clean.

(Tests run as root here, where chmod 000 does not stop a read: the unreadable-scan kind raises the
PermissionError a non-root user would get from the reader; the real chmod kind runs only when not root.)
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import struct

import numpy as np
import pytest

from napari_nemesis import cli

RESULTS: dict[str, bool] = {}
_PROGRESS = re.compile(r"(\d+%\||it/s|s/it|\r)")


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    tried, clean = len(RESULTS), sum(RESULTS.values())
    line = f"hostile inputs: {tried} kinds tried, {clean} clean"
    bad = sorted(k for k, ok in RESULTS.items() if not ok)
    text = line + (f" (not clean: {', '.join(bad)})" if bad else "")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + text)
    else:  # pragma: no cover
        print(text)


# ---- inputs ----------------------------------------------------------------------------------
def _nifti(path, array_xyz, spacing=(2.0, 2.0, 2.0), dtype=np.int16):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array_xyz).astype(dtype), np.diag([*spacing, 1.0]))
    nib.save(img, str(path))
    return path


def _ct_array(shape=(28, 28, 20)):
    rng = np.random.default_rng(0)
    a = np.full(shape, -1000, np.int16)
    inner = tuple(slice(n // 4, n - n // 4) for n in shape)
    a[inner] = 40 + rng.integers(-20, 20, size=a[inner].shape)
    return a


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small CT, its label map, a tiny checkpoint with a probe head beside it, and hostile files."""
    import nibabel as nib
    import torch
    from conftest import save_tiny_checkpoint
    from safetensors.torch import load_file, save_file

    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.model.checkpoint import read_metadata
    from napari_nemesis.train.probe import ProbeHead, probe_metadata, save_probe

    d = tmp_path_factory.mktemp("hostile")
    w = {"dir": d}
    w["ct"] = _nifti(d / "ct.nii.gz", _ct_array())
    lab = np.zeros((28, 28, 20), np.uint8)
    lab[8:14, 8:14, 5:10] = 1
    w["mask"] = _nifti(d / "mask.nii.gz", lab, dtype=np.uint8)
    lab2 = lab.copy()
    lab2[16:20, 16:20, 5:10] = 6
    w["labelmap"] = _nifti(d / "labelmap.nii.gz", lab2, dtype=np.uint8)
    big = np.full((64, 64, 64), -1000, np.int16)
    big[10:50, 10:50, 10:50] = 50
    w["big"] = _nifti(d / "big.nii.gz", big, spacing=(1.5, 1.5, 2.0))

    run = d / "run"
    run.mkdir()
    ckpt = save_tiny_checkpoint(run / "ckpt.safetensors", extra={"spacing_zyx": [2.0, 2.0, 2.0]})
    model = load_checkpoint(ckpt)
    torch.manual_seed(0)
    head = ProbeHead(model.cfg.embed_dim, 8)
    save_probe(head, run / "probe.safetensors", probe_metadata(model, (2.0, 2.0, 2.0)))
    w["ckpt"], w["probe"] = ckpt, run / "probe.safetensors"

    state, meta = load_file(str(ckpt)), read_metadata(ckpt)

    def variant(name, config=None, extra=None, tensors=None):
        m = dict(meta)
        if config is not None:
            cfg = json.loads(m["config"])
            cfg.update(config)
            m["config"] = json.dumps(cfg)
        if extra is not None:
            m["extra"] = json.dumps(extra)
        folder = d / name
        folder.mkdir()
        save_file(tensors or state, str(folder / "ckpt.safetensors"), metadata=m)
        return folder / "ckpt.safetensors"

    w["ckpt_embed"] = variant("embed", config={"embed_dim": 10**9})
    w["ckpt_sp"] = variant("sp4096", config={"superpatch": 4096})
    w["ckpt_spacing"] = variant("spacing", extra={"spacing_zyx": [0.01, 0.01, 0.01]})
    nan_state = {k: v.clone() for k, v in state.items()}
    first = next(k for k, v in nan_state.items() if v.is_floating_point())
    nan_state[first].view(-1)[0] = float("nan")
    w["ckpt_nan"] = variant("nan", tensors=nan_state)

    pstate, pmeta = load_file(str(w["probe"])), read_metadata(w["probe"])

    def probe_variant(name, meta_text=None, tensors=None):
        m = dict(pmeta)
        if meta_text is not None:
            m["meta"] = meta_text
        path = d / f"probe_{name}.safetensors"
        save_file(tensors or pstate, str(path), metadata=m)
        return path

    pm = json.loads(pmeta["meta"])
    w["probe_garbage"] = probe_variant("garbage", "{not json")
    w["probe_threshold"] = probe_variant("threshold", json.dumps({**pm, "threshold": "high"}))
    w["probe_organs"] = probe_variant("organs", json.dumps({**pm, "organs": 3}))
    w["probe_spacing"] = probe_variant("spacing", json.dumps({**pm, "spacing_zyx": [0.01, 0.01, 0.01]}))
    pnan = {k: v.clone() for k, v in pstate.items()}
    pnan["fc.weight"][0, 0] = float("inf")
    w["probe_nan"] = probe_variant("nan", tensors=pnan)

    # headers that lie
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1020, 1020, 1020))
    hdr.set_data_dtype(np.float64)
    hdr["vox_offset"] = 352
    bomb = d / "bomb.nii"
    bomb.write_bytes(hdr.binaryblock + b"\0" * (864 - 348))
    w["bomb"] = bomb
    hdr.set_data_shape((2048, 1024, 1024))
    hdr.set_data_dtype(np.int16)
    gz = d / "bomb.nii.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        fh.write(bytes(1 << 22))
    w["gzbomb"] = gz
    hdr.set_data_shape((8, 8, 8))
    short = d / "short.nii"
    short.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\1" * 100)
    w["short"] = short
    v0 = bytearray(open(_nifti(d / "v0.nii", _ct_array((8, 8, 8))), "rb").read())
    struct.pack_into("<f", v0, 108, 0.0)
    (d / "v0.nii").write_bytes(bytes(v0))
    w["v0"] = d / "v0.nii"
    trunc = d / "trunc.nii.gz"
    trunc.write_bytes(open(w["ct"], "rb").read()[:400])
    w["trunc"] = trunc
    junk = d / "junk.nii"
    junk.write_bytes(os.urandom(2000))
    w["junk"] = junk

    raw = _ct_array((5, 4, 3)).transpose(2, 1, 0).astype("<i2").tobytes()
    (d / "nan.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nspacings: nan 3 3\n"
                                 b"encoding: raw\nendian: little\n\n" + raw)
    w["nrrd_nan"] = d / "nan.nrrd"
    mhd = "ObjectType = Image\nNDims = 3\nDimSize = 3 4 5\nElementType = MET_SHORT\nElementSpacing = 1 1 1\n"
    (d / "passwd.mhd").write_text(mhd + "ElementDataFile = /etc/passwd\n")
    w["mhd_passwd"] = d / "passwd.mhd"
    (d / "wrong.raw").write_bytes(b"\0" * 7)
    (d / "wrong.mhd").write_text(mhd + "ElementDataFile = wrong.raw\n")
    w["mhd_size"] = d / "wrong.mhd"
    sub = d / "sub"
    sub.mkdir()
    (d / "outside.raw").write_bytes(raw)
    (sub / "up.mhd").write_text(mhd + "ElementDataFile = ../outside.raw\n")
    w["mhd_up"] = sub / "up.mhd"
    (d / "empty_dir").mkdir()
    w["empty_dir"] = d / "empty_dir"
    import pickle

    pk = d / "pickle.safetensors"
    pk.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    w["pickle"] = pk
    (d / "a_file").write_text("x")
    w["a_file"] = d / "a_file"
    return w


def _fail(errno_value):
    def raise_(*args, **kwargs):
        raise OSError(errno_value, os.strerror(errno_value), str(args[1]) if len(args) > 1 else None)
    return raise_


# kind -> (argv builder, words the error line must hold, optional monkeypatch setup)
KINDS = {
    "nifti header bomb (1020^3 float64 in 864 bytes)": (lambda w: ["info", w["bomb"]], ["bomb.nii", "voxel"]),
    "gzip bomb (declares 2048x1024x1024)": (lambda w: ["info", w["gzbomb"]], ["bomb.nii.gz", "voxel"]),
    "truncated nifti": (lambda w: ["info", w["short"]], ["short.nii", "truncated"]),
    "nifti vox_offset 0": (lambda w: ["info", w["v0"]], ["v0.nii", "vox_offset"]),
    "truncated gzip": (lambda w: ["info", w["trunc"]], ["trunc.nii.gz"]),
    "random bytes as nifti": (lambda w: ["info", w["junk"]], ["junk.nii"]),
    "folder without DICOM": (lambda w: ["info", w["empty_dir"]], ["empty_dir", "DICOM"]),
    "nrrd spacings nan": (lambda w: ["info", w["nrrd_nan"]], ["nan.nrrd", "spacings"]),
    "mhd data file /etc/passwd": (lambda w: ["info", w["mhd_passwd"]], ["passwd.mhd", "/etc/passwd"]),
    "mhd data file of the wrong size": (lambda w: ["info", w["mhd_size"]], ["wrong.mhd", "bytes"]),
    "mhd data file outside its folder": (lambda w: ["info", w["mhd_up"]], ["up.mhd", "outside"]),
    "--spacing 0.01 (info)": (lambda w: ["info", w["ct"], "--spacing", "0.01", "0.01", "0.01"],
                              ["ct.nii.gz", "voxel limit"]),
    "spacing 0.01 recorded in a checkpoint": (
        lambda w: ["reconstruct", w["ct"], "--checkpoint", w["ckpt_spacing"], "--out", w["dir"] / "o1"],
        ["ckpt.safetensors", "voxel limit"]),
    "spacing 0.01 recorded in a probe head": (
        lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--probe", w["probe_spacing"], "--out", w["dir"] / "o2"],
        ["probe_spacing.safetensors", "voxel limit"]),
    "checkpoint config embed_dim 1e9": (lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt_embed"]],
                                        ["ckpt.safetensors", "embed_dim"]),
    "checkpoint config superpatch 4096": (lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt_sp"]],
                                          ["ckpt.safetensors", "superpatch"]),
    "checkpoint with NaN weights": (
        lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt_nan"], "--probe", w["probe"], "--json"],
        ["ckpt.safetensors", "NaN"]),
    "probe head with Inf weights": (
        lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--probe", w["probe_nan"], "--json"],
        ["probe_nan.safetensors", "NaN or Inf"]),
    "probe metadata not JSON": (lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--probe", w["probe_garbage"]],
                                ["probe_garbage.safetensors", "metadata"]),
    "probe metadata threshold 'high'": (
        lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--probe", w["probe_threshold"]],
        ["probe_threshold.safetensors", "threshold"]),
    "probe metadata organs 3": (lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--probe", w["probe_organs"]],
                                ["probe_organs.safetensors", "organs"]),
    "pickle as checkpoint": (lambda w: ["infer", w["ct"], "--checkpoint", w["pickle"]], ["pickle.safetensors", "pickle"]),
    "--checkpoint ''": (lambda w: ["infer", w["ct"], "--checkpoint", ""], ["--checkpoint", "empty"]),
    "--probe ''": (lambda w: ["infer", w["ct"], "--probe", ""], ["--probe", "empty"]),
    "--init ''": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--init", ""], ["--init", "empty"]),
    "scan ''": (lambda w: ["info", ""], ["scan", "empty"]),
    "pretrain --clip nan": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--clip", "nan"], ["--clip"]),
    "pretrain --steps 0": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--steps", "0"], ["--steps"]),
    "pretrain --batch 0": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--batch", "0"], ["--batch"]),
    "pretrain --lr nan": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--lr", "nan"], ["--lr"]),
    "pretrain --checkpoint-every 0": (
        lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--checkpoint-every", "0"], ["--checkpoint-every"]),
    "pretrain --workers -1": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--workers", "-1"],
                              ["--workers"]),
    "pretrain --superpatch 0": (lambda w: ["pretrain", w["dir"], "--out", w["dir"] / "r", "--superpatch", "0"],
                                ["--superpatch"]),
    "reconstruct --seed -1": (lambda w: ["reconstruct", w["ct"], "--out", w["dir"] / "o", "--seed", "-1"], ["--seed"]),
    "reconstruct --ratio 1.5": (lambda w: ["reconstruct", w["ct"], "--out", w["dir"] / "o", "--ratio", "1.5"],
                                ["--ratio"]),
    "reconstruct --noise inf": (lambda w: ["reconstruct", w["ct"], "--out", w["dir"] / "o", "--noise", "inf"],
                                ["--noise"]),
    "info --superpatch 0": (lambda w: ["info", w["ct"], "--superpatch", "0"], ["--superpatch"]),
    "info --superpatch 1 (a grid too long to list)": (lambda w: ["info", w["big"], "--superpatch", "1", "--json"],
                                                      ["big.nii.gz", "superpatches"]),
    "--spacing nan 1 1": (lambda w: ["info", w["ct"], "--spacing", "nan", "1", "1"], ["--spacing"]),
    "--spacing 1 2": (lambda w: ["info", w["ct"], "--spacing", "1", "2"], ["--spacing"]),
    "probe --label-ratio 2": (lambda w: ["probe", w["dir"], "--label-ratio", "2"], ["--label-ratio"]),
    "evaluate --ratios 0": (lambda w: ["evaluate", w["dir"], "--ratios", "0"], ["--ratios"]),
    "phantom --cases 0": (lambda w: ["phantom", w["dir"] / "ph", "--cases", "0"], ["--cases"]),
    "flops --mask-ratio 1": (lambda w: ["flops", "--mask-ratio", "1"], ["--mask-ratio"]),
    "attention --token -1": (lambda w: ["attention", w["ct"], "--superpatch", "0", "--token", "-1", "0", "0"],
                             ["--token"]),
    "--max-voxels 0": (lambda w: ["--max-voxels", "0", "info", w["ct"]], ["--max-voxels"]),
    "NEMESIS_MAX_VOXELS=lots": (lambda w: ["info", w["ct"]], ["NEMESIS_MAX_VOXELS"],
                                lambda mp, w: mp.setenv("NEMESIS_MAX_VOXELS", "lots")),
    "label map given as the scan": (
        lambda w: ["infer", w["labelmap"], "--checkpoint", w["ckpt"], "--json"], ["labelmap.nii.gz", "label map"]),
    "0/1 mask given as --labels": (lambda w: ["info", w["ct"], "--labels", w["mask"]], ["mask.nii.gz", "binary"]),
    "unreadable scan (PermissionError)": (
        lambda w: ["info", w["ct"]], ["ct.nii.gz", "ermission"],
        lambda mp, w: mp.setattr("builtins.open", _deny_open(w["ct"]))),
    "disk full writing infer --out": (
        lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--out", w["dir"] / "full"], ["full", "No space left"],
        lambda mp, w: mp.setattr("nibabel.save", _fail(errno.ENOSPC))),
    "read-only folder for reconstruct --out": (
        lambda w: ["reconstruct", w["ct"], "--checkpoint", w["ckpt"], "--out", w["dir"] / "ro"],
        ["ro", "Read-only"], lambda mp, w: mp.setattr("nibabel.save", _fail(errno.EROFS))),
    "no inodes left writing reconstruct.json": (
        lambda w: ["reconstruct", w["ct"], "--checkpoint", w["ckpt"], "--out", w["dir"] / "inodes"],
        ["reconstruct.json", "No space left"], lambda mp, w: mp.setattr("pathlib.Path.write_text", _fail_write)),
    "infer --out is a file": (lambda w: ["infer", w["ct"], "--checkpoint", w["ckpt"], "--out", w["a_file"]],
                              ["a_file"]),
}


def _fail_write(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))


def _deny_open(target):
    import builtins

    real = builtins.open
    target = os.path.realpath(str(target))

    def fake(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(os.fspath(file)) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real(file, *args, **kwargs)
    return fake


def _run(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # pragma: no cover - main returns codes
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _verdict(code, out, err, words):
    lines = [ln for ln in err.splitlines() if ln.strip() and not _PROGRESS.search(ln)]
    errors = [ln for ln in lines if ": error:" in ln]
    others = [ln for ln in lines if ln not in errors and ": warning:" not in ln]
    problems = []
    if not code:
        problems.append(f"exit {code}")
    if "Traceback" in err:
        problems.append("traceback")
    if len(errors) != 1 or others:
        problems.append(f"stderr lines: {lines}")
    elif not all(w.lower() in errors[0].lower() for w in words):
        problems.append(f"error line lacks {words}: {errors[0]}")
    for token in ("NaN", "Infinity"):
        if re.search(rf"\b{token}\b", out) and out.strip().startswith("{"):
            problems.append(f"bare {token} in JSON output")
    return problems


@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_input_fails_in_one_line(kind, world, capsys, monkeypatch, tmp_path):
    argv_of, words, *setup = KINDS[kind]
    monkeypatch.chdir(tmp_path)
    if setup:
        setup[0](monkeypatch, world)
    code, out, err = _run(argv_of(world), capsys)
    monkeypatch.undo()
    problems = _verdict(code, out, err, words)
    RESULTS[kind] = not problems
    assert not problems, f"{kind}: {problems}\nstderr: {err[-2000:]}"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads chmod-000 folders anyway")
def test_scan_in_unreadable_folder(world, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    scan = _nifti(folder / "ct.nii.gz", _ct_array())
    folder.chmod(0)
    try:
        code, out, err = _run(["info", scan], capsys)
    finally:
        folder.chmod(0o755)
    assert not _verdict(code, out, err, ["ct.nii.gz"])


def test_good_inputs_still_work(world, capsys, tmp_path):
    """The harness can tell: the same commands on good inputs exit 0 with strict JSON."""
    code, out, err = _run(["info", world["ct"], "--labels", world["labelmap"], "--json"], capsys)
    assert code == 0, err
    json.loads(out.strip().splitlines()[-1])
    code, out, err = _run(["infer", world["ct"], "--checkpoint", world["ckpt"], "--out", tmp_path / "ok", "--json"],
                          capsys)
    assert code == 0, err
    res = json.loads(out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert res["superpatches"] >= 1
    assert _verdict(code, out, err, [])  # a success is not "clean" to the verdict: it can fail
