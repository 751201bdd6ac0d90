"""The benchmark's sections and what they share: a section is one module that measures one thing.

A section module defines three functions:

- ``run(ctx, res)``: measure, and add its keys to the result dict ``res``;
- ``table_lines(res)``: its lines of the plain-text report (none when its keys are absent);
- ``targets(res)``: ``(name, value, met)`` for each performance target it checks.

It imports its heavy dependencies inside ``run`` where they are optional (a UI section: napari and
Qt), so a saved result can be reported without them. This file imports no torch: the CLI builds its
argument parser (one switch per section below) from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

Log = Callable[[str], None]


def no_log(msg: str) -> None:
    """The default ``log``: the benchmark's library functions never print."""


@dataclass(frozen=True)
class Section:
    """One part of the benchmark and its switch.

    ``default`` None: always runs, no switch. True: runs unless switched off (``--no-NAME``,
    ``run_benchmark(NAME=False)``). False: runs only when switched on (``--NAME``,
    ``run_benchmark(NAME=True)``). ``requires``: sections whose work it uses; it is skipped when one
    of them is off.
    """

    name: str
    module: str
    default: bool | None
    help: str = ""
    requires: tuple[str, ...] = ()

    @property
    def flag(self) -> str | None:
        if self.default is None:
            return None
        return f"--no-{self.name}" if self.default else f"--{self.name}"


# In running order; the report lists them in this order too. The viewer's section joins as
# Section("ui", "napari_nemesis.bench.ui", False, "<help>").
SECTIONS: tuple[Section, ...] = (
    Section("peers", "napari_nemesis.bench.peers", None),
    Section("scans", "napari_nemesis.bench.whole_scan", True, "skip the whole-scan and sampling parts"),
    Section("sampling", "napari_nemesis.bench.sampling", True, "skip the data sampling part", requires=("scans",)),
    Section("ui", "napari_nemesis.bench.ui", False,
            "also time the napari viewer on the sample CT: worst event-loop stall, Run -> layers shown"),
)


def enabled_sections(switches: dict[str, bool]) -> list[Section]:
    """The sections that run under ``switches`` (section name -> on/off; absent: its default)."""
    known = {s.name for s in SECTIONS if s.default is not None}
    unknown = sorted(set(switches) - known)
    if unknown:
        raise TypeError(f"unknown benchmark section switch(es): {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    on = {s.name: s.default is None or bool(switches.get(s.name, s.default)) for s in SECTIONS}
    return [s for s in SECTIONS if on[s.name] and all(on.get(r, False) for r in s.requires)]


@dataclass
class BenchContext:
    """What every section is given: the device, the run's size, and a scratch folder it may share
    with the other sections (the sampling section reads the whole-scan section's largest scan)."""

    device: torch.device
    quick: bool
    presets: list[str]
    heavy_presets: list[str]
    repeats: int
    workdir: Path
    scan_sizes_xyz: list[tuple[int, int, int]]
    scan_jobs: list[tuple[str, str]]
    log: Log = no_log
