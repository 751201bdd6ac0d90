"""Resumable training state as safetensors + JSON (never a pickle), safe against a kill at any instant.

Every save writes one complete checkpoint folder, then renames it into place in one step::

    OUT/checkpoints/step-<step>-<token>/model.safetensors   weights and config (a NEMESIS checkpoint)
                                        state.safetensors   optimizer moments and the RNG state
                                        state.json          step, options, optimizer hyper-parameters

and only then refreshes the familiar names beside it (hard links to the same files, or copies)::

    OUT/last.safetensors  OUT/last.state.safetensors  OUT/last.state.json (written last; names the folder)

after which older checkpoint folders are removed. A process killed at any instant therefore leaves at
least one complete folder: the one ``last.state.json`` names, or a newer one renamed into place just
before the kill. Resuming takes the newest complete one (:func:`locate_train_state`). Runs saved by
earlier versions (the three ``last.*`` files only) still resume; their files are checked against each
other, so a save such a version had cut short is detected, not trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json_atomic
from ..errors import NemesisCheckpointError
from ..model import NemesisMAE, load_checkpoint, save_checkpoint
from ..model.checkpoint import checkpoint_extra, read_metadata

STATE_FORMAT = "napari-nemesis/train-state"
#: Folder (inside the run folder) holding the complete checkpoint folders of stem ``last``.
SLOTS_DIR = "checkpoints"
_SLOT_FILES = ("model.safetensors", "state.safetensors", "state.json")


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
    except (ValueError, KeyError, TypeError) as exc:
        raise NemesisCheckpointError(f"{source}: optimizer state does not fit the model ({exc})") from None


def _slots_dir(run_dir: Path, stem: str) -> Path:
    return run_dir / (SLOTS_DIR if stem == "last" else f"{stem}.{SLOTS_DIR}")


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content in one rename (a hard link where the filesystem has them)."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_train_state(
    run_dir: str | os.PathLike,
    model: NemesisMAE,
    opt: torch.optim.Optimizer,
    step: int,
    info: dict[str, Any],
    stem: str = "last",
) -> Path:
    """Save model + optimizer + RNG for ``step`` (see the module docstring). Returns ``run_dir/<stem>.safetensors``."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    slots = _slots_dir(run_dir, stem)
    slots.mkdir(parents=True, exist_ok=True)
    for stale in slots.glob(".step-*"):  # folders of a save that was killed half-way
        shutil.rmtree(stale, ignore_errors=True)
    tensors, opt_json = optimizer_tensors(opt)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    token = uuid.uuid4().hex[:12]
    name = f"step-{int(step):09d}-{token}"
    tmp = slots / f".{name}.tmp{os.getpid()}"
    tmp.mkdir()
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": STATE_FORMAT, "step": str(step)})
    save_checkpoint(model, tmp / "model.safetensors", extra={**info.get("extra", {}), "step": step})
    doc = {"format": STATE_FORMAT, "step": step, "optimizer": opt_json, **{k: v for k, v in info.items() if k != "extra"}}
    write_json_atomic(tmp / "state.json", doc)
    final = slots / name
    os.rename(tmp, final)  # the checkpoint exists, complete, from here on
    # the familiar names, for users and other tools; the JSON last, naming the folder it describes
    model_path = run_dir / f"{stem}.safetensors"
    _link_or_copy(final / "model.safetensors", model_path)
    _link_or_copy(final / "state.safetensors", run_dir / f"{stem}.state.safetensors")
    write_json_atomic(run_dir / f"{stem}.state.json", {**doc, "slot": f"{slots.name}/{name}"})
    for old in slots.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return model_path


