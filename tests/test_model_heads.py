"""Heads live in model/heads.py; one loop (train/heads_fit.py fit_head) trains them."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from napari_nemesis.model.heads import ProbeHead

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


def test_probe_head_is_one_class_reached_from_every_old_path():
    import napari_nemesis.model as model
    import napari_nemesis.train as train
    import napari_nemesis.train.probe as probe

    assert probe.ProbeHead is train.ProbeHead is model.ProbeHead is ProbeHead


def test_head_state_dict_keys_are_the_saved_names():
    head = ProbeHead(16, 8)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "norm.weight": (16,), "norm.bias": (16,), "fc.weight": (8, 16), "fc.bias": (8,)}


def test_bundled_probe_head_loads():
    from safetensors.torch import load_file

    from napari_nemesis.weights import default_probe_path, load_default_probe

    head, meta = load_default_probe()
    assert isinstance(head, ProbeHead) and len(meta["organs"]) == head.fc.out_features
    saved = load_file(str(default_probe_path()))
    assert set(saved) == set(head.state_dict())
    for key, value in head.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_fit_head_steps_and_hooks():
    from napari_nemesis.train.heads_fit import fit_head, head_optimizer

    torch.manual_seed(0)
    x = torch.randn(12, 6)
    y = (torch.rand(12, 3) > 0.5).float()
    head = ProbeHead(6, 3)
    before, after = [], []
    loss0 = float(torch.nn.functional.binary_cross_entropy_with_logits(head(x), y))
    out = fit_head(head, head_optimizer(head, 1e-2, 0.0), lambda step: (x, y), 40, start=5,
                   before_step=before.append, after_step=lambda done, loss: after.append(done))
    assert out is head and not head.training
    assert before == list(range(5, 40)) and after == list(range(6, 41))
    assert float(torch.nn.functional.binary_cross_entropy_with_logits(head(x), y)) < loss0


def test_fit_head_is_seeded_the_same_way_twice():
    from napari_nemesis.train.probe import ProbeOptions, train_linear_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 8)).astype(np.float32)
    y = (rng.random((10, 4)) > 0.5).astype(np.uint8)
    a = train_linear_head(x, y, ProbeOptions(epochs=20, seed=2))
    b = train_linear_head(x, y, ProbeOptions(epochs=20, seed=2))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_only_the_head_loop_builds_a_head_loss_and_optimiser():
    """Head training elsewhere goes through fit_head: no other BCE loss or AdamW on a head."""
    offenders = []
    for rel in ("train/probe.py", "labels/training.py"):
        tree = ast.parse((SRC / rel).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("BCEWithLogitsLoss", "AdamW", "clip_grad_norm_"):
                offenders.append(f"{rel}:{node.lineno} {node.attr}")
    assert offenders == []
