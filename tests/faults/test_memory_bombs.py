"""Allocation bombs under a memory cap: each runs ``nemesis`` in a child process whose address space
is capped (RLIMIT_AS, 3 GiB) and must refuse in one line, naming the sizes and the limit, before it
allocates anything (an attempted allocation would end in MemoryError or a crash under the cap)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

resource = pytest.importorskip("resource")

CAP = 3 << 30
_PROGRESS = re.compile(r"(\d+%\||it/s|s/it|\r)")
CHILD = (
    "import resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_AS, ({CAP}, {CAP}))\n"
    "from napari_nemesis.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _nemesis(*argv, env=None, timeout=300):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    return proc.returncode, proc.stdout, proc.stderr


def _assert_refused(code, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip() and not _PROGRESS.search(ln)]  # tqdm bars aside
    assert code not in (0, None), err
    assert "Traceback" not in err and "MemoryError" not in err and "out of memory" not in err, err
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def _header(shape, dtype):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import nibabel as nib
    import torch
    from conftest import save_tiny_checkpoint
    from safetensors.torch import load_file, save_file

    from napari_nemesis.model.checkpoint import read_metadata

    d = tmp_path_factory.mktemp("bombs")
    out = {}
    head = _header((1020, 1020, 1020), np.float64)
    (d / "header_bomb.nii").write_bytes(head + b"\0" * (864 - len(head)))
    out["header"] = d / "header_bomb.nii"
    with gzip.open(d / "zeros.nii.gz", "wb", compresslevel=9) as fh:  # a real zip bomb: ~2000:1
        fh.write(_header((1000, 1000, 1000), np.int32))
        block = bytes(1 << 24)
        for _ in range(16):  # 256 MB of zeros written, the header claims 4 GB
            fh.write(block)
    out["gzip"] = d / "zeros.nii.gz"
    ct = np.full((24, 24, 16), -1000, np.int16)
    ct[6:18, 6:18, 4:12] = 40
    nib.save(nib.Nifti1Image(ct, np.diag([1.5, 1.5, 2.0, 1.0])), str(d / "ct.nii.gz"))
    out["ct"] = d / "ct.nii.gz"
    torch.manual_seed(0)
    ckpt = save_tiny_checkpoint(d / "ckpt.safetensors")
    state, meta = load_file(str(ckpt)), read_metadata(ckpt)
    for name, cfg, extra in (("embed", {"embed_dim": 10**9}, None), ("superpatch", {"superpatch": 4096}, None),
                             ("spacing", None, {"spacing_zyx": [0.01, 0.01, 0.01]})):
        m = dict(meta)
        if cfg:
            m["config"] = json.dumps({**json.loads(m["config"]), **cfg})
        if extra:
            m["extra"] = json.dumps(extra)
        save_file(state, str(d / f"{name}.safetensors"), metadata=m)
        out[name] = d / f"{name}.safetensors"
    return out


def test_header_bomb_refused_by_the_voxel_limit(files):
    code, _, err = _nemesis("info", files["header"])
    _assert_refused(code, err, "header_bomb.nii", "1061208000 voxels", "voxel limit", "NEMESIS_MAX_VOXELS")


def test_header_bomb_refused_by_file_size_when_the_limit_is_raised(files):
    code, _, err = _nemesis("--max-voxels", "3e9", "info", files["header"])
    _assert_refused(code, err, "header_bomb.nii", "truncated", "864 bytes")
    code, _, err = _nemesis("info", files["header"], env={"NEMESIS_MAX_VOXELS": "3e9"})
    _assert_refused(code, err, "header_bomb.nii", "truncated")


def test_gzip_of_zeros_refused(files):
    assert files["gzip"].stat().st_size < 2 << 20  # a few hundred kB that claim 4 GB
    code, _, err = _nemesis("info", files["gzip"])
    _assert_refused(code, err, "zeros.nii.gz", "1000000000 voxels", "voxel limit")


def test_spacing_bomb_on_the_command_line(files):
    code, _, err = _nemesis("info", files["ct"], "--spacing", "0.01", "0.01", "0.01")
    _assert_refused(code, err, "ct.nii.gz", "0.01 x 0.01 x 0.01", "voxel limit")


def test_spacing_bomb_recorded_in_a_checkpoint(files, tmp_path):
    code, _, err = _nemesis("reconstruct", files["ct"], "--checkpoint", files["spacing"], "--out", tmp_path / "o",
                            "--device", "cpu")
    _assert_refused(code, err, "ct.nii.gz", "recorded in", "spacing.safetensors", "voxel limit")


@pytest.mark.parametrize("name,field", [("embed", "embed_dim"), ("superpatch", "superpatch")])
def test_checkpoint_config_bombs(files, name, field):
    code, _, err = _nemesis("reconstruct", files["ct"], "--checkpoint", files[name], "--out", files["ct"].parent / "o")
    _assert_refused(code, err, f"{name}.safetensors", field)


def test_a_raised_limit_lets_the_same_scan_through(files):
    """The limit is the only thing refusing a big resampling: raised, the same command works."""
    code, out, err = _nemesis("info", files["ct"], "--spacing", "0.5", "0.5", "0.5", "--json",
                              env={"NEMESIS_MAX_VOXELS": "100000"})
    _assert_refused(code, err, "voxel limit")
    code, out, err = _nemesis("info", files["ct"], "--spacing", "0.5", "0.5", "0.5", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["grid"]["preprocessed_shape_zyx"] == [64, 72, 72]
