"""``nemesis prepare``, ``nemesis phantom`` and ``nemesis info``: the CT data layer's commands.

Spacings on the command line are given **x y z** in mm (``--spacing 1.5 1.5 2.0``); the Python
API uses (z, y, x).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (SEED, add_json_flag, add_label_scheme_flag, add_spacing_flag, int_at_least, parse_spacing, path_arg,
                      print_json)

#: Superpatch sizes a command accepts (a model takes at most 512^3, config.LIMITS).
SUPERPATCH = int_at_least(1, 512)


class _Bar:
    """``progress(done, total, message)`` as a tqdm bar on stderr."""

    def __init__(self, desc: str, disable: bool = False):
        self.desc, self.disable, self.bar = desc, disable, None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, disable=self.disable,
                            dynamic_ncols=True)
        self.bar.n = int(done)
        if message:
            self.bar.set_postfix_str(str(message)[:40], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _spacing_arg(values):
    """CLI x y z -> API (z, y, x); ``none``/``native`` keeps native spacing; not given: the default."""
    from ..data import DEFAULT_SPACING_ZYX

    return parse_spacing(values, DEFAULT_SPACING_ZYX)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="preprocess a dataset folder once into a memory-mapped superpatch cache",
        description="Reads every case of DATA_DIR (BTCV layout imagesTr/labelsTr, or a JSON list "
        "of image/label pairs), windows HU to [0, 1], resamples to --spacing and writes a cache "
        "of memory-mapped arrays plus index.json. Re-running skips cases whose sources did not "
        "change.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", type=path_arg)
    p.add_argument("--out", required=True, metavar="CACHE", type=path_arg, help="cache folder to create or update")
    add_spacing_flag(p, "1.5 1.5 2.0")
    p.add_argument("--superpatch", type=SUPERPATCH, default=128, help="superpatch size for the presence "
                   "labels stored in the index (default 128)")
    p.add_argument("--include-unlabelled", action="store_true",
                   help="also cache images without labels (imagesTs), e.g. for pretraining")
    add_label_scheme_flag(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_prepare)

    ph = sub.add_parser(
        "phantom",
        help="write synthetic abdominal CTs with organ labels in BTCV layout",
        description="Synthetic abdominal CT phantoms (body, fat, muscle, spine, ribs, lung bases, "
        "the 8 organs, a contrast phase, noise), deterministic per seed, in BTCV layout.",
    )
    ph.add_argument("out_dir", metavar="OUT_DIR", type=path_arg)
    ph.add_argument("--cases", type=int_at_least(1), default=30, help="number of cases (default 30)")
    ph.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    ph.add_argument("--size", default="default", choices=["default", "small"],
                    help="default: 512x512 at 0.7-0.9 mm, 2.5-5 mm slices; small: 128x128 at ~3 mm")
    ph.add_argument("--shape", type=int_at_least(1, 4096), nargs=3, metavar=("Z", "Y", "X"), default=None,
                    help="force the voxel grid (z y x); spacing follows from the field of view")
    add_json_flag(ph)
    ph.set_defaults(func=cmd_phantom)

    i = sub.add_parser(
        "info",
        help="shape, spacing, orientation, HU range and superpatch grid of a scan",
        description="Reads SCAN (NIfTI, DICOM directory, NRRD, MHA/MHD) and reports its canonical "
        "(z, y, x) shape and spacing, file orientation, HU range and the superpatch grid at the "
        "model's spacing; with --labels, the organ presence per superpatch.",
    )
    i.add_argument("scan", metavar="SCAN", type=path_arg)
    i.add_argument("--labels", metavar="LABELMAP", default=None, type=path_arg,
                   help="label map (BTCV, TotalSegmentator or AMOS ids: see --label-scheme)")
    add_label_scheme_flag(i)
    add_spacing_flag(i, "1.5 1.5 2.0")
    i.add_argument("--superpatch", type=SUPERPATCH, default=128, help="superpatch size (default 128)")
    i.add_argument("--series-uid", default=None, help="DICOM series to read from a directory")
    add_json_flag(i)
    i.set_defaults(func=cmd_info)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data import prepare_cache

    spacing = _spacing_arg(args.spacing)
    bar = _Bar("prepare")
    try:
        index = prepare_cache(args.data_dir, args.out, spacing, args.superpatch, progress=bar,
                              include_unlabelled=args.include_unlabelled, label_scheme=args.label_scheme)
    finally:
        bar.close()
    summary = index.summary()
    if args.json:
        print_json(summary)
    else:
        print(f"cache {summary['cache']}: {summary['cases']} cases ({summary['train']} train, "
              f"{summary['test']} test), {summary['superpatches']} superpatches of "
              f"{summary['superpatch']}^3; prepared {len(summary['prepared'])}, skipped "
              f"{len(summary['skipped'])} unchanged\n{summary['split_description']}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import write_phantom_dataset

    bar = _Bar("phantom")
    try:
        written = write_phantom_dataset(args.out_dir, cases=args.cases, seed=args.seed,
                                        progress=bar, size=args.size, shape=args.shape)
    finally:
        bar.close()
    size = sum(p.stat().st_size for p in written)
    res = {"out_dir": str(Path(args.out_dir)), "cases": args.cases, "seed": args.seed,
           "size": args.size, "shape": args.shape, "files": len(written), "bytes": size}
    if args.json:
        print_json(res)
    else:
        print(f"{args.cases} phantom cases in {args.out_dir} ({size / 1e6:.1f} MB)")
    return 0


def info_report(scan, labels=None, spacing_zyx="default", superpatch: int = 128,
                series_uid=None, label_scheme: str = "auto") -> dict[str, Any]:
    """The ``nemesis info`` report as a dict (also used by tests and the viewer).

    Labels are counted as BTCV organs after :func:`~napari_nemesis.data.to_btcv_labels`
    (``label_scheme``: ``auto`` detects BTCV, TotalSegmentator or AMOS ids)."""
    import numpy as np

    from ..data import (DEFAULT_SPACING_ZYX, ORGAN_NAMES, SuperpatchGrid, check_label_scheme,
                        organ_voxel_counts, preprocess, read_labels, read_volume, resample, to_btcv_labels)

    spacing_zyx = DEFAULT_SPACING_ZYX if spacing_zyx == "default" else spacing_zyx
    check_label_scheme(label_scheme)
    vol = read_volume(scan, series_uid=series_uid)
    pre = preprocess(vol, spacing_zyx)
    grid = SuperpatchGrid.for_preprocessed(pre, superpatch).check_count(str(scan))
    counts, scheme = None, None
    if labels is not None:
        lab, scheme = to_btcv_labels(read_labels(labels, vol), label_scheme, source=labels, refuse_binary=True)
        lab_pre = resample(lab, vol.spacing, pre.spacing_zyx, order=0)
        counts = organ_voxel_counts(lab_pre, grid)
    from ..data import PRESENCE_THRESHOLD

    sps = []
    for k in range(grid.n):
        b, bo = grid.box(k), grid.box_original(k)
        corners = grid.box_world(k)
        entry: dict[str, Any] = {
            "index": k,
            "grid_zyx": list(grid.grid_index(k)),
            "box_zyx": [list(b.start), list(b.stop)],
            "box_original_zyx": [list(bo.start), list(bo.stop)],
            "world_min_xyz": [round(float(v), 2) for v in corners.min(axis=0)],
            "world_max_xyz": [round(float(v), 2) for v in corners.max(axis=0)],
            "foreground": round(float(np.mean(grid.superpatch_of(pre.array, k) > 0)), 4),
        }
        if counts is not None:
            entry["voxels"] = {n: int(c) for n, c in zip(ORGAN_NAMES, counts[k])}
            entry["presence"] = {n: int(c >= PRESENCE_THRESHOLD) for n, c in zip(ORGAN_NAMES, counts[k])}
        sps.append(entry)
    return {
        "scan": str(scan),
        "format": vol.meta.get("format"),
        "shape_zyx": list(vol.shape),
        "spacing_zyx": [round(float(s), 6) for s in vol.spacing],
        "orientation": vol.orientation,
        "canonical_orientation": "LPS",
        "hu_min": float(vol.meta.get("hu_min", float(vol.array.min()))),
        "hu_max": float(vol.meta.get("hu_max", float(vol.array.max()))),
        "grid": {
            "superpatch": grid.superpatch,
            "spacing_zyx": [float(s) for s in pre.spacing_zyx],
            "preprocessed_shape_zyx": list(pre.shape),
            "padded_shape_zyx": list(grid.padded_shape),
            "grid_shape_zyx": list(grid.grid_shape),
            "n": grid.n,
        },
        "labels": str(labels) if labels is not None else None,
        "label_scheme": scheme,
        "presence_threshold": PRESENCE_THRESHOLD if labels is not None else None,
        "superpatches": sps,
    }


_SHORT = {"aorta": "aorta", "gallbladder": "gallb", "spleen": "spleen", "left_kidney": "kid_L",
          "right_kidney": "kid_R", "liver": "liver", "stomach": "stom", "pancreas": "panc"}


def cmd_info(args: argparse.Namespace) -> int:
    rep = info_report(args.scan, args.labels, _spacing_arg(args.spacing), args.superpatch,
                      args.series_uid, args.label_scheme)
    if args.json:
        print_json(rep)
        return 0
    g = rep["grid"]
    lines = [
        f"scan         {rep['scan']} ({rep['format']})",
        f"shape        {' x '.join(map(str, rep['shape_zyx']))} (z, y, x), canonical {rep['canonical_orientation']}+",
        f"spacing      {' x '.join(f'{s:g}' for s in rep['spacing_zyx'])} mm (z, y, x)",
        f"orientation  {rep['orientation']} (file voxel axes)",
        f"HU range     {rep['hu_min']:g} .. {rep['hu_max']:g}",
        f"grid         {g['superpatch']}^3 superpatches at {' x '.join(f'{s:g}' for s in g['spacing_zyx'])} mm "
        f"(z, y, x): preprocessed {' x '.join(map(str, g['preprocessed_shape_zyx']))}, padded "
        f"{' x '.join(map(str, g['padded_shape_zyx']))}, grid {' x '.join(map(str, g['grid_shape_zyx']))} "
        f"= {g['n']} superpatches",
    ]
    if rep["labels"]:
        from ..data import ORGAN_NAMES

        lines.append(f"labels       {rep['labels']} ({rep['label_scheme']} ids; present = >= "
                     f"{rep['presence_threshold']} voxels at the model's spacing; voxel counts shown)")
        head = f"{'sp':>4} {'grid zyx':>9} {'fg':>5} " + " ".join(f"{_SHORT[n]:>7}" for n in ORGAN_NAMES)
        lines.append(head)
        for sp in rep["superpatches"]:
            cells = []
            for n in ORGAN_NAMES:
                v = sp["voxels"][n]
                cells.append(f"{(str(v) + ('*' if sp['presence'][n] else '')) if v else '.':>7}")
            gz = ",".join(map(str, sp["grid_zyx"]))
            lines.append(f"{sp['index']:>4} {gz:>9} {sp['foreground']:>5.2f} " + " ".join(cells))
        lines.append("(* = present)")
    print("\n".join(lines))
    return 0
