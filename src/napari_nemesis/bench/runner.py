"""``run_benchmark``: the machine's description, then every enabled section in turn, then the targets."""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .sections import BenchContext, Log, enabled_sections, no_log


def run_benchmark(
    quick: bool = False,
    device: str = "cpu",
    presets: list[str] | None = None,
    heavy_presets: list[str] | None = None,
    repeats: int | None = None,
    scan_sizes_xyz: list[tuple[int, int, int]] | None = None,
    scan_jobs: list[tuple[str, str]] | None = None,
    workdir: str | os.PathLike | None = None,
    sampling: bool = True,
    scans: bool = True,
    log: Log = no_log,
    **switches: bool,
) -> dict[str, Any]:
    """Run every enabled section and return the results as one JSON-able dict.

    ``presets`` get the FLOP count and the encoder comparison; ``heavy_presets`` the train step.
    Defaults: full run ``paper`` and ``small`` everywhere; ``quick``: ``small`` for the heavy parts,
    fewer repeats, smaller scans. ``scans`` / ``sampling`` (and ``**switches``, by section name,
    see ``sections.SECTIONS``) turn sections off or on. ``workdir`` keeps the synthetic scans and the
    sampling cache (default: a temporary folder, removed afterwards).
    """
    from ..train.runtime import resolve_device
    from .env import environment
    from .report import targets
    from .whole_scan import FULL_SCAN_SIZES_XYZ, QUICK_SCAN_SIZES_XYZ

    sections = enabled_sections({"scans": scans, "sampling": sampling, **switches})
    dev = resolve_device(device)
    t_start = time.perf_counter()
    presets = presets or ["paper", "small"]
    res: dict[str, Any] = environment(dev)
    res["mode"] = "quick" if quick else "full"
    res["repeats"] = repeats or (3 if quick else 5)
    sizes = scan_sizes_xyz or (QUICK_SCAN_SIZES_XYZ if quick else FULL_SCAN_SIZES_XYZ)
    scratch = tempfile.TemporaryDirectory(prefix="nemesis-bench-") if workdir is None else contextlib.nullcontext(workdir)
    with scratch as wd:
        ctx = BenchContext(
            device=dev, quick=quick, presets=list(presets),
            heavy_presets=list(heavy_presets or (["small"] if quick else presets)),
            repeats=res["repeats"], workdir=Path(wd), scan_sizes_xyz=[tuple(s) for s in sizes],
            scan_jobs=list(scan_jobs or [("infer", "small"), ("infer_patch", "small"),
                                         ("reconstruct", "small" if quick else "paper"),
                                         ("triage", "small"), ("similar", "small" if quick else "paper")]),
            log=log,
        )
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        for section in sections:
            importlib.import_module(section.module).run(ctx, res)
    res["targets"] = targets(res)
    res["benchmark_seconds"] = time.perf_counter() - t_start
    return res
