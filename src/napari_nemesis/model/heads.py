"""Heads that sit on the NEMESIS encoder's tokens.

``ProbeHead`` is the superpatch head: the encoder's tokens, mean-pooled, give one vector per
superpatch, and the head turns it into one logit per class (organ presence). Patch-level and
segmentation heads, which would read the tokens unpooled, belong here too.

Saving, loading and training heads live in ``train.probe`` (the head's file format and its checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class ProbeHead(nn.Module):
    """Mean-pooled encoder tokens -> LayerNorm -> Linear(K) (logits).

    ``meta`` is the head's provenance (organs, threshold, ``encoder_sha256``, ``spacing_zyx``,
    ``superpatch``, ...) once saved or loaded, ``None`` for a head built in memory; ``path`` its file.
    Its state-dict keys (``norm.*``, ``fc.*``) are the saved head's tensor names.
    """

    def __init__(self, embed_dim: int, n_classes: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, n_classes)
        self.meta: dict[str, Any] | None = None
        self.path: Path | None = None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled))
