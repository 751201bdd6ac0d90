"""Self-supervised NEMESIS pretraining: the method notes' recipe, resumable, on 1..N devices.

Every random choice is a function of (seed, step, rank): the crops of step s are dataset items
s*B*W + r*B + j, each drawn from its own seeded generator, and the mask/noise generator of step s
is seeded from (seed, s, r). So the seed and the step are the data and mask RNG state; the optimizer
moments and torch's global RNG are saved beside the weights. Resuming continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Spacing, inside_fraction
from ..errors import NemesisCancelled, NemesisInputError
from ..model import NemesisMAE, build_model, load_checkpoint
from .augment import Augment, case_weights, pattern_shares
from .events import CancelFn, ProgressFn, check_cancel, emit
from .probe import dataset_for
from .runtime import (
    SAVE_LOCK,
    autocast,
    default_bf16,
    drop_stale_stop_file,
    init_distributed,
    resolve_device,
    stop_file_requested,
    stop_requested,
    weights_digest,
)
from .state import clear_train_state, has_train_state, load_train_state, save_train_state


@dataclass
class PretrainOptions:
    preset: str = "small"
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup: int | None = None  # default: 5 % of the steps
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    mask_strategy: str = "dual"
    mask_ratio: float = 0.75
    noise: bool = True  # noise-enhanced reconstruction (sigma from the config's set)
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None  # None: on for CUDA, off for CPU/MPS
    num_workers: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None  # start from these weights (fresh optimizer); config from the file
    case_weights: dict[str, float] = field(default_factory=dict)  # case-id pattern -> sampling weight (others 1)
    intensity_jitter: float = 0.0  # see .augment
    scale_jitter: float = 0.0

    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, int(0.05 * self.steps))


#: Options a resumed run must share with the run it continues (option -> the flag that sets it).
RESUME_MUST_MATCH = {
    "preset": "--preset", "model_overrides": "--superpatch", "batch": "--batch", "lr": "--lr", "min_lr": "min_lr",
    "weight_decay": "--weight-decay", "betas": "betas", "clip": "--clip", "mask_strategy": "--mask",
    "mask_ratio": "--mask-ratio", "noise": "--no-noise", "seed": "--seed",
    "case_weights": "--case-weight", "intensity_jitter": "--intensity-jitter", "scale_jitter": "--scale-jitter",
}
#: Options added after runs were first saved: a run saved without them had their defaults.
_LATER_OPTIONS = {"case_weights": {}, "intensity_jitter": 0.0, "scale_jitter": 0.0}
#: Options a resumed run may change: they do not touch the numbers (``steps`` may only grow).
RESUME_MAY_CHANGE = ("steps", "checkpoint_every", "log_every", "num_workers")


def check_resume(doc: dict[str, Any], opts: PretrainOptions, world: int, device: torch.device, bf16: bool,
                 where) -> tuple[PretrainOptions, dict[str, Any]]:
    """Refuse (one line naming the option) a resume whose options would break "continues exactly".

    Returns the options to run with and what changed. More ``--steps`` is allowed: the cosine
    schedule is then stretched to the new length from the resumed step on (steps already taken
    keep theirs), and a default warm-up keeps the run's original length.
    """
    old = doc.get("options") or {}

    def refuse(flag: str, new, was) -> None:
        raise NemesisInputError(f"{where}: --resume with {flag} {new} but the run used {was}; a resumed run "
                                "continues exactly only with the same options (only --steps may grow, and "
                                "--checkpoint-every, --log-every, --workers may change)")

    def same(a, b) -> bool:
        norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
        return norm(a) == norm(b)

    if old:
        old = {**_LATER_OPTIONS, **old}
    for key, flag in RESUME_MUST_MATCH.items():
        if key in old and not same(old[key], getattr(opts, key)):
            refuse(flag, getattr(opts, key), old[key])
    if doc.get("world_size") not in (None, world):
        refuse("world size (processes)", world, doc["world_size"])
    if doc.get("device") and torch.device(doc["device"]).type != device.type:
        refuse("--device", device.type, torch.device(doc["device"]).type)
    if doc.get("bf16") is not None and bool(doc["bf16"]) != bool(bf16):
        refuse("--bf16" if bf16 else "--no-bf16", bf16, bool(doc["bf16"]))
    changes: dict[str, Any] = {}
    old_steps = old.get("steps", opts.steps)
    if opts.steps < old_steps:
        refuse("--steps", opts.steps, f"{old_steps} (only more steps keep the schedule of the steps already taken)")
    if "warmup" in old or "steps" in old:
        old_warmup = PretrainOptions(steps=old_steps, warmup=old.get("warmup")).warmup_steps()
        if opts.warmup is None and opts.steps != old_steps:
            opts = dataclasses.replace(opts, warmup=old_warmup)  # the warm-up the run had, not 5 % of the new length
        if opts.warmup_steps() != old_warmup:
            refuse("--warmup", opts.warmup_steps(), old_warmup)
    for key in RESUME_MAY_CHANGE:
        if key in old and not same(old[key], getattr(opts, key)):
            changes[key] = [old[key], getattr(opts, key)]
    if "steps" in changes:
        changes["note"] = (f"--steps {old_steps} -> {opts.steps}: the cosine schedule is stretched to the new length "
                           "from the resumed step on")
    return opts, changes


def data_fingerprint(cache) -> str:
    """SHA-256 over what identifies a dataset: its case ids, each case's shape and source image hash."""
    import hashlib
    import json

    cases = (getattr(cache, "index", None) or {}).get("cases", {})
    rows = []
    for cid in sorted(getattr(cache, "case_ids", [])):
        entry = cases.get(cid, {}) if isinstance(cases, dict) else {}
        image = ((entry.get("sources") or {}).get("image") or {}) if isinstance(entry, dict) else {}
        rows.append([cid, entry.get("shape_zyx") if isinstance(entry, dict) else None,
                     image.get("sha256") if isinstance(image, dict) else None])
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def check_resume_data(doc: dict[str, Any], cache, fingerprint: str, where) -> None:
    """Refuse (one line) resuming a run on another dataset than the one it trained on.

    Runs saved before the fingerprint was recorded are not checked."""
    theirs = doc.get("data_fingerprint")
    if theirs is not None and theirs != fingerprint:
        raise NemesisInputError(
            f"{where}: --resume on another dataset ({getattr(cache, 'path', '?')}, {len(cache.case_ids)} cases) than "
            f"the run trained on ({doc.get('data', '?')}); a run continues only on its own data: give that "
            "dataset, or start a new run in another --out folder")


