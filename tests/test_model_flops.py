import json

import pytest

from napari_nemesis.cli import main
from napari_nemesis.model import build_model
from napari_nemesis.model.flops import count_forward, plain_vit_gmacs, volume_scaling


def _analytic_tiny_encoder_linear_gmacs(cfg, tokens):
    e = cfg.embed_dim
    per_token = 3 * e * e + 2 * e * e + 2 * int(cfg.mlp_ratio * e) * e  # qkv (shared), fuse, mlp
    return cfg.depth * tokens * per_token / 1e9


def test_parts_add_up_and_match_an_independent_count():
    model = build_model("tiny")
    r = count_forward(model, mask_ratio=0.75)
    assert sum(r["parts"].values()) == pytest.approx(r["gmacs"], rel=1e-6)
    assert r["gflops"] == pytest.approx(2 * r["gmacs"])
    linear = _analytic_tiny_encoder_linear_gmacs(model.cfg, 128)
    # the encoder adds attention (small groups) on top of its linear layers
    assert linear < r["parts"]["encoder"] < 1.3 * linear


def test_masking_reduces_encoder_cost():
    model = build_model("tiny")
    full = count_forward(model, mask_ratio=0.0)["parts"]["encoder"]
    masked = count_forward(model, mask_ratio=0.75)["parts"]["encoder"]
    assert masked < 0.3 * full


def test_full_volume_vit_grows_quadratically_and_tiling_linearly():
    model = build_model("tiny")
    rows = volume_scaling(model, ((64, 64, 64), (128, 128, 128), (256, 256, 256)))
    tiled = [r["superpatch_gmacs"] for r in rows]
    assert tiled[1] == pytest.approx(8 * tiled[0]) and tiled[2] == pytest.approx(64 * tiled[0])
    assert rows[2]["full_volume_vit_gmacs"] / rows[1]["full_volume_vit_gmacs"] > 8
    assert plain_vit_gmacs(model.cfg, (8, 8, 8)) > 0


@pytest.mark.slow
def test_paper_preset_matches_the_papers_31_gmacs(capsys):
    assert main(["flops", "--preset", "paper", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["paper_gflops"] == 31.0
    assert abs(report["gmacs"] / 31.0 - 1) < 0.10
    assert set(report["parts"]) == {"patch_embedding", "encoder", "decoder"}
    assert report["gflops"] == pytest.approx(2 * report["gmacs"])
    assert len(report["scaling"]) >= 3


def test_flops_cli_table_and_errors(capsys):
    assert main(["flops", "--preset", "tiny", "--no-scaling"]) == 0
    out = capsys.readouterr().out
    assert "GMACs" in out and "GFLOPs" in out and "paper: 31.0" in out
    assert main(["flops", "--preset", "tiny", "--patch", "7"]) == 2
    assert "not divisible by patch 7" in capsys.readouterr().err
