"""The result as people read it: the issue's targets, met or not, and a plain-text table.
Each section contributes its own lines and targets (see ``sections.py``)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from . import sections


def _modules():
    return [importlib.import_module(s.module) for s in sections.SECTIONS]


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """Each performance target the result has a figure for: ``{name: {"value", "met"}}``."""
    out: dict[str, Any] = {}
    for module in _modules():
        for name, value, ok in module.targets(res):
            out[name] = {"value": value, "met": bool(ok) if value is not None else None}
    return out


def format_table(res: dict[str, Any]) -> str:
    """A plain-text report of ``run_benchmark``'s result (or of a saved ``bench.json``)."""
    lines = [f"napari-nemesis benchmark ({res['mode']}): torch {res['torch_version']}, device {res['device']}"
             + (f" ({res['cuda_device']})" if res.get("cuda_device") else f" ({res['processor']})")
             + f", {res['threads']} threads, peer {res.get('peer', '-')}, {res['repeats']} repeats (median)"]
    for module in _modules():
        part = module.table_lines(res)
        if part:
            lines += [""] if len(lines) > 1 else []
            lines += part
    lines += ["", "targets:"]
    for name, t in res["targets"].items():
        v = t["value"]
        lines.append(f"  [{'met' if t['met'] else 'NOT met'}] {name}: {v:.3f}" if isinstance(v, float)
                     else f"  {name}: {v}")
    lines.append(f"benchmark took {res['benchmark_seconds']:.0f} s")
    return "\n".join(lines)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for the numpy scalars and tuples a result may hold."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