def learning_rate(step: int, opts: PretrainOptions) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``min_lr`` at ``steps``."""
    w = opts.warmup_steps()
    if step < w:
        return opts.lr * (step + 1) / w
    t = (step - w) / max(1, opts.steps - w)
    return opts.min_lr + 0.5 * (opts.lr - opts.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: NemesisMAE, opts: PretrainOptions) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms, gate, tokens and embeddings (1-D or token params)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("mask_token", "nemesis_tokens", "slice_pos", "alpha")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts.lr, betas=tuple(opts.betas))


class CropDataset(torch.utils.data.Dataset):
    """Item i is a random superpatch drawn with ``numpy.random.default_rng([seed, i])`` (cases in
    proportion to ``weights`` if given), augmented with ``default_rng([seed, i, 1])``, with the
    fraction of it that lies inside its scan (the rest is padding), which the log reports."""

    def __init__(self, cache, seed: int, length: int, weights=None, augment: Augment | None = None) -> None:
        self.cache, self.seed, self.length = cache, seed, length
        self.weights, self.augment = weights, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float]:
        patch, cid, origin = self.cache.sample(np.random.default_rng([self.seed, int(i)]), return_info=True,
                                               weights=self.weights)
        if self.augment is not None and self.augment.active:
            patch = self.augment.crop(self.cache.image(cid), origin, self.cache.superpatch,
                                      np.random.default_rng([self.seed, int(i), 1]), plain=patch)
        inside = inside_fraction(self.cache.image(cid).shape, origin, self.cache.superpatch)
        return torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None], inside


class StepSampler(torch.utils.data.Sampler):
    """Dataset indices for steps [start, steps) of one rank: the distributed sampler of this loop."""

    def __init__(self, start: int, steps: int, batch: int, rank: int, world: int) -> None:
        self.start, self.steps, self.batch, self.rank, self.world = start, steps, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.batch

    def __iter__(self):
        for s in range(self.start, self.steps):
            base = (s * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)


def _step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device if device.type in ("cuda", "cpu") else "cpu")
    g.manual_seed(int(np.random.SeedSequence([seed, step, rank, 7]).generate_state(1)[0]))
    return g


def pretrain(
    data,
    out_dir: str | Path,
    opts: PretrainOptions | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Pretrain a NEMESIS MAE on ``data`` (a SuperpatchCache, a cache folder or a raw data folder).

    Writes ``out_dir/last.safetensors`` (+ ``last.state.*``, see :mod:`.state`) every
    ``checkpoint_every`` steps and at the end, and returns a summary dict. On ``cancel()`` or Ctrl-C,
    the current step is saved first (atomically), then NemesisCancelled / KeyboardInterrupt is raised.
    A file ``out_dir/STOP`` or :func:`.runtime.request_stop` (the channels that work when SIGINT is
    ignored) stop the run the same way at its next step, raising KeyboardInterrupt (the CLI exits 130).

    ``resume=True`` continues from the newest complete checkpoint; it is refused, in one line, for a
    finished run (unless ``opts.steps`` grows), with other options, or on another dataset.
    """
    opts = opts or PretrainOptions()
    out_dir = Path(out_dir)
    device = resolve_device(opts.device)
    bf16 = default_bf16(device) if opts.bf16 is None else bool(opts.bf16)
    dist = init_distributed(device)
    try:
        summary = _pretrain(data, out_dir, opts, resume, progress if dist.is_main else None, cancel, device, bf16, dist)
    except BaseException:
        dist.close()
        raise
    dist.close(finished=True)
    return summary


