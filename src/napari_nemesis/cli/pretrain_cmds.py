"""``nemesis pretrain``: self-supervised pretraining from the command line (and under torchrun)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..model.masking import DEFAULT_STRATEGY, mask_strategies
from ._common import write_json as write_json_atomic  # strict JSON: no bare NaN/Infinity
from ._common import (
    SEED,
    TqdmProgress,
    finite_float,
    int_at_least,
    path_arg,
    add_device_flag,
    add_json_flag,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining on a dataset (also under torchrun for several GPUs/nodes)",
        description="Noise-enhanced masked reconstruction of random superpatches (AdamW, cosine schedule "
        "with warm-up, gradient clipping). Checkpoints go to OUT/last.safetensors; --resume continues "
        "exactly. Under torchrun the same command trains with DistributedDataParallel.",
    )
    p.add_argument("data", type=path_arg, help="a dataset folder (BTCV layout or JSON list) or a cache made by 'nemesis prepare'")
    p.add_argument("--out", required=True, type=path_arg, help="run folder: checkpoints, log.jsonl, pretrain.json")
    p.add_argument("--preset", default="small", help="model preset: paper, small, tiny (default small)")
    p.add_argument("--steps", type=int_at_least(1), default=1000)
    p.add_argument("--batch", type=int_at_least(1), default=4, help="superpatches per step and process")
    p.add_argument("--lr", type=finite_float(0, lo_open=True), default=1e-4)
    p.add_argument("--warmup", type=int_at_least(0), default=None, help="warm-up steps (default 5%% of --steps)")
    p.add_argument("--weight-decay", type=finite_float(0), default=0.05)
    p.add_argument("--clip", type=finite_float(0, lo_open=True), default=1.0, help="gradient-norm clipping (a positive number)")
    p.add_argument("--mask", default=DEFAULT_STRATEGY, choices=mask_strategies())
    p.add_argument("--mask-ratio", type=finite_float(0, 1, hi_open=True), default=0.75)
    p.add_argument("--no-noise", action="store_true", help="plain MAE: no noise-enhanced reconstruction")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=100)
    p.add_argument("--log-every", type=int_at_least(1), default=10)
    p.add_argument("--seed", type=SEED, default=0)
    add_device_flag(p)
    bf = p.add_mutually_exclusive_group()
    bf.add_argument("--bf16", dest="bf16", action="store_true", default=None, help="bf16 autocast (default on CUDA)")
    bf.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--workers", type=int_at_least(0, 256), default=0, help="DataLoader worker processes")
    p.add_argument("--superpatch", type=int_at_least(1, 512), default=None, help="override the preset's superpatch size")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.* exactly where it stopped (same options; "
                   "only --steps may grow, --checkpoint-every, --log-every, --workers may change)")
    p.add_argument("--init", default=None, metavar="CKPT", type=path_arg,
                   help="start from these weights with a fresh optimizer and schedule (the model config comes from CKPT)")
    p.add_argument("--case-weight", dest="case_weight", action="append", default=None, metavar="PATTERN=W",
                   type=_case_weight, help="draw the cases whose id matches PATTERN (fnmatch, e.g. 'real*') with "
                   "weight W; other cases weigh 1; repeatable, the first matching pattern counts")
    p.add_argument("--intensity-jitter", type=finite_float(0, 1), default=0.0, metavar="A",
                   help="random contrast in [1-A, 1+A] and offset in [-A/2, A/2] (window units) per crop (default 0)")
    p.add_argument("--scale-jitter", type=finite_float(0, 0.5), default=0.0, metavar="S",
                   help="random zoom in [1-S, 1+S] per axis and crop, i.e. spacing varied by up to S (default 0)")
    p.add_argument("--events", action="store_true",
                   help="print every progress event as one JSON line on standard output (for the Training widget)")
    add_json_flag(p)
    p.set_defaults(func=cmd_pretrain)


def _case_weight(text: str) -> tuple[str, float]:
    import math

    pattern, sep, weight = text.rpartition("=")
    try:
        value = float(weight)
    except ValueError:
        value = float("nan")
    if not sep or not pattern or not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATTERN=WEIGHT with a weight >= 0, e.g. 'real*=30'")
    return pattern, value


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..train.events import JsonlLog, fan_out
    from ..train.pretrain import PretrainOptions, pretrain
    overrides = {"superpatch": args.superpatch} if args.superpatch else {}
    opts = PretrainOptions(
        preset=args.preset, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, clip=args.clip, mask_strategy=args.mask, mask_ratio=args.mask_ratio,
        noise=not args.no_noise, checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
        device=args.device, bf16=args.bf16, num_workers=args.workers, model_overrides=overrides,
        init_checkpoint=args.init, case_weights=dict(args.case_weight or []),
        intensity_jitter=args.intensity_jitter, scale_jitter=args.scale_jitter,
    )
    out = Path(args.out)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    bar = TqdmProgress("pretrain", disable=not main_rank or args.events)
    log = JsonlLog(out / "log.jsonl") if main_rank else None
    lines = None
    if args.events and main_rank:
        from .labels_cmds import JsonLinesOut

        lines = JsonLinesOut()
    try:
        result = pretrain(args.data, out, opts, resume=args.resume, progress=fan_out(bar, log, lines))
    finally:
        bar.close()
        if log is not None:
            log.close()
    if main_rank:
        write_json_atomic(out / "pretrain.json", result)
        if args.json:
            print_json(result)
        else:
            print(f"pretrained {result['steps']} steps ({result['steps_this_run']} this run) in {result['seconds']:.1f} s, "
                  f"{result['superpatches_per_s']:.2f} superpatches/s; loss {result['loss_first']:.4f} -> "
                  f"{result['loss_last']:.4f}; gate a = {result['gate']:.3f}\ncheckpoint: {result['checkpoint']}")
            if result.get("resume_changes", {}).get("note"):
                print(f"resumed with {result['resume_changes']['note']}")
    return 0
