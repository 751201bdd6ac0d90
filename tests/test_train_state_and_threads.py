"""The optimizer (de)serialization every resumable run shares, and the probe head's one-thread loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nemesis.errors import NemesisCheckpointError
from napari_nemesis.train.probe import ProbeHead, ProbeOptions, train_linear_head
from napari_nemesis.train.state import optimizer_tensors, restore_optimizer


def _steps(head, opt, n, x, y):
    for _ in range(n):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_restored_optimizer_continues_exactly_where_it_was_saved():
    torch.manual_seed(0)
    x, y = torch.randn(16, 12), (torch.rand(16, 3) < 0.5).float()
    head = ProbeHead(12, 3)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    _steps(head, opt, 3, x, y)
    tensors, doc = optimizer_tensors(opt)
    assert tensors and all(k.startswith("opt.") for k in tensors)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if saved: the live moments move on
    weights = {k: v.clone() for k, v in head.state_dict().items()}
    _steps(head, opt, 2, x, y)  # the uninterrupted run
    again = ProbeHead(12, 3)
    again.load_state_dict(weights)
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-2)
    restore_optimizer(opt2, tensors, doc)
    _steps(again, opt2, 2, x, y)  # the resumed one
    for k, v in head.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_optimizer_state_of_another_model_is_a_one_line_error():
    torch.manual_seed(0)
    head = ProbeHead(12, 3)
    opt = torch.optim.AdamW(head.parameters())
    _steps(head, opt, 1, torch.randn(4, 12), torch.zeros(4, 3))
    tensors, doc = optimizer_tensors(opt)
    other = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())  # 2 parameters, not 4
    with pytest.raises(NemesisCheckpointError, match="run/state: optimizer state does not fit") as err:
        restore_optimizer(other, tensors, doc, source="run/state")
    assert len(str(err.value).splitlines()) == 1


def test_the_linear_head_trains_on_one_thread_and_gives_the_threads_back():
    torch.set_num_threads(2)
    seen = []

    def cancel():  # called before every step, inside the loop
        seen.append(torch.get_num_threads())
        return False

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 8)).astype(np.float32), (rng.random((20, 3)) < 0.5).astype(np.uint8)
    train_linear_head(x, y, ProbeOptions(epochs=4), cancel)
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
