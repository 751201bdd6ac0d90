"""MATB attention maps: where one token of a superpatch looks, in the plane and the axis stream.

In the inference setting (every token visible, no noise) the encoder runs up to the chosen block;
that block's :meth:`~napari_nemesis.model.matb.MATB.query_attention` gives the query token's
attention weights in each stream from the very q/k/v the block uses. Averaged over heads, the
plane map is non-zero only on the query's z slice and the axis map only on its (y, x) column: the
paper's two streams, made visible. A :class:`SuperpatchAttention` runs the encoder once per
superpatch; each query afterwards costs one block's q/k/v and one attention row (cheap enough to
follow the cursor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NemesisInputError
from ..model import NemesisMAE
from ..model.matb import grid_groups
from .runtime import resolve_device


@dataclass
class AttentionMaps:
    """One query token's attention weights over the superpatch's token grid (gz, gy, gx).

    ``plane`` / ``axis``: mean over heads, each summing to 1, exactly 0 outside the query's slice
    (plane) or column (axis). ``plane_heads`` / ``axis_heads``: the same per head (H, gz, gy, gx).
    ``block``: the encoder block, counted from 0.
    """

    plane: np.ndarray
    axis: np.ndarray
    plane_heads: np.ndarray
    axis_heads: np.ndarray
    token_zyx: tuple[int, int, int]
    block: int
    device: str = "cpu"  # the device that ran the model

    def to_voxels(self, stream: str, patch: int) -> np.ndarray:
        """``stream``'s map painted over each token's patch voxels: (S, S, S) for a superpatch."""
        grid = {"plane": self.plane, "axis": self.axis}[stream]
        return paint_tokens(grid, patch)


def paint_tokens(token_map: np.ndarray, patch: int) -> np.ndarray:
    """A (gz, gy, gx) per-token map -> (gz*p, gy*p, gx*p) voxels, each token's value over its patch."""
    out = np.asarray(token_map)
    for axis in range(3):
        out = np.repeat(out, patch, axis=axis)
    return out


def resolve_block(model: NemesisMAE, block: int) -> int:
    """``block`` as an index from 0 (negative counts from the end, as in Python)."""
    depth = len(model.blocks)
    if not -depth <= int(block) < depth:
        raise NemesisInputError(f"block {block} is outside the encoder's {depth} blocks (0..{depth - 1} or -{depth}..-1)")
    return int(block) % depth


def check_token(model: NemesisMAE, token_zyx) -> tuple[int, int, int]:
    """Validate a (z, y, x) token position on the model's token grid."""
    grid = model.grid
    try:
        token = tuple(int(t) for t in token_zyx)
    except (TypeError, ValueError):
        raise NemesisInputError(f"token {token_zyx!r}: give three integers z y x") from None
    if len(token) != 3 or any(not 0 <= t < g for t, g in zip(token, grid)):
        shown = " ".join(str(t) for t in token)
        raise NemesisInputError(
            f"token {shown} is outside the {'x'.join(map(str, grid))} token grid (0..{grid[0] - 1} per axis, z y x)"
        )
    return token  # type: ignore[return-value]


class SuperpatchAttention:
    """The input of one encoder block for one superpatch, ready to answer attention queries.

    ``superpatch``: (S, S, S) in window units [0, 1] (numpy or torch), as the model sees it.
    """

    def __init__(self, model: NemesisMAE, superpatch, block: int = -1, device: str = "cpu") -> None:
        s = model.cfg.superpatch
        if isinstance(superpatch, torch.Tensor):
            x = superpatch.detach().float().cpu()
        else:
            x = torch.from_numpy(np.asarray(superpatch, dtype=np.float32))
        if tuple(x.shape) != (s, s, s):
            raise NemesisInputError(f"attention needs one superpatch of shape ({s}, {s}, {s}), got {tuple(x.shape)}")
        self.model = model
        self.block = resolve_block(model, block)
        self.device = resolve_device(device)
        model.to(self.device).eval()
        with torch.inference_mode():
            x = x.to(self.device)[None, None]
            tokens = model.patch_embed(model.patchify(x)) + model.pos_embed  # every token visible, no noise
            index = torch.arange(model.cfg.num_patches, device=self.device)[None]
            self.plane_groups, self.axis_groups = grid_groups(index, model.grid)
            for blk in model.blocks[: self.block]:
                tokens = blk(tokens, self.plane_groups, self.axis_groups)
        self.tokens = tokens  # (1, N, E): the chosen block's input

    def maps(self, token_zyx) -> AttentionMaps:
        """Attention weights of the token at ``token_zyx`` in the chosen block's two streams."""
        token = check_token(self.model, token_zyx)
        grid = self.model.grid
        query = int(np.ravel_multi_index(token, grid))
        with torch.inference_mode():
            plane, axis = self.model.blocks[self.block].query_attention(
                self.tokens, self.plane_groups, self.axis_groups, query
            )
        heads = [w[0].float().cpu().numpy().reshape(-1, *grid) for w in (plane, axis)]
        return AttentionMaps(
            plane=heads[0].mean(0), axis=heads[1].mean(0), plane_heads=heads[0], axis_heads=heads[1],
            token_zyx=token, block=self.block, device=str(self.device),
        )


def attention_maps(model: NemesisMAE, superpatch, token_zyx, block: int = -1, device: str = "cpu") -> AttentionMaps:
    """The plane- and axis-stream attention of one token of ``superpatch`` in encoder block ``block``
    (default the last), mean over heads; every token visible, no mask, no noise (inference)."""
    check_token(model, token_zyx)  # before the forward pass
    return SuperpatchAttention(model, superpatch, block, device).maps(token_zyx)


__all__ = ["AttentionMaps", "SuperpatchAttention", "attention_maps", "paint_tokens", "resolve_block", "check_token"]
