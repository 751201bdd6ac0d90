import pytest
import torch

from napari_nemesis.errors import NemesisInputError
from napari_nemesis.model import make_mask, visible_counts_per_slice

GRID = (8, 8, 8)


@pytest.mark.parametrize("strategy", ["random", "plane", "axis", "dual"])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.875])
def test_exact_ratio(strategy, ratio):
    m = make_mask(strategy, GRID, ratio, batch=3, generator=torch.Generator().manual_seed(1))
    assert m.shape == (3, 512) and m.dtype == torch.bool
    assert ((~m).sum(1) == round(512 * (1 - ratio))).all()


@pytest.mark.parametrize("strategy", ["plane", "axis", "dual"])
def test_same_visible_count_in_every_slice(strategy):
    m = make_mask(strategy, GRID, 0.75, batch=4, generator=torch.Generator().manual_seed(2))
    counts = visible_counts_per_slice(m, GRID)
    assert (counts == 16).all()


def test_plane_mask_identical_in_every_slice():
    m = make_mask("plane", GRID, 0.75, batch=2, generator=torch.Generator().manual_seed(3)).view(2, 8, 64)
    assert (m == m[:, :1]).all()


def test_axis_mask_differs_between_slices():
    m = make_mask("axis", GRID, 0.75, batch=1, generator=torch.Generator().manual_seed(4)).view(8, 64)
    assert not (m == m[:1]).all()


def test_dual_is_axis_inside_a_plane_mask():
    m = make_mask("dual", GRID, 0.75, batch=2, generator=torch.Generator().manual_seed(5)).view(2, 8, 64)
    # the plane stage hides half the in-plane positions in every slice...
    union_visible = (~m).any(1)
    assert (union_visible.sum(-1) <= 32).all()
    # ...and slices still differ (axis stage)
    assert not (m == m[:, :1]).all()


def test_random_mask_is_not_tube_shaped():
    m = make_mask("random", GRID, 0.75, batch=1, generator=torch.Generator().manual_seed(6)).view(8, 64)
    assert not (m == m[:1]).all()
    assert len(set(visible_counts_per_slice(m.view(1, -1), GRID).tolist()[0])) > 1


@pytest.mark.parametrize("strategy", ["random", "plane", "axis", "dual"])
def test_same_seed_same_mask(strategy):
    a = make_mask(strategy, GRID, 0.75, batch=2, generator=torch.Generator().manual_seed(7))
    b = make_mask(strategy, GRID, 0.75, batch=2, generator=torch.Generator().manual_seed(7))
    c = make_mask(strategy, GRID, 0.75, batch=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zero_ratio_masks_nothing():
    assert not make_mask("dual", GRID, 0.0, batch=2).any()


def test_non_cubic_grid():
    m = make_mask("axis", (4, 6, 8), 0.75, batch=1, generator=torch.Generator().manual_seed(0))
    assert m.shape == (1, 192)
    assert (visible_counts_per_slice(m, (4, 6, 8)) == 12).all()


def test_bad_arguments():
    with pytest.raises(NemesisInputError, match="unknown mask strategy 'tube'"):
        make_mask("tube")
    with pytest.raises(NemesisInputError, match="mask ratio 1.0"):
        make_mask("random", ratio=1.0)
