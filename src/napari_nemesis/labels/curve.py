"""The label-efficiency curve: cross-validated AUROC against the number of labelled superpatches.

Do more labels still help? :func:`label_curve` answers it on a labelling project's own labels,
the paper's "10 % of the labels" claim made visible on the user's data:

1. The labelled superpatches are read from the sidecars (``training._snapshot``) and encoded
   **once** by the frozen encoder (mean token, as ``nemesis labels train --mode linear`` does);
   a ``cache`` dict keeps those features between calls, so a refresh after new labels encodes only
   the new superpatches.
2. The cross-validation folds are ``training.plan_folds``'s (whole scans held out when the labels
   come from several scans, superpatches otherwise): every point is scored on the same held-out
   superpatches, all of them.
3. For each seed, each fold's training superpatches are put in a seeded random order; the head for
   size ``n`` is fitted (``train.heads_fit.fit_head``, the linear probe's recipe) on the first
   ``n`` of them, so the subsets are nested: the 4 labels are inside the 8. ``n`` goes up to the
   smallest fold's training set (every point then uses every fold).
4. The out-of-fold probabilities of a (seed, size) are pooled over the folds and scored: AUROC
   pooled over the (superpatch, organ) pairs of the organs whose labels have both classes (the
   curve; an organ present everywhere or nowhere would only test that the head learnt how common
   it is), the mean of the per-organ AUROCs (``train.metrics.presence_metrics``) and each organ's
   own AUROC where its labels have both classes (``null`` where they do not).

Each point gives the mean over seeds, the spread (standard deviation, minimum, maximum) and the
seeds' values; ``trend`` compares the last step of the curve with that spread: a rise larger than
the spread says more labels still help. Too few labels, or labels of one class only, give a
result with ``status`` and a one-line ``message`` (no exception), so a live plot can say it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NemesisCheckpointError, NemesisInputError
from ..train.events import CancelFn, ProgressFn, check_cancel, emit
from .project import LabelProject

__all__ = ["label_curve", "default_sizes", "curve_trend", "CURVE_FORMAT", "MIN_TRAIN", "STATUSES"]

CURVE_FORMAT = "napari-nemesis/label-curve"
#: The smallest training set a fold may have for a curve: two sizes (1 and 2 labels) at least.
MIN_TRAIN = 2
#: ``status`` values: a curve; too few labels for the folds; one class only (AUROC undefined).
STATUSES = ("ok", "too_few_labels", "one_class")
#: At most this many sizes by default (spaced evenly on a log scale).
DEFAULT_POINTS = 7
#: Below this spread (AUROC) the seeds are taken to agree to this much anyway (one seed, or luck).
MIN_SPREAD = 0.01


def default_sizes(max_train: int, points: int = DEFAULT_POINTS) -> list[int]:
    """Training-set sizes for the curve: from 2 (1 below 4 labels) to ``max_train``, about evenly
    spaced on a log scale, ``max_train`` always the last."""
    if max_train < 1:
        return []
    start = 2 if max_train >= 4 else 1
    values = np.geomspace(start, max_train, num=max(1, min(points, max_train - start + 1)))
    return sorted({int(round(v)) for v in values} | {int(max_train)})


def _load_model(model):
    from ..model import NemesisMAE, load_checkpoint
    from ..weights import default_checkpoint_path

    if isinstance(model, NemesisMAE):
        return model, getattr(model, "checkpoint_path", None)
    path = Path(model) if model is not None else default_checkpoint_path()
    return load_checkpoint(path), path


def _stats(values: list[float | None]) -> dict[str, Any]:
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    arr = np.asarray(defined)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max()),
            "n": len(defined)}


def _pooled_auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """AUROC over every (superpatch, organ) pair given; None when they hold one class only."""
    from sklearn.metrics import roc_auc_score

    t = np.asarray(y_true).ravel().astype(int)
    if t.min() == t.max():
        return None
    return float(roc_auc_score(t, np.asarray(y_prob, dtype=np.float64).ravel()))


def curve_trend(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Do more labels still help? The last step of the curve against the spread over seeds.

    ``gain``: pooled AUROC of the last point minus the one before; ``per_doubling``: that gain per
    doubling of the labels; ``spread``: the larger of the two points' standard deviations over
    seeds (at least :data:`MIN_SPREAD`). ``more_labels_help``: True when the gain exceeds the
    spread, False when it is within it (flat), None when it falls by more (noise) or there are
    fewer than two defined points. ``hint``: the same in one sentence.
    """
    defined = [p for p in points if p.get("auroc_mean") is not None]
    if len(defined) < 2:
        return {"gain": None, "per_doubling": None, "spread": None, "from_labelled": None, "to_labelled": None,
                "more_labels_help": None, "hint": "too few points for a trend yet"}
    a, b = defined[-2], defined[-1]
    gain = b["auroc_mean"] - a["auroc_mean"]
    spread = max(MIN_SPREAD, a.get("auroc_std") or 0.0, b.get("auroc_std") or 0.0)
    per_doubling = gain / math.log2(b["labelled"] / a["labelled"])
    step = f"from {a['labelled']} to {b['labelled']} labels the AUROC moved {gain:+.3f}"
    if gain > spread:
        verdict = True
        hint = f"still rising: {step}, more than the spread over seeds (±{spread:.3f}); more labels should still help"
    elif gain >= -spread:
        verdict = False
        hint = (f"flat: {step}, within the spread over seeds (±{spread:.3f}); more labels like these help little "
                "now (label where the probe is unsure, or other scans)")
    else:
        verdict = None
        hint = f"unclear: {step}, a fall larger than the spread (±{spread:.3f}); the labels are still too few to tell"
    return {"gain": float(gain), "per_doubling": float(per_doubling), "spread": float(spread),
            "from_labelled": int(a["labelled"]), "to_labelled": int(b["labelled"]), "more_labels_help": verdict,
            "hint": hint}


