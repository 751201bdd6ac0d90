import subprocess
import sys

from napari_nemesis.cli import main


def test_import_is_cheap_and_qt_free():
    code = (
        "import sys, napari_nemesis, napari_nemesis.errors;"
        "bad = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_core_packages_import_no_qt():
    code = (
        "import sys, napari_nemesis.model, napari_nemesis.cli;"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


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
