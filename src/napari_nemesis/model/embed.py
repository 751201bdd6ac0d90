"""3D Adaptive Patch Embedding with NEMESIS tokens (paper eqs. 2-4).

Two paths embed each 16^3 patch: a linear projection of the flattened patch (h_LP), and the
Superpatch-Embedder (h_SE) that reads the patch as its axial slices, appends k learnable NEMESIS
tokens, runs one self-attention block, and concatenates the k token outputs. A learnable gate
``a = sigmoid(alpha)`` mixes them: h = a * h_LP + (1 - a) * h_SE.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import NemesisConfig
from .layers import Block, trunc_normal_


class AdaptivePatchEmbed(nn.Module):
    def __init__(self, cfg: NemesisConfig) -> None:
        super().__init__()
        p, d, k = cfg.patch, cfg.nt_dim, cfg.nt_tokens
        self.patch = p
        self.in_chans = cfg.in_chans
        self.linear = nn.Linear(cfg.patch_dim, cfg.embed_dim)
        self.slice_proj = nn.Linear(cfg.in_chans * p * p, d)
        self.slice_pos = nn.Parameter(torch.zeros(1, p, d))
        self.nemesis_tokens = nn.Parameter(torch.zeros(1, k, d))
        self.sab = Block(d, cfg.se_num_heads, cfg.mlp_ratio, cfg.qkv_bias)
        self.alpha = nn.Parameter(torch.zeros(1))  # gate a = sigmoid(0) = 0.5 at start
        trunc_normal_(self.slice_pos)
        trunc_normal_(self.nemesis_tokens)

    @property
    def gate(self) -> torch.Tensor:
        """The gate a in [0, 1]: weight of the linear path."""
        return torch.sigmoid(self.alpha)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., C * p^3) flattened patches in (c, z, y, x) order -> (..., E)."""
        lead = patches.shape[:-1]
        flat = patches.reshape(-1, patches.shape[-1])
        h_lp = self.linear(flat)
        # axial slices: (M, C, p, p, p) -> (M, p, C * p * p)
        slices = flat.reshape(-1, self.in_chans, self.patch, self.patch * self.patch).transpose(1, 2)
        s = self.slice_proj(slices.reshape(flat.shape[0], self.patch, -1)) + self.slice_pos
        nt = self.nemesis_tokens.expand(flat.shape[0], -1, -1)
        out = self.sab(torch.cat([s, nt], dim=1))[:, self.patch :]
        h_se = out.reshape(flat.shape[0], -1)
        a = self.gate.to(h_lp.dtype)
        return (a * h_lp + (1 - a) * h_se).view(*lead, -1)
