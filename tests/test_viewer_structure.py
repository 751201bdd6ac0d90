"""The viewer's shape: a kernel that imports no feature, features that import no other feature, one
list of features that agrees with the manifest, napari's privates reached from one module."""

from __future__ import annotations

import ast
from importlib import import_module
from pathlib import Path

import yaml

VIEWER = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis" / "viewer"
KERNEL = ("_session", "_scene", "_turns", "_dock", "_window", "_controls", "_runstate", "_workers", "_process", "_jobs",
          "_models", "_interaction", "_napari_private", "_settings", "_layers")


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_kernel_imports_no_feature():
    for name in KERNEL:
        imported = _imports(VIEWER / f"{name}.py", f"napari_nemesis.viewer.{name}")
        features = {m for m in imported if m.startswith("napari_nemesis.viewer.features.")
                    and m != "napari_nemesis.viewer.features.FEATURES"}
        assert not features, (name, features)


def test_features_import_no_other_feature():
    folders = [p for p in (VIEWER / "features").iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert {p.name for p in folders} >= {"grid", "probabilities", "reconstruction", "attention", "labelling",
                                         "training", "radiology"}
    for folder in folders:
        for path in folder.glob("*.py"):
            imported = _imports(path, f"napari_nemesis.viewer.features.{folder.name}.{path.stem}")
            others = {m for m in imported if m.startswith("napari_nemesis.viewer.features.")
                      and not m.startswith(f"napari_nemesis.viewer.features.{folder.name}")}
            assert not others, (path, others)


def test_the_feature_list_and_the_manifest_agree():
    from napari_nemesis.viewer.features import DOCKS, FEATURES, _load

    manifest = yaml.safe_load((VIEWER.parent / "napari.yaml").read_text(encoding="utf-8"))
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    widgets = {w["display_name"]: commands[w["command"]] for w in manifest["contributions"]["widgets"]}
    assert set(widgets) == set(DOCKS)
    for title, feature in DOCKS.items():
        module, name = widgets[title].split(":")
        assert _load(feature.dock) is getattr(import_module(module), name)
        assert _load(feature.dock).dock_title == title
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    for feature in FEATURES:
        if feature.panel:
            assert feature.host in DOCKS


def test_napari_privates_are_reached_from_one_module():
    offenders = []
    for path in VIEWER.rglob("*.py"):
        if path.name == "_napari_private.py":
            continue
        text = path.read_text(encoding="utf-8")
        for private in ("._qt_window", "._qt_viewer", "_needs_overlay_position_update", "__wrapped__"):
            if private in text:
                offenders.append(f"{path.relative_to(VIEWER)}: {private}")
    assert offenders == []