def _pretrain(data, out_dir, opts, resume, progress, cancel, device, bf16, dist) -> dict[str, Any]:
    # ---- model, optimizer, start step --------------------------------------------------------
    start = 0
    resume_changes: dict[str, Any] = {}
    doc: dict[str, Any] = {}
    if resume and has_train_state(out_dir):
        model, opt, doc = load_train_state(out_dir, lambda m: make_optimizer(m, opts), map_location=device)
        opts, resume_changes = check_resume(doc, opts, dist.world, device, bf16, out_dir)
        start = int(doc["step"])
        if start >= opts.steps:
            raise NemesisInputError(
                f"{out_dir}: this run is finished (step {start} of {opts.steps}), nothing to resume; "
                f"--resume --steps N with N > {start} trains it further, or start a new run in another --out folder")
    elif resume:
        raise NemesisInputError(f"{out_dir}: --resume given but there is no last.state.json to resume from")
    else:
        if dist.is_main:  # a new run here: an earlier run's saved states must not be resumed into it
            clear_train_state(out_dir)
        torch.manual_seed(opts.seed)
        if opts.init_checkpoint:
            model = load_checkpoint(opts.init_checkpoint).to(device)
        else:
            model = build_model(opts.preset, **opts.model_overrides).to(device)
        opt = make_optimizer(model, opts)
    cfg = model.cfg
    # ---- data: a raw folder at the spacing the --init/--resume weights were trained at ----------
    if dist.is_main:
        cache = dataset_for(data, model, include_unlabelled=True)
    dist.barrier()
    if not dist.is_main:
        cache = dataset_for(data, model, include_unlabelled=True)
    if not cache.case_ids:
        raise NemesisInputError(f"{data}: no scans to pretrain on")
    fingerprint = data_fingerprint(cache)
    if resume:
        check_resume_data(doc, cache, fingerprint, out_dir)
    if dist.is_main:
        drop_stale_stop_file(out_dir)
    # the spacing the model sees, recorded with every checkpoint (inference uses it by default)
    spacing = Spacing.parse(cache.spacing_zyx).to_json()
    total_items = opts.steps * opts.batch * dist.world
    weights = case_weights(cache.case_ids, opts.case_weights, str(getattr(cache, "path", data)))
    augment = Augment(opts.intensity_jitter, opts.scale_jitter)
    loader = torch.utils.data.DataLoader(
        CropDataset(cache, opts.seed, total_items, weights, augment),
        batch_size=opts.batch,
        sampler=StepSampler(start, opts.steps, opts.batch, dist.rank, dist.world),
        num_workers=opts.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    train_model: torch.nn.Module = model
    if dist.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    model.train()
    info = {
        "options": asdict(opts),
        "data": str(getattr(cache, "path", data)),
        "data_fingerprint": fingerprint,
        "world_size": dist.world,
        "device": str(device),
        "bf16": bf16,
        # each weighted pattern's share of the crops (the rest: the other cases)
        "case_share": pattern_shares(cache.case_ids, weights, opts.case_weights),
    }
    emit(progress, "start", step=start, total=opts.steps, preset=cfg.name, device=str(device), world_size=dist.world,
         bf16=bf16, cases=len(cache.case_ids))
    if resume_changes:
        emit(progress, "resume_changes", **resume_changes)

    def save(step: int) -> Path | None:
        if dist.is_main:
            extra = {"gate": model.gate, "spacing_zyx": spacing, "superpatch": cfg.superpatch}
            with SAVE_LOCK:
                path = save_train_state(out_dir, model, opt, step, {**info, "extra": extra})
            emit(progress, "checkpoint", step=step, path=str(path))
            return path
        return None

    def stop_asked() -> bool:
        """The stop channels (STOP file, a request from the parent watcher), agreed by every rank."""
        local = stop_requested() or stop_file_requested(out_dir)
        if dist.world == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    step = start
    losses: list[float] = []
    inside_window: list[float] = []
    inside_sum, inside_n = 0.0, 0
    t_window, n_window = time.perf_counter(), 0
    t_start = time.perf_counter()
    try:
        for batch, inside in loader:
            check_cancel(cancel, "pretraining")
            if stop_asked():
                raise KeyboardInterrupt  # as Ctrl-C: saved below, the CLI exits 130
            inside_window.append(float(inside.double().mean()))
            inside_sum, inside_n = inside_sum + float(inside.double().sum()), inside_n + len(inside)
            lr = learning_rate(step, opts)
            for g in opt.param_groups:
                g["lr"] = lr
            x = batch.to(device, non_blocking=True)
            gen = _step_generator(opts.seed, step, dist.rank, device)
            with autocast(device, bf16):
                out = train_model(x, mask_strategy=opts.mask_strategy, mask_ratio=opts.mask_ratio,
                                  noise_sigma=None if opts.noise else 0.0, generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
            opt.step()
            step += 1
            n_window += x.shape[0] * dist.world
            if step % opts.log_every == 0 or step == opts.steps or step == start + 1:
                loss = float(out.loss.detach())
                losses.append(loss)
                now = time.perf_counter()
                # inside_fraction: mean share of this window's batches that is scan, not padding
                emit(progress, "step", step=step, total=opts.steps, loss=loss, lr=lr, gate=model.gate,
                     grad_norm=float(grad_norm), superpatches_per_s=n_window / max(now - t_window, 1e-9),
                     inside_fraction=float(np.mean(inside_window)))
                t_window, n_window = now, 0
                inside_window.clear()
            if step % opts.checkpoint_every == 0 and step < opts.steps:
                save(step)
    except (KeyboardInterrupt, NemesisCancelled):
        save(step)
        emit(progress, "interrupted", step=step, total=opts.steps)
        raise
    elapsed = time.perf_counter() - t_start
    path = save(step)
    digests = [weights_digest(model)]
    if dist.world > 1:
        gathered: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(gathered, digests[0])
        digests = gathered
    done_steps = step - start
    result = {
        "checkpoint": str(path) if path else None,
        "steps": step,
        "steps_this_run": done_steps,
        "resumed_from": start,
        "resume_changes": resume_changes,
        "inside_fraction_mean": inside_sum / inside_n if inside_n else None,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "gate": model.gate,
        "seconds": elapsed,
        "superpatches_per_s": done_steps * opts.batch * dist.world / max(elapsed, 1e-9),
        "world_size": dist.world,
        "rank_weight_digests": digests,
        "device": str(device),
        "bf16": bf16,
        "preset": cfg.name,
        "case_share": info["case_share"],
        "augment": {"intensity_jitter": opts.intensity_jitter, "scale_jitter": opts.scale_jitter},
    }
    emit(progress, "end", **result)
    return result
