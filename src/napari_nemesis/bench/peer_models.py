"""The peers NEMESIS is compared with, built at the NEMESIS model's sizes: MONAI's ViT and MAE
(when MONAI is installed: the ``bench`` extra) and a plain SDPA MAE (always)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def monai_available() -> bool:
    try:
        from monai.networks.nets import MaskedAutoEncoderViT, ViT  # noqa: F401
    except Exception:
        return False
    return True


def monai_vit(cfg) -> nn.Module:
    """MONAI's ViT with its defaults (conv patch embedding, learnable position, its own attention),
    sized like the NEMESIS encoder: same width, depth, heads, MLP ratio, image and patch size."""
    from monai.networks.nets import ViT

    return ViT(in_channels=cfg.in_chans, img_size=cfg.superpatch, patch_size=cfg.patch, hidden_size=cfg.embed_dim,
               mlp_dim=int(cfg.mlp_ratio * cfg.embed_dim), num_layers=cfg.depth, num_heads=cfg.num_heads,
               classification=False)


def monai_mae(cfg, mask_ratio: float) -> nn.Module:
    """MONAI's MaskedAutoEncoderViT at the NEMESIS model's encoder and decoder sizes. Its sin-cos
    position embeddings need widths divisible by 6; otherwise (the paper preset's decoder, 512) a
    learnable one is used, which costs the same."""
    from monai.networks.nets import MaskedAutoEncoderViT

    def pos(width: int) -> str:
        return "sincos" if width % 6 == 0 else "learnable"

    return MaskedAutoEncoderViT(
        in_channels=cfg.in_chans, img_size=cfg.superpatch, patch_size=cfg.patch, hidden_size=cfg.embed_dim,
        mlp_dim=int(cfg.mlp_ratio * cfg.embed_dim), num_layers=cfg.depth, num_heads=cfg.num_heads,
        masking_ratio=mask_ratio, decoder_hidden_size=cfg.decoder_embed_dim,
        decoder_mlp_dim=int(cfg.mlp_ratio * cfg.decoder_embed_dim), decoder_num_layers=cfg.decoder_depth,
        decoder_num_heads=cfg.decoder_num_heads, pos_embed_type=pos(cfg.embed_dim),
        decoder_pos_embed_type=pos(cfg.decoder_embed_dim))


class PlainSDPAMAE(nn.Module):
    """A plain MAE built from SDPA transformer blocks (the peer when MONAI is absent, and the
    honest SDPA reference beside it): random masking, encoder on the visible tokens, decoder on
    all tokens, MSE on the masked patches. Same sizes as the NEMESIS model it is compared with."""

    def __init__(self, cfg) -> None:
        super().__init__()
        from ..model.layers import Block, init_weights, sincos_pos_embed_3d

        e, ed = cfg.embed_dim, cfg.decoder_embed_dim
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, e)
        self.register_buffer("pos", sincos_pos_embed_3d(e, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(e, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(e)
        self.decoder_embed = nn.Linear(e, ed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ed))
        self.register_buffer("dpos", sincos_pos_embed_3d(ed, cfg.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(ed, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(ed)
        self.decoder_pred = nn.Linear(ed, cfg.patch_dim)
        self.apply(init_weights)

    def forward(self, patches: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        b, n, _ = patches.shape
        keep = max(1, round(n * (1 - mask_ratio)))
        noise = torch.rand(b, n, generator=generator, device=generator.device if generator else "cpu").to(patches.device)
        vis = noise.argsort(1)[:, :keep].sort(1).values
        x = self.patch_embed(patches.gather(1, vis[..., None].expand(-1, -1, patches.shape[-1])))
        x = x + self.pos.expand(b, -1, -1).gather(1, vis[..., None].expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        y = self.decoder_embed(self.norm(x))
        full = self.mask_token.to(y.dtype).expand(b, n, y.shape[-1]).scatter(1, vis[..., None].expand(-1, -1, y.shape[-1]), y)
        full = full + self.dpos
        for blk in self.decoder_blocks:
            full = blk(full)
        pred = self.decoder_pred(self.decoder_norm(full))
        masked = torch.ones(b, n, device=patches.device).scatter(1, vis, 0.0)
        per_patch = (pred.float() - patches.float()).pow(2).mean(-1)
        return (per_patch * masked).sum() / masked.sum()


def count_gmacs(fn: Callable[[], Any]) -> float:
    """GMACs of one call, with the same counter as the ``flops`` command."""
    from ..model.flops import flop_counter

    counter = flop_counter()
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() / 2e9
