"""Default weights bundled with the package: a ``small`` NEMESIS encoder and its organ heads.

Two heads sit on the bundled encoder: the superpatch-level organ-presence probe and the patch-level
head (organ maps at patch resolution, ``nemesis infer SCAN --level patch``). See
``docs/model-card.md`` for how they were trained and how well they do. Everything that needs
weights uses these unless told otherwise, so the CLI and the viewer work offline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import NemesisCheckpointError

MODEL_FILE = "nemesis_small.safetensors"
PROBE_FILE = "probe_small.safetensors"
PATCH_PROBE_FILE = "probe_patch_small.safetensors"
#: head level -> the bundled head of that level
PROBE_FILES = {"superpatch": PROBE_FILE, "patch": PATCH_PROBE_FILE}


def _path(name: str) -> Path:
    p = Path(str(resources.files(__name__).joinpath(name)))
    if not p.is_file():
        raise NemesisCheckpointError(f"{p}: bundled default weights are missing from this installation")
    return p


def default_checkpoint_path() -> Path:
    """The bundled pretrained ``small`` model (safetensors)."""
    return _path(MODEL_FILE)


def default_probe_path(level: str = "superpatch") -> Path:
    """The bundled head of ``level`` for the default model (safetensors): the organ-presence probe
    (``superpatch``) or the patch-level head (``patch``)."""
    if level not in PROBE_FILES:
        raise NemesisCheckpointError(f"no bundled head of level {level!r}; choose one of {', '.join(PROBE_FILES)}")
    return _path(PROBE_FILES[level])


def default_patch_probe_path() -> Path:
    """The bundled patch-level head (``default_probe_path("patch")``)."""
    return default_probe_path("patch")


def load_default_model():
    from ..model import load_checkpoint

    return load_checkpoint(default_checkpoint_path())


def load_default_probe(level: str = "superpatch"):
    """``(head, meta)`` of the bundled head of ``level``."""
    from ..train.probe import load_probe

    return load_probe(default_probe_path(level))


def load_default_patch_probe():
    return load_default_probe("patch")
