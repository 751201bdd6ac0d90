"""``nemesis attention``: where one token of a superpatch looks, in the MATB plane and axis streams."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (add_checkpoint_flag, add_device_flag, add_json_flag, add_spacing_flag, int_at_least, path_arg,
                      print_json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="MATB attention of one token (plane and axis streams) as NIfTI maps aligned with the scan",
        description="Runs the encoder on one superpatch (every token visible, no noise) and writes the chosen "
        "block's attention weights of the query token, mean over heads, painted over each token's patch: "
        "SCAN_attention_plane.nii.gz (non-zero only on the query's slice) and SCAN_attention_axis.nii.gz "
        "(only on its column), on the scan's own grid and affine, plus attention.json.",
    )
    p.add_argument("scan", type=path_arg, help="the CT scan (NIfTI, NRRD, MHA/MHD or a DICOM folder)")
    p.add_argument("--superpatch", type=int_at_least(0), required=True, metavar="I",
                   help="superpatch index (C order over the grid, as in 'nemesis infer' CSVs)")
    p.add_argument("--token", type=int_at_least(0), nargs=3, required=True, metavar=("Z", "Y", "X"),
                   help="the query token's position in the superpatch's token grid")
    p.add_argument("--block", type=int, default=-1,
                   help="encoder block, from 0; negative counts from the end (default -1: the last)")
    add_checkpoint_flag(p)
    p.add_argument("--out", default=None, type=path_arg, help="output folder (default: ./<scan>_nemesis)")
    add_spacing_flag(p, "the spacing the checkpoint was pretrained at, else 1.5 1.5 2.0")
    add_device_flag(p, "cpu", help="device (default cpu: one superpatch is quick)")
    add_json_flag(p)
    p.set_defaults(func=cmd_attention)


def _top(grid_map, k: int = 5) -> list[list[float]]:
    """The k largest weights as [z, y, x, weight] rows."""
    import numpy as np

    flat = grid_map.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [[*map(int, np.unravel_index(i, grid_map.shape)), round(float(flat[i]), 6)] for i in order if flat[i] > 0]


def cmd_attention(args: argparse.Namespace) -> int:
    import numpy as np

    from ._common import write_json as write_json_atomic  # strict JSON
    from ..data import write_volume
    from ..model import load_checkpoint
    from ..train.attention import attention_maps, check_token
    from ..train.scan import prepare_for_model, scan_stem
    from ..weights import default_checkpoint_path
    from ._common import parse_spacing

    ckpt = args.checkpoint or default_checkpoint_path()
    model = load_checkpoint(ckpt)
    token = check_token(model, args.token)  # fail before reading the scan
    prepared = prepare_for_model(args.scan, model, parse_spacing(args.spacing))
    i = prepared.check_index(args.superpatch)
    maps = attention_maps(model, prepared.superpatch(i), token, block=args.block, device=args.device)

    out = Path(args.out) if args.out else Path(f"{Path(args.scan).name.split('.')[0]}_nemesis")
    out.mkdir(parents=True, exist_ok=True)
    stem = scan_stem(prepared.volume.source)
    box = prepared.grid.box(i, clip=True)
    inner = tuple(slice(0, d) for d in box.shape)
    files = {}
    for stream in ("plane", "axis"):
        painted = np.zeros(prepared.pre.shape, dtype=np.float32)
        painted[box.slices] = maps.to_voxels(stream, model.cfg.patch)[inner]
        path = out / f"{stem}_attention_{stream}.nii.gz"
        # block-constant weights: nearest neighbour keeps each token's value exact on the scan's voxels
        write_volume(prepared.pre.to_original(painted, order=0), path, reference=prepared.volume, dtype=np.float32)
        files[stream] = str(path)
        del painted
    summary = {
        "scan": str(args.scan), "checkpoint": str(ckpt), "superpatch": i,
        "superpatch_grid_zyx": list(prepared.grid.grid_index(i)), "token_zyx": list(token),
        "spacing_zyx": list(prepared.pre.spacing_zyx), "spacing_source": prepared.spacing_source,
        "token_grid": list(model.grid), "block": maps.block, "depth": len(model.blocks),
        "heads": int(maps.plane_heads.shape[0]), "device": str(maps.device),
        "plane": {"self": float(maps.plane[token]), "top": _top(maps.plane)},
        "axis": {"self": float(maps.axis[token]), "top": _top(maps.axis)},
        "files": files,
    }
    write_json_atomic(out / "attention.json", summary)
    if args.json:
        print_json(summary)
    else:
        print(f"token {' '.join(map(str, token))} of superpatch {i}, encoder block {maps.block} of "
              f"{summary['depth']} (0-based), mean over {summary['heads']} heads:")
        for stream, where in (("plane", "its slice"), ("axis", "its column")):
            top = ", ".join(f"({z} {y} {x}) {w:.3f}" for z, y, x, w in summary[stream]["top"][:3])
            print(f"  {stream:<5} stream (within {where}): self {summary[stream]['self']:.3f}; top {top}")
        for k, v in files.items():
            print(f"  {k}: {v}")
    return 0
