"""Organ-presence probing: frozen encoder + linear head, or fine-tuning (the paper's downstream task).

Encoder without mask or noise -> mean of tokens -> LayerNorm -> Linear(8), BCE. Trained on the
training split only, for a fixed number of epochs; the test split is used once, to report. Nothing
is chosen on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import NemesisCheckpointError, NemesisInputError
from ..model import NemesisMAE
from .events import CancelFn, ProgressFn, check_cancel, emit
from .metrics import presence_metrics
from .runtime import autocast, resolve_device

PROBE_FORMAT = "napari-nemesis/probe"


class ProbeHead(nn.Module):
    """Mean-pooled encoder tokens -> LayerNorm -> Linear(K) (logits)."""

    def __init__(self, embed_dim: int, n_classes: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, n_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(pooled))


class ProbeModel(nn.Module):
    """Encoder + head end to end (fine-tuning and whole-scan inference)."""

    def __init__(self, encoder: NemesisMAE, head: ProbeHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.encode(x).mean(1))


@dataclass
class ProbeOptions:
    mode: str = "linear"  # linear | finetune
    label_ratio: float = 1.0
    epochs: int | None = None  # default: 200 (linear, full-batch steps) / 8 (finetune)
    lr: float | None = None  # default: 3e-3 (linear) / 1e-4 (finetune)
    weight_decay: float = 1e-4
    batch: int = 8
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"
    bf16: bool = False

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (200 if self.mode == "linear" else 8)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.mode == "linear" else 1e-4)


# ---- features ----------------------------------------------------------------------------------
@torch.no_grad()
def extract_features(
    model: NemesisMAE,
    cache,
    case_ids: list[str],
    batch: int = 8,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    what: str = "features",
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Mean-pooled encoder features (n, E), presence labels (n, K) and (case, index) per superpatch."""
    device = torch.device(device)
    model = model.to(device).eval()
    total = cache.n_superpatches(case_ids)
    feats, labels, where = [], [], []
    buf, buf_lab = [], []

    def flush() -> None:
        x = torch.from_numpy(np.stack(buf))[:, None].to(device)
        with autocast(device, bf16):
            f = model.encode(x).mean(1)
        feats.append(f.float().cpu().numpy())
        labels.extend(buf_lab)
        buf.clear()
        buf_lab.clear()
        emit(progress, "item", stage=what, done=len(where), total=total)

    for cid, idx, patch, lab in cache.superpatches(case_ids, model.cfg.superpatch):
        check_cancel(cancel, what)
        if lab is None:
            raise NemesisInputError(f"{cache.path}: case {cid} has no label map; probing needs labelled scans")
        buf.append(np.asarray(patch, dtype=np.float32))
        buf_lab.append(np.asarray(lab, dtype=np.uint8))
        where.append((cid, idx))
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    e = model.cfg.embed_dim
    return (np.concatenate(feats) if feats else np.zeros((0, e), np.float32),
            np.stack(labels) if labels else np.zeros((0, 8), np.uint8), where)


