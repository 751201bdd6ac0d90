"""Organ-presence probing: frozen encoder + linear head, or fine-tuning (the paper's downstream task).

Encoder without mask or noise -> mean of tokens -> LayerNorm -> Linear(8), BCE. Trained on the
training split only, for a fixed number of epochs; the test split is used once, to report. Nothing
is chosen on it.

A head only means something on the features of the encoder it was trained on, so every saved head
records that encoder's digest (:func:`encoder_digest`), the spacing and superpatch size it saw,
and everything that applies a head checks them (:func:`check_probe_matches`).

Heads work at one of two levels (``model.heads.HEAD_LEVELS``): ``superpatch`` (this module's probe,
the mean token) or ``patch`` (one logit set per token, ``train.patch_level``). The level is part
of the head's metadata and checked like the encoder. ``run_probe`` trains superpatch heads and
``train.patch_level.run_patch_probe`` patch heads (the CLI picks by ``--level``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..data.spacing import Spacing, spacing_from_metadata  # spacing_from_metadata re-exported: its home is data/spacing.py
from ..errors import NemesisCheckpointError, NemesisInputError
from ..model import NemesisMAE
from ..model.heads import HEADS, PatchHead, ProbeHead, check_level, head_level  # defined in model/heads.py
from .events import CancelFn, ProgressFn, check_cancel, emit
from .heads_fit import fit_head, head_optimizer
from .metrics import presence_metrics
from .runtime import autocast, resolve_device, single_thread

PROBE_FORMAT = "napari-nemesis/probe"
#: Where ``nemesis probe`` saves a head: beside its checkpoint (``--checkpoint`` without ``--probe`` looks there).
PROBE_FILE = "probe.safetensors"
#: Where ``nemesis probe --level patch`` saves a patch-level head (beside the superpatch head, not over it).
PATCH_PROBE_FILE = "probe_patch.safetensors"
#: level -> the file name a head of that level is saved under beside its checkpoint
PROBE_FILES = {"superpatch": PROBE_FILE, "patch": PATCH_PROBE_FILE}
#: Metadata every saved head must carry.
REQUIRED_META = ("organs", "threshold", "encoder_sha256", "spacing_zyx", "superpatch")
_ENCODER_PREFIXES = ("patch_embed.", "blocks.", "norm.")


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
    level: str = "superpatch"  # superpatch | patch (model.heads.HEAD_LEVELS)
    patch_threshold: int = 100  # patch level: organ voxels a patch needs to be labelled 1 (data.PATCH_THRESHOLD)

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (200 if self.mode == "linear" else 8)

    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (3e-3 if self.mode == "linear" else 1e-4)


# ---- encoder identity ----------------------------------------------------------------------
def encoder_digest(model: NemesisMAE) -> str:
    """SHA-256 (hex) of the encoder's weights: patch embedding, encoder blocks, encoder norm.

    Taken in float32 on the CPU, names and shapes included, decoder excluded: a fine-tuned encoder
    gets a new digest, and a float16-stored checkpoint loaded back to float32 always the same one.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(_ENCODER_PREFIXES):
            continue
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(values.shape)}".encode())
        h.update(values.numpy().tobytes())
    return h.hexdigest()


def _model_name(model: NemesisMAE, checkpoint=None) -> str:
    path = checkpoint or getattr(model, "checkpoint_path", None)
    return str(path) if path else "the model in memory"


def check_head_level(head_meta: dict[str, Any] | None, level: str | None, probe=None) -> None:
    """Refuse (one line) a head of another level than ``level`` (``None``: any level)."""
    if level is None:
        return
    check_level(level)
    have = head_level(head_meta)
    if have == level:
        return
    probe = probe or (head_meta or {}).get("path") or "the probe head"
    hint = ("train one with 'nemesis probe DATA --level patch' or 'nemesis labels train PROJECT --level patch', or "
            "leave --probe out for the bundled patch head") if level == "patch" else \
        "pass a superpatch-level head, or ask for --level patch"
    raise NemesisCheckpointError(f"{probe} is a {have}-level head, not a {level}-level one; {hint}")


