"""``nemesis labels``: labelling projects from the command line (status, fill, export, train, next, curve).

``labels train`` is also what the Training widget starts as a child process: ``--events`` streams
its progress as JSON lines on standard output; SIGINT (or a file ``OUT/STOP``) saves at the next
step and exits with status 130, a second SIGINT stops at once; ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ._common import (
    SEED,
    TqdmProgress,
    add_checkpoint_flag,
    add_device_flag,
    add_json_flag,
    add_label_scheme_flag,
    add_level_flags,
    finite_float,
    int_at_least,
    parse_spacing,
    print_json,
)

#: Exit status of a run stopped on request (as for Ctrl-C), with its state saved.
EXIT_STOPPED = 130
#: A file whose appearance in the run folder asks ``labels train`` to stop (where signals are awkward).
STOP_FILE = "STOP"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="superpatch labelling projects: status, fill from a segmentation, export, "
                       "train the probe from labels, label next, the label-efficiency curve",
                       description="A labelling project is a folder with the label sidecars of several scans and "
                       "their shared settings (organs, superpatch size, spacing). See "
                       "https://github.com/napari-nemesis/napari-nemesis/blob/main/docs/labels.md.")
    lsub = p.add_subparsers(dest="labels_command", metavar="ACTION")
    lsub.required = True

    s = lsub.add_parser("status", help="per scan: labelled / skipped / unlabelled superpatches, positives per organ")
    s.add_argument("project")
    add_json_flag(s)
    s.set_defaults(func=cmd_status)

    f = lsub.add_parser("fill", help="label a scan's superpatches from a segmentation (hand labels are kept)",
                        description="Presence per superpatch from a label map (BTCV, TotalSegmentator or AMOS ids) "
                        "with the core's rule: at least THRESHOLD voxels at the model's spacing. Adds the scan to "
                        "the project (and starts the project) if needed. Superpatches labelled or skipped by hand "
                        "are kept unless --overwrite. The project records SEG for the scan, which "
                        "'labels train --level patch' reads again.")
    f.add_argument("project")
    f.add_argument("scan")
    f.add_argument("seg", help="label map on the scan's grid")
    f.add_argument("--threshold", type=int, default=None,
                   help="voxels at the model's spacing for an organ to count as present (default: the project's, 100)")
    add_label_scheme_flag(f)
    f.add_argument("--overwrite", action="store_true", help="also replace labels made by hand")
    f.add_argument("--superpatch", type=int, default=None, help="superpatch size of a new project (default 128)")
    f.add_argument("--spacing", nargs=3, metavar="MM", default=None,
                   help="model spacing x y z in mm of a new project (default 1.5 1.5 2.0)")
    add_json_flag(f)
    f.set_defaults(func=cmd_fill)

    e = lsub.add_parser("export", help="the labelled superpatches as a cache 'nemesis probe' reads",
                        description="Each labelled superpatch becomes a one-superpatch case of a superpatch cache "
                        "(whole scans held out for the test split when there are several). "
                        "Then: nemesis probe OUT --checkpoint CKPT.")
    e.add_argument("project")
    e.add_argument("out")
    add_json_flag(e)
    e.set_defaults(func=cmd_export)

    t = lsub.add_parser("train", help="train the organ probe (or fine-tune) from the project's labels",
                        description="Linear probe (frozen encoder) or fine-tune, on every labelled superpatch; the "
                        "held-out estimate is cross-validation over scans (several scans) or superpatches (one). "
                        "Writes OUT/probe.safetensors (nemesis infer --probe), OUT/log.jsonl, OUT/train.json. "
                        "SIGINT or a file OUT/STOP: save at the next step, exit 130; --resume continues. "
                        "--level patch: a linear head on every token of the frozen encoder, patch labels from the "
                        "segmentations the project's scans were filled from (labels fill), OUT/probe_patch.safetensors.")
    t.add_argument("project")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--mode", default="linear", choices=["linear", "finetune"])
    add_level_flags(t)
    add_checkpoint_flag(t)
    t.add_argument("--epochs", type=int, default=None, help="default 200 full-batch steps (linear) / 8 epochs (finetune)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--batch", type=int, default=8, help="superpatches per forward pass")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds (at most one per scan or superpatch)")
    t.add_argument("--seed", type=int, default=0)
    add_device_flag(t)
    t.add_argument("--bf16", action="store_true", help="bf16 autocast")
    t.add_argument("--checkpoint-every", type=int, default=50, help="steps between resumable saves (0: only on stop)")
    t.add_argument("--log-every", type=int, default=1, help="steps between step events")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.add_argument("--events", action="store_true",
                   help="print every progress event as one JSON line on standard output (for the Training widget)")
    add_json_flag(t)
    t.set_defaults(func=cmd_train)

    n = lsub.add_parser("next", help="label next: the unlabelled superpatches the probe is least sure about",
                        description="Ranks a scan's unlabelled superpatches by the mean binary entropy of the probe's "
                        "organ probabilities, most uncertain first.")
    n.add_argument("project")
    n.add_argument("scan", help="scan id or image path (added to the project if needed)")
    add_checkpoint_flag(n)
    n.add_argument("--probe", default=None, help="probe head (default: beside --checkpoint, or the bundled head)")
    n.add_argument("--top", type=int, default=5)
    add_device_flag(n)
    add_json_flag(n)
    n.set_defaults(func=cmd_next)

    c = lsub.add_parser("curve", help="label-efficiency curve: cross-validated AUROC against the number of labels",
                        description="Do more labels still help? The labelled superpatches are encoded once by the "
                        "frozen encoder; for each size N, heads (the linear probe's recipe) are fitted on nested "
                        "random subsets of N labels of each cross-validation fold's training side, several seeds, "
                        "and scored on every held-out superpatch (whole scans held out when there are several). "
                        "Prints AUROC (pooled over superpatch x organ pairs) with its spread per size, and whether "
                        "the last step rose by more than that spread.")
    c.add_argument("project")
    add_checkpoint_flag(c)
    c.add_argument("--sizes", type=int_at_least(1), nargs="+", default=None, metavar="N",
                   help="numbers of labelled superpatches to train on (default: about 7 sizes from 2 to the "
                   "smallest fold's training set, evenly on a log scale)")
    c.add_argument("--seeds", type=int_at_least(1), default=3, help="random subsets per size")
    c.add_argument("--folds", type=int_at_least(2), default=5,
                   help="cross-validation folds (at most one per scan or superpatch)")
    c.add_argument("--epochs", type=int_at_least(1), default=None, help="full-batch steps per head (default 200)")
    c.add_argument("--lr", type=finite_float(0.0, lo_open=True), default=None, help="learning rate (default 3e-3)")
    c.add_argument("--batch", type=int_at_least(1), default=8, help="superpatches per forward pass of the encoder")
    c.add_argument("--seed", type=SEED, default=0)
    add_device_flag(c)
    add_json_flag(c)
    c.set_defaults(func=cmd_curve)


# ---- status ---------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from ..labels import LabelProject

    st = LabelProject.open(args.project).status()
    if args.json:
        print_json(st)
        return 0
    spacing = " x ".join(f"{v:g}" for v in st["spacing_zyx"])
    print(f"project {st['project']}: {len(st['scans'])} scan(s), {st['superpatch']}^3 superpatches at {spacing} mm "
          f"(z, y, x)")
    short = [o[:6] for o in st["organs"]]
    print(f"  {'scan':<24} {'n':>5} {'label':>6} {'skip':>5} {'todo':>5}  " + " ".join(f"{s:>6}" for s in short))
    for row in st["scans"] + [{"id": "total", **st["totals"], "superpatches": st["totals"]["superpatches"]}]:
        n = "-" if row["superpatches"] is None else row["superpatches"]
        todo = "-" if row["unlabelled"] is None else row["unlabelled"]
        print(f"  {row['id'][:24]:<24} {n:>5} {row['labelled']:>6} {row['skipped']:>5} {todo:>5}  "
              + " ".join(f"{row['positives'][o]:>6}" for o in st["organs"]))
    print("  (organ columns: labelled superpatches with the organ present)")
    missing = [row["id"] for row in st["scans"] if not row["image_found"]]
    if missing:
        print(f"  image not found: {', '.join(missing)}")
    print(f"next unlabelled scan: {st['next_unlabelled'] or 'none (every superpatch is labelled or skipped)'}")
    return 0


# ---- fill -----------------------------------------------------------------------------------
def cmd_fill(args: argparse.Namespace) -> int:
    from ..errors import NemesisInputError
    from ..labels import LabelProject, fill_from_segmentation

    spacing = parse_spacing(args.spacing)
    if isinstance(spacing, str):
        raise NemesisInputError("--spacing: a labelling project needs a spacing in mm, not 'native'")
    project = LabelProject.open(args.project, create=True, superpatch=args.superpatch, spacing_zyx=spacing)
    store = project.store(args.scan)
    threshold = project.threshold if args.threshold is None else args.threshold
    res = fill_from_segmentation(store, args.seg, threshold=threshold, overwrite=args.overwrite,
                                 scheme=args.label_scheme, project=project)
    out = {"project": str(project.root), "scan": project.find(args.scan).scan_id, "labels": str(store.path),
           "threshold": threshold, **res.to_json(), "counts": store.counts()}
    if args.json:
        print_json(out)
    else:
        c = out["counts"]
        print(f"{out['scan']}: {out['filled']} superpatches filled from {args.seg} ({out['scheme']} ids, >= {threshold} "
              f"voxels), {out['changed']} changed, {out['kept_by_hand']} kept (labelled or skipped by hand); now "
              f"{c['labelled']} labelled, {c['skipped']} skipped, {c['unlabelled']} unlabelled of {store.n}")
        print(f"labels: {store.path}")
    return 0


# ---- export ---------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from ..labels import export_project

    bar = TqdmProgress("export", disable=args.json)
    try:
        res = export_project(args.project, args.out, progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json(res)
    else:
        print(f"{res['superpatches']} labelled superpatches of {res['scans']} scan(s) -> cache {res['cache']} "
              f"({res['train']} train, {res['test']} test, held out by {res['split_over']})")
        print(f"next: nemesis probe {res['cache']} --checkpoint CKPT")
    return 0


# ---- train ----------------------------------------------------------------------------------
class StopRequest:
    """``cancel()`` for the training loop: true after one SIGINT or once ``OUT/STOP`` exists.

    The first SIGINT only asks (the loop saves at the next step); a second one raises
    KeyboardInterrupt at once, which ends the process with the last saved state intact.
    """

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signals = 0
        self._previous = None

    def __call__(self) -> bool:
        return self.signals > 0 or self.stop_file.exists()

    def _on_sigint(self, signum, frame) -> None:
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopRequest":
        self.stop_file.unlink(missing_ok=True)
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


class JsonLinesOut:
    """Progress events as JSON lines on standard output, flushed one by one."""

    def __call__(self, event: dict) -> None:
        from ..train.events import _plain

        sys.stdout.write(json.dumps(event, default=_plain) + "\n")
        sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import NemesisCancelled
    from ..labels.training import TrainOptions, train_from_labels
    from ..train.events import JsonlLog, fan_out

    opts = TrainOptions(mode=args.mode, epochs=args.epochs, lr=args.lr, batch=args.batch, folds=args.folds,
                        seed=args.seed, device=args.device, bf16=args.bf16, checkpoint_every=args.checkpoint_every,
                        log_every=args.log_every, level=args.level, patch_threshold=args.patch_threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = TqdmProgress(f"labels train ({args.mode})", disable=args.json or args.events)
    log = JsonlLog(out / "log.jsonl")
    progress = fan_out(bar, log, JsonLinesOut() if args.events else None)
    try:
        with StopRequest(out / STOP_FILE) as stop:
            result = train_from_labels(None if args.resume else args.project, out, args.checkpoint, opts,
                                       resume=args.resume, progress=progress, cancel=stop)
    except NemesisCancelled as exc:
        bar.close()
        print(f"nemesis labels train: {exc}; state saved in {out}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        bar.close()
        log.close()
    if args.json:
        print_json(result)
    else:
        auroc = "-" if result["auroc_mean"] is None else f"{result['auroc_mean']:.4f}"
        f1 = "-" if result["f1_macro"] is None else f"{result['f1_macro']:.3f}"
        what = (f"{result['mode']} patch-level head from {result['n_patches']} patches of {result['n_labelled']} "
                f"superpatches" if result.get("level") == "patch" else
                f"{result['mode']} probe from {result['n_labelled']} labelled superpatches")
        print(f"{what} ({result['n_scans']} scan(s)): held-out AUROC {auroc}, macro F1 {f1} ({result['estimate']})")
        print(f"head: {result['head']}")
        if args.mode == "finetune":
            print(f"checkpoint: {result['checkpoint']}")
        print(f"use it: nemesis infer SCAN --checkpoint {result['checkpoint']} --probe {result['head']}")
    return 0


# ---- next -----------------------------------------------------------------------------------
def cmd_next(args: argparse.Namespace) -> int:
    import numpy as np

    from ..labels import LabelProject, mean_binary_entropy, rank_unlabelled
    from ..labels.ranking import probe_probabilities

    project = LabelProject.open(args.project)
    store = project.store(args.scan)
    prob = probe_probabilities(store, args.checkpoint, args.probe, device=args.device)
    ranked = rank_unlabelled(store, prob)
    entropy = mean_binary_entropy(prob)
    rows = [{"index": i, "entropy_bits": round(float(entropy[i]), 5),
             "grid_zyx": [int(v) for v in np.unravel_index(i, store.grid.grid_shape_zyx)]}
            for i in ranked[: max(0, args.top)]]
    out = {"scan": str(store.scan_path), "labels": str(store.path), "unlabelled": len(ranked), "next": rows}
    if args.json:
        print_json(out)
    else:
        print(f"{len(ranked)} unlabelled superpatches in {store.scan_path}; most uncertain first:")
        for r in rows:
            print(f"  superpatch {r['index']:>4}  grid {','.join(map(str, r['grid_zyx']))}  "
                  f"mean entropy {r['entropy_bits']:.3f} bits")
    return 0


# ---- curve ----------------------------------------------------------------------------------
def cmd_curve(args: argparse.Namespace) -> int:
    from ..labels.curve import label_curve

    bar = TqdmProgress("labels curve", disable=args.json)
    try:
        res = label_curve(args.project, args.checkpoint, sizes=args.sizes, seeds=args.seeds, folds=args.folds,
                          epochs=args.epochs, lr=args.lr, batch=args.batch, seed=args.seed, device=args.device,
                          progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json(res)
        return 0
    print(f"label-efficiency curve of {res['project']}: {res['n_labelled']} labelled superpatches in "
          f"{res['n_scans']} scan(s)" + (f", {res['estimate']}" if res["estimate"] else ""))
    if res["status"] != "ok":
        print(res["message"])
        return 0

    def num(v, fmt=".3f") -> str:
        return "-" if v is None else format(v, fmt)

    print(f"  {'labels':>7} {'AUROC':>6} {'std':>6} {'min':>6} {'max':>6} {'macro':>6}  seeds")
    for p in res["points"]:
        print(f"  {p['labelled']:>7} {num(p['auroc_mean']):>6} {num(p['auroc_std']):>6} {num(p['auroc_min']):>6} "
              f"{num(p['auroc_max']):>6} {num(p['auroc_macro_mean']):>6}  {p['seeds']}")
    print("  (AUROC pooled over superpatch x organ pairs, mean over seeds; macro: mean of the per-organ AUROCs)")
    if res["sizes_left_out"]:
        print(f"  sizes left out (above the smallest fold's {res['max_labelled']} training superpatches): "
              + ", ".join(map(str, res["sizes_left_out"])))
    print(res["trend"]["hint"])
    return 0
