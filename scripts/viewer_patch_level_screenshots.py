"""Screenshots of the Organ probabilities dock at the patch level (docs/viewer.md).

    python scripts/viewer_patch_level_screenshots.py OUT_DIR

On a virtual 1280 x 800 screen (Xvfb): napari shown, the five NEMESIS docks, the sample CT, the liver
map computed at the superpatch level and then at the patch level (the bundled heads), the axial slice
through the liver. Saves ``viewer_patch_level.png`` (the whole window, the patch level on screen, the
cursor's patch read out in the dock) and ``viewer_levels_side_by_side.png`` (the canvas at both
levels). Prints the times of the two runs as a JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, HEIGHT = 1280, 800


def shots(out: Path) -> dict:
    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_nemesis.sample_data import sample_ct_path
    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._demo import _raise_dock, _side_by_side, focus_on_organ
    from napari_nemesis.viewer._napari_private import qt_window

    def settle(rounds: int = 30) -> None:
        for _ in range(rounds):
            QApplication.processEvents()

    viewer = napari.Viewer(title="napari", show=True)
    window = qt_window(viewer)
    window.showMaximized()
    settle()
    if window.width() < WIDTH * 0.9:
        window.resize(WIDTH, HEIGHT)
        window.move(0, 0)
        settle()
    session = session_for(viewer)
    session.show_widgets(front="Organ probabilities")
    settle()
    session.open_scan(sample_ct_path(), wait=True)
    from napari_nemesis.data import read_labels
    from napari_nemesis.sample_data import sample_btcv_labels_path
    from napari_nemesis.viewer._io import labels_layer_data

    volume = session.scan.prepared.volume  # hidden: the slice goes through the liver's centre (open_demo's way)
    data, kwargs, _kind = labels_layer_data(volume, read_labels(sample_btcv_labels_path(), volume),
                                            name="organs (BTCV labels)", scheme="btcv")
    kwargs["visible"] = False
    viewer.add_labels(data, **kwargs)
    session.scene.raise_overlays(force=True)
    times = {}
    panels = []
    for level in ("superpatch", "patch"):
        t0 = time.perf_counter()
        session.run_probabilities(wait=True, level=level)
        times[level] = round(time.perf_counter() - t0, 2)
        focus_on_organ(session, "liver")
        session.scene.settle()
        settle()
        panels.append((f"{level} level: P(liver)", viewer.screenshot(canvas_only=True)))
    # the cursor over the liver's most likely patch: the dock reads it out
    result = session.probabilities
    ctx = session.scan
    k = result.organs.index("liver")
    index = session.selected
    t = int(np.argmax(np.where(result.inside[index], result.patch_values[index, :, k], -1)))
    g = ctx.grid.superpatch // result.patch
    from napari_nemesis.viewer._layers import preprocessed_world_affine

    start = np.asarray(ctx.grid.box(index).start) + result.patch * np.array(np.unravel_index(t, (g, g, g))) + 7.5
    world = preprocessed_world_affine(ctx.prepared.pre)
    point = world[:3, :3] @ start + world[:3, 3]
    point[0] = viewer.dims.point[0]  # on the slice shown
    session.hover_at(point)
    _raise_dock(session, "Organ probabilities")
    settle()
    out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out / "viewer_patch_level.png"), canvas_only=False)
    _side_by_side(panels, out / "viewer_levels_side_by_side.png",
                  "the sample CT's liver map: one value per 128\u00b3 superpatch, one per 16\u00b3 patch")
    viewer.close()
    return {"run_seconds": times, "patches": result.n_patches, "superpatches": ctx.n}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--child":
        print(json.dumps(shots(Path(argv[1]))))
        return 0
    if len(argv) != 1:
        print(__doc__)
        return 2
    from napari_nemesis.viewer._display import virtual_display

    fresh = Path(tempfile.mkdtemp(prefix="nemesis-shots-"))  # default settings, whatever this user picked
    os.environ["NEMESIS_CONFIG_DIR"] = str(fresh / "config")
    os.environ["NEMESIS_LABELS_PROJECT"] = str(fresh / "labelling-project")
    with virtual_display(WIDTH, HEIGHT):
        proc = subprocess.run([sys.executable, __file__, "--child", argv[0]], capture_output=True, text=True,
                              timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    print(lines[-1] if lines else f"failed\n{proc.stderr[-3000:]}")
    return 0 if lines else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
