"""How every contender is timed: alternating inside each repeat, median after untimed warm-up."""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, dict[str, Any]]:
    """Median wall time of each contender; within every repeat each contender runs once, in turn
    (forwards in even repeats, backwards in odd ones), after ``warmup`` untimed rounds. Alternating
    spreads the machine's drift (clock, caches, other load) over all contenders alike.

    Returns ``{name: {"median_s", "times_s"}}`` (plus ``"flops"`` for a contender that carries a
    ``flops`` attribute).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(1, repeats)):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))  # nobody always goes first
        for k in order:
            sync(device)
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "times_s": [round(t, 5) for t in v],
                **({"flops": fns[k].flops} if hasattr(fns[k], "flops") else {})} for k, v in times.items()}


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is worth measuring: a CUDA card with bf16, or a CPU with native bf16 (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - builds without oneDNN
        return False


def autocast(device: torch.device, dtype: str):
    """bf16 autocast for ``dtype == "bf16"``, else a no-op context (fp32)."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
