"""Moved to :mod:`napari_nemesis.bench.sampling_rate` (benchmark code lives in ``bench/``); this old path
keeps working, as a module and as ``python -m napari_nemesis.data.bench_sampling``."""

from __future__ import annotations

from ..bench.sampling_rate import _main, measure_sampling_rate

__all__ = ["measure_sampling_rate"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
