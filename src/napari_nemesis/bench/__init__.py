"""The performance benchmark: NEMESIS against a plain ViT peer and against the machine's own limit.

``python -m napari_nemesis.bench [--quick] [--json] [--device cpu|cuda] [--out DIR]`` (also
``nemesis bench``) prints a table and, with ``--json``, one JSON object as its last line;
``--plot-from JSON --out PNG`` re-draws the scaling plot of a saved result.

Every comparison is measured in the same run, the contenders alternating inside each repeat,
median of the repeats after two untimed warm-up rounds (``timing``). The sections
(``sections.SECTIONS``, see ``docs/performance.md``):

- ``peers``: FLOPs, encoder throughput and the pretraining step against MONAI's ViT / MAE and a
  plain SDPA ViT / MAE, the machine's matmul peak and the encoder's MFU;
- ``whole_scan``: ``infer``, ``reconstruct``, ``triage`` and ``similar`` on synthetic CTs, each in its own child process
  (wall time, peak resident memory, scaling with the number of superpatches);
- ``sampling``: random superpatches from a prepared cache, in one process and with a DataLoader.

``runner.run_benchmark`` runs them; ``report`` (table, targets) and ``plot`` (the scaling plot,
matplotlib) present the result; ``command`` is the command line. This package never imports the
CLI (``napari_nemesis.cli``), which only registers ``nemesis bench`` and calls ``run_from_args``.
Importing it is cheap (no torch): the names below load their module on first use.
The library never prints; the command line does.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "run_benchmark": "runner",
    "format_table": "report", "targets": "report", "json_default": "report",
    "plot_scaling": "plot",
    "add_arguments": "command", "build_arg_parser": "command", "run_from_args": "command", "main": "command",
    "SECTIONS": "sections", "Section": "sections", "BenchContext": "sections",
    "time_alternating": "timing", "bf16_supported": "timing",
    "environment": "env",
    "PAPER_GMACS": "peers", "matmul_peak": "peers", "flops_section": "peers", "encoder_section": "peers",
    "train_section": "peers", "sdpa_backend_report": "peers",
    "monai_available": "peer_models", "monai_vit": "peer_models", "monai_mae": "peer_models",
    "PlainSDPAMAE": "peer_models",
    "SCAN_SPACING_ZYX": "whole_scan", "FULL_SCAN_SIZES_XYZ": "whole_scan", "QUICK_SCAN_SIZES_XYZ": "whole_scan",
    "ORGANS": "whole_scan", "synthetic_scan": "whole_scan", "write_synthetic_scan": "whole_scan",
    "run_child": "whole_scan", "scan_job": "whole_scan", "full_scan_section": "whole_scan",
    "linear_fit": "whole_scan",
    "sampling_section": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
