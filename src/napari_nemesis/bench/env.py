"""The machine a result was measured on, recorded in every result beside the figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from .timing import bf16_supported


def environment(device: torch.device) -> dict[str, Any]:
    """torch version, threads, CPU (and GPU) name, bf16 support and MONAI version."""
    env = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "device": device.type, "python": platform.python_version(), "machine": platform.machine(),
           "processor": cpu_name(), "bf16_supported": bf16_supported(device)}
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda_version"] = torch.version.cuda
    env["monai_version"] = monai_version()
    return env


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def monai_version() -> str | None:
    try:
        import monai

        return monai.__version__
    except Exception:
        return None
