"""Shared test settings: small thread count, paths to the shared real CT."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CT = REPO.parent / "shared" / "data" / "ct"
# The real CT beside the checkout (../shared/data/ct); tests that need it skip without it.
CT_DIR = SHARED_CT
CT = CT_DIR / "abdomen_ct.nii.gz"
CT_LABELS = CT_DIR / "abdomen_label_btcv.nii.gz"
needs_ct = pytest.mark.skipif(not CT.exists(), reason="real CT in ../shared/data/ct not present")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(2)
    yield


@pytest.fixture
def real_ct_dir() -> Path:
    if not (SHARED_CT / "abdomen_ct.nii.gz").is_file():
        pytest.skip(f"real CT not found at {SHARED_CT}")
    return SHARED_CT
