"""``nemesis triage``: a cohort's most surprising superpatches (the core is ``train.triage``; ``nemesis
similar`` is ``cli/similar_cmds.py``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..model.masking import DEFAULT_STRATEGY, mask_strategies
from ._common import (SEED, TqdmProgress, add_checkpoint_flag, add_device_flag, add_json_flag, add_spacing_flag,
                      finite_float, int_at_least, parse_spacing, path_arg, print_json)
from ._common import write_json as write_json_atomic

SOURCES_HELP = "scan files, folders of scans, dataset folders or labelling project folders"


def _device_args(p) -> None:
    add_device_flag(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--batch", type=int_at_least(1), default=2, help="superpatches per forward pass")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "triage", help="rank every superpatch of a cohort by how much worse the model reconstructs it than the "
        "anatomy it knows",
        description="Masks and reconstructs every superpatch of every scan with several mask seeds and scores it "
        "by surprise: the largest robust z-score, over its patch-sized windows, of the model's masked-voxel error "
        "against the cohort's windows that a learning-free local fill finds equally hard (deciles of its error; "
        "windows with air or bone apart). Windows near the padding or a superpatch face are not scored. Prints the "
        "top of the ranking; --json prints all of it. The score, defined: "
        "https://github.com/napari-nemesis/napari-nemesis/blob/main/docs/training.md")
    t.add_argument("sources", nargs="+", type=path_arg, metavar="SCAN_OR_FOLDER_OR_PROJECT", help=SOURCES_HELP)
    add_checkpoint_flag(t)
    t.add_argument("--mask", default=DEFAULT_STRATEGY, choices=mask_strategies(), help="mask strategy")
    t.add_argument("--ratio", type=finite_float(0, 1, lo_open=True, hi_open=True), default=0.75, help="mask ratio")
    t.add_argument("--seeds", type=int_at_least(1, 64), default=3, help="mask seeds per superpatch (errors pooled)")
    t.add_argument("--seed", type=SEED, default=0, help="first mask seed (seeds SEED .. SEED+SEEDS-1)")
    t.add_argument("--min-inside", type=finite_float(0, 1), default=0.25,
                   help="leave unscored a superpatch with less than this fraction inside the scan")
    t.add_argument("--top", type=int_at_least(0), default=10, help="rows of the table printed (0: all)")
    t.add_argument("--out", default=None, type=path_arg, help="write the whole result to OUT/triage.json")
    add_spacing_flag(t, "the spacing the checkpoint was pretrained at, else 1.5 1.5 2.0")
    _device_args(t)
    add_json_flag(t)
    t.set_defaults(func=cmd_triage)


def _load_model(path: str | None):
    from ..model import load_checkpoint
    from ..weights import default_checkpoint_path

    ckpt = path or default_checkpoint_path()
    return load_checkpoint(ckpt), str(ckpt)


def cmd_triage(args: argparse.Namespace) -> int:
    from ..train.triage import print_ranking, triage

    model, ckpt = _load_model(args.checkpoint)
    bar = TqdmProgress("triage", disable=args.json)
    try:
        res = triage(args.sources, model, args.mask, args.ratio, args.seeds, args.seed,
                     spacing_zyx=parse_spacing(args.spacing), batch=args.batch, device=args.device, bf16=args.bf16,
                     min_inside=args.min_inside, checkpoint=ckpt, progress=bar)
    finally:
        bar.close()
    if args.out:
        res["file"] = str(write_json_atomic(Path(args.out) / "triage.json", res))
    if args.json:
        print_json(res)
        return 0
    scored = sum(r["score"] is not None for r in res["ranking"])
    print(f"{len(res['ranking'])} superpatches of {len(res['scans'])} scan(s), {scored} scored; {args.mask} mask "
          f"{args.ratio:g}, seeds {res['seeds'][0]}..{res['seeds'][-1]}, on {res['device']}")
    print_ranking(res, top=args.top)
    print(f"score: {res['score_definition']}")
    if args.out:
        print(f"all of it: {res['file']}")
    return 0
