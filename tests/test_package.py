import subprocess
import sys

from napari_nemesis.cli import main


def _modules_loaded_by(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after ``import <imports>``."""
    code = f"import sys, {imports}; print(','.join(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_import_is_cheap_and_qt_free():
    assert _modules_loaded_by("napari_nemesis, napari_nemesis.errors", ("torch", "napari", "qtpy", "PyQt6")) == []


def test_core_packages_import_no_qt():
    core = "napari_nemesis.model, napari_nemesis.data, napari_nemesis.train, napari_nemesis.cli"
    assert _modules_loaded_by(core, ("napari", "qtpy", "PyQt6", "magicgui")) == []


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-nemesis")
    assert manifest.name == "napari-nemesis"


def test_cli_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "flops" in out