def check_probe_matches(model: NemesisMAE, head_meta: dict[str, Any] | None, checkpoint=None, probe=None,
                        level: str | None = None) -> None:
    """Refuse (one-line :class:`NemesisCheckpointError`) a head trained on another encoder.

    ``head_meta`` is the head's metadata (``load_probe``'s second value, or ``head.meta``); ``None``
    (a head built in memory, no provenance) is not checked. ``checkpoint``/``probe`` name the files
    in the message (default: where the model and head were loaded from). ``level`` (``superpatch``
    or ``patch``; ``None``: either) also refuses a head of the other level; a patch-level head is
    refused on a model with another patch size than it was trained on.
    """
    if head_meta is None:
        return
    ckpt = _model_name(model, checkpoint)
    probe = probe or head_meta.get("path") or "the probe head"
    check_head_level(head_meta, level, probe)
    want = head_meta.get("encoder_sha256")
    if not want:
        raise NemesisCheckpointError(f"{probe}: the probe head records no encoder digest (saved by an older "
                                     f"napari-nemesis), so it cannot be checked against {ckpt}; train it again "
                                     "with nemesis probe")
    have = encoder_digest(model)
    if want != have:
        trained_on = head_meta.get("checkpoint")
        on = f" ({trained_on})" if trained_on else ""
        raise NemesisCheckpointError(f"{probe} was trained on encoder {want[:12]}{on}, not on {ckpt} (encoder "
                                     f"{have[:12]}); use the probe trained for this checkpoint (nemesis probe DATA "
                                     "--checkpoint CKPT) or its own checkpoint")
    superpatch = head_meta.get("superpatch")
    if superpatch is not None and int(superpatch) != model.cfg.superpatch:
        raise NemesisCheckpointError(f"{probe} was trained on {superpatch}^3 superpatches but {ckpt} takes "
                                     f"{model.cfg.superpatch}^3")
    patch = head_meta.get("patch")
    if head_level(head_meta) == "patch" and patch is not None and int(patch) != model.cfg.patch:
        raise NemesisCheckpointError(f"{probe} was trained on {patch}^3 patches but {ckpt} cuts superpatches into "
                                     f"{model.cfg.patch}^3")


def probe_metadata(model: NemesisMAE, spacing_zyx, organs: Sequence[str] | None = None, threshold: float = 0.5,
                   checkpoint=None, level: str = "superpatch", **extra: Any) -> dict[str, Any]:
    """The metadata a saved head carries: organs, threshold, its ``level``, the encoder's digest and
    width, the superpatch size (and, for a patch-level head, the patch size) and spacing (z, y, x mm
    or ``"native"``) it was trained at, its checkpoint, and ``extra`` (mode, label ratio, ...)."""
    from ..data import ORGAN_NAMES

    check_level(level, "head level")
    meta = {"organs": list(organs if organs is not None else ORGAN_NAMES), "threshold": float(threshold),
            "level": level, "encoder_sha256": encoder_digest(model), "embed_dim": model.cfg.embed_dim,
            "superpatch": model.cfg.superpatch, "spacing_zyx": Spacing.parse(spacing_zyx).to_json(),
            "checkpoint": str(checkpoint) if checkpoint else (str(model.checkpoint_path) if model.checkpoint_path else None)}
    if level == "patch":
        meta["patch"] = model.cfg.patch
    return {**meta, **extra}


def probe_beside(checkpoint: str | os.PathLike, level: str = "superpatch") -> Path:
    """The head of ``level`` ``nemesis probe`` saved beside ``checkpoint`` (``probe.safetensors``,
    ``probe_patch.safetensors``); a one-line error when there is none."""
    path = Path(checkpoint).parent / PROBE_FILES[check_level(level)]
    if not path.is_file():
        flag = "" if level == "superpatch" else f" --level {level}"
        what = "probe head" if level == "superpatch" else f"{level}-level probe head"
        raise NemesisCheckpointError(f"{checkpoint}: no {what} beside this checkpoint ({path} is missing); train "
                                     f"one with 'nemesis probe DATA --checkpoint {checkpoint}{flag}' or pass --probe")
    return path


