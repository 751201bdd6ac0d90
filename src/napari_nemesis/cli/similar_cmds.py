"""``nemesis similar``: the superpatches of other scans nearest to one superpatch (``train.similarity``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    TqdmProgress,
    add_checkpoint_flag,
    add_device_flag,
    add_json_flag,
    add_spacing_flag,
    int_at_least,
    parse_spacing,
    path_arg,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("similar", help="the superpatches of other scans nearest to one superpatch in the encoder's "
                       "feature space",
                       description="Frozen encoder features (the mean token of each superpatch, no mask), cosine "
                       "similarity; each scan's features computed once and cached by content "
                       "($NEMESIS_FEATURE_CACHE or ~/.cache/napari-nemesis/features). Superpatches less than half "
                       "inside their scan are not candidates; the query's own scan is left out.")
    p.add_argument("scan", type=path_arg, help="the scan holding the query superpatch")
    p.add_argument("--superpatch", type=int_at_least(0), required=True, metavar="I", help="the query superpatch's index")
    p.add_argument("--among", nargs="+", required=True, type=path_arg, metavar="SCAN_OR_FOLDER",
                   help="scan files, folders of scans or labelling projects to search")
    p.add_argument("--k", type=int_at_least(1), default=5, help="neighbours to list")
    p.add_argument("--cache", type=path_arg, default=None, help="feature cache folder (default $NEMESIS_FEATURE_CACHE "
                   "or ~/.cache/napari-nemesis/features)")
    add_checkpoint_flag(p)
    add_spacing_flag(p, "the checkpoint's pretraining spacing")
    add_device_flag(p)
    p.add_argument("--batch", type=int_at_least(1), default=2, help="superpatches per forward pass")
    add_json_flag(p)
    p.set_defaults(func=cmd_similar)


def cmd_similar(args: argparse.Namespace) -> int:
    from ..model import load_checkpoint
    from ..train.similarity import similar
    from ..weights import default_checkpoint_path

    ckpt = args.checkpoint or default_checkpoint_path()
    model = load_checkpoint(ckpt)
    bar = TqdmProgress("similar", disable=args.json)
    try:
        res = similar(args.scan, args.superpatch, args.among, model, k=args.k, spacing_zyx=parse_spacing(args.spacing),
                      batch=args.batch, device=args.device, cache_dir=args.cache, progress=bar)
    finally:
        bar.close()
    res["checkpoint"] = str(ckpt)
    if args.json:
        print_json(res)
        return 0
    print(f"nearest to superpatch {args.superpatch} of {args.scan} among {len(res['scans'])} scan(s) "
          f"({res['cache']['hits']} from the cache):")
    print(f"{'#':>3}  {'similarity':>10}  {'superpatch':>10}  scan")
    for r, n in enumerate(res["neighbours"], start=1):
        print(f"{r:>3}  {n['similarity']:>10.4f}  {n['superpatch']:>10}  {Path(n['scan']).name}")
    return 0
