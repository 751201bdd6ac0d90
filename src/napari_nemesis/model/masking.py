"""Masks over the (z, y, x) token grid, one table of strategies (``MASKS``): ``random``, ``plane``,
``axis`` and ``dual``.

A mask is a BoolTensor (B, N), True = masked, tokens in raster order of (z, y, x); z is the slice
axis. Every count is exact (no Bernoulli draws), and every draw comes from the caller's
``torch.Generator``, so the same seed gives the same mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import NemesisInputError

if TYPE_CHECKING:  # torch is imported where a mask is drawn: choosers read the table without it
    import torch

#: the strategy a chooser offers first and every default names
DEFAULT_STRATEGY = "dual"


def _keep_count(n: int, ratio: float) -> int:
    """Number of visible tokens out of ``n`` at mask ``ratio`` (at least one)."""
    return max(1, min(n, int(round(n * (1.0 - ratio)))))


def _lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask, True where ``scores`` is among the k smallest along the last axis."""
    idx = scores.argsort(dim=-1)[..., :k]
    keep = scores.new_zeros(scores.shape, dtype=bool)
    keep.scatter_(-1, idx, True)
    return keep


def dual_split(ratio: float) -> tuple[float, float]:
    """Plane and axis ratios (r_p, r_a) with 1 - (1 - r_p)(1 - r_a) = ratio and r_p = r_a."""
    r = 1.0 - math.sqrt(1.0 - ratio)
    return r, r


# A drawer gets ``rand(*shape)`` (uniform draws from the caller's generator), the grid, the ratio,
# the batch and ``plane_ratio``, and returns the (B, Z*Y*X) *visible* tokens (True = kept).
Rand = Callable[..., "torch.Tensor"]


def _keep_random(rand: Rand, grid: tuple[int, int, int], ratio: float, batch: int, plane_ratio) -> torch.Tensor:
    n = grid[0] * grid[1] * grid[2]
    return _lowest_k(rand(batch, n), _keep_count(n, ratio))


def _keep_plane(rand: Rand, grid: tuple[int, int, int], ratio: float, batch: int, plane_ratio) -> torch.Tensor:
    gz, n_plane = grid[0], grid[1] * grid[2]
    keep2d = _lowest_k(rand(batch, n_plane), _keep_count(n_plane, ratio))
    return keep2d[:, None, :].expand(batch, gz, n_plane).reshape(batch, -1)


def _keep_axis(rand: Rand, grid: tuple[int, int, int], ratio: float, batch: int, plane_ratio) -> torch.Tensor:
    gz, n_plane = grid[0], grid[1] * grid[2]
    return _lowest_k(rand(batch, gz, n_plane), _keep_count(n_plane, ratio)).reshape(batch, -1)


def _keep_dual(rand: Rand, grid: tuple[int, int, int], ratio: float, batch: int, plane_ratio) -> torch.Tensor:
    gz, n_plane = grid[0], grid[1] * grid[2]
    r_p = dual_split(ratio)[0] if plane_ratio is None else float(plane_ratio)
    if not 0.0 <= r_p <= ratio:
        raise NemesisInputError(f"dual plane ratio {r_p} must be in [0, ratio={ratio}]")
    k_plane = _keep_count(n_plane, r_p)
    k_slice = min(_keep_count(n_plane, ratio), k_plane)
    plane_keep = _lowest_k(rand(batch, n_plane), k_plane)  # (B, YX)
    # Inside each slice, rank only the plane-visible positions: masked ones get a score > 1.
    scores = rand(batch, gz, n_plane) + (~plane_keep)[:, None, :].float() * 2.0
    return _lowest_k(scores, k_slice).reshape(batch, -1)


@dataclass(frozen=True)
class MaskStrategy:
    """One row of the table: what the strategy does and the function that draws it."""

    summary: str
    keep: Callable[..., "torch.Tensor"]
    baseline: bool = False  # the plain-MAE comparison, not one of NEMESIS's own masks


#: every masking strategy, in the order lists, reports and evaluations give them; the CLI's
#: ``--mask`` choices, the Reconstruction dock and the evaluations all read this table
MASKS: dict[str, MaskStrategy] = {
    "random": MaskStrategy("uniform MAE masking over the whole grid", _keep_random, baseline=True),
    "plane": MaskStrategy("one in-plane (y, x) mask shared by every z slice (tubes along z)", _keep_plane),
    "axis": MaskStrategy("an independent in-plane mask per z slice, the same count in each", _keep_axis),
    "dual": MaskStrategy("a plane mask, then an axis mask inside it: both at once", _keep_dual),
}


def mask_strategies() -> tuple[str, ...]:
    """The strategy names, read from the table now (so a strategy added to it is offered everywhere)."""
    return tuple(MASKS)


def menu_strategies() -> tuple[str, ...]:
    """The strategy names as a menu offers them: the default first, then the table's order."""
    return (DEFAULT_STRATEGY, *(s for s in MASKS if s != DEFAULT_STRATEGY))


def check_strategy(strategy: str) -> str:
    """``strategy`` if the table has it, else a NemesisInputError (a ValueError) naming the valid ones."""
    if strategy not in MASKS:
        raise NemesisInputError(f"unknown mask strategy '{strategy}'; choose one of {', '.join(MASKS)}")
    return strategy


#: the names when this module was imported (the old public name; prefer ``mask_strategies()``)
MASK_STRATEGIES = STRATEGIES = mask_strategies()


def make_mask(
    strategy: str,
    grid: tuple[int, int, int] = (8, 8, 8),
    ratio: float = 0.75,
    batch: int = 1,
    generator: torch.Generator | None = None,
    plane_ratio: float | None = None,
) -> torch.Tensor:
    """Draw a (batch, Z*Y*X) mask, True = masked.

    - ``random``: uniform MAE masking, exactly round(N * (1 - ratio)) visible tokens.
    - ``plane``: one in-plane (y, x) mask shared by every z slice (tube masking along z).
    - ``axis``: an independent in-plane mask per z slice, the same visible count in each slice.
    - ``dual``: ``plane`` at ``plane_ratio`` (default r_p with (1-r_p)^2 = 1-ratio), then inside
      each slice keep round(Y*X*(1-ratio)) of the plane-visible positions. Per-slice visible
      count is exact; the effective ratio is ``ratio``.
    """
    import torch

    spec = MASKS[check_strategy(strategy)]
    if not 0.0 <= ratio < 1.0:
        raise NemesisInputError(f"mask ratio {ratio} must be in [0, 1)")
    gz, gy, gx = (int(g) for g in grid)
    dev = generator.device if generator is not None else torch.device("cpu")

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    if ratio == 0.0:
        keep = torch.ones(batch, gz * gy * gx, dtype=torch.bool, device=dev)
    else:
        keep = spec.keep(rand, (gz, gy, gx), ratio, batch, plane_ratio)
    return ~keep


def visible_counts_per_slice(mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, Z) number of visible tokens in each z slice (useful for checks and logging)."""
    gz, gy, gx = grid
    return (~mask).reshape(mask.shape[0], gz, gy * gx).sum(-1)
