"""``nemesis flops`` and ``nemesis demo``: the model's cost and a first look at it (in napari)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.masking import DEFAULT_STRATEGY, MASKS, mask_strategies
from ._common import add_json_flag, finite_float, int_at_least, path_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="count the cost of one forward pass (GMACs and GFLOPs) and how a whole volume scales",
        description="Counts one pretraining forward pass of a preset with torch.utils.flop_counter. "
        "GMACs = multiply-accumulates (the paper's 'GFLOPs' convention); GFLOPs = 2 x GMACs.",
    )
    p.add_argument("--preset", default="paper", help="model preset: paper, small or tiny (default: paper)")
    p.add_argument("--superpatch", type=int_at_least(1, 512), default=None, help="superpatch size in voxels (default: the preset's)")
    p.add_argument("--patch", type=int_at_least(1, 128), default=None, help="patch size in voxels (default: the preset's)")
    p.add_argument("--mask-ratio", type=finite_float(0, 1, hi_open=True), default=0.75, help="mask ratio of the counted pass (default 0.75)")
    p.add_argument("--mask", default=DEFAULT_STRATEGY, choices=mask_strategies(), help="mask strategy")
    p.add_argument("--no-scaling", action="store_true", help="skip the whole-volume scaling table")
    add_json_flag(p)
    p.set_defaults(func=cmd_flops)

    d = sub.add_parser(
        "demo", help="the main job: napari with the sample CT, its superpatch grid, organ probabilities and "
        "reconstructions",
        description="Opens napari with the sample CT shipped with the package (or --scan), its superpatch grid and "
        "the NEMESIS widgets, computes the organ probabilities once and stays open. Without a display it runs the "
        "same scene under a virtual display (Xvfb), saves screenshots to --out and exits; with neither a display "
        "nor Xvfb it runs the text-only demo (--headless).")
    d.add_argument("--scan", default=None, type=path_arg, help="scan to open (default: the sample CT shipped with the package)")
    d.add_argument("--out", default="demo_out", type=path_arg, help="folder for screenshots and outputs (default demo_out/)")
    d.add_argument("--headless", action="store_true",
                   help="no window: print the model, its cost, organ probabilities and reconstructions, and write "
                   "them as NIfTI/CSV to --out")
    d.add_argument("--screenshot", metavar="PATH", default=None, type=path_arg,
                   help="save one screenshot of the shown window once the probabilities are in, then exit")
    d.set_defaults(func=cmd_demo)


def _build(args: argparse.Namespace):
    from ..model import build_model

    overrides = {}
    if getattr(args, "superpatch", None):
        overrides["superpatch"] = args.superpatch
    if getattr(args, "patch", None):
        overrides["patch"] = args.patch
    return build_model(args.preset, **overrides)


def flops_report(model, mask_ratio: float, mask: str, scaling: bool) -> dict:
    from ..model.flops import PAPER_FULL_VOLUME_GMACS, PAPER_GMACS, count_encoder, count_forward, volume_scaling

    fwd = count_forward(model, mask_ratio=mask_ratio, mask_strategy=mask)
    report = {
        "preset": model.cfg.name,
        "superpatch": model.cfg.superpatch,
        "patch": model.cfg.patch,
        "mask_ratio": mask_ratio,
        "mask_strategy": mask,
        "gmacs": fwd["gmacs"],
        "gflops": fwd["gflops"],
        "paper_gflops": PAPER_GMACS,
        "paper_full_volume_gflops": PAPER_FULL_VOLUME_GMACS,
        "relative_to_paper": fwd["gmacs"] / PAPER_GMACS,
        "parts": fwd["parts"],
        "encoder_inference_gmacs": count_encoder(model),
        "counts": "matmuls/linears and SDPA attention; GMACs = multiply-accumulates (the paper's "
        "'GFLOPs'), GFLOPs = 2 x GMACs; per superpatch, batch 1",
    }
    if scaling:
        report["scaling"] = volume_scaling(model)
    return report


def print_flops_table(r: dict) -> None:
    print(f"NEMESIS '{r['preset']}' forward pass, superpatch {r['superpatch']}^3, patch {r['patch']}^3, "
          f"{r['mask_strategy']} mask {r['mask_ratio']:.2f}")
    print(f"  {'part':<18}{'GMACs':>10}")
    for k, v in r["parts"].items():
        print(f"  {k:<18}{v:>10.2f}")
    print(f"  {'total':<18}{r['gmacs']:>10.2f}   (= {r['gflops']:.2f} GFLOPs, 1 MAC = 2 FLOPs)")
    print(f"  paper: {r['paper_gflops']:.1f} G (its 'GFLOPs' are MACs) -> ours is "
          f"{100 * (r['relative_to_paper'] - 1):+.1f} %")
    print(f"  encoder only, every token visible (inference): {r['encoder_inference_gmacs']:.2f} GMACs")
    if "scaling" in r:
        print("\nWhole-volume encoder cost: superpatch tiling (linear) vs one full-volume ViT (quadratic)")
        print(f"  {'volume z,y,x':<16}{'superpatches':>13}{'tokens':>8}{'tiled GMACs':>13}{'full ViT GMACs':>16}{'ratio':>7}")
        for row in r["scaling"]:
            shape = "x".join(str(s) for s in row["shape_zyx"])
            print(f"  {shape:<16}{row['superpatches']:>13}{row['tokens']:>8}{row['superpatch_gmacs']:>13.0f}"
                  f"{row['full_volume_vit_gmacs']:>16.0f}{row['ratio']:>7.2f}")


def cmd_flops(args: argparse.Namespace) -> int:
    model = _build(args)
    report = flops_report(model, args.mask_ratio, args.mask, scaling=not args.no_scaling)
    if args.json:
        print_json(report)
    else:
        print_flops_table(report)
    return 0


def _demo_scan(scan: str | None) -> Path:
    """The scan the demo opens: ``--scan``, else the sample CT shipped inside the package."""
    if scan:
        return Path(scan)
    from ..sample_data import sample_ct_path

    return sample_ct_path()


def cmd_demo(args: argparse.Namespace) -> int:
    """napari with the sample CT (or a virtual display and screenshots, or text when neither works)."""
    import sys

    if args.headless:
        return _text_demo(args)
    from ..viewer._display import has_display, virtual_display, xvfb_path

    if has_display():
        return _window_demo(args)
    if xvfb_path():
        print("no display: running the demo under a virtual display (Xvfb)", file=sys.stderr)
        with virtual_display():
            return _window_demo(args, screenshots=True)
    print("no display and no Xvfb: running the text-only demo (nemesis demo --headless)", file=sys.stderr)
    return _text_demo(args)


def _window_demo(args: argparse.Namespace, screenshots: bool = False) -> int:
    """The napari scene: interactive, or one screenshot (--screenshot), or the screenshot tour."""
    import napari

    from ..viewer._demo import open_demo, save_window, screenshot_tour

    session = open_demo(scan=None if not args.scan else Path(args.scan), wait=bool(args.screenshot or screenshots))
    viewer = session.viewer
    if args.screenshot:
        path = save_window(viewer, Path(args.screenshot))
        viewer.close()
        print(f"screenshot: {path}")
        return 0
    if screenshots:
        shots = screenshot_tour(session, Path(args.out))
        viewer.close()
        print(f"{len(shots)} screenshots in {args.out}/:")
        for path in shots.values():
            print(f"  {path}")
        return 0
    napari.run()
    return 0


def _text_demo(args: argparse.Namespace) -> int:
    """Model summary and cost, then organ probabilities and a reconstruction of a whole real CT."""
    from ..model.summary import describe
    from ..train.inference import infer_scan, write_infer_outputs
    from ..train.scan import reconstruct_scan
    from ..weights import load_default_model, load_default_probe
    from ._common import TqdmProgress

    out = Path(args.out)
    model = load_default_model()
    head, meta = load_default_probe()
    print("NEMESIS bundled model (model card: "
          "https://github.com/napari-nemesis/napari-nemesis/blob/main/docs/model-card.md):")
    for k, v in describe(model).items():
        print(f"  {k}: {v}")
    print()
    print_flops_table(flops_report(_build(argparse.Namespace(preset="paper")), 0.75, "dual", scaling=False))
    scan = _demo_scan(args.scan)
    print(f"\nScan: {scan}")
    bar = TqdmProgress("organ probabilities")
    try:
        res = infer_scan(scan, model, head, meta["organs"], spacing_zyx=meta.get("spacing_zyx"), progress=bar)
    finally:
        bar.close()
    files = write_infer_outputs(res, out)
    print(f"{res.grid.n} superpatches (grid {list(res.grid.grid_shape)}), probabilities per organ (max over superpatches):")
    for k, organ in enumerate(res.organs):
        p = res.probabilities[:, k]
        print(f"  {organ:<14} max {p.max():.2f}   present in {(p >= res.threshold).sum()} superpatches")
    print(f"  -> {files['csv']} and {len(files['maps'])} probability maps")
    for strategy in (name for name, spec in MASKS.items() if not spec.baseline):
        bar = TqdmProgress(f"reconstruct ({strategy})")
        try:
            rec = reconstruct_scan(scan, model, strategy, 0.75, noise=0.03, seed=0, spacing_zyx=meta.get("spacing_zyx"),
                                   out_dir=out / f"reconstruct_{strategy}", progress=bar)
        finally:
            bar.close()
        print(f"reconstruction, {strategy} mask 0.75, noise 0.03: PSNR masked {rec['psnr_masked']:.2f} dB "
              f"(whole {rec['psnr_all']:.2f}), SSIM masked {rec['ssim_masked']:.3f} -> {out / f'reconstruct_{strategy}'}")
    print(f"\nOpen the results beside the scan in any viewer (same grid and affine): {out}/")
    return 0
