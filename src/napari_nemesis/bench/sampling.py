"""The sampling section: random superpatches per second from a prepared cache, in this process
(``bench.sampling_rate.measure_sampling_rate``) and through a DataLoader with 2 worker processes,
the way a pretraining loader draws them. The cache is prepared from the whole-scan section's
largest synthetic scan."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sections import BenchContext, Log, no_log


class SampleDataset(torch.utils.data.Dataset):
    """Random superpatches from a cache, one seeded draw per index (what a pretraining loader does)."""

    def __init__(self, cache, length: int = 10**6) -> None:
        self.cache, self.length = cache, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.cache.sample(np.random.default_rng([0, i])))


def sampling_section(scan_path: Path, workdir: Path, superpatch: int, repeats: int, seconds: float,
                     loader_samples: int, log: Log = no_log) -> dict[str, Any]:
    """Random superpatches/s from a cache prepared from ``scan_path``: ``SuperpatchCache.sample``
    in this process, and through a DataLoader with 2 worker processes."""
    from ..data import open_cache, prepare_cache
    from .sampling_rate import measure_sampling_rate

    raw = workdir / "sampling_raw"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    target = raw / "imagesTr" / "img0001.nii.gz"
    if not target.exists():
        shutil.copyfile(scan_path, target)
    log("sampling: preparing the cache (not timed)")
    prepare_cache(raw, workdir / "sampling_cache", superpatch=superpatch, include_unlabelled=True)
    cache = open_cache(workdir / "sampling_cache", superpatch)
    one = measure_sampling_rate(cache, seconds=seconds, repeats=repeats)
    log("sampling: DataLoader, 2 workers")
    loader = torch.utils.data.DataLoader(SampleDataset(cache), batch_size=1, num_workers=2, shuffle=False)
    it = iter(loader)
    for _ in range(4):  # warm-up: worker start-up and memory maps
        next(it)
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(loader_samples):
            next(it)
        rates.append(loader_samples / (time.perf_counter() - t0))
    del it, loader
    return {"one_process_per_s": one["median_per_s"], "one_process_rates": one["rates_per_s"],
            "dataloader_2_workers_per_s": statistics.median(rates),
            "dataloader_rates": [round(r, 2) for r in rates], "superpatch": superpatch,
            "source": "cache prepared from the largest synthetic scan"}


# ---- the section ----------------------------------------------------------------------------------------
def run(ctx: BenchContext, res: dict[str, Any]) -> None:
    from ..model import preset_config
    from .whole_scan import synthetic_scan_file

    superpatch = preset_config(ctx.heavy_presets[-1]).superpatch
    scan = synthetic_scan_file(ctx.workdir, ctx.scan_sizes_xyz[-1], ctx.log)
    res["sampling"] = sampling_section(scan, ctx.workdir, superpatch, ctx.repeats, 0.5 if ctx.quick else 1.0,
                                       10 if ctx.quick else 20, ctx.log)
    res["sampling_per_s"] = {"one_process": res["sampling"]["one_process_per_s"],
                             "dataloader_2_workers": res["sampling"]["dataloader_2_workers_per_s"]}


def targets(res: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    if "sampling" not in res:
        return []
    v = res["sampling"]["one_process_per_s"]
    return [("sampling > 50 /s (one process)", v, v > 50)]


def table_lines(res: dict[str, Any]) -> list[str]:
    if "sampling" not in res:
        return []
    s = res["sampling"]
    return [f"sampling (superpatches/s): one process {s['one_process_per_s']:.1f}, "
            f"DataLoader 2 workers {s['dataloader_2_workers_per_s']:.1f}"]
