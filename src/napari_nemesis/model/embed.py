"""3D Adaptive Patch Embedding with NEMESIS tokens (paper eqs. 2-4).

Two paths embed each 16^3 patch: a linear projection of the flattened patch (h_LP), and the
Superpatch-Embedder (h_SE) that reads the patch as its axial slices, appends k learnable NEMESIS
tokens, runs one self-attention block, and concatenates the k token outputs. A learnable gate
``a = sigmoid(alpha)`` mixes them: h = a * h_LP + (1 - a) * h_SE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NemesisConfig
from .layers import Block, attention, trunc_normal_


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
        h_se = self._superpatch_embedder(flat)
        a = self.gate.to(h_lp.dtype)
        return (a * h_lp + (1 - a) * h_se).view(*lead, -1)

    def _superpatch_embedder(self, flat: torch.Tensor) -> torch.Tensor:
        """h_SE of (M, C * p^3) patches -> (M, E): ``sab`` over [slices; NT], NT outputs concatenated.

        Computes exactly ``self.sab(cat([slices, NT]))[:, p:]``, but only what those k outputs need:
        the block's rows are independent except inside attention, so the slices need only keys and
        values, and the NEMESIS tokens (the same learnable input for every patch) get their q, k, v
        once instead of once per patch. Attention, output projection and MLP run on the k tokens.
        """
        m, p = flat.shape[0], self.patch
        sab, attn = self.sab, self.sab.attn
        d = self.nemesis_tokens.shape[-1]
        k = self.nemesis_tokens.shape[1]
        heads = attn.num_heads
        # axial slices: (M, C, p, p, p) -> (M, p, C * p * p)
        slices = flat.reshape(m, self.in_chans, p, p * p).transpose(1, 2).reshape(m, p, -1)
        s = self.slice_proj(slices) + self.slice_pos
        w, b = attn.qkv.weight, attn.qkv.bias
        kv_s = F.linear(sab.norm1(s), w[d:], None if b is None else b[d:])  # (M, p, 2d): slices' k, v
        nt = self.nemesis_tokens
        q_nt, kv_nt = attn.qkv(sab.norm1(nt)).split([d, 2 * d], dim=-1)  # (1, k, d), (1, k, 2d)
        kv = torch.cat([kv_s, kv_nt.to(kv_s.dtype).expand(m, -1, -1)], dim=1).view(m, p + k, 2, heads, d // heads)
        key, val = kv.permute(2, 0, 3, 1, 4)  # (M, heads, p + k, d / heads) each
        q = q_nt.to(kv.dtype).view(1, k, heads, d // heads).transpose(1, 2).expand(m, -1, -1, -1)
        out = attention(q, key, val)  # (M, heads, k, d / heads)
        h = nt + attn.proj(out.transpose(1, 2).reshape(m, k, d))
        h = h + sab.mlp(sab.norm2(h))
        return h.reshape(m, k * d)