# ---- features ----------------------------------------------------------------------------------
@torch.no_grad()
def encode_features(
    model: NemesisMAE,
    patches: Iterable[np.ndarray],
    batch: int = 8,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    what: str = "features",
    total: int | None = None,
    pool: bool = True,
) -> np.ndarray:
    """Mean-pooled encoder features (n, E) float32 of (S, S, S) superpatches (no mask, no noise);
    with ``pool=False`` every token's features, (n, N, E) in token order (the patch level's input).

    ``patches`` is any iterable (streamed ``batch`` at a time); ``total`` only sizes the progress events.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    feats, buf, done = [], [], 0

    def flush() -> None:
        nonlocal done
        x = torch.from_numpy(np.stack(buf))[:, None].to(device)
        with autocast(device, bf16):
            f = model.encode(x)
            if pool:
                f = f.mean(1)
        feats.append(f.float().cpu().numpy())
        done += len(buf)
        buf.clear()
        emit(progress, "item", stage=what, done=done, total=total)

    for patch in patches:
        check_cancel(cancel, what)
        buf.append(np.asarray(patch, dtype=np.float32))
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    if feats:
        return np.concatenate(feats)
    return np.zeros((0, model.cfg.embed_dim) if pool else (0, model.cfg.num_patches, model.cfg.embed_dim), np.float32)


def extract_features(
    model: NemesisMAE, cache, case_ids: list[str], *encode_args: Any, **encode_kwargs: Any
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Mean-pooled encoder features (n, E), presence labels (n, K) and (case, index) per superpatch
    of ``case_ids``; the other arguments are :func:`encode_features`'s (``batch``, ``device``,
    ``bf16``, ``progress``, ``cancel``, ``what``)."""
    labels, where = [], []

    def labelled_patches():
        for cid, idx, patch, lab in cache.superpatches(case_ids, model.cfg.superpatch):
            if lab is None:
                raise NemesisInputError(f"{cache.path}: case {cid} has no label map; probing needs labelled scans")
            labels.append(np.asarray(lab, dtype=np.uint8))
            where.append((cid, idx))
            yield patch

    feats = encode_features(model, labelled_patches(), *encode_args, total=cache.n_superpatches(case_ids),
                            **encode_kwargs)
    return feats, (np.stack(labels) if labels else np.zeros((0, 8), np.uint8)), where


def train_linear_head(
    x: np.ndarray, y: np.ndarray, opts: ProbeOptions, cancel: CancelFn | None = None
) -> ProbeHead | PatchHead:
    """Full-batch AdamW on frozen features for a fixed number of steps (BCE with logits), on one CPU
    thread (:func:`~.runtime.single_thread`: the head is too small for a thread pool to pay).

    ``x`` (n, E) and ``y`` (n, K): one row per superpatch, or, for ``opts.level == "patch"``, one
    row per patch (token); the head is then a :class:`~..model.heads.PatchHead`."""
    torch.manual_seed(opts.seed)
    head = HEADS[check_level(opts.level)](x.shape[1], y.shape[1])
    opt = head_optimizer(head, opts.resolved_lr(), opts.weight_decay)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    with single_thread():
        return fit_head(head, opt, lambda step: (xt, yt), opts.resolved_epochs(),
                        before_step=lambda step: check_cancel(cancel, "probe training"))


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
    items = [(p, lab) for _, _, p, lab in cache.superpatches(train_ids, model.cfg.superpatch)]
    if any(lab is None for _, lab in items):
        raise NemesisInputError(f"{cache.path}: fine-tuning needs labelled training scans")
    return finetune_items(model, items, opts, device, progress, cancel)


