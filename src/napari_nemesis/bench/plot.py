"""The scaling plot: whole-scan seconds against superpatches, one line per job, drawn with
matplotlib's Agg canvas (no pyplot, so it never touches the GUI backend of a running napari)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def plot_scaling(res: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """A PNG of ``res["scaling"]`` (a result of ``run_benchmark`` or a saved ``bench.json``): the
    measured points of each job joined by a line, its least-squares fit dashed (the legend gives
    seconds per superpatch and R^2), and the scan sizes along the top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = {k: v for k, v in res["scaling"].items() if v["seconds"]}
    fig = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xmax = max(max(v["superpatches"]) for v in series.values()) * 1.08
    for name, v in series.items():
        label = name.replace("_", " ")
        (line,) = ax.plot(v["superpatches"], v["seconds"], marker="o", linewidth=2, label=label)
        if "seconds_per_superpatch" in v:
            a, b = v["intercept_s"], v["seconds_per_superpatch"]
            ax.plot([0, xmax], [a, a + b * xmax], linestyle="--", linewidth=1, color=line.get_color(),
                    label=f"{label}: fit {a:.2f} s + {b:.3f} s/superpatch, R\u00b2 {v['r2']:.3f}")
    ax.set_xlim(0, xmax)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("superpatches in the scan")
    ax.set_ylabel("seconds (wall, whole scan)")
    ax.grid(True, color="0.9")
    ax.legend(loc="upper left", fontsize="small")

    sizes = {}  # superpatch count -> the scan size that gave it, for the top axis
    for v in series.values():
        for n, size in zip(v["superpatches"], v.get("sizes_xyz", [])):
            sizes.setdefault(n, "\u00d7".join(map(str, size)))
    if sizes:
        top = ax.secondary_xaxis("top")
        top.set_xticks(list(sizes), labels=list(sizes.values()), fontsize="small")
        spacing = res.get("full_scan_spacing_xyz_mm")
        at = " at " + " \u00d7 ".join(f"{s:g}" for s in spacing) + " mm" if spacing else ""
        top.set_xlabel(f"scan size (x \u00d7 y \u00d7 z voxels{at})")
    ax.set_title(title or default_title(res))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def default_title(res: dict[str, Any]) -> str:
    where = res.get("cuda_device") or res.get("processor") or res.get("device", "")
    return f"whole-scan time, {res.get('device', '?')}: {where} ({res.get('threads', '?')} threads)"
