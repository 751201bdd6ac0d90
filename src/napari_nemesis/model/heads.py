"""Heads that sit on the NEMESIS encoder's tokens.

``ProbeHead`` is the superpatch head: the encoder's tokens, mean-pooled, give one vector per
superpatch, and the head turns it into one logit per class (organ presence). ``PatchHead`` is the
patch head: the same LayerNorm + Linear, shared by every token and applied to each one unpooled,
gives one logit per class for every 16^3 patch (one token per patch). Segmentation heads, which
would read the tokens unpooled too, belong here.

A head's *level* says which of the two it is; a saved head records it in its metadata
(``"level": "patch"``), and a head saved before levels existed is a superpatch head.
Saving, loading and training heads live in ``train.probe`` (the head's file format and its checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .levels import DEFAULT_LEVEL, HEAD_LEVELS, check_level, head_level  # noqa: F401  (their torch-free home)


class ProbeHead(nn.Module):
    """Mean-pooled encoder tokens -> LayerNorm -> Linear(K) (logits).

    ``meta`` is the head's provenance (organs, threshold, ``encoder_sha256``, ``spacing_zyx``,
    ``superpatch``, ...) once saved or loaded, ``None`` for a head built in memory; ``path`` its file.
    Its state-dict keys (``norm.*``, ``fc.*``) are the saved head's tensor names.
    """

    level = "superpatch"

    def __init__(self, embed_dim: int, n_classes: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, n_classes)
        self.meta: dict[str, Any] | None = None
        self.path: Path | None = None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled))


class PatchHead(ProbeHead):
    """Each encoder token (one per patch) -> LayerNorm -> Linear(K), the same weights for every token.

    ``forward`` takes tokens ``(..., N, E)`` (or any ``(..., E)``) and gives logits ``(..., N, K)``:
    nothing is pooled, so the logits keep the token grid (raster z, y, x order within a superpatch).
    The tensors are a superpatch head's (``norm.*``, ``fc.*``); the level in the metadata tells
    the two apart.
    """

    level = "patch"


#: level -> the head class that works at it
HEADS: dict[str, type[ProbeHead]] = {"superpatch": ProbeHead, "patch": PatchHead}
