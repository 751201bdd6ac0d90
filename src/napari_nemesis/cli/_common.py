"""Small helpers shared by the command modules: JSON output, progress bars, and the flags several
commands take (one definition each, so their help reads the same everywhere)."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(obj: Any) -> None:
    """Print one JSON object as the last line of standard output (the CLI's machine contract)."""
    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


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
    ``none``/``native`` -> ``"native"``; not given -> ``default``."""
    from ..data import NATIVE_SPACING, as_spacing
    from ..errors import NemesisInputError

    if values is None:
        return default
    if len(values) == 1 and str(values[0]).lower() in ("none", "native"):
        return NATIVE_SPACING
    if len(values) != 3:
        raise NemesisInputError("--spacing: give three numbers x y z in mm, or 'native'")
    try:
        x, y, z = (float(v) for v in values)
    except ValueError:
        raise NemesisInputError(f"--spacing {' '.join(values)}: not numbers") from None
    return as_spacing((z, y, x), what="--spacing (x y z)")


def add_spacing_flag(p, default_help: str) -> None:
    p.add_argument("--spacing", nargs="+", metavar="MM", default=None,
                   help=f"spacing x y z in mm, or 'native' for each scan's own (default: {default_help})")


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of standard output")


DEVICES = ["auto", "cpu", "cuda", "mps"]


def add_checkpoint_flag(p) -> None:
    """``--checkpoint CKPT``: the NEMESIS weights to use, the bundled ones when not given."""
    p.add_argument("--checkpoint", default=None, help="NEMESIS checkpoint (default: the bundled weights)")


def add_device_flag(p, default: str = "auto", help: str | None = None) -> None:
    """``--device auto|cpu|cuda|mps`` (``auto``: CUDA, else MPS, else CPU)."""
    p.add_argument("--device", default=default, choices=DEVICES, help=help)
