"""The model's HU window is defined once, in data/preprocess.py (HU_WINDOW)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_nemesis.data.preprocess import HU_WINDOW, window_hu
from napari_nemesis.train.inference import HU_HI, HU_LO, to_hu

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


def test_inference_names_are_the_preprocess_window():
    assert (HU_LO, HU_HI) == HU_WINDOW


def test_to_hu_undoes_the_window():
    hu = np.linspace(HU_WINDOW[0], HU_WINDOW[1], 101, dtype=np.float32)
    np.testing.assert_allclose(to_hu(window_hu(hu)), hu, atol=1e-3)


def test_no_other_module_writes_the_window_numbers():
    pair = re.compile(r"-175(\.0*)?\s*,\s*250(\.0*)?\b")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p != SRC / "data" / "preprocess.py" and pair.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
