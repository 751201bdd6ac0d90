"""A plain ViT encoder over every token of a volume: the full-attention reference NEMESIS is
compared against (FLOP scaling, and the benchmark's peer when MONAI is not installed)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import Block, init_weights, sincos_pos_embed_3d


class PlainViTEncoder(nn.Module):
    """Linear patch embedding + sin-cos position + ``depth`` full-attention blocks + LayerNorm."""

    def __init__(
        self,
        grid: tuple[int, int, int],
        patch: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        self.grid, self.patch, self.in_chans = tuple(grid), patch, in_chans
        self.patch_embed = nn.Linear(in_chans * patch**3, embed_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(embed_dim, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_weights)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, C * p^3) flattened patches -> (B, N, E)."""
        x = self.patch_embed(patches) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
