"""The ``nemesis`` command line. Each submodule adds its subcommands; all logic lives in the core.

A command module exposes ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import NemesisError

# Modules that contribute subcommands, in the order they appear in ``nemesis --help``.
COMMAND_MODULES = [
    "napari_nemesis.cli.model_cmds",
    "napari_nemesis.cli.data_cmds",
    "napari_nemesis.cli.train_cmds",
    "napari_nemesis.cli.explain_cmds",
    "napari_nemesis.cli.bench_cmds",
    "napari_nemesis.cli.labels_cmds",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="nemesis",
        description="NEMESIS: masked autoencoding of 3D CT superpatches (pretraining, probing, "
        "inference, reconstruction).",
    )
    parser.add_argument("--version", action="version", version=f"napari-nemesis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NemesisError as exc:
        print(f"nemesis {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nemesis {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
