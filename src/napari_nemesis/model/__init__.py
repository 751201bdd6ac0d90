"""The NEMESIS masked autoencoder in PyTorch (no Qt, no napari).

Names load on first use, so ``model.masking`` (the table of mask strategies) can be read by
torch-free choosers such as the viewer's docks without importing torch.
"""

from importlib import import_module

#: public name -> the submodule that defines it
_WHERE = {
    "NemesisConfig": "config",
    "PRESETS": "config",
    "preset_config": "config",
    "NemesisMAE": "mae",
    "MAEOutput": "mae",
    "build_model": "mae",
    "ProbeHead": "heads",
    "PatchHead": "heads",
    "HEAD_LEVELS": "levels",
    "make_mask": "masking",
    "MASKS": "masking",
    "MASK_STRATEGIES": "masking",
    "STRATEGIES": "masking",
    "check_strategy": "masking",
    "mask_strategies": "masking",
    "visible_counts_per_slice": "masking",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_metadata": "checkpoint",
    "checkpoint_extra": "checkpoint",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        try:  # a submodule reached as an attribute (``model.mae``)
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