def clear_train_state(run_dir: str | os.PathLike, stem: str = "last") -> None:
    """Forget what an earlier run in ``run_dir`` saved (a new run starts there): its checkpoint folders
    and ``<stem>.state.json``. The weights ``<stem>.safetensors`` stay until the new run's first save."""
    run_dir = Path(run_dir)
    (run_dir / f"{stem}.state.json").unlink(missing_ok=True)
    shutil.rmtree(_slots_dir(run_dir, stem), ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NemesisCheckpointError(f"{path}: no training state to resume from") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise NemesisCheckpointError(f"{path}: corrupt training state ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise NemesisCheckpointError(f"{path}: not a napari-nemesis training state")
    if isinstance(doc.get("step"), bool) or not isinstance(doc.get("step"), int) or doc["step"] < 0:
        raise NemesisCheckpointError(f"{path}: training state without a valid step ({doc.get('step')!r})")
    return doc


def _check_parts(doc: dict[str, Any], model_path: Path, tensor_path: Path, where) -> None:
    step = doc["step"]
    try:
        model_step = checkpoint_extra(model_path).get("step")
        state_step = read_metadata(tensor_path).get("step")
    except (NemesisCheckpointError, ValueError, AttributeError) as exc:
        raise NemesisCheckpointError(f"{where}: incomplete checkpoint ({exc})") from None
    if model_step != step or str(state_step) != str(step):
        raise NemesisCheckpointError(
            f"{where}: checkpoint files disagree (json step {step}, model step {model_step}, "
            f"optimizer step {state_step}); the run was stopped while saving"
        )


def _complete_slots(run_dir: Path, stem: str) -> list[tuple[int, float, Path, dict[str, Any]]]:
    """The checkpoint folders whose three files agree, newest first."""
    found = []
    slots = _slots_dir(run_dir, stem)
    if not slots.is_dir():
        return found
    for folder in slots.glob("step-*"):
        try:
            doc = _read_json(folder / "state.json")
            _check_parts(doc, folder / "model.safetensors", folder / "state.safetensors", folder)
            found.append((int(doc["step"]), (folder / "state.json").stat().st_mtime, folder, doc))
        except (NemesisCheckpointError, OSError):
            continue  # cut short while being removed: not complete, not a candidate
    return sorted(found, key=lambda t: (t[0], t[1]), reverse=True)


def has_train_state(run_dir: str | os.PathLike, stem: str = "last") -> bool:
    """Whether ``run_dir`` holds a saved state to resume (a pointer or a complete checkpoint folder)."""
    run_dir = Path(run_dir)
    return (run_dir / f"{stem}.state.json").is_file() or bool(_complete_slots(run_dir, stem))


def locate_train_state(run_dir: str | os.PathLike, stem: str = "last") -> tuple[dict[str, Any], Path, Path]:
    """The newest complete saved state: ``(json doc, model file, optimizer file)``.

    ``<stem>.state.json`` names the folder of the last finished save; a complete folder newer than
    it (a save killed after its rename, before the JSON) wins. A JSON whose own step and files
    disagree cannot come from a kill and is refused in one line.
    """
    run_dir = Path(run_dir)
    jpath = run_dir / f"{stem}.state.json"
    slots = _complete_slots(run_dir, stem)
    chosen: tuple[int, Path, Path, dict[str, Any]] | None = None
    problem: NemesisCheckpointError | None = None
    if jpath.is_file():
        doc = _read_json(jpath)
        slot = doc.get("slot")
        if slot is not None:
            folder = (run_dir / str(slot)).resolve()
            if not isinstance(slot, str) or folder.parent != _slots_dir(run_dir, stem).resolve():
                raise NemesisCheckpointError(f"{jpath}: names a checkpoint folder outside {run_dir} ({slot!r})")
            try:
                sdoc = _read_json(folder / "state.json")
                _check_parts(sdoc, folder / "model.safetensors", folder / "state.safetensors", folder)
            except NemesisCheckpointError as exc:
                problem = exc
            else:
                if sdoc["step"] != doc["step"]:
                    raise NemesisCheckpointError(
                        f"{run_dir}: checkpoint files disagree (json step {doc['step']}, checkpoint folder "
                        f"{folder.name} step {sdoc['step']}); the state was changed by hand")
                chosen = (int(sdoc["step"]), folder / "model.safetensors", folder / "state.safetensors", sdoc)
        else:  # the layout of earlier versions: three files side by side
            try:
                _check_parts(doc, run_dir / f"{stem}.safetensors", run_dir / f"{stem}.state.safetensors", run_dir)
            except NemesisCheckpointError as exc:
                problem = exc
            else:
                chosen = (int(doc["step"]), run_dir / f"{stem}.safetensors", run_dir / f"{stem}.state.safetensors", doc)
    if slots and (chosen is None or slots[0][0] > chosen[0]):
        step, _, folder, sdoc = slots[0]
        chosen = (step, folder / "model.safetensors", folder / "state.safetensors", sdoc)
    if chosen is None:
        if problem is not None:
            raise problem
        raise NemesisCheckpointError(f"{jpath}: no training state to resume from")
    doc = {k: v for k, v in chosen[3].items() if k != "slot"}
    return doc, chosen[1], chosen[2]


def read_train_state(run_dir: str | os.PathLike, stem: str = "last") -> dict[str, Any]:
    """The JSON of the newest complete saved state (see :func:`locate_train_state`)."""
    return locate_train_state(run_dir, stem)[0]


def load_train_state(
    run_dir: str | os.PathLike, opt_factory, map_location: str | torch.device = "cpu", stem: str = "last"
) -> tuple[NemesisMAE, torch.optim.Optimizer, dict[str, Any]]:
    """Rebuild model and optimizer (``opt_factory(model) -> optimizer``) at the saved step."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    doc, model_path, tensor_path = locate_train_state(run_dir, stem)
    model = load_checkpoint(model_path, map_location=map_location)
    opt = opt_factory(model)
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors raises its own error types
        raise NemesisCheckpointError(f"{tensor_path}: unreadable optimizer state ({exc.__class__.__name__})") from None
    optimizer = doc.get("optimizer")
    if not isinstance(optimizer, dict):
        raise NemesisCheckpointError(f"{run_dir}: training state without its optimizer settings")
    restore_optimizer(opt, tensors, optimizer, map_location, source=run_dir)
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    return model, opt, doc
