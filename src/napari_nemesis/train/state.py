"""Resumable training state as a safetensors + JSON pair (never a pickle).

``<stem>.safetensors``        model weights and config (a normal NEMESIS checkpoint)
``<stem>.state.safetensors``  optimizer moments and the RNG state, as tensors
``<stem>.state.json``         step, options, optimizer hyper-parameters, what the run has seen

Each file is written to a temporary name and renamed; the JSON is renamed last and names the step
both tensor files must carry, so a run stopped half-way through a save is detected, not trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_json_atomic
from ..errors import NemesisCheckpointError
from ..model import NemesisMAE, load_checkpoint, save_checkpoint
from ..model.checkpoint import checkpoint_extra, read_metadata

STATE_FORMAT = "napari-nemesis/train-state"


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state split for safetensors + JSON: its tensors (moments, as ``opt.<param>.<name>``)
    and a JSON-able rest (hyper-parameters, non-tensor per-parameter values). Every resumable run
    saves its optimizer this way; :func:`restore_optimizer` reads it back."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{name}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], doc: dict[str, Any],
                      device: str | torch.device = "cpu", source: str | os.PathLike = "training state") -> None:
    """Load what :func:`optimizer_tensors` saved into ``opt``, moments on ``device``; state that does not
    fit the parameters is a one-line :class:`NemesisCheckpointError` naming ``source``."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val if name == "step" else val.to(device)
    for idx, sc in doc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    try:
        opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise NemesisCheckpointError(f"{source}: optimizer state does not fit the model ({exc})") from None


def save_train_state(
    run_dir: str | os.PathLike,
    model: NemesisMAE,
    opt: torch.optim.Optimizer,
    step: int,
    info: dict[str, Any],
    stem: str = "last",
) -> Path:
    """Save model + optimizer + RNG for ``step`` into ``run_dir/<stem>.*``. Returns the model path."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors, opt_json = optimizer_tensors(opt)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    with atomic_path(run_dir / f"{stem}.state.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "step": str(step)})
    model_path = save_checkpoint(model, run_dir / f"{stem}.safetensors", extra={**info.get("extra", {}), "step": step})
    doc = {"format": STATE_FORMAT, "step": step, "optimizer": opt_json, **{k: v for k, v in info.items() if k != "extra"}}
    write_json_atomic(run_dir / f"{stem}.state.json", doc)
    return model_path


def read_train_state(run_dir: str | os.PathLike, stem: str = "last") -> dict[str, Any]:
    """The JSON of a saved state, checked against its two tensor files."""
    run_dir = Path(run_dir)
    jpath = run_dir / f"{stem}.state.json"
    if not jpath.is_file():
        raise NemesisCheckpointError(f"{jpath}: no training state to resume from")
    try:
        doc = json.loads(jpath.read_text())
    except json.JSONDecodeError as exc:
        raise NemesisCheckpointError(f"{jpath}: corrupt training state ({exc})") from None
    if doc.get("format") != STATE_FORMAT:
        raise NemesisCheckpointError(f"{jpath}: not a napari-nemesis training state")
    step = doc["step"]
    model_step = checkpoint_extra(run_dir / f"{stem}.safetensors").get("step")
    state_step = read_metadata(run_dir / f"{stem}.state.safetensors").get("step")
    if model_step != step or str(state_step) != str(step):
        raise NemesisCheckpointError(
            f"{run_dir}: checkpoint files disagree (json step {step}, model step {model_step}, "
            f"optimizer step {state_step}); the run was stopped while saving"
        )
    return doc


def load_train_state(
    run_dir: str | os.PathLike, opt_factory, map_location: str | torch.device = "cpu", stem: str = "last"
) -> tuple[NemesisMAE, torch.optim.Optimizer, dict[str, Any]]:
    """Rebuild model and optimizer (``opt_factory(model) -> optimizer``) at the saved step."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    doc = read_train_state(run_dir, stem)
    model = load_checkpoint(run_dir / f"{stem}.safetensors", map_location=map_location)
    opt = opt_factory(model)
    tensors = load_file(str(run_dir / f"{stem}.state.safetensors"))
    restore_optimizer(opt, tensors, doc["optimizer"], map_location, source=run_dir)
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    return model, opt, doc