def finetune_items(
    model: NemesisMAE,
    items: Sequence[tuple[np.ndarray, np.ndarray]],
    opts: ProbeOptions,
    device: torch.device | str,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> ProbeModel:
    """Fine-tune encoder and a new head on ``items`` = (patch (S, S, S) float32, labels (K,) uint8).

    AdamW, BCE, gradient clipping at 1, ``opts.resolved_epochs()`` epochs of seeded shuffles;
    trains ``model`` in place and returns it with its head as a :class:`ProbeModel` (eval mode).
    """
    if not len(items):
        raise NemesisInputError("fine-tuning needs at least one labelled superpatch")
    device = torch.device(device)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    n_classes = len(items[0][1])
    net = ProbeModel(model, ProbeHead(model.cfg.embed_dim, n_classes)).to(device)
    opt = head_optimizer(net, opts.resolved_lr(), opts.weight_decay)
    epochs = opts.resolved_epochs()
    n_batches = max(1, -(-len(items) // opts.batch))
    order = np.arange(len(items))

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal order
        b = step % n_batches
        if b == 0:  # a new epoch: a new shuffle, drawn in order from the seeded generator
            order = rng.permutation(len(items))
        sel = order[b * opts.batch : (b + 1) * opts.batch]
        x = torch.from_numpy(np.stack([np.asarray(items[j][0], np.float32) for j in sel]))[:, None].to(device)
        y = torch.from_numpy(np.stack([np.asarray(items[j][1]) for j in sel])).float().to(device)
        return x, y

    def after_step(done: int, loss: torch.Tensor) -> None:
        emit(progress, "step", stage="finetune", step=done, total=epochs * n_batches, loss=float(loss.detach()),
             epoch=(done - 1) // n_batches)

    return fit_head(net, opt, batch, epochs * n_batches, device=device, bf16=opts.bf16, clip=1.0,
                    before_step=lambda step: check_cancel(cancel, "fine-tuning"), after_step=after_step)


# ---- saving heads ------------------------------------------------------------------------
def save_probe(head: ProbeHead, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Head weights (safetensors) with organ names, threshold and provenance in the metadata.

    ``meta`` must hold :data:`REQUIRED_META` (build it with :func:`probe_metadata`); the head
    keeps it as ``head.meta``.
    """
    from safetensors.torch import save_file

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"save_probe: metadata lacks {', '.join(missing)} (use probe_metadata(model, spacing))")
    meta = {**meta, "spacing_zyx": Spacing.parse(meta["spacing_zyx"]).to_json()}
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": PROBE_FORMAT, "meta": json.dumps(meta, default=str)})
    head.meta, head.path = meta, path
    return path


def load_probe(path: str | os.PathLike) -> tuple[ProbeHead, dict[str, Any]]:
    """``(head, meta)`` from a file :func:`save_probe` wrote; ``head.meta`` is ``meta``, ``head.path`` the file.

    A head saved before spacings were explicit stored ``null`` for native spacing: read as ``"native"``.
    """
    from safetensors.torch import load_file

    from ..model.checkpoint import read_metadata

    from ..model.checkpoint import check_finite, tensor_shapes

    if isinstance(path, str) and not path.strip():
        raise NemesisCheckpointError(f"empty probe path {path!r}: give a probe .safetensors file")
    path = Path(path)
    md = read_metadata(path)
    if md.get("format") != PROBE_FORMAT:
        raise NemesisCheckpointError(f"{path}: not a napari-nemesis probe head (format={md.get('format')!r})")
    meta = _probe_meta(path, md.get("meta", "{}"))
    # shapes from the header first: a head is a LayerNorm(E) and a Linear(E -> K), nothing else
    shapes = tensor_shapes(path)
    want_keys = {"norm.weight", "norm.bias", "fc.weight", "fc.bias"}
    e = (shapes.get("norm.weight") or (0,))[0]
    k = (shapes.get("fc.weight") or (0,))[0]
    expected = {"norm.weight": (e,), "norm.bias": (e,), "fc.weight": (k, e), "fc.bias": (k,)}
    if set(shapes) != want_keys or any(shapes[n] != expected[n] for n in want_keys) or not (0 < e and 0 < k):
        raise NemesisCheckpointError(f"{path}: probe head tensors are missing or mis-shaped (found "
                                     f"{', '.join(f'{n} {tuple(v)}' for n, v in sorted(shapes.items())) or 'none'})")
    from safetensors import SafetensorError

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NemesisCheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    check_finite(path, state)
    level = meta.get("level", "superpatch")
    if level not in HEADS:
        raise NemesisCheckpointError(f"{path}: probe head metadata 'level' {level!r} is not one of {', '.join(HEADS)}")
    head = HEADS[level](e, k)
    head.load_state_dict(state, strict=True)
    if len(meta.get("organs", [])) != k:
        raise NemesisCheckpointError(f"{path}: probe head has {k} outputs but names {len(meta.get('organs', []))} organs")
    if "spacing_zyx" in meta:
        meta["spacing_zyx"] = Spacing.from_recorded(meta["spacing_zyx"], path).to_json()
    head.meta, head.path = meta, path
    return head.eval(), meta


def _probe_meta(path: Path, text: str) -> dict[str, Any]:
    """A head's metadata, checked field by field (one-line errors naming the file and the field)."""
    import math

    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise NemesisCheckpointError(f"{path}: probe head metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise NemesisCheckpointError(f"{path}: probe head metadata is a JSON {type(meta).__name__}, not an object")
    organs = meta.get("organs", [])
    if not isinstance(organs, list) or not all(isinstance(o, str) and o for o in organs):
        raise NemesisCheckpointError(f"{path}: probe head metadata 'organs' is not a list of names")
    if "threshold" in meta:
        t = meta["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t < 1:
            raise NemesisCheckpointError(f"{path}: probe head metadata 'threshold' {t!r} is not a number in (0, 1)")
    if "superpatch" in meta and meta["superpatch"] is not None:
        sp = meta["superpatch"]
        if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
            raise NemesisCheckpointError(f"{path}: probe head metadata 'superpatch' {sp!r} is not a positive integer")
    if "patch" in meta and meta["patch"] is not None:
        ps = meta["patch"]
        if isinstance(ps, bool) or not isinstance(ps, int) or ps < 1:
            raise NemesisCheckpointError(f"{path}: probe head metadata 'patch' {ps!r} is not a positive integer")
    digest = meta.get("encoder_sha256")
    if digest is not None and not isinstance(digest, str):
        raise NemesisCheckpointError(f"{path}: probe head metadata 'encoder_sha256' is not a string")
    return meta


# ---- the probe command's core ------------------------------------------------------------
def training_case_ids(cache, ratio: float = 1.0, seed: int = 0) -> list[str]:
    """Labelled training-split cases of ``cache``; ``ratio`` < 1 takes the nested seeded subset."""
    from ..data import label_ratio_subset

    train_cases = [c for c in cache.cases() if cache.split_of(c.case_id) == "train" and c.case_id in cache.labelled_ids]
    if not train_cases:
        raise NemesisInputError(f"{cache.path}: no labelled training scans")
    return [c.case_id for c in label_ratio_subset(train_cases, ratio, seed)]


def training_digests(cache, case_ids: Sequence[str]) -> dict[str, str]:
    """``{case_id: voxel digest}`` of the scans a head is trained on, as the cache records them (a cache
    from before the digest was recorded gives none): what ``train.trust`` matches a scan against to
    say its probabilities are training-set figures."""
    digests = {cid: cache.voxel_sha256(cid) for cid in case_ids}
    return {cid: d for cid, d in digests.items() if d}


def dataset_for(data, model: NemesisMAE, spacing_zyx=None, label_scheme: str = "auto", progress=None, cancel=None,
                include_unlabelled: bool = False):
    """The dataset ``model`` trains on (a probe; with ``include_unlabelled``, pretraining): a cache as
    it is (an explicit ``spacing_zyx`` must match it), or a raw folder prepared at ``spacing_zyx``,
    else at the spacing the checkpoint was pretrained at, else the default."""
    from ..data import DEFAULT_SPACING_ZYX, is_cache, open_dataset

    kwargs: dict[str, Any] = {}
    if spacing_zyx is not None:
        kwargs["spacing_zyx"] = spacing_zyx
    elif not is_cache(data):
        recorded = (getattr(model, "checkpoint_extra", None) or {}).get("spacing_zyx")
        kwargs["spacing_zyx"] = spacing_from_metadata(recorded) if recorded is not None else DEFAULT_SPACING_ZYX
    return open_dataset(data, superpatch=model.cfg.superpatch, label_scheme=label_scheme, progress=progress,
                        cancel=cancel, include_unlabelled=include_unlabelled, **kwargs)


def run_probe(
    data,
    model: NemesisMAE,
    opts: ProbeOptions | None = None,
    out_dir: str | Path | None = None,
    checkpoint_name: str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    keep_predictions: bool = False,
    label_scheme: str = "auto",
    spacing_zyx=None,
) -> dict[str, Any]:
    """Train a probe (linear or fine-tune) on the training split and report on the test split.

    Returns the metrics dict (``auroc_mean``, ``f1_macro``, ``per_organ``, ``n_train_superpatches``,
    ``n_test_superpatches``, ``split``, ``spacing_zyx``, ...); with ``out_dir``, saves
    ``probe.safetensors`` (and, when fine-tuning, ``finetuned.safetensors``), whose metadata names
    the encoder it was trained on (:func:`probe_metadata`). A raw data folder is read with
    ``label_scheme`` and prepared at ``spacing_zyx`` (default: the checkpoint's pretraining spacing).
    """
    from ..data import ORGAN_NAMES

    opts = opts or ProbeOptions()
    if opts.mode not in ("linear", "finetune"):
        raise NemesisInputError(f"--mode {opts.mode}: choose linear or finetune")
    if opts.level != "superpatch":  # its own module builds on this one: no import back from here
        raise NemesisInputError(f"run_probe trains superpatch heads; a {opts.level}-level head is "
                                "train.patch_level.run_patch_probe's")
    if not 0 < opts.label_ratio <= 1:
        raise NemesisInputError(f"--label-ratio {opts.label_ratio} must be in (0, 1]")
    device = resolve_device(opts.device)
    checkpoint_name = checkpoint_name or (str(model.checkpoint_path) if model.checkpoint_path else None)
    cache = dataset_for(data, model, spacing_zyx, label_scheme)
    train_ids = training_case_ids(cache, opts.label_ratio, opts.seed)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    if not test_ids:
        raise NemesisInputError(f"{cache.path}: no labelled test scans to report on")
    emit(progress, "start", mode=opts.mode, train_cases=len(train_ids), test_cases=len(test_ids),
         split=cache.split_rule)
    if opts.mode == "linear":
        xtr, ytr, _ = extract_features(model, cache, train_ids, opts.batch, device, opts.bf16, progress, cancel, "train features")
        head = train_linear_head(xtr, ytr, opts, cancel)
        xte, yte, _ = extract_features(model, cache, test_ids, opts.batch, device, opts.bf16, progress, cancel, "test features")
        prob = head_probabilities(head, xte)
        n_train = len(ytr)
        encoder = model
    else:
        net = finetune(model, cache, train_ids, opts, device, progress, cancel)
        head = net.head.cpu()
        xte, yte, _ = extract_features(net.encoder, cache, test_ids, opts.batch, device, opts.bf16, progress, cancel, "test features")
        prob = head_probabilities(head, xte)
        n_train = cache.n_superpatches(train_ids)
        encoder = net.encoder
    result = presence_metrics(yte, prob, ORGAN_NAMES, opts.threshold)
    result.update(
        mode=opts.mode,
        label_ratio=opts.label_ratio,
        n_train_superpatches=int(n_train),
        n_test_superpatches=int(len(yte)),
        train_cases=train_ids,
        test_cases=test_ids,
        split=cache.split_rule,
        split_description=cache.split_description,
        spacing_zyx=Spacing.parse(cache.spacing_zyx).to_json(),
        options=asdict(opts),
    )
    if keep_predictions:
        result["y_true"] = yte.tolist()
        result["y_prob"] = prob.tolist()
    if out_dir is not None:
        out_dir = Path(out_dir)
        trained_on = checkpoint_name
        if opts.mode == "finetune":
            from ..model import save_checkpoint

            extra = {**(getattr(model, "checkpoint_extra", None) or {}), "finetuned_from": checkpoint_name,
                     "spacing_zyx": Spacing.parse(cache.spacing_zyx).to_json()}
            trained_on = str(save_checkpoint(net.encoder.cpu(), out_dir / "finetuned.safetensors", extra=extra))
            result["finetuned_checkpoint"] = trained_on
        meta = probe_metadata(encoder, cache.spacing_zyx, ORGAN_NAMES, opts.threshold, checkpoint=trained_on,
                              mode=opts.mode, label_ratio=opts.label_ratio, source_checkpoint=checkpoint_name,
                              auroc_mean_test=result["auroc_mean"], train_cases=list(train_ids),
                              split=cache.split_description,
                              train_voxel_sha256=training_digests(cache, train_ids))
        result["probe"] = str(save_probe(head, out_dir / PROBE_FILE, meta))
        result["encoder_sha256"] = meta["encoder_sha256"]
    emit(progress, "end", auroc_mean=result["auroc_mean"], f1_macro=result["f1_macro"])
    return result
