"""What a user installs: the sdist and wheel carry the licence, the sample data's attribution and
the test suite; the README (the PyPI page) and the CLI link to the online docs, not to files a pip
install lacks; the lowest napari declared in pyproject.toml is the one ``make test-min`` installs
and tests; the reader works through napari's own open path with whatever napari is installed."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS_URL = "https://github.com/napari-nemesis/napari-nemesis/blob/main/docs/"
ATTRIBUTION = ("CC BY 4.0", "Wasserthal", "TotalSegmentator")

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _napari_lower_bounds(requirements: list[str]) -> list[str]:
    """The ``>=`` bound of every napari requirement (with or without extras) in ``requirements``."""
    bounds = []
    for req in requirements:
        m = re.fullmatch(r"\s*napari(\[[^\]]*\])?\s*(.*)", req)
        if m is None:
            continue
        lower = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", m.group(2))
        bounds.append(lower.group(1) if lower else "")
    return bounds


def _declared_napari_min() -> str:
    return _napari_lower_bounds(_pyproject()["project"]["dependencies"])[0]


def _makefile_napari_min() -> str:
    m = re.search(r"^NAPARI_MIN\s*[?:]?=\s*(\S+)\s*$", (REPO / "Makefile").read_text(encoding="utf-8"), re.M)
    assert m is not None, "Makefile sets no NAPARI_MIN (the napari that `make test-min` installs)"
    return m.group(1)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# ---- metadata and sources (fast) -------------------------------------------------------------------

def test_every_napari_requirement_has_the_same_lower_bound():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    bounds = {
        "dependencies": _napari_lower_bounds(project["dependencies"]),
        "qt extra": _napari_lower_bounds(extras["qt"]),
        "test extra": _napari_lower_bounds(extras["test"]),
    }
    assert all(len(found) == 1 for found in bounds.values()), bounds
    assert len({found[0] for found in bounds.values()}) == 1, f"napari lower bounds differ: {bounds}"
    assert _version_tuple(bounds["dependencies"][0]) >= (0, 6), bounds  # 0.5.x lacks APIs the viewer uses


def test_make_test_min_installs_the_declared_napari_lower_bound():
    assert _makefile_napari_min() == _declared_napari_min()


def test_installed_napari_satisfies_the_declared_bound():
    installed = importlib.metadata.version("napari")
    assert _version_tuple(installed) >= _version_tuple(_declared_napari_min()), installed
    expected = os.environ.get("NEMESIS_EXPECT_NAPARI")  # set by `make test-min`
    if expected:
        assert installed == expected, f"test-min runs napari {installed}, not the lowest supported {expected}"


def test_license_metadata_is_an_spdx_expression_with_its_file():
    project = _pyproject()["project"]
    assert project["license"] == "BSD-3-Clause"
    assert "LICENSE" in project["license-files"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "BSD 3-Clause" in text and "napari-nemesis developers" in text
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # PEP 639 forbids both
    requires = _pyproject()["build-system"]["requires"]
    setuptools_req = next(r for r in requires if r.startswith("setuptools"))
    assert _version_tuple(setuptools_req.split(">=")[1]) >= (77,), setuptools_req  # first with PEP 639


def _relative_links(markdown: str) -> list[str]:
    """Targets of markdown links and images that are neither absolute URLs nor in-page anchors."""
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)", markdown)
    targets += re.findall(r"""(?:src|href)=["']([^"']+)["']""", markdown)
    return [t for t in targets if not re.match(r"(https?://|mailto:|#)", t)]


def test_relative_link_finder_finds_relative_links():
    text = "see [a](docs/a.md), ![b](docs/img/b.png), [c](https://x.org/docs/c.md), [d](#top)"
    assert _relative_links(text) == ["docs/a.md", "docs/img/b.png"]


def test_readme_links_are_absolute():
    """The README is the PyPI page: a relative link there leads nowhere."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert _relative_links(readme) == []
    # and the files it links to exist in the repository the links point to
    for name in re.findall(re.escape(DOCS_URL) + r"([^)\s#]+)", readme):
        assert (REPO / "docs" / name).is_file(), name


