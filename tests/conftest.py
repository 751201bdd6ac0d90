"""Shared test settings: small thread count, a private config/cache folder, paths to the shared real
CT, and the small phantom data set and tiny checkpoints several modules train on."""

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


@pytest.fixture(autouse=True, scope="session")
def _private_user_folders(tmp_path_factory):
    """Keep the suite out of the user's folders: the viewer's settings (``viewer.json``) and default
    labelling project follow ``NEMESIS_CONFIG_DIR``, dataset caches ``NEMESIS_CACHE_DIR``. Set in
    ``os.environ``, so child processes (the CLI, the Training dock's runs) inherit them; a test's own
    ``monkeypatch.setenv`` still wins while it runs."""
    root = tmp_path_factory.mktemp("user")
    names = {"NEMESIS_CONFIG_DIR": root / "config", "NEMESIS_CACHE_DIR": root / "cache"}
    with pytest.MonkeyPatch.context() as mp:
        for name, path in names.items():
            mp.setenv(name, str(path))
        mp.delenv("NEMESIS_LABELS_PROJECT", raising=False)
        mp.setenv("NEMESIS_NO_GC_FREEZE", "1")  # the suite's viewers come and go: none is frozen alive
        yield root


@pytest.fixture(autouse=True)
def _fresh_config_dir(tmp_path_factory, monkeypatch):
    """Each test starts from default viewer settings and an empty default labelling project:
    weights or a project one test remembers never reach the next."""
    monkeypatch.setenv("NEMESIS_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.delenv("NEMESIS_LABELS_PROJECT", raising=False)


@pytest.fixture
def real_ct_dir() -> Path:
    if not (SHARED_CT / "abdomen_ct.nii.gz").is_file():
        pytest.skip(f"real CT not found at {SHARED_CT}")
    return SHARED_CT


# ---- small shared training inputs --------------------------------------------------------------
#: Phantom scans small enough that a tiny model trains on them in a second: (z, y, x) voxels.
PHANTOM_SHAPE = (20, 28, 28)


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    """Five labelled phantom scans (BTCV layout), written once per session. Read it, never write into
    it: several modules share it (caches go elsewhere, see ``_private_user_folders``)."""
    from napari_nemesis.data import write_phantom_dataset

    data = tmp_path_factory.mktemp("phantom") / "data"
    write_phantom_dataset(data, cases=5, seed=3, shape=PHANTOM_SHAPE)
    return data


#: PretrainOptions of a tiny model on 32^3 superpatches that trains a step in a fraction of a second.
TINY_PRETRAIN = dict(preset="tiny", batch=2, model_overrides={"superpatch": 32, "patch": 8, "depth": 1}, log_every=1)


@pytest.fixture(scope="session")
def pretrain_phantoms(tmp_path_factory):
    """Four small phantom scans as a cache of 32^3 superpatches, for pretraining runs of TINY_PRETRAIN."""
    from napari_nemesis.data import open_dataset, write_phantom_dataset

    root = tmp_path_factory.mktemp("ph")
    write_phantom_dataset(root / "data", cases=4, seed=3, size="small")
    return open_dataset(root / "data", superpatch=32, cache_dir=root / "cache")


def save_tiny_checkpoint(path: Path, seed: int = 0, extra: dict | None = None) -> Path:
    """A seeded tiny model (8^3 superpatches of 4^3 patches, one block) saved at ``path``; ``extra``
    goes into its metadata as pretraining writes it (e.g. the spacing it was pretrained at)."""
    import torch

    from napari_nemesis.model import build_model, save_checkpoint

    torch.manual_seed(seed)
    return save_checkpoint(build_model("tiny", superpatch=8, patch=4, depth=1), path, extra=extra)


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """:func:`save_tiny_checkpoint`, for tests and module fixtures."""
    return save_tiny_checkpoint
