"""Organ-presence metrics (scikit-learn). Reconstruction quality: ``inference.ReconMetrics``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def presence_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, organ_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-organ AUROC and F1 at ``threshold``, their means, for (n, K) labels and probabilities.

    An organ with a single class in ``y_true`` (absent, or present everywhere) has AUROC ``None``
    and is left out of the mean; F1 is macro over all organs (scikit-learn, zero_division=0).
    """
    from sklearn.metrics import f1_score, roc_auc_score

    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    y_pred = (y_prob >= threshold).astype(int)
    per_organ: dict[str, dict[str, float | None]] = {}
    aurocs = []
    for k, name in enumerate(organ_names):
        col = y_true[:, k]
        auc = None
        if 0 < col.sum() < len(col):
            auc = float(roc_auc_score(col, y_prob[:, k]))
            aurocs.append(auc)
        f1 = float(f1_score(col, y_pred[:, k], zero_division=0))
        per_organ[name] = {"auroc": auc, "f1": f1, "positives": int(col.sum())}
    f1_macro = float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else 0.0
    return {
        "auroc_mean": float(np.mean(aurocs)) if aurocs else None,
        "f1_macro": f1_macro,
        "per_organ": per_organ,
        "threshold": threshold,
    }
