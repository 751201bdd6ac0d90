"""data/spacing.py: the one Spacing value and its forms (API, JSON, CLI), and that no other
module keeps its own copy of those conversions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from napari_nemesis.data import DEFAULT_SPACING_ZYX, NATIVE_SPACING, Spacing, as_spacing
from napari_nemesis.data.spacing import SPACING_ATOL_MM, recorded_spacing, spacing_from_metadata
from napari_nemesis.errors import NemesisCheckpointError, NemesisInputError

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


def test_parse_accepts_the_api_forms():
    assert Spacing.parse((2, 1.5, 1.5)).zyx == (2.0, 1.5, 1.5)
    assert Spacing.parse([2, 1.5, 1.5]).value == (2.0, 1.5, 1.5)
    assert Spacing.parse("native").is_native and Spacing.parse(" None ").is_native
    s = Spacing.parse((1, 2, 3))
    assert Spacing.parse(s) is s
    assert all(type(v) is float for v in Spacing.parse((1, 2, 3)).zyx)


@pytest.mark.parametrize("bad", [None, "fine", (1, 2), (1, 2, 3, 4), (0, 1, 1), (-1, 1, 1),
                                 (float("nan"), 1, 1), (float("inf"), 1, 1), ("a", 1, 1), 5])
def test_parse_refuses_the_rest(bad):
    with pytest.raises(NemesisInputError):
        Spacing.parse(bad)


def test_json_form_is_todays():
    """Caches, checkpoints and heads hold [z, y, x] floats or "native": the exact same JSON."""
    assert json.dumps(Spacing.parse((2, 1.5, 1.5)).to_json()) == "[2.0, 1.5, 1.5]"
    assert Spacing.native().to_json() == "native"
    for value in ((2.0, 1.5, 1.5), (0.7, 0.7, 5.0), "native"):
        s = Spacing.parse(value)
        assert Spacing.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_recorded_null_means_native_and_bad_names_the_file():
    assert Spacing.from_recorded(None).is_native
    assert spacing_from_metadata([2, 1.5, 1.5]) == (2.0, 1.5, 1.5)
    with pytest.raises(NemesisCheckpointError, match="head.safetensors"):
        Spacing.from_recorded("wide", "head.safetensors")


def test_cli_order_is_x_y_z_both_ways():
    s = Spacing.from_cli(["0.7", "0.8", "2.5"])
    assert s.zyx == (2.5, 0.8, 0.7)
    assert s.cli_words() == ["0.7", "0.8", "2.5"]
    assert Spacing.parse(DEFAULT_SPACING_ZYX).cli_words() == ["1.5", "1.5", "2"]
    assert Spacing.from_cli(["native"]).cli_words() == ["native"]
    assert Spacing.from_cli(["NONE"]).is_native
    odd = Spacing.parse((1 / 3, 0.1 + 0.2, 2.000001))
    assert Spacing.from_cli(odd.cli_words()).close_to(odd)
    for words, msg in ((["1", "2"], "three numbers"), (["a", "b", "c"], "not numbers"),
                       (["1", "0", "1"], "positive")):
        with pytest.raises(NemesisInputError, match=msg):
            Spacing.from_cli(words)


def test_cli_parser_and_dock_words_use_the_same_form():
    from napari_nemesis.cli._common import parse_spacing

    s = Spacing.parse((2.5, 0.8, 0.7))
    assert parse_spacing(s.cli_words()) == s.value
    assert parse_spacing(None, "dflt") == "dflt"


def test_close_to_uses_the_tolerance():
    a = Spacing.parse((2.0, 1.5, 1.5))
    assert a.close_to((2.0 + SPACING_ATOL_MM / 2, 1.5, 1.5))
    assert not a.close_to((2.0 + 10 * SPACING_ATOL_MM, 1.5, 1.5))
    assert not a.close_to("native") and Spacing.native().close_to("native")


def test_recorded_spacing_rule():
    model = SimpleNamespace(checkpoint_extra={"spacing_zyx": [3, 1, 1]}, checkpoint_path="ck.safetensors")
    assert recorded_spacing(model, {"spacing_zyx": "native"}, "p") == (NATIVE_SPACING, "probe")
    assert recorded_spacing(model, {}) == ((3.0, 1.0, 1.0), "checkpoint")
    assert recorded_spacing(SimpleNamespace(checkpoint_extra=None)) == (DEFAULT_SPACING_ZYX, "default")
    with pytest.raises(NemesisCheckpointError, match="ck.safetensors"):
        recorded_spacing(SimpleNamespace(checkpoint_extra={"spacing_zyx": "x"}, checkpoint_path="ck.safetensors"))


def test_old_names_still_import():
    from napari_nemesis.data.preprocess import NATIVE_SPACING as n2, as_spacing as a2
    from napari_nemesis.train import recorded_spacing as r2
    from napari_nemesis.train.inference import recorded_spacing as r3
    from napari_nemesis.train.probe import spacing_from_metadata as s2

    assert a2 is as_spacing and n2 == NATIVE_SPACING
    assert r2 is r3 is recorded_spacing and s2 is spacing_from_metadata


def test_no_other_module_converts_spacing_itself():
    """The JSON/CLI conversions and the recorded-spacing rule are written once, in data/spacing.py."""
    home = SRC / "data" / "spacing.py"
    patterns = [r"def _?spacing_json\b", r"def as_spacing\b", r"def spacing_from_metadata\b",
                r"def recorded_spacing\b", r"isinstance\([^)]*spacing[^)]*, str\) else (list|tuple|\[)",
                r'f"\{s[xyz]:g\}"']
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == home:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(SRC)}: {p}" for p in patterns if re.search(p, text)]
    assert not offenders, offenders