def test_cli_messages_link_to_the_online_docs():
    """A pip install has no docs/ folder: messages name the documentation URL instead."""
    offenders = []
    for source in sorted((REPO / "src" / "napari_nemesis" / "cli").glob("*.py")):
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(?<!blob/main/)\bdocs/", line):
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert offenders == []


# ---- the reader through napari (the smoke test `make test-min` runs with the lowest napari) ---------

def test_napari_opens_the_sample_ct_with_our_reader():
    """napari's own open path (no Qt): our reader is chosen by the manifest, the layer it returns is
    accepted by this napari's Image layer (affine, colormap, contrast...), in LPS mm."""
    pytest.importorskip("napari")
    from importlib.resources import files

    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari does when its first window opens
    ct = files("napari_nemesis") / "sample_data" / "abdomen_ct.nii.gz"
    viewer = ViewerModel()
    layers = viewer.open(str(ct), plugin="napari-nemesis")
    assert len(layers) == 1 and len(viewer.layers) == 1, "the reader added no layer (see its notification)"
    layer = viewer.layers[0]
    assert layer.ndim == 3 and layer.data.shape == (112, 101, 122)  # z y x of the 122 x 101 x 112 scan
    assert layer.metadata.get("kind") == "scan"
    extent = layer.extent.world
    assert (extent[1] - extent[0]).max() > 300  # mm, not voxels: 3 mm spacing over ~110 voxels


# ---- built distributions (slow: builds with `python -m build` in an isolated environment) ---------

@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package is not installed (it is in the test extra)")
    out = tmp_path_factory.mktemp("dist")
    # No flags: the sdist first, then the wheel built from that sdist, so a file the sdist lacks
    # also breaks the wheel.
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0]}


@pytest.mark.slow
def test_wheel_carries_license_attribution_and_manifest(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
        info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        assert f"{info}/licenses/LICENSE" in names, [n for n in names if n.startswith(info)]
        metadata = whl.read(f"{info}/METADATA").decode()
        assert "License-Expression: BSD-3-Clause" in metadata
        assert "License-File: LICENSE" in metadata
        assert re.search(r"^Requires-Dist: napari>=" + re.escape(_declared_napari_min()) + r"\b", metadata, re.M)
        attribution = whl.read("napari_nemesis/sample_data/README.md").decode()
        for needed in ATTRIBUTION:
            assert needed in attribution
        for name in ("napari_nemesis/napari.yaml", "napari_nemesis/sample_data/abdomen_ct.nii.gz",
                     "napari_nemesis/weights/nemesis_small.safetensors",
                     "napari_nemesis/weights/probe_small.safetensors",
                     "napari_nemesis/weights/probe_patch_small.safetensors"):
            assert name in names, name
        assert not any(n.startswith(("tests/", "docs/")) for n in names)
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        assert "nemesis = napari_nemesis.cli:main" in entry_points
        assert "napari-nemesis = napari_nemesis:napari.yaml" in entry_points


@pytest.mark.slow
def test_sdist_carries_the_test_suite_docs_and_license(dists):
    with tarfile.open(dists["sdist"]) as tar:
        root = tar.getnames()[0].split("/")[0]
        names = {n[len(root) + 1:] for n in tar.getnames()}
    repo_tests = {f"tests/{p.name}" for p in (REPO / "tests").glob("*.py")}
    assert "tests/conftest.py" in names
    assert repo_tests <= names, sorted(repo_tests - names)
    repo_docs = {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}
    assert repo_docs <= names, sorted(repo_docs - names)
    for name in ("LICENSE", "README.md", "napari.yaml", "Makefile", "pyproject.toml",
                 "src/napari_nemesis/sample_data/README.md", "src/napari_nemesis/napari.yaml"):
        assert name in names, name
    assert not any(n.startswith((".venv", "build/")) or "__pycache__" in n for n in names)
