"""Measure how fast a prepared cache yields random pretraining superpatches (one process).

(Formerly ``napari_nemesis.data.bench_sampling``, which still re-exports it.)

``python -m napari_nemesis.bench.sampling_rate CACHE [--seconds 2] [--repeats 5]`` prints one
JSON object.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from ..data.datasets import SuperpatchCache, open_dataset

__all__ = ["measure_sampling_rate"]


def measure_sampling_rate(
    cache: SuperpatchCache | str | os.PathLike,
    seconds: float = 2.0,
    repeats: int = 5,
    seed: int = 0,
    case_ids: Sequence[str] | None = None,
    superpatch: int | None = None,
) -> dict[str, Any]:
    """Random superpatches per second from ``cache`` with :meth:`SuperpatchCache.sample`.

    Runs ``repeats`` timed rounds of about ``seconds`` each (after one warm-up sample) and
    returns ``{"median_per_s", "rates_per_s", "superpatch", "samples", "seconds", "cases"}``.
    """
    if not isinstance(cache, SuperpatchCache):
        cache = open_dataset(cache, superpatch=superpatch or 128) if superpatch else \
            SuperpatchCache(cache)
    elif superpatch and superpatch != cache.superpatch:
        cache = SuperpatchCache(cache.path, superpatch)
    rng = np.random.default_rng(seed)
    cache.sample(rng, case_ids)  # warm-up: opens the memory maps
    rates, total = [], 0
    for _ in range(max(1, int(repeats))):
        n = 0
        t0 = time.perf_counter()
        while True:
            cache.sample(rng, case_ids)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        rates.append(n / dt)
        total += n
    return {
        "median_per_s": float(np.median(rates)),
        "rates_per_s": [round(r, 2) for r in rates],
        "superpatch": cache.superpatch,
        "samples": total,
        "seconds": float(seconds),
        "cases": len(case_ids) if case_ids is not None else len(cache.case_ids),
    }


def _main(argv=None) -> int:  # pragma: no cover - thin command wrapper
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m napari_nemesis.bench.sampling_rate")
    p.add_argument("cache")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--superpatch", type=int, default=None)
    a = p.parse_args(argv)
    res = measure_sampling_rate(a.cache, a.seconds, a.repeats, superpatch=a.superpatch)
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
