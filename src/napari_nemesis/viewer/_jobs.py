"""The kernel's jobs (preparing a scan, loading weights), as functions a worker thread runs: core
calls only, no Qt; each feature keeps its own jobs beside its controller.

Each job takes ``cancel`` (the core's cancel check) and ``report`` (the core's progress events)
and returns or yields plain results; :mod:`._workers` runs it and hands the results to the GUI
thread. The computations are the core functions the CLI calls: ``train.prepare_scan``,
``train.infer_scan``, ``train.iter_reconstruction`` and ``train.attention``.
"""

from __future__ import annotations

from typing import Any

from ._models import Geometry, ModelStore, WeightsChoice, weights_geometry


def resolved_device(device: str) -> str:
    """The device a job will run on; on the CPU, torch is left one core fewer than the machine
    has, so the GUI thread (and a software-rendered canvas) always finds a free core."""
    import os

    import torch

    from ..train.runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        want = max(1, cores - 1)
        if torch.get_num_threads() > want:
            torch.set_num_threads(want)
    return str(dev)


def prepare_job(volume, weights: WeightsChoice, store: ModelStore, *, cancel, report) -> tuple[Any, Geometry]:
    """Load the weights (their geometry) and preprocess the scan once (``train.prepare_scan``)."""
    from ..train.scan import prepare_scan

    report({"event": "stage", "name": "loading weights"})
    geometry = weights_geometry(weights, store)
    if cancel():
        from ..errors import NemesisCancelled

        raise NemesisCancelled("preparing the scan cancelled")
    report({"event": "stage", "name": "resampling"})
    prepared = prepare_scan(volume, geometry.spacing_zyx, geometry.superpatch)
    return prepared, geometry


def weights_job(weights: WeightsChoice, store: ModelStore, *, cancel, report) -> tuple[WeightsChoice, Geometry]:
    """Load (and so check) a checkpoint and a probe head, and that the head belongs to the
    checkpoint's encoder (``train.probe.check_probe_matches``); their geometry."""
    from ..train.probe import check_probe_matches

    report({"event": "stage", "name": "loading weights"})
    model = store.model(weights.checkpoint)
    head, meta = store.probe(weights.probe)
    check_probe_matches(model, meta, checkpoint=weights.checkpoint, probe=weights.probe)
    return weights, weights_geometry(weights, store)
