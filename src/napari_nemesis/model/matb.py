"""Masked Anatomical Transformer Block (MATB): plane-wise and axis-wise attention in parallel.

The plane stream lets each visible token attend to the visible tokens of its own z slice; the axis
stream, to the visible tokens of its own (y, x) column. Groups are formed from each token's grid
index, never from its rank among the visible tokens, so the streams stay true slices and columns
under any mask. Uneven groups are padded and the padding is masked out of attention.
The streams are fused by Linear(2E -> E) over their concatenation (paper eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Mlp, attention


@dataclass
class TokenGroups:
    """Where each of L tokens sits when the sequence is cut into G padded groups of size M.

    ``index`` (B, G*M) points into the L tokens (padding points at token 0) or is None when the
    grouping is a plain reshape; ``inverse`` (B, L) is each token's slot in the flattened groups
    (None for a plain reshape); ``valid`` (B*G, M) marks real slots and ``attn_mask``
    (B*G, 1, M, M) the allowed query-key pairs; both are None when no group is padded.
    """

    n_groups: int
    size: int
    index: torch.Tensor | None
    inverse: torch.Tensor | None
    valid: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B * G, M, C)."""
        b, _, c = x.shape
        if self.index is not None:
            x = x.gather(1, self.index[..., None].expand(-1, -1, c))
        return x.reshape(b * self.n_groups, self.size, c)

    def scatter(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """(B * G, M, C) -> (B, L, C), dropping padding slots."""
        y = y.reshape(batch, self.n_groups * self.size, y.shape[-1])
        if self.inverse is not None:
            y = y.gather(1, self.inverse[..., None].expand(-1, -1, y.shape[-1]))
        return y


def group_tokens(group_id: torch.Tensor, n_groups: int) -> TokenGroups:
    """Group tokens by ``group_id`` (B, L), keeping their order inside each group.

    Computed once per mask and shared by every block. All work is batched tensor ops.
    """
    b, n = group_id.shape
    dev = group_id.device
    ar = torch.arange(n, device=dev)
    counts = torch.zeros(b, n_groups, dtype=torch.long, device=dev)
    counts.scatter_add_(1, group_id, torch.ones_like(group_id))
    size = int(counts.max())
    uniform = bool((counts == size).all())
    order = torch.argsort(group_id * n + ar, dim=1)  # stable by construction: keys are unique
    if uniform and bool((order == ar).all()):
        return TokenGroups(n_groups, size, None, None)
    sorted_gid = group_id.gather(1, order)
    start = torch.cumsum(counts, 1) - counts
    pos = ar[None, :] - start.gather(1, sorted_gid)
    slot = sorted_gid * size + pos  # (B, L) slot of the sorted tokens
    index = torch.zeros(b, n_groups * size, dtype=torch.long, device=dev)
    index.scatter_(1, slot, order)
    inverse = torch.empty_like(slot)
    inverse.scatter_(1, order, slot)
    valid = attn_mask = None
    if not uniform:
        valid = torch.zeros(b, n_groups * size, dtype=torch.bool, device=dev)
        valid.scatter_(1, slot, True)
        valid = valid.view(b * n_groups, size)
        # Real queries see only real keys; padding queries see everything (keeps softmax finite).
        attn_mask = (valid[:, None, :] | ~valid[:, :, None])[:, None]
    return TokenGroups(n_groups, size, index, inverse, valid, attn_mask)


def grid_groups(token_index: torch.Tensor, grid: tuple[int, int, int]) -> tuple[TokenGroups, TokenGroups]:
    """Plane (same z) and axis (same y, x) groups for tokens with raster indices (B, L)."""
    gz, gy, gx = grid
    plane_id = token_index // (gy * gx)
    axis_id = token_index % (gy * gx)
    return group_tokens(plane_id, gz), group_tokens(axis_id, gy * gx)


class MATB(nn.Module):
    """Pre-norm MATB: h = x + FC([axis_attn(LN x); plane_attn(LN x)]); out = h + MLP(LN h).

    ``shared_qkv=True`` (the presets): both streams read one q/k/v projection and differ only in
    which tokens each query may see; the FC (2E -> E) is their joint output projection. This keeps
    a MATB's linear cost at 13 E^2 per token, close to a ViT block's 12 E^2, so the grouped
    attention's saving is not spent on projections. ``shared_qkv=False`` gives each stream its own
    projection (16 E^2 per token).
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, shared_qkv: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.shared_qkv = shared_qkv
        self.norm1 = nn.LayerNorm(dim)
        # one GEMM for the streams' q, k, v: [q,k,v] shared, or [plane q,k,v | axis q,k,v]
        self.qkv = nn.Linear(dim, (3 if shared_qkv else 6) * dim, bias=qkv_bias)
        self.fuse = nn.Linear(2 * dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def stream_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, L, 3C) q/k/v each stream reads: one tensor twice (shared) or the two halves."""
        qkv = self.qkv(self.norm1(x))
        return (qkv, qkv) if self.shared_qkv else qkv.chunk(2, dim=-1)

    def _stream(self, qkv: torch.Tensor, groups: TokenGroups) -> torch.Tensor:
        """Attention inside each group -> (B * G, M, C) in grouped order (padding slots included)."""
        c = qkv.shape[-1] // 3
        g = groups.gather(qkv)  # (B*G, M, 3C)
        bg, m, _ = g.shape
        q, k, v = g.view(bg, m, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, groups.attn_mask)
        return out.transpose(1, 2).reshape(bg, m, c)

    def stream_outputs(self, x: torch.Tensor, plane: TokenGroups, axis: TokenGroups) -> tuple[torch.Tensor, torch.Tensor]:
        """The plane and axis streams' attention outputs (B, L, C) each, before the fusing FC."""
        b = x.shape[0]
        qkv_plane, qkv_axis = self.stream_qkv(x)
        return plane.scatter(self._stream(qkv_plane, plane), b), axis.scatter(self._stream(qkv_axis, axis), b)

    def forward(self, x: torch.Tensor, plane: TokenGroups, axis: TokenGroups) -> torch.Tensor:
        h_plane, h_axis = self.stream_outputs(x, plane, axis)
        x = x + self.fuse(torch.cat([h_axis, h_plane], dim=-1))
        return x + self.mlp(self.norm2(x))

    def query_attention(
        self, x: torch.Tensor, plane: TokenGroups, axis: TokenGroups, query: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights (B, H, L) of token ``query`` (a position in the L tokens) in each stream.

        Only the query's row is computed, from the q/k/v the streams use, over the keys of its own
        group; every other token gets exactly 0. Per head, ``weights @ v`` is the query's row of
        :meth:`stream_outputs`. This is what makes the two streams visible (``train/attention.py``).
        """
        qkv_plane, qkv_axis = self.stream_qkv(x)
        return self._query_row(qkv_plane, plane, query), self._query_row(qkv_axis, axis, query)

    def _query_row(self, qkv: torch.Tensor, groups: TokenGroups, query: int) -> torch.Tensor:
        b, n, c3 = qkv.shape
        c, h = c3 // 3, self.num_heads
        # the query's slot in the flattened groups, hence its group and the tokens of that group
        slot = groups.inverse[:, query] if groups.inverse is not None else torch.full((b,), query, device=qkv.device)
        group = slot // groups.size
        members = group[:, None] * groups.size + torch.arange(groups.size, device=qkv.device)  # (B, M) slots
        tokens = groups.index.gather(1, members) if groups.index is not None else members  # (B, M) token ids
        q = qkv[torch.arange(b, device=qkv.device), query, :c].float().view(b, h, 1, c // h)
        k = qkv.gather(1, tokens[..., None].expand(-1, -1, c3))[..., c : 2 * c].float()
        k = k.view(b, groups.size, h, c // h).transpose(1, 2)  # (B, H, M, d)
        scores = (q * (c // h) ** -0.5) @ k.transpose(-2, -1)  # (B, H, 1, M)
        if groups.valid is not None:  # padding slots are no keys
            valid = groups.valid.view(b, groups.n_groups, groups.size)[torch.arange(b, device=qkv.device), group]
            scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1)[:, :, 0]  # (B, H, M); padding slots are exactly 0
        out = weights.new_zeros(b, h, n)
        return out.scatter_add_(2, tokens[:, None, :].expand(-1, h, -1), weights)
