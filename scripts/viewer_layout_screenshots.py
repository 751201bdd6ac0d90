"""Screenshots of the viewer as a user starts it, on a screen of a given size (docs/viewer.md).

    python scripts/viewer_layout_screenshots.py OUT_DIR [WIDTHxHEIGHT ...]   (default 1280x800 1920x1080)

Each size runs in its own process on its own virtual screen (Xvfb): plain napari, the seven NEMESIS
docks added one at a time through napari's Plugins menu route, the sample CT opened with File >
Open (our reader), the organ probabilities computed and the liver's superpatch selected; saved:
``layout_WxH.png`` (the whole window) and, for the first size, ``viewer_coronal_markers.png`` (a
coronal view with its orientation markers) and ``viewer_second_scan.png`` (a second scan opened:
the phantom, the first hidden). Prints the window, canvas and dock sizes as JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TITLES = ("Superpatch grid", "Reconstruction", "Organ probabilities", "Labelling", "Training", "Project", "Triage")


def one_size(out: Path, width: int, height: int, extras: bool) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._demo import focus_on_organ
    from napari_nemesis.viewer._napari_private import canvas_widget, qt_window

    def settle(rounds: int = 30) -> None:
        for _ in range(rounds):
            QApplication.processEvents()

    viewer = napari.Viewer(title="napari", show=True)
    window = qt_window(viewer)
    window.showMaximized()  # with a window manager; a bare virtual screen has none: the screen's size then
    settle()
    if window.width() < width * 0.9:
        window.resize(width, height)
        window.move(0, 0)
        settle()
    for title in TITLES:  # Plugins > NEMESIS > <title>, one at a time
        viewer.window.add_plugin_dock_widget("napari-nemesis", title)
        settle(5)
    viewer.open(str(sample_ct_path()), plugin="napari-nemesis")  # File > Open
    session = session_for(viewer)
    while session.scan is None or session.running("prepare"):
        settle(2)
    session.scene.settle()
    session.run_probabilities(wait=True)
    focus_on_organ(session, "liver")
    from napari_nemesis.viewer._demo import _raise_dock

    _raise_dock(session, "Organ probabilities")
    settle()
    out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out / f"layout_{width}x{height}.png"), canvas_only=False)
    sizes = {"screen": [width, height], "window": [window.width(), window.height()],
             "canvas": [canvas_widget(viewer).width(), canvas_widget(viewer).height()],
             "dock": [session.widgets["Superpatch grid"].width(), session.widgets["Superpatch grid"].height()]}
    if extras:
        viewer.dims.order = (1, 0, 2)  # coronal
        _raise_dock(session, "Superpatch grid")
        settle()
        viewer.reset_view()
        session.scene.settle()
        viewer.screenshot(str(out / "viewer_coronal_markers.png"), canvas_only=False)
        viewer.dims.order = (0, 1, 2)
        from napari_nemesis.viewer._io import sample_phantom

        data, kwargs, _kind = sample_phantom()[0]
        viewer.add_image(data, **kwargs)  # a second scan: it becomes the active one
        while session.scan is None or session.running("prepare"):
            settle(2)
        session.scene.settle()
        settle()
        viewer.screenshot(str(out / "viewer_second_scan.png"), canvas_only=False)
    viewer.close()
    return sizes


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--child":
        out, size, extras = Path(argv[1]), argv[2], argv[3] == "1"
        w, h = (int(v) for v in size.split("x"))
        print(json.dumps({"size": size, **one_size(out, w, h, extras)}))
        return 0
    if not argv:
        print(__doc__)
        return 2
    out = Path(argv[0])
    sizes = argv[1:] or ["1280x800", "1920x1080"]
    import os
    import tempfile

    from napari_nemesis.viewer._display import virtual_display

    # a first start: default settings and an empty labelling project, whatever this user picked before
    fresh = Path(tempfile.mkdtemp(prefix="nemesis-shots-"))
    os.environ["NEMESIS_CONFIG_DIR"] = str(fresh / "config")
    os.environ["NEMESIS_LABELS_PROJECT"] = str(fresh / "labelling-project")

    for k, size in enumerate(sizes):
        w, h = (int(v) for v in size.split("x"))
        with virtual_display(w, h):
            proc = subprocess.run([sys.executable, __file__, "--child", str(out), size, "1" if k == 0 else "0"],
                                  capture_output=True, text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        print(lines[-1] if lines else f"{size}: failed\n{proc.stderr[-3000:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
