"""Label next: which unlabelled superpatch would teach the probe most (uncertainty sampling).

The current probe's organ probabilities ``p`` (n, K) give each superpatch the mean binary entropy
``H = mean_k -(p_k log2 p_k + (1 - p_k) log2 (1 - p_k))``, 1 bit when every organ is a coin toss
and 0 when the probe is certain. Unlabelled superpatches are offered highest entropy first (ties:
lower index first), so each label goes where the probe is least sure.
"""

from __future__ import annotations

import numpy as np

from ..errors import NemesisInputError

__all__ = ["mean_binary_entropy", "rank_unlabelled", "probe_probabilities"]

_EPS = 1e-7


def mean_binary_entropy(probabilities) -> np.ndarray:
    """Mean over organs of the binary entropy (bits) of each superpatch's probabilities, (n,)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    if p.ndim != 2:
        raise NemesisInputError(f"probabilities of shape {p.shape}: expected (superpatches, organs)")
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return h.mean(axis=1)


def rank_unlabelled(store, probabilities) -> list[int]:
    """Unlabelled superpatches of ``store``, most uncertain first (``probabilities`` (n, K))."""
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[0] != store.n:
        raise NemesisInputError(f"probabilities of shape {p.shape} do not fit the {store.n} superpatches of "
                                f"{store.scan_path}; run the probe on this scan and grid")
    entropy = mean_binary_entropy(p)
    todo = np.asarray(store.indices("unlabelled"), dtype=np.intp)
    if not len(todo):
        return []
    order = np.lexsort((todo, -entropy[todo]))  # entropy descending, then index ascending
    return [int(i) for i in todo[order]]


def probe_probabilities(store, checkpoint=None, probe=None, device: str = "auto", batch: int = 2,
                        progress=None, cancel=None) -> np.ndarray:
    """The probe's organ probabilities ``(n, K)`` for the store's scan, on the store's grid.

    ``checkpoint``/``probe`` default to the bundled weights and head (with ``checkpoint`` alone,
    the head saved beside it). The head must have been trained on this encoder (checked by
    ``train.inference.infer_scan``) and for the store's superpatch size.
    """
    from ..errors import NemesisCheckpointError
    from ..model import load_checkpoint
    from ..train.inference import infer_scan
    from ..train.probe import load_probe, probe_beside
    from ..weights import default_checkpoint_path, default_probe_path

    ckpt = checkpoint or default_checkpoint_path()
    probe = probe or (probe_beside(checkpoint) if checkpoint else default_probe_path())
    model = load_checkpoint(ckpt)
    head, meta = load_probe(probe)
    if model.cfg.superpatch != store.grid.superpatch:
        raise NemesisCheckpointError(f"{ckpt}: the model takes {model.cfg.superpatch}^3 superpatches but the labels of "
                                     f"{store.scan_path} are on {store.grid.superpatch}^3")
    res = infer_scan(store.volume if store.volume is not None else store.scan_path, model, head, meta["organs"],
                     spacing_zyx=store.grid.spacing_zyx, batch=batch, device=device, progress=progress, cancel=cancel)
    return res.probabilities