def train_linear_head(
    x: np.ndarray, y: np.ndarray, opts: ProbeOptions, cancel: CancelFn | None = None
) -> ProbeHead:
    """Full-batch AdamW on frozen features for a fixed number of steps (BCE with logits)."""
    torch.manual_seed(opts.seed)
    head = ProbeHead(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=opts.resolved_lr(), weight_decay=opts.weight_decay)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(opts.resolved_epochs()):
        check_cancel(cancel, "probe training")
        loss = loss_fn(head(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def head_probabilities(head: ProbeHead, x: np.ndarray) -> np.ndarray:
    return torch.sigmoid(head(torch.from_numpy(x).float())).numpy()


# ---- fine-tuning ---------------------------------------------------------------------------
def finetune(
    model: NemesisMAE,
    cache,
    train_ids: list[str],
    opts: ProbeOptions,
    device: torch.device,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> ProbeModel:
    """Train encoder and head together on every training superpatch, fixed epochs, no test peeking."""
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    items = [(cid, i, p, lab) for cid, i, p, lab in cache.superpatches(train_ids, model.cfg.superpatch)]
    if any(lab is None for *_, lab in items):
        raise NemesisInputError(f"{cache.path}: fine-tuning needs labelled training scans")
    net = ProbeModel(model, ProbeHead(model.cfg.embed_dim, 8)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=opts.resolved_lr(), weight_decay=opts.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    epochs = opts.resolved_epochs()
    n_batches = max(1, -(-len(items) // opts.batch))
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(items))
        for b in range(n_batches):
            check_cancel(cancel, "fine-tuning")
            sel = order[b * opts.batch : (b + 1) * opts.batch]
            x = torch.from_numpy(np.stack([np.asarray(items[j][2], np.float32) for j in sel]))[:, None].to(device)
            y = torch.from_numpy(np.stack([items[j][3] for j in sel])).float().to(device)
            with autocast(device, opts.bf16):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            emit(progress, "step", stage="finetune", step=step, total=epochs * n_batches, loss=float(loss.detach()), epoch=epoch)
    return net.eval()


# ---- saving heads ------------------------------------------------------------------------
def save_probe(head: ProbeHead, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Head weights (safetensors) with organ names, threshold and provenance in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": PROBE_FORMAT, "meta": json.dumps(meta, default=str)})
    return path


def load_probe(path: str | os.PathLike) -> tuple[ProbeHead, dict[str, Any]]:
    from safetensors.torch import load_file

    from ..model.checkpoint import read_metadata

    path = Path(path)
    md = read_metadata(path)
    if md.get("format") != PROBE_FORMAT:
        raise NemesisCheckpointError(f"{path}: not a napari-nemesis probe head (format={md.get('format')!r})")
    meta = json.loads(md.get("meta", "{}"))
    state = load_file(str(path))
    try:
        e = state["norm.weight"].shape[0]
        k = state["fc.weight"].shape[0]
        head = ProbeHead(e, k)
        head.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise NemesisCheckpointError(f"{path}: probe head tensors are missing or mis-shaped ({str(exc).splitlines()[0]})") from None
    if len(meta.get("organs", [])) != k:
        raise NemesisCheckpointError(f"{path}: probe head has {k} outputs but names {len(meta.get('organs', []))} organs")
    return head.eval(), meta


# ---- the probe command's core ------------------------------------------------------------
def training_case_ids(cache, ratio: float = 1.0, seed: int = 0) -> list[str]:
    """Labelled training-split cases of ``cache``; ``ratio`` < 1 takes the nested seeded subset."""
    from ..data import label_ratio_subset

    train_cases = [c for c in cache.cases() if cache.split_of(c.case_id) == "train" and c.case_id in cache.labelled_ids]
    if not train_cases:
        raise NemesisInputError(f"{cache.path}: no labelled training scans")
    return [c.case_id for c in label_ratio_subset(train_cases, ratio, seed)]


def run_probe(
    data,
    model: NemesisMAE,
    opts: ProbeOptions | None = None,
    out_dir: str | Path | None = None,
    checkpoint_name: str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Train a probe (linear or fine-tune) on the training split and report on the test split.

    Returns the metrics dict (``auroc_mean``, ``f1_macro``, ``per_organ``, ``n_train_superpatches``,
    ``n_test_superpatches``, ...); with ``out_dir``, saves ``probe.safetensors`` (and, when
    fine-tuning, ``finetuned.safetensors``).
    """
    from ..data import ORGAN_NAMES, open_dataset

    opts = opts or ProbeOptions()
    if opts.mode not in ("linear", "finetune"):
        raise NemesisInputError(f"--mode {opts.mode}: choose linear or finetune")
    if not 0 < opts.label_ratio <= 1:
        raise NemesisInputError(f"--label-ratio {opts.label_ratio} must be in (0, 1]")
    device = resolve_device(opts.device)
    cache = open_dataset(data, superpatch=model.cfg.superpatch)
    train_ids = training_case_ids(cache, opts.label_ratio, opts.seed)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    if not test_ids:
        raise NemesisInputError(f"{cache.path}: no labelled test scans to report on")
    emit(progress, "start", mode=opts.mode, train_cases=len(train_ids), test_cases=len(test_ids))
    if opts.mode == "linear":
        xtr, ytr, _ = extract_features(model, cache, train_ids, opts.batch, device, opts.bf16, progress, cancel, "train features")
        head = train_linear_head(xtr, ytr, opts, cancel)
        xte, yte, _ = extract_features(model, cache, test_ids, opts.batch, device, opts.bf16, progress, cancel, "test features")
        prob = head_probabilities(head, xte)
        n_train = len(ytr)
    else:
        net = finetune(model, cache, train_ids, opts, device, progress, cancel)
        head = net.head.cpu()
        xte, yte, _ = extract_features(net.encoder, cache, test_ids, opts.batch, device, opts.bf16, progress, cancel, "test features")
        prob = head_probabilities(head, xte)
        n_train = cache.n_superpatches(train_ids)
    result = presence_metrics(yte, prob, ORGAN_NAMES, opts.threshold)
    result.update(
        mode=opts.mode,
        label_ratio=opts.label_ratio,
        n_train_superpatches=int(n_train),
        n_test_superpatches=int(len(yte)),
        train_cases=train_ids,
        test_cases=test_ids,
        options=asdict(opts),
    )
    if keep_predictions:
        result["y_true"] = yte.tolist()
        result["y_prob"] = prob.tolist()
    if out_dir is not None:
        out_dir = Path(out_dir)
        meta = {"organs": list(ORGAN_NAMES), "threshold": opts.threshold, "mode": opts.mode,
                "label_ratio": opts.label_ratio, "checkpoint": checkpoint_name, "embed_dim": model.cfg.embed_dim,
                "superpatch": model.cfg.superpatch, "spacing_zyx": cache.spacing_zyx,
                "auroc_mean_test": result["auroc_mean"]}
        result["probe"] = str(save_probe(head, out_dir / "probe.safetensors", meta))
        if opts.mode == "finetune":
            from ..model import save_checkpoint

            result["finetuned_checkpoint"] = str(save_checkpoint(net.encoder.cpu(), out_dir / "finetuned.safetensors",
                                                                 extra={"finetuned_from": checkpoint_name}))
    emit(progress, "end", auroc_mean=result["auroc_mean"], f1_macro=result["f1_macro"])
    return result
