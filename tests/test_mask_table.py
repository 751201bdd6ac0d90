"""The table of masking strategies (model/masking.py MASKS) is the one list every chooser reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from napari_nemesis.errors import NemesisInputError
from napari_nemesis.model import masking
from napari_nemesis.model.masking import MASKS, MaskStrategy, check_strategy, make_mask, mask_strategies

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_nemesis"


def _keep_first_slice(rand, grid, ratio, batch, plane_ratio):
    """A strategy for the tests: only the first z slice stays visible."""
    gz, gy, gx = grid
    keep = torch.zeros(batch, gz, gy * gx, dtype=torch.bool)
    keep[:, 0] = True
    return keep.reshape(batch, -1)


@pytest.fixture
def extra_strategy(monkeypatch):
    monkeypatch.setitem(MASKS, "firstslice", MaskStrategy("only slice 0 visible", _keep_first_slice))
    return "firstslice"


def test_table_names_and_order():
    assert mask_strategies() == ("random", "plane", "axis", "dual")
    assert masking.MASK_STRATEGIES == masking.STRATEGIES == mask_strategies()
    assert masking.DEFAULT_STRATEGY in MASKS
    assert masking.menu_strategies()[0] == masking.DEFAULT_STRATEGY
    assert sorted(masking.menu_strategies()) == sorted(MASKS)
    assert [n for n, spec in MASKS.items() if spec.baseline] == ["random"]


def test_check_strategy_names_the_bad_one_and_the_valid_ones():
    assert check_strategy("plane") == "plane"
    with pytest.raises(ValueError) as err:
        check_strategy("tube")
    assert isinstance(err.value, NemesisInputError)
    assert "'tube'" in str(err.value) and "random, plane, axis, dual" in str(err.value)


def test_a_strategy_added_to_the_table_is_drawn_and_checked(extra_strategy):
    assert check_strategy(extra_strategy) == extra_strategy
    m = make_mask(extra_strategy, (4, 2, 2), 0.5, batch=2).view(2, 4, 4)
    assert not m[:, 0].any() and m[:, 1:].all()


def test_a_strategy_added_to_the_table_is_a_cli_choice(extra_strategy):
    from napari_nemesis.cli import build_parser

    parser = build_parser()
    for argv in (["pretrain", "data", "--out", "run", "--mask", extra_strategy],
                 ["reconstruct", "scan.nii.gz", "--out", "o", "--mask", extra_strategy],
                 ["flops", "--mask", extra_strategy]):
        assert parser.parse_args(argv).mask == extra_strategy
    with pytest.raises(SystemExit):
        parser.parse_args(["flops", "--mask", "tube"])


def test_a_strategy_added_to_the_table_is_evaluated(extra_strategy, monkeypatch):
    import importlib

    evaluate = importlib.import_module("napari_nemesis.train.evaluate")
    seen = []

    def fake_reconstruct(model, items, strategy, *args, **kwargs):
        seen.append(strategy)
        return iter(())

    class Cache:
        def grid(self, cid, s):
            return None

        def superpatches(self, ids, s):
            return iter(())

    class Model:
        class cfg:
            superpatch = 32

    monkeypatch.setattr("napari_nemesis.train.inference.reconstruct_superpatches", fake_reconstruct)
    rows = evaluate.evaluate_reconstruction(Cache(), Model(), ["c0"])
    assert [r["strategy"] for r in rows] == [*mask_strategies()] and extra_strategy in seen
    with pytest.raises(NemesisInputError, match="'tube'"):
        evaluate.evaluate_reconstruction(Cache(), Model(), ["c0"], strategies=["plane", "tube"])


@pytest.mark.gui
def test_a_strategy_added_to_the_table_is_offered_by_the_dock(extra_strategy, make_napari_viewer):
    from napari_nemesis.viewer import launch

    session = launch(viewer=make_napari_viewer(), widgets=True)
    box = session.widgets["Reconstruction"].strategy
    offered = [box.itemText(i) for i in range(box.count())]
    assert offered == list(masking.menu_strategies()) and extra_strategy in offered
    assert box.currentText() == masking.DEFAULT_STRATEGY


def _literals_naming_strategies(tree: ast.AST, names: set[str]):
    """Tuple, list and set literals (and dict keys) holding three or more strategy names."""
    for node in ast.walk(tree):
        elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
            node.keys if isinstance(node, ast.Dict) else None
        if elts is None:
            continue
        found = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in names}
        if len(found) >= 3:
            yield node.lineno


def test_no_other_module_lists_the_strategies():
    names = set(MASKS)
    offenders = []
    for path in [*SRC.rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]:
        if path == SRC / "model" / "masking.py":
            continue
        for line in _literals_naming_strategies(ast.parse(path.read_text(encoding="utf-8")), names):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []


def test_the_grep_finds_a_hard_coded_list():
    tree = ast.parse('p.add_argument("--mask", choices=["random", "plane", "axis", "dual"])')
    assert list(_literals_naming_strategies(tree, set(MASKS))) == [1]
    assert list(_literals_naming_strategies(ast.parse('for s in ("plane", "axis"): pass'), set(MASKS))) == []
