"""MATB attention maps: one query's plane- and axis-stream weights, and the ``nemesis attention`` CLI."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_nemesis.cli import main
from napari_nemesis.data import read_volume, volume_from_array, write_volume
from napari_nemesis.errors import NemesisInputError
from napari_nemesis.model import build_model, make_mask, save_checkpoint
from napari_nemesis.model.matb import grid_groups
from napari_nemesis.train.attention import SuperpatchAttention, attention_maps, paint_tokens
from napari_nemesis.train.scan import prepare_for_model, prepare_scan

from conftest import CT, needs_ct


def _tiny(**overrides):
    torch.manual_seed(0)
    return build_model("tiny", superpatch=32, patch=8, **{"depth": 1, **overrides}).eval()


def _superpatch(seed=0, s=32):
    return np.random.default_rng(seed).random((s, s, s), dtype=np.float32)


TOKENS = [(0, 0, 0), (1, 2, 3), (3, 3, 3), (2, 0, 1)]


def test_plane_attention_is_zero_outside_the_query_slice_and_axis_outside_its_column():
    model = _tiny()
    att = SuperpatchAttention(model, _superpatch())
    z, y, x = np.indices(model.grid)
    for token in TOKENS:
        maps = att.maps(token)
        in_slice = z == token[0]
        in_column = (y == token[1]) & (x == token[2])
        for name, weights, inside in (("plane", maps.plane, in_slice), ("axis", maps.axis, in_column)):
            heads = getattr(maps, f"{name}_heads")
            assert weights.shape == model.grid and heads.shape == (model.cfg.num_heads, *model.grid)
            assert np.all(weights[~inside] == 0) and np.all(heads[:, ~inside] == 0), name
            assert np.all(weights[inside] > 0), name  # every token is visible: the whole slice / column
            assert weights.sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(heads.sum(axis=(1, 2, 3)), 1.0, atol=1e-5)
            np.testing.assert_allclose(weights, heads.mean(0), atol=1e-7)
        assert maps.token_zyx == token and maps.block == 0 and maps.device == "cpu"


@pytest.mark.parametrize("shared_qkv", [True, False])
def test_weights_times_values_reproduce_the_block_stream_outputs(shared_qkv):
    model = _tiny(depth=2, shared_qkv=shared_qkv)
    att = SuperpatchAttention(model, _superpatch(1), block=-1)
    blk = model.blocks[1]
    with torch.no_grad():
        h_plane, h_axis = blk.stream_outputs(att.tokens, att.plane_groups, att.axis_groups)
        qkv_plane, qkv_axis = blk.stream_qkv(att.tokens)
    e, h = model.cfg.embed_dim, model.cfg.num_heads
    for token in TOKENS:
        maps = att.maps(token)
        q = int(np.ravel_multi_index(token, model.grid))
        for heads, qkv, out in ((maps.plane_heads, qkv_plane, h_plane), (maps.axis_heads, qkv_axis, h_axis)):
            v = qkv[0, :, 2 * e:].reshape(-1, h, e // h).transpose(0, 1)  # (H, N, d)
            w = torch.from_numpy(heads.reshape(h, -1))  # (H, N)
            rebuilt = torch.einsum("hn,hnd->hd", w, v).reshape(e)
            torch.testing.assert_close(rebuilt, out[0, q], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [0, -1])
def test_the_block_input_is_the_encoders(block):
    """Running the remaining blocks on the stored block input gives the model's own encoder output."""
    model = _tiny(depth=2)
    sp = _superpatch(2)
    att = SuperpatchAttention(model, sp, block=block)
    assert att.block == (block % 2)
    x = att.tokens
    with torch.no_grad():
        for blk in model.blocks[att.block:]:
            x = blk(x, att.plane_groups, att.axis_groups)
        torch.testing.assert_close(model.norm(x), model.encode(torch.from_numpy(sp)[None, None]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["random", "dual"])
def test_query_attention_under_a_mask_keeps_to_visible_tokens_of_the_slice_and_column(strategy):
    """MATB.query_attention on padded groups (uneven slices/columns) still reproduces the streams."""
    model = _tiny()
    blk = model.blocks[0]
    mask = make_mask(strategy, model.grid, 0.6, generator=torch.Generator().manual_seed(3))
    vis = (~mask[0]).nonzero()[:, 0]
    plane, axis = grid_groups(vis[None], model.grid)
    x = torch.randn(1, len(vis), model.cfg.embed_dim, generator=torch.Generator().manual_seed(4))
    e, h = model.cfg.embed_dim, model.cfg.num_heads
    gy, gx = model.grid[1:]
    with torch.no_grad():
        h_plane, h_axis = blk.stream_outputs(x, plane, axis)
        qkv, _ = blk.stream_qkv(x)
        v = qkv[0, :, 2 * e:].reshape(-1, h, e // h).transpose(0, 1)
        for q in range(len(vis)):
            w_plane, w_axis = blk.query_attention(x, plane, axis, q)
            same_slice = vis // (gy * gx) == vis[q] // (gy * gx)
            same_column = vis % (gy * gx) == vis[q] % (gy * gx)
            for w, same, out in ((w_plane, same_slice, h_plane), (w_axis, same_column, h_axis)):
                assert torch.all(w[0][:, ~same] == 0) and torch.all(w[0][:, same] > 0)
                torch.testing.assert_close(w[0].sum(-1), torch.ones(h))
                torch.testing.assert_close(torch.einsum("hn,hnd->hd", w[0], v).reshape(e), out[0, q], atol=1e-5, rtol=1e-5)


def test_bad_token_block_and_superpatch_raise_one_line_errors():
    model = _tiny()
    sp = _superpatch()
    with pytest.raises(NemesisInputError, match="token 4 0 0 is outside the 4x4x4 token grid"):
        attention_maps(model, sp, (4, 0, 0))
    with pytest.raises(NemesisInputError, match="block 1 is outside"):
        attention_maps(model, sp, (0, 0, 0), block=1)
    with pytest.raises(NemesisInputError, match=r"shape \(32, 32, 32\)"):
        attention_maps(model, sp[:16], (0, 0, 0))


def test_paint_tokens_fills_each_patch_with_its_token_value():
    grid = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    vox = paint_tokens(grid, 3)
    assert vox.shape == (6, 6, 6)
    assert vox[4, 1, 5] == grid[1, 0, 1] and np.all(vox[:3, :3, :3] == grid[0, 0, 0])


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("att")
    rng = np.random.default_rng(0)
    # finer than the model spacing (2, 1.5, 1.5) and stored LPS: the maps go through resampling and reorientation
    hu = rng.normal(0, 300, (128, 100, 120)).astype(np.float32)
    vol = volume_from_array(hu, spacing_zyx=(1.0, 0.75, 0.75), origin_xyz=(10.0, -20.0, 30.0), file_orientation="LPS")
    scan = write_volume(vol, root / "scan.nii.gz", reference=vol)
    model = _tiny(depth=2)
    ckpt = save_checkpoint(model, root / "model.safetensors")
    return scan, ckpt, model


def test_attention_cli_writes_maps_aligned_with_the_scan(cli_setup, tmp_path, capsys):
    scan, ckpt, model = cli_setup
    i, token = 5, (1, 2, 1)  # superpatch (1, 0, 1): its last x tokens reach past the scan
    assert main(["attention", str(scan), "--superpatch", str(i), "--token", *map(str, token), "--checkpoint", str(ckpt),
                 "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "attention.json").read_text(encoding="utf-8"))
    assert summary["superpatch"] == i and summary["token_zyx"] == list(token) and summary["block"] == 1

    prepared = prepare_for_model(scan, model)  # what the CLI does: the checkpoint records no spacing -> default
    assert summary["spacing_zyx"] == list(prepared.pre.spacing_zyx) and summary["spacing_source"] == "default"
    maps = attention_maps(model, prepared.superpatch(i), token)
    src = nib.load(str(scan))
    box = prepared.grid.box(i, clip=True)
    outside = np.ones(prepared.volume.shape, dtype=bool)
    outside[prepared.grid.box_original(i).slices] = False
    for stream in ("plane", "axis"):
        img = nib.load(summary["files"][stream])
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        back = read_volume(summary["files"][stream]).array  # canonical (z, y, x), like the scan's Volume
        assert np.all(back[outside] == 0)
        weights = getattr(maps, stream)
        assert summary[stream]["self"] == pytest.approx(float(weights[token]))
        for tok in [token, *[tuple(t[:3]) for t in summary[stream]["top"]]]:
            # the original voxel nearest to the token's centre holds the token's weight
            centre = np.array(box.start) + np.array(tok) * model.cfg.patch + model.cfg.patch // 2
            if np.any(centre >= prepared.pre.shape):
                continue  # a token in the padding beyond the scan has no voxel of it
            v = np.rint(prepared.pre.to_source[:3, :3] @ centre + prepared.pre.to_source[:3, 3]).astype(int)
            assert back[tuple(v)] == pytest.approx(float(weights[tok]), rel=1e-6)
        # the map's voxels lie on the query's slice (plane) / column (axis) in world space too
        hot = np.argwhere(back > 0)
        world = hot @ prepared.volume.canonical_affine[:3, :3].T + prepared.volume.canonical_affine[:3, 3]
        pre_idx = (world - prepared.pre.affine[:3, 3]) @ np.linalg.inv(prepared.pre.affine[:3, :3]).T
        tok_idx = np.floor((pre_idx - np.array(box.start) + 0.5) / model.cfg.patch).astype(int)
        axes = [0] if stream == "plane" else [1, 2]
        assert len(hot) and np.all(tok_idx[:, axes] == np.array(token)[axes])


def test_attention_cli_bad_superpatch_or_token_exits_non_zero_with_one_line(cli_setup, tmp_path, capsys):
    scan, ckpt, _ = cli_setup
    base = ["attention", str(scan), "--checkpoint", str(ckpt), "--out", str(tmp_path)]
    assert main(base + ["--superpatch", "99", "--token", "0", "0", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scan.nii.gz: superpatch 99 is out of range 0..7" in err[0]
    assert main(base + ["--superpatch", "0", "--token", "0", "9", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token 0 9 0 is outside" in err[0]
    assert not (tmp_path / "attention.json").exists()


def test_attention_cli_spacing_flag_is_x_y_z(cli_setup, tmp_path, capsys):
    scan, ckpt, _ = cli_setup
    assert main(["attention", str(scan), "--superpatch", "0", "--token", "0", "0", "0", "--checkpoint", str(ckpt),
                 "--spacing", "3", "2", "4", "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["spacing_zyx"] == [4.0, 2.0, 3.0] and summary["spacing_source"] == "given"


@pytest.mark.slow
@needs_ct
def test_attention_on_the_real_ct_with_the_bundled_model():
    from napari_nemesis.weights import load_default_model

    model = load_default_model()
    prepared = prepare_scan(CT, superpatch=model.cfg.superpatch)
    token = (4, 3, 5)
    maps = attention_maps(model, prepared.superpatch(prepared.grid.n // 2), token)
    z = np.indices(model.grid)[0]
    assert np.all(maps.plane[z != token[0]] == 0) and maps.plane.sum() == pytest.approx(1, abs=1e-5)
    assert np.count_nonzero(maps.axis) == model.grid[0] and maps.axis.sum() == pytest.approx(1, abs=1e-5)
