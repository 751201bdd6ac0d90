"""Old home of ``nemesis pretrain`` and the four downstream commands, kept so its imports keep working:
``pretrain_cmds`` (pretrain) and ``downstream_cmds`` (probe, evaluate, infer, reconstruct) hold them now."""

from __future__ import annotations

import argparse

from .downstream_cmds import (_device_args, _load_model, cmd_evaluate, cmd_infer, cmd_probe,  # noqa: F401
                              cmd_reconstruct)
from .downstream_cmds import register as register_downstream
from .pretrain_cmds import cmd_pretrain  # noqa: F401
from .pretrain_cmds import register as register_pretrain


def register(sub: argparse._SubParsersAction) -> None:
    """All five commands, as before the split."""
    register_pretrain(sub)
    register_downstream(sub)
