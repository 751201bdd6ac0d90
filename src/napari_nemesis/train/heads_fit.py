"""The one loop that trains a head: AdamW steps on BCE-with-logits over presence labels.

``train.probe`` (``nemesis probe``: linear heads on frozen features, fine-tuning) and
``labels.training`` (training from a labelling project, resumable) both call :func:`fit_head`;
each keeps its own data order, seeding and what it does between steps (cancel checks, progress
events, saving a resumable state).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .runtime import autocast

#: ``batch(step)`` -> (inputs, float targets) for that step, on the net's device
BatchFn = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]


def head_optimizer(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The optimiser every head fit uses (AdamW over all of ``net``'s parameters)."""
    return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)


def fit_head(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch: BatchFn,
    steps: int,
    *,
    start: int = 0,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    clip: float | None = None,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, torch.Tensor], None] | None = None,
) -> nn.Module:
    """Train ``net`` in place for steps ``start .. steps - 1``; return it in eval mode.

    Each step: ``before_step(step)`` (may raise to stop), the batch, the forward (bf16 autocast when
    asked; the loss in float32), backward, gradient-norm clipping at ``clip`` (None: none), the
    optimiser step, then ``after_step(steps_done, loss)``.
    """
    device = torch.device(device)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    for step in range(start, steps):
        if before_step is not None:
            before_step(step)
        x, y = batch(step)
        with autocast(device, bf16):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if after_step is not None:
            after_step(step + 1, loss)
    return net.eval()
