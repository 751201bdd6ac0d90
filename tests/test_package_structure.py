"""The package's module-level import graph has no cycle, and shared facts have one home."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> nx.DiGraph:
    """Edges module -> module for imports at module level (function-level imports run at call time)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in tree.body:  # module level only (guards like `if TYPE_CHECKING:` included below)
            stmts = [node] + (list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else [])
            for stmt in stmts:
                targets = []
                if isinstance(stmt, ast.ImportFrom):
                    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                        continue
                    targets = _resolve(name, path.name == "__init__.py", stmt)
                elif isinstance(stmt, ast.Import):
                    targets = [a.name for a in stmt.names]
                for t in targets:
                    if t in modules and t != name:
                        graph.add_edge(name, t)
    return graph


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    # a package importing its own submodules is how packages work; cycles between modules are not
    pruned = nx.DiGraph((a, b) for a, b in graph.edges if not b.startswith(a + ".") and not a.startswith(b + "."))
    cycles = list(nx.simple_cycles(pruned))
    assert cycles == [], f"import cycles: {cycles[:5]}"


def test_the_file_lock_lives_beside_the_atomic_writes():
    from napari_nemesis import atomic
    from napari_nemesis.labels import project, store

    assert store._file_lock is atomic.file_lock and project._file_lock is atomic.file_lock
    graph = import_graph()
    assert not graph.has_edge("napari_nemesis.labels.store", "napari_nemesis.labels.project")
    defined = [p for p in PKG.rglob("*.py") if "def file_lock" in p.read_text(encoding="utf-8") or "def _file_lock" in p.read_text(encoding="utf-8")]
    assert defined == [PKG / "atomic.py"]


def test_one_key_dispatcher_for_labelling():
    from napari_nemesis.labels import KEYS, LabelCursor, LabellingSession, key_action
    from napari_nemesis.labels import session as old_module

    assert LabellingSession is LabelCursor and old_module.LabelCursor is LabelCursor
    assert key_action("3", 8) == ("toggle", (2,)) and key_action("9", 8) is None
    assert key_action("Left", 8) == ("move", (2, -1)) and key_action("Enter", 8) == ("accept", ())
    assert key_action("x", 8) is None and all(key_action(k, 9) is not None for k in KEYS)
    # nobody else reads KEYS to decide an action
    readers = [p for p in PKG.rglob("*.py") if "KEYS[" in p.read_text(encoding="utf-8")]
    assert readers == [PKG / "labels" / "cursor.py"]


def test_the_old_train_cmds_module_still_registers_all_five_commands():
    import argparse

    from napari_nemesis.cli import downstream_cmds, pretrain_cmds, train_cmds

    sub = argparse.ArgumentParser().add_subparsers()
    train_cmds.register(sub)
    assert set(sub.choices) == {"pretrain", "probe", "evaluate", "infer", "reconstruct"}
    assert train_cmds.cmd_infer is downstream_cmds.cmd_infer and train_cmds.cmd_pretrain is pretrain_cmds.cmd_pretrain
