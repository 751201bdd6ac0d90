"""Organ-presence metrics (scikit-learn). Reconstruction quality: ``inference.ReconMetrics``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


#: The averaging convention of ``auroc_mean`` and ``f1_macro``, printed beside them.
MEAN_CONVENTION = "mean over the organs with both present and absent superpatches in the test split"


def presence_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, organ_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-organ AUROC and F1 at ``threshold`` and their means, for (n, K) labels and probabilities.

    Both means use one convention (:data:`MEAN_CONVENTION`): the organs that have positives and
    negatives in ``y_true`` (``organs_scored``). AUROC is undefined for the others, and their F1
    would only add zeros (an organ absent from the test split) that say nothing about the model.
    Per-organ F1 is still reported for every organ (scikit-learn, zero_division=0).
    """
    from sklearn.metrics import f1_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = (y_prob >= threshold).astype(int)
    per_organ: dict[str, dict[str, float | None]] = {}
    aurocs, f1s, scored = [], [], []
    for k, name in enumerate(organ_names):
        col = y_true[:, k]
        auc = None
        f1 = float(f1_score(col, y_pred[:, k], zero_division=0)) if len(col) else 0.0
        if 0 < col.sum() < len(col):
            auc = float(roc_auc_score(col, y_prob[:, k]))
            aurocs.append(auc)
            f1s.append(f1)
            scored.append(name)
        per_organ[name] = {"auroc": auc, "f1": f1, "positives": int(col.sum())}
    return {
        "auroc_mean": float(np.mean(aurocs)) if aurocs else None,
        "f1_macro": float(np.mean(f1s)) if f1s else None,
        "organs_scored": scored,
        "mean_over": f"{MEAN_CONVENTION} ({len(scored)} of {len(organ_names)})",
        "per_organ": per_organ,
        "threshold": threshold,
    }
