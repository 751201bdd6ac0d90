"""The ``nemesis`` command line. Each submodule adds its subcommands; all logic lives in the core.

A command module exposes ``register(subparsers)``; each subcommand sets ``func(args) -> int``.

Every failure the user can act on ends as one line on standard error and a non-zero exit: bad
arguments while parsing (exit 2, before anything is loaded), :class:`~napari_nemesis.errors.NemesisError`
(exit 2), an operating-system error such as a full disk or a read-only folder (exit 1), running out
of memory (exit 1). Warnings print as one line each too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from ..errors import NemesisError

# Modules that contribute subcommands, in the order they appear in ``nemesis --help``.
COMMAND_MODULES = [
    "napari_nemesis.cli.model_cmds",
    "napari_nemesis.cli.data_cmds",
    "napari_nemesis.cli.pretrain_cmds",
    "napari_nemesis.cli.downstream_cmds",
    "napari_nemesis.cli.explain_cmds",
    "napari_nemesis.cli.cohort_cmds",
    "napari_nemesis.cli.bench_cmds",
    "napari_nemesis.cli.labels_cmds",
    "napari_nemesis.cli.similar_cmds",
]


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` ends each option's help with its default, unless the help already names it or the
    default is None or False (nothing to show, or a flag that is off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``nemesis CMD: error: argument --x: ...``), no usage block;
    ``--help`` shows defaults (every subcommand parser is one of these, so it has the same formatter)."""

    def __init__(self, *args, formatter_class=DefaultsHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ._common import finite_float

    parser = OneLineParser(
        prog="nemesis",
        description="NEMESIS: masked autoencoding of 3D CT superpatches (pretraining, probing, "
        "inference, reconstruction).",
    )
    parser.add_argument("--version", action="version", version=f"napari-nemesis {__version__}")
    parser.add_argument("--max-voxels", type=finite_float(1), default=None, metavar="N",
                        help="refuse scans (raw or resampled) of more than N voxels before allocating them "
                        "(default: $NEMESIS_MAX_VOXELS, else 536870912 = 2 GiB as float32)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Warnings as ``nemesis CMD: warning: message`` on one line (no Python source line)."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"nemesis {command}: warning: {_one_line(message)}\n")
        except (OSError, ValueError):  # a closed stream: nowhere to say it
            pass

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@contextlib.contextmanager
def _voxel_limit(value):
    from ..data.io import MAX_VOXELS_ENV

    if value is None:
        yield
        return
    before = os.environ.get(MAX_VOXELS_ENV)
    os.environ[MAX_VOXELS_ENV] = str(int(value))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MAX_VOXELS_ENV, None)
        else:
            os.environ[MAX_VOXELS_ENV] = before


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or _one_line(str(exc)) or exc.__class__.__name__
    where = exc.filename if exc.filename is not None else None
    if where is not None and getattr(exc, "filename2", None):
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {reason}" if where is not None else reason


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad argument (one line already printed), --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    name = f"nemesis {args.command}"
    with _one_line_warnings(args.command), _voxel_limit(args.max_voxels):
        try:
            return int(args.func(args) or 0)
        except NemesisError as exc:
            print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        except MemoryError:
            print(f"{name}: error: out of memory; lower the voxel limit (nemesis --max-voxels N or "
                  "$NEMESIS_MAX_VOXELS) to refuse such inputs before they are read", file=sys.stderr)
            return 1
        except OSError as exc:  # the machine's, not a bug: disk full, read-only folder, no such file ...
            print(f"{name}: error: {_os_error(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
