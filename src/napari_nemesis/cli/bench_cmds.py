"""``nemesis bench``: the performance benchmark. Its options and code live in ``napari_nemesis.bench``
(the same command as ``python -m napari_nemesis.bench``); this module only registers it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench.command import DESCRIPTION, add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark NEMESIS against a plain ViT peer and the machine's matmul limit",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_from_args

    return run_from_args(args)
