"""Small helpers shared by the command modules: JSON output, progress bars, and the flags several
commands take (one definition each, so their help reads the same everywhere)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def print_json(obj: Any) -> None:
    """Print one JSON object as the last line of standard output (the CLI's machine contract).

    Strict JSON: a NaN or infinite number (never a valid JSON token) is written as ``null``."""
    sys.stdout.write(json.dumps(json_safe(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy values made plain and every NaN / Infinity replaced by ``None``, so that
    ``json.dumps(..., allow_nan=False)`` never fails and no file holds a bare ``NaN``."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) and k is not None else k: json_safe(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    try:
        return _json_default(obj)
    except TypeError:
        return str(obj)


def write_json(path, obj: Any):
    """``atomic.write_json_atomic`` of :func:`json_safe` (``obj``): the CLI's result files are strict JSON."""
    from ..atomic import write_json_atomic

    return write_json_atomic(path, json_safe(obj))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class TqdmProgress:
    """Turns core progress events into a tqdm bar on stderr (the CLI's face of ``progress``).

    Accepts both event dicts (``{"event": "step", "step": .., "total": .., **metrics}``) from the
    training loops and ``(done, total, message)`` calls from the data layer.
    """

    def __init__(self, desc: str, disable: bool = False) -> None:
        self.desc = desc
        self.disable = disable
        self.bar = None
        self._stage = None

    def _ensure(self, total: int | None, initial: int = 0):
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=initial, desc=self.desc, file=sys.stderr, disable=self.disable,
                            dynamic_ncols=True, leave=True)
        elif total is not None and self.bar.total != total:
            self.bar.total = total
        return self.bar

    def __call__(self, event: Any, total: int | None = None, message: str | None = None) -> None:
        if not isinstance(event, dict):  # data-layer style: (done, total, message)
            bar = self._ensure(total)
            bar.n = int(event)
            if message:
                bar.set_postfix_str(str(message)[:40], refresh=False)
            bar.refresh()
            return
        kind = event.get("event")
        if kind == "start":
            self._ensure(event.get("total"), event.get("step", 0) or 0)
        elif kind in ("step", "item"):
            stage = event.get("stage")
            if stage != self._stage and self.bar is not None:
                self.bar.reset(total=event.get("total"))
            self._stage = stage
            bar = self._ensure(event.get("total"))
            bar.set_description_str(f"{self.desc}: {stage}" if stage else self.desc, refresh=False)
            bar.n = int(event.get("step", event.get("done", bar.n)))
            shown = {k: event[k] for k in ("loss", "lr", "gate", "superpatches_per_s", "auroc_mean") if k in event}
            if shown:
                bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in shown.items()}, refresh=False)
            bar.refresh()
        elif kind == "stage":
            bar = self._ensure(event.get("total"))
            bar.set_description_str(f"{self.desc}: {event.get('name', '')}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_label_scheme_flag(p) -> None:
    """``--label-scheme auto|btcv|totalsegmentator|amos``: how label maps' ids are read."""
    p.add_argument("--label-scheme", default="auto", choices=["auto", "btcv", "totalsegmentator", "amos"],
                   help="label-id scheme of the label maps (default auto: detected from the ids; an AMOS map "
                   "without ids 14/15 reads as BTCV unless named)")


def parse_spacing(values, default=None):
    """``--spacing X Y Z`` (mm, x y z as written in papers) -> the API's (z, y, x) tuple;
    ``none``/``native`` -> ``"native"``; not given -> ``default`` (:meth:`data.Spacing.from_cli`)."""
    from ..data import Spacing

    if values is None:
        return default
    return Spacing.from_cli(values).value


class _SpacingAction(argparse.Action):
    """``--spacing`` checked while parsing (three positive finite numbers or ``native``); the raw
    words are kept, :func:`parse_spacing` turns them into the API's (z, y, x)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ..errors import NemesisInputError

        try:
            parse_spacing(values)
        except NemesisInputError as exc:
            raise argparse.ArgumentError(self, f"{' '.join(map(str, values))}: give three positive finite numbers "
                                         "x y z in mm, or 'native'") from exc
        setattr(namespace, self.dest, values)


def add_spacing_flag(p, default_help: str) -> None:
    p.add_argument("--spacing", nargs="+", metavar="MM", default=None, action=_SpacingAction,
                   help=f"spacing x y z in mm, or 'native' for each scan's own (default: {default_help})")


# ---- argument types: bad values fail while parsing, before anything is loaded ----------------
def _named(fn, name: str):
    fn.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return fn


def int_at_least(lo: int, hi: int | None = None):
    """An argparse type: an integer ``>= lo`` (and ``<= hi``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} must be {_range_text(lo, hi)}")
        return value
    return _named(parse, "integer")


def _range_text(lo, hi) -> str:
    return f">= {lo}" if hi is None else f"in {lo}..{hi}"


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number within ``[lo, hi]`` (``lo_open``/``hi_open``: ends excluded)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"{text} must be {_interval(lo, hi, lo_open, hi_open)}")
        return value
    return _named(parse, "number")


def _interval(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"a finite number {'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def path_arg(text: str) -> str:
    """An argparse type: a non-empty path (``''`` would quietly mean the bundled weights or '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give a file or folder")
    return text


path_arg = _named(path_arg, "path")

#: Seeds: what numpy's SeedSequence and torch accept.
SEED = int_at_least(0, 2**63 - 1)


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")


DEVICES = ["auto", "cpu", "cuda", "mps"]


def add_level_flags(p, default: str | None = "superpatch", level_help: str | None = None,
                    threshold: bool = True) -> None:
    """``--level superpatch|patch`` (what a head works at, ``model.levels.HEAD_LEVELS``) and, for
    training, ``--patch-threshold N`` (organ voxels at the model's spacing a patch needs to be labelled 1)."""
    from ..data.organs import PATCH_THRESHOLD
    from ..model.levels import HEAD_LEVELS

    p.add_argument("--level", default=default, choices=list(HEAD_LEVELS),
                   help=level_help or "superpatch: one organ-presence head on each 128^3 superpatch's mean token; "
                   "patch: a head on every token, i.e. every 16^3 patch (organ maps at patch resolution)")
    if threshold:
        p.add_argument("--patch-threshold", type=int_at_least(1), default=PATCH_THRESHOLD, metavar="N",
                       help="--level patch: a patch is labelled 1 for an organ holding at least N of its voxels "
                       "at the model's spacing")


def add_checkpoint_flag(p) -> None:
    """``--checkpoint CKPT``: the NEMESIS weights to use, the bundled ones when not given."""
    p.add_argument("--checkpoint", default=None, type=path_arg,
                   help="NEMESIS checkpoint (default: the bundled weights)")


def add_device_flag(p, default: str = "auto", help: str | None = None) -> None:
    """``--device auto|cpu|cuda|mps`` (``auto``: CUDA, else MPS, else CPU)."""
    p.add_argument("--device", default=default, choices=DEVICES, help=help)
