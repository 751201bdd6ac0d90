"""``nemesis probe``, ``evaluate``, ``infer`` and ``reconstruct``: what a pretrained checkpoint does downstream."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model.masking import DEFAULT_STRATEGY, mask_strategies
from ._common import write_json as write_json_atomic  # strict JSON: no bare NaN/Infinity
from ._common import (
    SEED,
    TqdmProgress,
    finite_float,
    int_at_least,
    path_arg,
    add_checkpoint_flag,
    add_device_flag,
    add_json_flag,
    add_label_scheme_flag,
    add_level_flags,
    add_spacing_flag,
    parse_spacing,
    print_json,
)


def _device_args(p) -> None:
    add_device_flag(p)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--batch", type=int_at_least(1), default=None, help="superpatches per forward pass")


def _load_model(path: str | None):
    from ..model import load_checkpoint
    from ..weights import default_checkpoint_path

    ckpt = path or default_checkpoint_path()
    return load_checkpoint(ckpt), str(ckpt)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="organ-presence probe (linear or fine-tune) of a checkpoint on a labelled dataset",
                       description="Frozen encoder (no mask, no noise) -> mean of tokens -> LayerNorm -> Linear(8), "
                       "BCE. Trains on the training split (fixed epochs), reports per-organ AUROC and macro F1 on "
                       "the test split; saves OUT/probe.safetensors. With --level patch: LayerNorm -> Linear(8) on "
                       "every token (one per 16^3 patch) of the frozen encoder, patch labels from the same label "
                       "maps (>= --patch-threshold organ voxels), scored over the test split's patches; saves "
                       "OUT/probe_patch.safetensors.")
    p.add_argument("data", type=path_arg, help="a labelled dataset folder or a cache")
    add_checkpoint_flag(p)
    p.add_argument("--mode", default="linear", choices=["linear", "finetune"],
                   help="linear: a head on the frozen encoder; finetune: encoder and head together (superpatch level)")
    add_level_flags(p)
    p.add_argument("--label-ratio", type=finite_float(0, 1, lo_open=True), default=1.0, help="fraction of training scans with labels (nested subsets)")
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="default 200 full-batch steps (linear) / 8 epochs (finetune)")
    p.add_argument("--lr", type=finite_float(0, lo_open=True), default=None)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", default=None, type=path_arg, help="folder for probe.safetensors and probe.json (--level patch: "
                   "probe_patch.safetensors and probe_patch.json; default: beside --checkpoint or ./probe_out)")
    add_label_scheme_flag(p)
    add_spacing_flag(p, "a cache's own; a raw folder at the checkpoint's pretraining spacing")
    _device_args(p)
    add_json_flag(p)
    p.set_defaults(func=cmd_probe)

    e = sub.add_parser("evaluate", help="the paper's Tables II-III beside two baselines (and the test-mask sweep with --reconstruction) on a dataset",
                       description="Linear probe and fine-tune of the checkpoint and a linear probe of a randomly "
                       "initialised encoder of the same config, across label ratios, beside the paper's numbers.")
    e.add_argument("data", type=path_arg)
    add_checkpoint_flag(e)
    e.add_argument("--ratios", type=finite_float(0, 1, lo_open=True), nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    e.add_argument("--no-finetune", action="store_true")
    e.add_argument("--no-random", action="store_true", help="skip the random-encoder baseline")
    e.add_argument("--finetune-epochs", type=int_at_least(1), default=None)
    e.add_argument("--no-histogram", action="store_true", help="skip the intensity-histogram baseline")
    e.add_argument("--seeds", type=int_at_least(1), default=1,
                   help="draw each label ratio below 1 with this many seeds: mean and spread (default 1)")
    e.add_argument("--reconstruction", action="store_true",
                   help="also the test-mask sweep: PSNR/SSIM per mask strategy at 0.75 beside the mean and local fills")
    e.add_argument("--seed", type=SEED, default=0)
    e.add_argument("--out", default="evaluate_out", type=path_arg, help="folder for evaluate.json (default evaluate_out/)")
    add_label_scheme_flag(e)
    add_spacing_flag(e, "a cache's own; a raw folder at the checkpoint's pretraining spacing")
    _device_args(e)
    add_json_flag(e)
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("infer", help="per-superpatch (or per-patch) organ probabilities for a whole scan (CSV + NIfTI maps)")
    i.add_argument("scan", type=path_arg)
    add_checkpoint_flag(i)
    i.add_argument("--probe", default=None, type=path_arg, help="probe head (default: the bundled one of --level; with "
                   "--checkpoint, the probe.safetensors / probe_patch.safetensors saved beside it). A head trained on "
                   "another encoder, or of another level than --level, is refused")
    add_level_flags(i, default=None, threshold=False,
                    level_help="superpatch: one probability per organ per 128^3 superpatch; patch: one per 16^3 patch, "
                    "maps at patch resolution (default: the level of --probe's head, else superpatch)")
    i.add_argument("--out", default=None, type=path_arg, help="output folder (default: ./<scan>_nemesis)")
    add_spacing_flag(i, "the spacing the probe was trained at")
    _device_args(i)
    add_json_flag(i)
    i.set_defaults(func=cmd_infer)

    r = sub.add_parser("reconstruct", help="mask, noise and reconstruct a whole scan; PSNR/SSIM; NIfTI outputs")
    r.add_argument("scan", type=path_arg)
    add_checkpoint_flag(r)
    r.add_argument("--mask", default=DEFAULT_STRATEGY, choices=mask_strategies())
    r.add_argument("--ratio", type=finite_float(0, 1, lo_open=True, hi_open=True), default=0.75)
    r.add_argument("--noise", type=finite_float(0), default=0.0, help="Gaussian noise sigma in window units (0.03 ~ 13 HU)")
    r.add_argument("--seed", type=SEED, default=0)
    r.add_argument("--superpatch", type=int_at_least(0), default=None, metavar="I",
                   help="reconstruct only superpatch I (as numbered in 'nemesis infer' CSVs); the outputs' other "
                   "voxels hold -175 HU (error 0)")
    r.add_argument("--out", required=True, type=path_arg)
    add_spacing_flag(r, "the spacing the checkpoint was pretrained at, else 1.5 1.5 2.0")
    _device_args(r)
    add_json_flag(r)
    r.set_defaults(func=cmd_reconstruct)


def cmd_probe(args: argparse.Namespace) -> int:
    from ..train.probe import ProbeOptions, run_probe

    from ..errors import NemesisInputError

    if args.level == "patch" and args.mode != "linear":
        raise NemesisInputError(f"--level patch trains a linear head on the frozen encoder; --mode {args.mode} is for "
                                "the superpatch level only")
    model, ckpt = _load_model(args.checkpoint)
    out = Path(args.out) if args.out else (Path(args.checkpoint).parent if args.checkpoint else Path("probe_out"))
    opts = ProbeOptions(mode=args.mode, label_ratio=args.label_ratio, epochs=args.epochs, lr=args.lr, seed=args.seed,
                        device=args.device, bf16=args.bf16, batch=args.batch or 8, level=args.level,
                        patch_threshold=args.patch_threshold)
    bar = TqdmProgress(f"probe ({args.mode}{', patch level' if args.level == 'patch' else ''})", disable=args.json)
    try:
        if args.level == "patch":
            from ..train.patch_level import run_patch_probe as train_head
        else:
            train_head = run_probe
        result = train_head(args.data, model, opts, out_dir=out, checkpoint_name=ckpt, progress=bar,
                            label_scheme=args.label_scheme, spacing_zyx=parse_spacing(args.spacing))
    finally:
        bar.close()
    patch = args.level == "patch"
    write_json_atomic(out / ("probe_patch.json" if patch else "probe.json"), result)
    if args.json:
        print_json(result)
    else:
        counts = (f"{result['n_train_patches']} train / {result['n_test_patches']} test patches of "
                  f"{result['n_train_superpatches']} / {result['n_test_superpatches']} superpatches, >= "
                  f"{result['patch_threshold']} voxels" if patch else
                  f"{result['n_train_superpatches']} train / {result['n_test_superpatches']} test superpatches")
        print(f"{args.mode} {'patch-level ' if patch else ''}probe of {ckpt}: test AUROC {_f(result['auroc_mean'])}, "
              f"macro F1 {_f(result['f1_macro'], 3)} ({counts})")
        print(f"  means: {result['mean_over']}; split: {result['split_description']}")
        for organ, m in result["per_organ"].items():
            print(f"  {organ:<14} AUROC {_f(m['auroc'])}  F1 {m['f1']:.3f}  positives {m['positives']}")
        print(f"head: {result['probe']}")
    return 0


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..train.evaluate import evaluate, format_table
    from ..train.probe import ProbeOptions

    model, ckpt = _load_model(args.checkpoint)
    opts = ProbeOptions(seed=args.seed, device=args.device, bf16=args.bf16, batch=args.batch or 8)
    bar = TqdmProgress("evaluate", disable=args.json)
    try:
        result = evaluate(args.data, model, ratios=tuple(args.ratios), finetune_model=not args.no_finetune,
                          random_baseline=not args.no_random, reconstruction=args.reconstruction, opts=opts,
                          finetune_epochs=args.finetune_epochs, recon_seed=args.seed, progress=bar,
                          label_scheme=args.label_scheme, spacing_zyx=parse_spacing(args.spacing),
                          seeds=args.seeds, histogram_baseline=not args.no_histogram)
    finally:
        bar.close()
    result["checkpoint"] = ckpt
    write_json_atomic(Path(args.out) / "evaluate.json", result)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from ..model.levels import head_level
    from ..train.inference import infer_scan, write_infer_outputs
    from ..train.patch_level import infer_patch_scan
    from ..train.probe import check_probe_matches, load_probe, probe_beside
    from ..train.trust import trust_report
    from ..weights import default_probe_path

    model, ckpt = _load_model(args.checkpoint)
    # a head belongs to one encoder: with --checkpoint and no --probe, the head saved beside it
    asked = args.level or "superpatch"
    probe = args.probe or (probe_beside(args.checkpoint, asked) if args.checkpoint else default_probe_path(asked))
    head, meta = load_probe(probe)
    level = args.level or head_level(meta)  # --probe alone: the level of its head
    check_probe_matches(model, meta, checkpoint=ckpt, probe=probe, level=level)
    run = infer_patch_scan if level == "patch" else infer_scan
    bar = TqdmProgress("infer" if level == "superpatch" else "infer (patch level)", disable=args.json)
    try:
        res = run(args.scan, model, head, meta["organs"], spacing_zyx=parse_spacing(args.spacing),
                  threshold=meta.get("threshold", 0.5), batch=args.batch or 2, device=args.device, bf16=args.bf16,
                  progress=bar)
    finally:
        bar.close()
    out = Path(args.out) if args.out else Path(f"{Path(args.scan).name.split('.')[0]}_nemesis")
    files = write_infer_outputs(res, out)
    trust = trust_report(res.volume, meta, res.info["spacing_zyx"], model.cfg.superpatch)
    unit = "patches" if level == "patch" else "superpatches"
    probs = res.inside_probabilities() if level == "patch" else res.probabilities  # (rows, K)
    summary = {"scan": args.scan, "checkpoint": ckpt, "probe": str(probe), "level": level, **res.info, "trust": trust,
               "organs": res.organs,
               "max_probability": {o: float(probs[:, k].max()) if len(probs) else 0.0 for k, o in enumerate(res.organs)},
               f"present_{unit}": {o: int((probs[:, k] >= res.threshold).sum()) for k, o in enumerate(res.organs)},
               **files}
    write_json_atomic(out / ("infer_patch.json" if level == "patch" else "infer.json"), summary)
    if args.json:
        print_json(summary)
    else:
        where = (f"{summary['patches']} patches of {summary['patch']}^3 in " if level == "patch" else "")
        print(f"{where}{summary['superpatches']} superpatches (grid {summary['grid']}) at "
              f"{' x '.join(f'{v:g}' for v in summary['spacing_zyx'])} mm (z, y, x; from the {summary['spacing_source']}); "
              f"CSV: {files['csv']}")
        for o in res.organs:
            print(f"  {o:<14} max p {summary['max_probability'][o]:.3f}  {unit} >= {res.threshold}: "
                  f"{summary[f'present_{unit}'][o]}")
        if trust["head_held_out_auroc"] is not None:
            print(f"the head's AUROC on {trust['head_held_out_on']}: {trust['head_held_out_auroc']:.3f}")
    for line in trust["warnings"]:
        print(f"warning: {args.scan}: {line}", file=sys.stderr)
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..train.scan import reconstruct_scan

    model, ckpt = _load_model(args.checkpoint)
    bar = TqdmProgress("reconstruct", disable=args.json)
    try:
        res = reconstruct_scan(args.scan, model, args.mask, args.ratio, args.noise, args.seed,
                               spacing_zyx=parse_spacing(args.spacing), batch=args.batch or 2,
                               device=args.device, bf16=args.bf16, out_dir=args.out, progress=bar,
                               indices=None if args.superpatch is None else [args.superpatch])
    finally:
        bar.close()
    res["checkpoint"] = ckpt
    write_json_atomic(Path(args.out) / "reconstruct.json", res)
    if args.json:
        print_json(res)
    else:
        where = "" if args.superpatch is None else f"superpatch {args.superpatch}: "
        print(f"{where}{args.mask} mask {args.ratio}, noise {args.noise}, on {res['device']}: PSNR masked {_f2(res['psnr_masked'])} dB, "
              f"all {_f2(res['psnr_all'])} dB; SSIM masked {_f(res['ssim_masked'])}, all {_f(res['ssim_all'])}")
        for k, v in res["files"].items():
            print(f"  {k}: {v}")
    return 0


def _f2(v) -> str:
    return "-" if v is None else f"{v:.2f}"
