"""``nemesis bench``: the performance benchmark (the same code as ``python -m napari_nemesis.bench``)."""

from __future__ import annotations

import argparse

from ._common import add_json_flag


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared with ``python -m napari_nemesis.bench``)."""
    p.add_argument("--quick", action="store_true", help="fewer repeats, small preset for heavy parts, smaller scans")
    add_json_flag(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default=None, help="folder for bench.json, bench.txt and scaling.png")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5; quick 3)")
    p.add_argument("--presets", default=None, help="comma-separated presets (default paper,small)")
    p.add_argument("--no-sampling", action="store_true", help="skip the data sampling part")
    p.add_argument("--no-scans", action="store_true", help="skip the whole-scan and sampling parts")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark NEMESIS against a plain ViT peer and the machine's matmul limit",
        description="Measures FLOPs, encoder and pretraining throughput against MONAI's ViT (or a plain "
        "SDPA ViT), the machine's matmul GFLOP/s, whole-scan infer/reconstruct time and peak memory, "
        "and cache sampling. Prints a table; --json adds one JSON object as the last line.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_from_args

    return run_from_args(args)
