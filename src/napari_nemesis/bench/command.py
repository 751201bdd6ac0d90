"""The benchmark's command line, shared by ``python -m napari_nemesis.bench`` and ``nemesis bench``
(whose module only registers it). Importing this module is cheap: no torch until a run starts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import NemesisError, NemesisInputError
from . import sections

DESCRIPTION = (
    "Measures FLOPs, encoder and pretraining throughput against MONAI's ViT (or a plain SDPA ViT), the "
    "machine's matmul GFLOP/s, whole-scan infer/reconstruct time and peak memory, and cache sampling. "
    "Prints a table; --json adds one JSON object as the last line."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options; one switch per optional section (``sections.SECTIONS``)."""
    p.add_argument("--quick", action="store_true", help="fewer repeats, small preset for heavy parts, smaller scans")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default=None,
                   help="folder for bench.json, bench.txt and scaling.png (with --plot-from: the PNG, or its folder)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; quick 3)")
    p.add_argument("--presets", default=None, help="comma-separated presets (default paper,small)")
    for s in sections.SECTIONS:
        if s.flag:
            p.add_argument(s.flag, dest=s.name, action="store_false" if s.default else "store_true", help=s.help)
    p.add_argument("--plot-from", default=None, metavar="JSON",
                   help="measure nothing: draw the scaling plot of a saved bench.json into --out")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m napari_nemesis.bench", description=DESCRIPTION)
    add_arguments(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """Run (or, with ``--plot-from``, re-plot) as the parsed options say; print the table and JSON."""
    from .plot import default_title, plot_scaling
    from .report import format_table, json_default

    if args.plot_from:
        return _replot(Path(args.plot_from), args.out)

    from .runner import run_benchmark

    def log(msg: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()

    presets = args.presets.split(",") if args.presets else None
    switches = {s.name: getattr(args, s.name) for s in sections.SECTIONS if s.flag}
    res = run_benchmark(quick=args.quick, device=args.device, presets=presets, repeats=args.repeats, log=log,
                        **switches)
    table = format_table(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(res, indent=1, default=json_default) + "\n")
        (out / "bench.txt").write_text(table + "\n")
        if "scaling" in res:
            plot_scaling(res, out / "scaling.png", default_title(res))
    sys.stdout.write(table + "\n")
    if args.json:
        sys.stdout.write(json.dumps(res, default=json_default) + "\n")
    sys.stdout.flush()
    return 0


def _replot(source: Path, out: str | None) -> int:
    from .plot import plot_scaling

    if not out:
        raise NemesisInputError(f"{source}: --plot-from needs --out (a .png file or a folder for scaling.png)")
    try:
        res = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise NemesisInputError(f"{source}: not a readable benchmark JSON ({exc.__class__.__name__})") from None
    if not isinstance(res, dict) or not res.get("scaling"):
        raise NemesisInputError(f"{source}: has no 'scaling' results (a run with --no-scans draws no plot)")
    target = Path(out) if out.lower().endswith(".png") else Path(out) / "scaling.png"
    sys.stdout.write(f"{plot_scaling(res, target)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:  # one whole-scan job, started by whole_scan.scan_job
        from .whole_scan import run_child

        sys.stdout.write(json.dumps(run_child(json.loads(argv[1]))) + "\n")
        return 0
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except NemesisError as exc:
        sys.stderr.write(f"{parser.prog}: error: {exc}\n")
        return 2
