"""Small transformer pieces shared by the patch embedder, the MATB and the benchmark's plain ViT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: On CPU, SDPA's fused kernel pays a fixed cost per call that dominates for short sequences (a
#: MATB's slices and columns, the embedder's slices + NEMESIS tokens): up to this many keys the
#: explicit softmax(q k^T / sqrt(d)) v is 1.2-5x faster there (docs/performance.md). GPUs always
#: take SDPA (flash / memory-efficient kernels).
CPU_SHORT_SEQUENCE = 128


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over (..., L, d) tensors; ``attn_mask`` True = may attend."""
    if q.device.type != "cpu" or k.shape[-2] > CPU_SHORT_SEQUENCE:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


class Mlp(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over the second-to-last axis (SDPA; see ``attention``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block (attention + MLP, each with a residual)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Fixed 3D sin-cos position embedding (N, dim), N in raster (z, y, x) order.

    Each axis gets 2 * (dim // 6) channels (half sine, half cosine); leftover channels are zero.
    """
    per_axis = 2 * (dim // 6)
    half = per_axis // 2
    # computed on the CPU even inside ``torch.device("meta")`` (a checkpoint's shape check): a fixed
    # table, and arange on the meta device imports torch's whole compiler stack (0.4 s of a worker
    # holding the GIL while the viewer waits)
    cpu = torch.device("cpu")
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64, device=cpu) / max(half, 1)))
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64, device=cpu) for g in grid), indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    emb = emb.float()
    device = torch.get_default_device()  # the meta device inside ``with torch.device("meta")`` (FLOP counts)
    return emb if device == cpu else emb.to(device)


def init_weights(module: nn.Module) -> None:
    """MAE-style initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


__all__ = ["Attention", "Block", "Mlp", "sincos_pos_embed_3d", "init_weights", "trunc_normal_"]