def _empty_point(n: int, seeds: int, organs) -> dict[str, Any]:
    return {"labelled": int(n), "auroc_mean": None, "auroc_std": None, "auroc_min": None, "auroc_max": None,
            "seeds": 0, "aurocs": [None] * seeds, "auroc_macro_mean": None, "auroc_macro_std": None,
            "per_organ": {o: None for o in organs}}


def label_curve(
    project: LabelProject | str | os.PathLike,
    model=None,
    sizes: list[int] | None = None,
    seeds: int = 3,
    folds: int = 5,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    batch: int = 8,
    seed: int = 0,
    device: str = "auto",
    bf16: bool = False,
    cache: dict | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """The label-efficiency curve of ``project`` (see the module docstring); the result dict.

    ``model``: the frozen encoder (a ``NemesisMAE``, a checkpoint path, or None for the bundled
    weights). ``sizes``: training-set sizes (default :func:`default_sizes`; sizes above the
    smallest fold's training set are left out and listed in ``sizes_left_out``). ``seeds``: random
    orders per size. ``folds``, ``epochs``, ``lr``, ``weight_decay``, ``batch``: as ``nemesis labels
    train --mode linear`` (200 full-batch steps, lr 3e-3 by default). ``cache``: a dict kept by the
    caller, features by (encoder, scan voxels, superpatch index, grid). ``progress`` gets ``start``
    (``total`` steps: features to encode + heads to fit), ``stage``, ``step`` and one ``point``
    event per finished size (``point``: that point's dict), then ``end``; ``cancel()`` is checked
    between features batches and between fits (``NemesisCancelled``).
    """
    import torch

    from ..train.heads_fit import fit_head, head_optimizer
    from ..train.metrics import presence_metrics
    from ..train.probe import ProbeHead, encode_features, encoder_digest, head_probabilities
    from ..train.runtime import resolve_device, single_thread
    from .training import _Patches, _snapshot, plan_folds

    t0 = time.perf_counter()
    if seeds < 1 or folds < 2 or batch < 1 or (epochs is not None and epochs < 1):
        raise NemesisInputError("label curve: seeds, epochs and batch must be positive and folds at least 2")
    if sizes is not None and any(int(n) < 1 for n in sizes):
        raise NemesisInputError(f"label curve: sizes {list(sizes)} must be positive numbers of labels")
    if not isinstance(project, LabelProject):
        project = LabelProject.open(project)
    organs = list(project.organs)
    steps = int(epochs) if epochs is not None else 200
    rate = float(lr) if lr is not None else 3e-3
    options = {"seeds": int(seeds), "folds": int(folds), "epochs": steps, "lr": rate, "weight_decay": weight_decay,
               "batch": batch, "seed": seed, "device": device, "bf16": bf16,
               "sizes": None if sizes is None else [int(n) for n in sizes]}
    result: dict[str, Any] = {
        "format": CURVE_FORMAT, "project": str(project.root), "organs": organs, "status": "ok", "message": "",
        "n_labelled": 0, "n_scans": 0, "positives": {o: 0 for o in organs}, "estimate": None, "cv_over": None,
        "cv_folds": 0, "held_out": 0, "organs_scored": [], "max_labelled": 0, "sizes_left_out": [], "seeds": int(seeds), "points": [],
        "trend": curve_trend([]), "checkpoint": None, "encoder_sha256": None, "features_computed": 0,
        "features_cached": 0, "seconds": 0.0, "options": options,
    }

    def finish(status: str, message: str) -> dict[str, Any]:
        result["status"], result["message"] = status, message
        result["seconds"] = time.perf_counter() - t0
        emit(progress, "end", status=status, message=message, n_points=len(result["points"]))
        return result

    labelled = sum(row["labelled"] for row in project.status()["scans"])
    if labelled == 0:
        return finish("too_few_labels", f"{project.root}: no labelled superpatches yet; label at least "
                      f"{MIN_TRAIN + 1} to see how the AUROC grows with them")
    snapshot, _ = _snapshot(project, read_images=False)
    items = snapshot["items"]
    y = np.asarray([it["presence"] for it in items], dtype=np.float32)
    groups = [it["scan"] for it in items]
    result.update(n_labelled=len(items), n_scans=len(snapshot["scans"]),
                  positives=dict(zip(organs, y.sum(0).astype(int).tolist())))
    plan, estimate = plan_folds(groups, folds, seed)
    max_train = min((len(tr) for tr, _ in plan), default=0)
    result.update(estimate=estimate["estimate"], cv_over=estimate["cv_over"], cv_folds=estimate["cv_folds"],
                  held_out=int(sum(len(te) for _, te in plan)), max_labelled=int(max_train))
    if max_train < MIN_TRAIN:
        return finish("too_few_labels", f"{len(items)} labelled superpatch(es) in {len(snapshot['scans'])} scan(s): "
                      f"too few for a curve (each cross-validation fold must train on at least {MIN_TRAIN} and hold "
                      f"out the rest; the smallest fold trains on {max_train}); label more")
    wanted = sorted({int(n) for n in sizes}) if sizes is not None else default_sizes(max_train)
    sizes_used = [n for n in wanted if n <= max_train]
    result["sizes_left_out"] = [n for n in wanted if n > max_train]
    if not sizes_used:
        return finish("too_few_labels", f"every size asked ({', '.join(map(str, wanted))}) is above the smallest "
                      f"fold's {max_train} training superpatches; ask for smaller sizes or label more")
    held = np.concatenate([te for _, te in plan])  # every labelled superpatch, once
    scored = [k for k in range(len(organs)) if 0 < y[held, k].sum() < len(held)]
    result["organs_scored"] = [organs[k] for k in scored]
    if not scored:
        result["points"] = [_empty_point(n, seeds, organs) for n in sizes_used]
        return finish("one_class", "no organ is both present and absent among the labelled superpatches (each "
                      "organ has one answer everywhere): AUROC is undefined; label superpatches where organs differ")

    # ---- features, once ---------------------------------------------------------------------
    encoder, checkpoint = _load_model(model)
    if encoder.cfg.superpatch != project.superpatch:
        raise NemesisCheckpointError(f"{checkpoint or 'the model'}: the model takes {encoder.cfg.superpatch}^3 "
                                     f"superpatches but the project's labels are on {project.superpatch}^3; use a "
                                     "matching checkpoint")
    digest = encoder_digest(encoder)
    result.update(checkpoint=None if checkpoint is None else str(checkpoint), encoder_sha256=digest)
    dev = resolve_device(device)
    sha = {s["id"]: s["voxel_sha256"] for s in snapshot["scans"]}
    grid_key = (project.superpatch, tuple(project.spacing_zyx))
    keys = [(digest, sha[it["scan"]], int(it["index"]), grid_key) for it in items]
    store = cache if cache is not None else {}
    todo = [k for k, key in enumerate(keys) if key not in store]
    fits = len(sizes_used) * int(seeds) * len(plan)
    total = len(todo) + fits
    emit(progress, "start", step=0, total=total, n_labelled=len(items), scans=len(snapshot["scans"]),
         folds=len(plan), sizes=sizes_used, seeds=int(seeds), estimate=estimate["estimate"], device=str(dev),
         features=len(todo))
    if todo:
        emit(progress, "stage", name=f"features of {len(todo)} superpatch(es)")
        patches = _Patches(snapshot, since="it was labelled",
                           advice="its labels belong to the old voxels; label it again")
        done = 0
        for start in range(0, len(todo), batch):
            check_cancel(cancel, "label curve")
            chunk = todo[start:start + batch]
            feats = encode_features(encoder, (patches(items[k]) for k in chunk), batch, dev, bf16)
            for k, f in zip(chunk, feats):
                store[keys[k]] = f
            done += len(chunk)
            emit(progress, "step", step=done, total=total, stage="features")
    features = np.stack([store[key] for key in keys]).astype(np.float32)
    result.update(features_computed=len(todo), features_cached=len(items) - len(todo))

    # ---- heads on nested subsets --------------------------------------------------------------
    emit(progress, "stage", name=f"{fits} heads ({len(sizes_used)} sizes x {seeds} seeds x {len(plan)} folds)")
    orders = {(s, f): np.random.default_rng([seed, s, f]).permutation(tr)
              for s in range(seeds) for f, (tr, _) in enumerate(plan)}
    defined_organs = {organs[k] for k in scored}
    x_all = torch.from_numpy(features)
    y_all = torch.from_numpy(y)
    step = len(todo)
    points = []
    for n in sizes_used:
        pooled, macro = [], []
        organ_values: dict[str, list[float | None]] = {o: [] for o in organs}
        for s in range(seeds):
            oof = np.zeros_like(y)
            for f, (_tr, te) in enumerate(plan):
                check_cancel(cancel, "label curve")
                sub = orders[(s, f)][:n]
                torch.manual_seed(seed * 100003 + s * 1009 + f * 101 + n)
                head = ProbeHead(features.shape[1], len(organs))
                opt = head_optimizer(head, rate, weight_decay)
                xs, ys = x_all[sub], y_all[sub]
                with single_thread():
                    fit_head(head, opt, lambda _step: (xs, ys), steps)
                with torch.no_grad():
                    oof[te] = head_probabilities(head, features[te])
                step += 1
                emit(progress, "step", step=step, total=total, stage="heads", labelled=n, seed=s, fold=f)
            pooled.append(_pooled_auroc(y[np.ix_(held, scored)], oof[np.ix_(held, scored)]))
            m = presence_metrics(y[held], oof[held], organs)
            macro.append(m["auroc_mean"])
            for o in organs:
                organ_values[o].append(m["per_organ"][o]["auroc"])
        st, ms = _stats(pooled), _stats(macro)
        per_organ = {}
        for o in organs:
            os_ = _stats(organ_values[o])
            per_organ[o] = None if o not in defined_organs else {"auroc_mean": os_["mean"], "auroc_std": os_["std"]}
        point = {"labelled": int(n), "auroc_mean": st["mean"], "auroc_std": st["std"], "auroc_min": st["min"],
                 "auroc_max": st["max"], "seeds": st["n"], "aurocs": pooled, "auroc_macro_mean": ms["mean"],
                 "auroc_macro_std": ms["std"], "per_organ": per_organ}
        points.append(point)
        result["points"] = points
        emit(progress, "point", point=point, done=len(points), of=len(sizes_used))
    result["trend"] = curve_trend(points)
    last = points[-1]
    shown = "-" if last["auroc_mean"] is None else f"{last['auroc_mean']:.3f}"
    return finish("ok", f"{len(points)} points from {sizes_used[0]} to {sizes_used[-1]} labelled superpatches "
                  f"({estimate['estimate']}, {seeds} seed(s)); AUROC {shown} at {last['labelled']}; "
                  f"{result['trend']['hint']}")
