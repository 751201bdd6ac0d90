"""Screenshots of the Project dock and the label-efficiency curve at 1280 x 800 (docs/viewer.md).

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/project_curve_screenshots.py OUT_DIR

A throw-away cohort in a temporary folder: four small synthetic scans (3 x 3 x 3 superpatches of
8^3 voxels at 2 mm; "liver" a brighter box, "spleen" a striped one, noise over all), two labelled
in full, one in part, one only added; a tiny seeded encoder (``build_model("tiny")``, 8^3
superpatches) with a probe head made for it. The Project and Training docks are opened through
napari's Plugins-menu route, "Open next unlabelled scan" opens the partly labelled scan, then the
Training dock computes the curve with 3 seeds. Saves ``viewer_project.png`` and
``viewer_label_curve.png``; prints ``nemesis labels status`` and ``nemesis labels curve`` of the
same project.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ORGANS = ("liver", "spleen")


def synthetic_scan(path: Path, seed: int, g: int = 3, s: int = 8) -> tuple[Path, dict]:
    """A (s g)^3 scan of g^3 superpatches and their labels (``{index: (organs, "labelled")}``)."""
    from napari_nemesis.data import volume_from_array, write_volume

    rng = np.random.default_rng(seed)
    arr = np.zeros((s * g,) * 3, np.float32)
    labels = {}
    for i in range(g ** 3):
        z, y, x = np.unravel_index(i, (g, g, g))
        liver, spleen = rng.random() < 0.5, rng.random() < 0.5
        block = rng.normal(0.0, 60.0, (s, s, s)) + (80.0 if liver else 0.0)
        if spleen:
            block[::2] += 60.0
        arr[z * s:(z + 1) * s, y * s:(y + 1) * s, x * s:(x + 1) * s] = block
        labels[i] = ([o for o, v in zip(ORGANS, (liver, spleen)) if v], "labelled")
    write_volume(arr, path, volume_from_array(arr, (2.0, 2.0, 2.0)), dtype=np.float32)
    return path, labels


def main(out: Path) -> None:
    os.environ.setdefault("NEMESIS_CONFIG_DIR", tempfile.mkdtemp())
    import torch

    from napari_nemesis.data import ORGAN_NAMES
    from napari_nemesis.labels import LabelProject
    from napari_nemesis.model import build_model, save_checkpoint
    from napari_nemesis.train.probe import ProbeHead, probe_metadata, save_probe

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp()) / "cohort"
    root.mkdir()
    torch.manual_seed(0)
    model = build_model("tiny", superpatch=8, patch=4, depth=1)
    ckpt = save_checkpoint(model, root / "tiny.safetensors")
    probe = save_probe(ProbeHead(model.cfg.embed_dim, len(ORGAN_NAMES)), root / "probe.safetensors",
                       probe_metadata(model, (2.0, 2.0, 2.0), ORGAN_NAMES, checkpoint=ckpt))
    project = LabelProject.open(root / "proj", create=True, superpatch=8, spacing_zyx=(2, 2, 2), threshold=1)
    for k in range(4):
        path, labels = synthetic_scan(root / f"case{k + 1:02d}.nii.gz", seed=k)
        if k < 2:
            project.store(path).set_many(labels)
        elif k == 2:
            project.store(path).set_many(dict(list(labels.items())[:9]))
        else:
            project.add(path)

    import napari
    from imageio.v3 import imwrite
    from qtpy.QtWidgets import QApplication

    from napari_nemesis.cli import main as cli
    from napari_nemesis.viewer import session_for
    from napari_nemesis.viewer._napari_private import qt_window
    from napari_nemesis.viewer._window import dock_of

    app = QApplication.instance() or QApplication([])

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.02)

    viewer = napari.Viewer(show=True)
    qt_window(viewer).resize(1280, 800)
    session = session_for(viewer)
    session.set_weights(str(ckpt), str(probe), wait=True)
    session.feature("labelling").set_project(project.root, wait=True)
    _dock, training = viewer.window.add_plugin_dock_widget("napari-nemesis", "Training")
    _dock, navigator = viewer.window.add_plugin_dock_widget("napari-nemesis", "Project")
    spin(1.0)
    navigator.controller.refresh(wait=True)
    navigator.open_next.click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (session.scan is None or session.running("prepare")
                                           or session.feature("labelling").store is None):
        spin(0.1)
    dock_of(navigator).raise_()
    spin(1.5)
    out.mkdir(parents=True, exist_ok=True)
    imwrite(out / "viewer_project.png", viewer.screenshot(canvas_only=False, flash=False))
    training.curve_seeds.setValue(3)
    training.curve_button.click()
    while training.controller.curve.running:
        spin(0.1)
    dock_of(training).raise_()
    spin(0.5)
    training.verticalScrollBar().setValue(training.verticalScrollBar().maximum())
    spin(1.0)
    imwrite(out / "viewer_label_curve.png", viewer.screenshot(canvas_only=False, flash=False))
    cli(["labels", "status", str(project.root)])
    cli(["labels", "curve", str(project.root), "--checkpoint", str(ckpt)])
    viewer.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    main(Path(sys.argv[1]))
