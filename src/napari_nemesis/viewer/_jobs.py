"""The work behind each button, as functions a worker thread runs: core calls only, no Qt.

Each job takes ``cancel`` (the core's cancel check) and ``report`` (the core's progress events)
and returns or yields plain results; :mod:`._workers` runs it and hands the results to the GUI
thread. The computations are the core functions the CLI calls: ``train.prepare_scan``,
``train.infer_scan``, ``train.iter_reconstruction`` and ``train.attention``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import NemesisInputError
from ._models import Geometry, ModelStore, WeightsChoice, weights_geometry


@dataclass
class Probabilities:
    """Organ probabilities of every superpatch of a scan, and what produced them."""

    values: np.ndarray  # (n, K)
    organs: list[str]
    threshold: float
    device: str
    weights: WeightsChoice


class ReconstructionTargets:
    """The arrays a reconstruction writes into, readied by the job's thread, not the GUI's.

    The scene hands over the arrays its layers hold where their shape fits (``reuse``) and the
    fill value of each role; :meth:`ready` (worker thread) resets those in place or allocates new
    ones. Resetting or allocating four whole-scan arrays is hundreds of MB of memory traffic: on
    the GUI thread it stalled the event loop by up to 0.7 s. The scene gives new arrays to its
    layers when it next redraws them (``arrays`` is set once they are ready).
    """

    def __init__(self, shape, fills: dict[str, float], reuse: dict[str, np.ndarray] | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.fills = dict(fills)
        self.reuse = {role: a for role, a in (reuse or {}).items() if tuple(a.shape) == self.shape}
        self.arrays: dict[str, np.ndarray] | None = None

    def ready(self) -> dict[str, np.ndarray]:
        if self.arrays is None:
            arrays = {}
            for role, fill in self.fills.items():
                array = self.reuse.get(role)
                if array is None:
                    array = np.full(self.shape, fill, dtype=np.float32)
                else:
                    array[...] = fill
                arrays[role] = array
            self.arrays = arrays
        return self.arrays


@dataclass
class ReconstructionPiece:
    """One reconstructed superpatch for the layers: HU arrays cropped to its box (model spacing)."""

    item: Any  # train.scan.SuperpatchReconstruction, its arrays dropped (scores and metrics kept)
    hu: dict[str, np.ndarray] = field(default_factory=dict)  # noisy, masked, reconstruction, abs_error


def _resolved(device: str) -> str:
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


def probabilities_job(prepared, store: ModelStore, weights: WeightsChoice, device: str, batch: int, *, cancel,
                      report) -> Probabilities:
    """Per-superpatch organ probabilities of the whole scan (``train.infer_scan``)."""
    from ..train.inference import infer_scan

    model = store.model(weights.checkpoint)
    head, meta = store.probe(weights.probe)
    used = _resolved(device)
    report({"event": "stage", "name": "organ probabilities", "device": used})
    result = infer_scan(prepared.volume, model, head, list(meta["organs"]), spacing_zyx=prepared.pre.spacing_zyx,
                        threshold=float(meta.get("threshold", 0.5)), batch=int(batch), device=used,
                        progress=report, cancel=cancel)
    if tuple(result.grid.grid_shape) != tuple(prepared.grid.grid_shape):
        raise NemesisInputError(
            f"{prepared.name}: the probabilities came on a {result.grid.grid_shape} grid, the scan's is "
            f"{prepared.grid.grid_shape}; re-open the scan")
    return Probabilities(np.asarray(result.probabilities, dtype=np.float32), list(result.organs),
                         float(result.threshold), used, weights)


def reconstruction_job(prepared, store: ModelStore, checkpoint: str | None, strategy: str, ratio: float, noise: float,
                       seed: int, indices, device: str, batch: int, targets: ReconstructionTargets | None = None,
                       origin_zyx=(0, 0, 0), *, cancel, report):
    """Yield one :class:`ReconstructionPiece` per superpatch (``train.iter_reconstruction``), in HU.

    With ``targets`` (the layers' arrays, whose voxel (0, 0, 0) is the model-spacing voxel
    ``origin_zyx``), the arrays are readied and each superpatch is written into them here, off
    the GUI thread, and the piece carries only its scores: the GUI thread then just redraws."""
    from ..data import HU_WINDOW
    from ..train.inference import to_hu
    from ..train.scan import iter_reconstruction

    model = store.model(checkpoint)
    used = _resolved(device)
    report({"event": "stage", "name": "reconstruction", "device": used})
    arrays = targets.ready() if targets is not None else None
    stream = iter_reconstruction(prepared, model, strategy, float(ratio), float(noise), int(seed), indices=indices,
                                 batch=int(batch), device=used, cancel=cancel, progress=report)
    width = HU_WINDOW[1] - HU_WINDOW[0]
    for item in stream:
        hu = {"noisy": to_hu(item.noisy), "masked": to_hu(item.masked), "reconstruction": to_hu(item.recon),
              "abs_error": (item.error * np.float32(width)).astype(np.float32)}
        item.clean = item.noisy = item.masked = item.recon = item.error = item.masked_voxels = None
        if arrays is not None:
            start = np.asarray(item.box.start) - np.asarray(origin_zyx)
            slices = tuple(slice(int(a), int(a) + int(n)) for a, n in zip(start, item.box.shape))
            for role, array in hu.items():
                if role in arrays:
                    arrays[role][slices] = array
            hu = {}
        yield ReconstructionPiece(item, hu)


class AttentionCache:
    """The encoder pass of one superpatch, kept so each cursor move costs one attention row."""

    def __init__(self) -> None:
        self.prepared = None
        self.key = None
        self.value = None


def attention_job(prepared, store: ModelStore, checkpoint: str | None, index: int, token_zyx, device: str,
                  cache: AttentionCache, *, cancel, report):
    """The last encoder block's plane/axis attention of one token of superpatch ``index``."""
    from ..train.attention import SuperpatchAttention

    model = store.model(checkpoint)
    used = _resolved(device)
    key = (int(index), checkpoint, used)
    if cache.prepared is not prepared or cache.key != key:
        report({"event": "stage", "name": "encoding the superpatch", "device": used})
        cache.value = SuperpatchAttention(model, prepared.superpatch(index), block=-1, device=used)
        cache.prepared, cache.key = prepared, key
    return int(index), cache.value.maps(token_zyx)
