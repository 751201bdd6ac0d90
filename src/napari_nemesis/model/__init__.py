"""The NEMESIS masked autoencoder in PyTorch (no Qt, no napari)."""

from .checkpoint import checkpoint_extra, load_checkpoint, read_metadata, save_checkpoint
from .config import PRESETS, NemesisConfig, preset_config
from .mae import MAEOutput, NemesisMAE, build_model
from .masking import STRATEGIES, make_mask, visible_counts_per_slice

__all__ = [
    "NemesisConfig",
    "PRESETS",
    "preset_config",
    "NemesisMAE",
    "MAEOutput",
    "build_model",
    "make_mask",
    "STRATEGIES",
    "visible_counts_per_slice",
    "save_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "checkpoint_extra",
]
