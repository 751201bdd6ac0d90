"""Default weights bundled with the package: a ``small`` NEMESIS encoder and an organ probe head.

See ``docs/model-card.md`` for how they were trained and how well they do. Everything that needs
weights uses these unless told otherwise, so the CLI and the viewer work offline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import NemesisCheckpointError

MODEL_FILE = "nemesis_small.safetensors"
PROBE_FILE = "probe_small.safetensors"


def _path(name: str) -> Path:
    p = Path(str(resources.files(__name__).joinpath(name)))
    if not p.is_file():
        raise NemesisCheckpointError(f"{p}: bundled default weights are missing from this installation")
    return p


def default_checkpoint_path() -> Path:
    """The bundled pretrained ``small`` model (safetensors)."""
    return _path(MODEL_FILE)


def default_probe_path() -> Path:
    """The bundled organ-presence probe head for the default model (safetensors)."""
    return _path(PROBE_FILE)


def load_default_model():
    from ..model import load_checkpoint

    return load_checkpoint(default_checkpoint_path())


def load_default_probe():
    from ..train.probe import load_probe

    return load_probe(default_probe_path())
