"""Checkpoints: safetensors weights with the config (JSON) in the file's metadata.

Nothing here unpickles: a pickle, a torch.save archive, a truncated file or a foreign safetensors
file is refused with a one-line NemesisCheckpointError naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import NemesisCheckpointError
from .config import NemesisConfig
from .mae import NemesisMAE

FORMAT = "napari-nemesis/mae"
FORMAT_VERSION = "1"


def _sniff(path: Path) -> None:
    """Fail early, with a precise message, on files that are not safetensors at all."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise NemesisCheckpointError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if len(head) < 8:
        raise NemesisCheckpointError(f"{path}: file is empty or truncated ({len(head)} bytes), not a safetensors checkpoint")
    (header_len,) = struct.unpack("<Q", head[:8])
    size = path.stat().st_size
    if 0 < header_len and 8 + header_len <= size and head[8:9] == b"{":
        return  # looks like safetensors; the library checks the rest
    if head[:2] == b"PK":
        raise NemesisCheckpointError(f"{path}: is a zip archive (torch.save pickle?); only safetensors checkpoints are loaded, never pickles")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise NemesisCheckpointError(f"{path}: is a Python pickle; only safetensors checkpoints are loaded, never pickles")
    raise NemesisCheckpointError(f"{path}: not a safetensors file (bad header) or truncated")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file, after the same checks as loading."""
    from safetensors import SafetensorError, safe_open

    if isinstance(path, str) and not path.strip():
        raise NemesisCheckpointError(f"empty checkpoint path {path!r}: give a .safetensors file")
    path = Path(path)
    if not path.is_file():
        raise NemesisCheckpointError(f"{path}: checkpoint file not found")
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise NemesisCheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None


def save_checkpoint(
    model: NemesisMAE,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write weights + config atomically (temporary file, then rename). ``extra`` is stored as JSON.

    ``dtype=torch.float16`` halves the file (used for the bundled weights); loading casts back to
    the model's float32 parameters.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "gate": f"{model.gate:.6f}",
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> NemesisMAE:
    """Rebuild the model from the config in the file and load its weights, strictly.

    The model remembers where it came from: ``model.checkpoint_path`` and ``model.checkpoint_extra``
    (e.g. ``spacing_zyx``, the spacing it was pretrained at)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if isinstance(path, str) and not path.strip():
        raise NemesisCheckpointError(f"empty checkpoint path {path!r}: give a .safetensors file")
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise NemesisCheckpointError(
            f"{path}: not a napari-nemesis checkpoint (metadata format={meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        raw_cfg = json.loads(meta["config"])
        if not isinstance(raw_cfg, dict):
            raise TypeError(f"config is a JSON {type(raw_cfg).__name__}, not an object")
        cfg = NemesisConfig.from_dict(raw_cfg)
    except (KeyError, json.JSONDecodeError, TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise NemesisCheckpointError(f"{path}: checkpoint config is missing or invalid ({_line(exc)})") from None
    try:
        extra = json.loads(meta.get("extra", "{}"))
    except json.JSONDecodeError:
        raise NemesisCheckpointError(f"{path}: checkpoint 'extra' metadata is not JSON") from None
    if not isinstance(extra, dict):
        raise NemesisCheckpointError(f"{path}: checkpoint 'extra' metadata is a JSON {type(extra).__name__}, not an object")
    # the config's tensors against the file's, from the header alone: nothing is allocated for a
    # config (embed_dim 10^9, superpatch 4096 ...) its weights do not back
    _check_shapes(path, cfg, tensor_shapes(path))
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NemesisCheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    check_finite(path, state)
    model = NemesisMAE(cfg)
    _check_shapes(path, cfg, {k: tuple(v.shape) for k, v in state.items()}, model)
    model.load_state_dict(state, strict=True)
    model.checkpoint_path = path
    model.checkpoint_extra = extra
    return model.to(map_location)


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no tensor loaded)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(int(d) for d in fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise NemesisCheckpointError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None


def check_finite(path, state: dict[str, torch.Tensor]) -> None:
    """Refuse (one line) weights holding NaN or Inf: they would give NaN outputs without a word."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        n = int(sum(int((~torch.isfinite(state[k])).sum()) for k in bad))
        raise NemesisCheckpointError(f"{path}: {n} weight(s) are NaN or Inf (in {_few(bad)}); the file is corrupt or "
                                     "from a diverged run")


def _check_shapes(path: Path, cfg: NemesisConfig, found: dict[str, tuple[int, ...]], model=None) -> None:
    if model is None:
        with torch.device("meta"):  # shapes only: no memory behind the tensors
            model = NemesisMAE(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad_shape = [k for k in expected if k in found and tuple(found[k]) != expected[k]]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_few(unexpected)}")
        if bad_shape:
            k = bad_shape[0]
            parts.append(
                f"mis-shaped tensors {_few(bad_shape)} (e.g. {k}: file {tuple(found[k])}, "
                f"config {expected[k]})"
            )
        raise NemesisCheckpointError(f"{path}: checkpoint does not match its config: " + "; ".join(parts))


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 200 else text[:197] + "..."


def checkpoint_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` JSON saved with a checkpoint (training step, data, ...)."""
    try:
        extra = json.loads(read_metadata(path).get("extra", "{}"))
    except json.JSONDecodeError:
        raise NemesisCheckpointError(f"{path}: checkpoint 'extra' metadata is not JSON") from None
    if not isinstance(extra, dict):
        raise NemesisCheckpointError(f"{path}: checkpoint 'extra' metadata is not a JSON object")
    return extra


def _few(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
