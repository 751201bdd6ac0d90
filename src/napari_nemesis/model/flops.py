"""Counting the cost of a forward pass with ``torch.utils.flop_counter``.

Convention: the paper's "31.0 GFLOPs" is a multiply-accumulate count (fvcore/thop style), so we
report GMACs beside it and GFLOPs = 2 x GMACs. Counted: every matmul/linear (addmm, mm, bmm) and
scaled-dot-product attention (QK^T and AV); not counted: element-wise ops, norms, softmax, GELU,
gathers (a few percent at most). Attention over padded groups counts the padded size, as computed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils import flop_counter as _fc

from .config import NemesisConfig
from .mae import NemesisMAE

PAPER_GMACS = 31.0
PAPER_FULL_VOLUME_GMACS = 985.8

_aten = torch.ops.aten


def _cpu_flash(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_flop_count(q, k, v)


def _cpu_flash_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_backward_flop_count(grad_out, q, k, v)


def flop_counter() -> _fc.FlopCounterMode:
    """A FlopCounterMode that also counts the CPU flash-attention kernels SDPA picks on CPU."""
    custom = {
        _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
        _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
    }
    return _fc.FlopCounterMode(display=False, custom_mapping=custom)


def _part_of(module_name: str) -> str | None:
    """Which part a module-level count belongs to; only top-level modules, so nothing counts twice."""
    parts = module_name.split(".")
    if len(parts) < 2 or parts[0] != "NemesisMAE":
        return None
    top = parts[1]
    if top == "patch_embed":
        return "patch_embedding" if len(parts) == 2 else None
    if top in ("blocks", "norm"):
        return "encoder" if len(parts) == (3 if top == "blocks" else 2) else None
    if top in ("decoder_embed", "decoder_norm", "decoder_pred"):
        return "decoder" if len(parts) == 2 else None
    if top == "decoder_blocks":
        return "decoder" if len(parts) == 3 else None
    return None


def count_forward(
    model: NemesisMAE,
    mask_ratio: float = 0.75,
    mask_strategy: str = "dual",
    batch: int = 1,
) -> dict[str, Any]:
    """MACs of one pretraining forward pass (noise, mask, encoder, decoder, loss) of ``model``.

    Returns ``{"gmacs", "gflops", "parts": {"patch_embedding", "encoder", "decoder"}}`` per sample.
    A ``mask_ratio`` of 0 counts the unmasked pass.
    """
    cfg = model.cfg
    s = cfg.superpatch
    x = torch.rand(batch, cfg.in_chans, s, s, s)
    counter = flop_counter()
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(x, mask_strategy=mask_strategy, mask_ratio=mask_ratio, noise_sigma=0.0,
              generator=torch.Generator().manual_seed(0))
    model.train(was_training)
    parts = {"patch_embedding": 0, "encoder": 0, "decoder": 0}
    for name, ops in counter.get_flop_counts().items():
        part = _part_of(name)
        if part is not None:
            parts[part] += sum(ops.values())
    total_flops = counter.get_total_flops()
    to_g = 1.0 / (2e9 * batch)  # FLOPs -> GMACs per sample
    return {
        "gmacs": total_flops * to_g,
        "gflops": total_flops * 2 * to_g,
        "parts": {k: v * to_g for k, v in parts.items()},
    }


def count_encoder(model: NemesisMAE) -> float:
    """GMACs of ``model.encode`` on one superpatch with every token visible (inference cost)."""
    s = model.cfg.superpatch
    counter = flop_counter()
    with torch.no_grad(), counter:
        model.encode(torch.rand(1, model.cfg.in_chans, s, s, s))
    return counter.get_total_flops() / 2e9


def plain_vit_gmacs(cfg: NemesisConfig, grid: tuple[int, int, int]) -> float:
    """GMACs of one plain full-attention ViT encoder (the config's width, depth and heads) over a
    whole token grid. Counted on the meta device, so huge grids cost no memory."""
    from .vit import PlainViTEncoder

    with torch.device("meta"):
        vit = PlainViTEncoder(grid, cfg.patch, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.in_chans)
        patches = torch.empty(1, math.prod(grid), cfg.patch_dim)
    counter = flop_counter()
    with torch.no_grad(), counter:
        vit(patches)
    return counter.get_total_flops() / 2e9


DEFAULT_SCALING_SHAPES = ((128, 128, 128), (256, 256, 256), (256, 384, 384), (384, 512, 512), (512, 512, 512))


def volume_scaling(
    model: NemesisMAE, shapes_zyx: tuple[tuple[int, int, int], ...] = DEFAULT_SCALING_SHAPES
) -> list[dict[str, Any]]:
    """Encoder cost of a whole volume: superpatch tiling (linear in volume) against one full-volume
    ViT over all its tokens (quadratic in tokens). Shapes are voxels at the model's spacing."""
    cfg = model.cfg
    per_superpatch = count_encoder(model)
    rows = []
    for shape in shapes_zyx:
        n_sp = math.prod(math.ceil(d / cfg.superpatch) for d in shape)
        grid = tuple(math.ceil(d / cfg.patch) for d in shape)
        full = plain_vit_gmacs(cfg, grid)
        rows.append(
            {
                "shape_zyx": list(shape),
                "superpatches": n_sp,
                "tokens": math.prod(grid),
                "superpatch_gmacs": n_sp * per_superpatch,
                "full_volume_vit_gmacs": full,
                "ratio": full / (n_sp * per_superpatch),
            }
        )
    return rows
