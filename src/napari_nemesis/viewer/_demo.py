"""The demo scene (``nemesis demo``): the sample CT, its grid, the widgets, the organ probabilities.

``open_demo`` builds the scene the way a user would and returns the session; ``screenshot_tour``
walks through the views the documentation shows (2D grid with a heatmap, the reconstruction beside
its input, the error map, the attention view, the 3D wireframe) and saves each as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _layers as L
from ._napari_private import viewer_camera
from ._scene import new_layer

WINDOW_SIZE = (1600, 1000)


def open_demo(scan=None, viewer=None, probabilities: bool = True, wait: bool = True,
              size: tuple[int, int] | None = WINDOW_SIZE):
    """A viewer with ``scan`` (default: the packaged sample CT and its organ labels), the grid and
    the three widgets; the organ probabilities start at once (``wait``: until they are shown).
    ``size``: the window's size in pixels (None: napari's own)."""
    import napari

    from ._io import labels_layer_data
    from . import session_for

    if viewer is None:
        viewer = napari.Viewer(title="NEMESIS: superpatches of a CT")
    if size is not None:
        viewer.window.resize(*size)
    session = session_for(viewer)
    session.show_widgets()
    if scan is None:
        from ..data import read_labels
        from ..sample_data import sample_btcv_labels_path, sample_ct_path

        session.open_scan(sample_ct_path(), wait=True)
        volume = session.scan.prepared.volume
        data, kwargs, _kind = labels_layer_data(volume, read_labels(sample_btcv_labels_path(), volume),
                                                name="organs (BTCV labels)", scheme="btcv")
        kwargs["visible"] = False

        def add_labels() -> None:  # a layer costs a turn of its own, as the scan's layers do
            session.scene.insert(new_layer("labels", data, **kwargs))  # under the grid's overlays

        session.scene.turns.step("demo:labels", add_labels)
        session.scene.settle()
    else:
        session.open_scan(scan, wait=True)
    _settle(viewer)
    viewer.reset_view(layers=[session.layers["scan"]])
    if probabilities:
        if not wait:  # when they arrive: the liver's superpatch selected, its slice shown

            def _focus(result) -> None:
                if result is not None:
                    session.events.probabilities.disconnect(_focus)
                    focus_on_organ(session, "liver")

            session.events.probabilities.connect(_focus)
        session.run_probabilities(wait=wait)
        if wait:
            focus_on_organ(session, "liver")
    return session


def focus_on_organ(session, organ: str = "liver") -> int | None:
    """Select the superpatch most likely to hold ``organ``, show its heatmap, move the axial
    slice to the organ's centre (from the label map if one is open, else the superpatch's)."""
    result = session.probabilities
    if result is None or organ not in result.organs:
        return None
    k = result.organs.index(organ)
    ctx = session.scan
    centre = _organ_centre_world(session, organ)
    index = None if centre is None else L.superpatch_at(ctx.grid_world, ctx.grid.grid_shape, centre)
    if index is None:
        index = int(np.argmax(result.values[:, k]))
        centre = ctx.box_centre_world(index)
    session.select(index)
    for name in result.organs:
        session.set_organ_visible(name, name == organ)
    _settle(session.viewer)
    session.viewer.reset_view(layers=[session.layers["scan"]])
    session.scene.centre_on(centre, camera=False)
    return index


def _organ_centre_world(session, organ: str):
    from ..data import ORGANS
    from ._io import layer_world_matrix

    ids = {o.name: o.btcv_id for o in ORGANS}
    for layer in session.viewer.layers:
        if layer._type_string == "labels" and layer.metadata.get("label_scheme") == "btcv" and organ in ids:
            where = np.argwhere(np.asarray(layer.data) == ids[organ])
            if len(where):
                c = where.mean(axis=0)
                m = layer_world_matrix(layer)
                return m[:3, :3] @ c + m[:3, 3]
    return None


# ---- screenshots -------------------------------------------------------------------------------
def _settle(viewer, rounds: int = 5) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()


def save_window(viewer, path: Path, canvas_only: bool = False) -> Path:
    """A screenshot of the shown window (or its canvas) as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _settle(viewer)
    viewer.screenshot(str(path), canvas_only=canvas_only)
    return path


def _raise_dock(session, name: str) -> None:
    widget = session.widgets.get(name)
    dock = widget.parent() if widget is not None else None
    while dock is not None and not hasattr(dock, "raise_"):
        dock = dock.parent()
    if dock is not None:
        dock.show()
        dock.raise_()


def _only(session, roles) -> dict:
    """Show only these roles (plus nothing else the session owns); returns what was visible."""
    before = {}
    for layer in session.viewer.layers:
        before[layer] = layer.visible
        layer.visible = layer.metadata.get("nemesis_role", "scan" if layer is session.layers.get("scan")
                                           else None) in roles
    return before


def _restore(before: dict) -> None:
    for layer, visible in before.items():
        layer.visible = visible


def screenshot_tour(session, out: Path, strategy: str = "dual", ratio: float = 0.75, noise: float = 0.03,
                    seed: int = 0) -> dict[str, Path]:
    """Run the reconstruction and the attention view and save the documentation's screenshots."""
    out = Path(out)
    viewer = session.viewer
    shots: dict[str, Path] = {}

    # 1. 2D: the grid over an axial slice through the liver, the liver heatmap, the bars
    focus_on_organ(session, "liver")
    _raise_dock(session, "Organ probabilities")
    shots["2d_grid_heatmap"] = save_window(viewer, out / "viewer_2d_grid_liver.png")

    # 2. the whole scan reconstructed; input, masked input, reconstruction, error side by side
    session.run_reconstruction(strategy, ratio, noise, seed, scope="scan", wait=True)
    for organ in session.probabilities.organs if session.probabilities else ():
        session.set_organ_visible(organ, False)
    panels = []
    for title, roles in (("input (noisy, sigma 0.03)", ("noisy", "grid_lines")),
                         (f"masked input ({strategy} {ratio:.2f})", ("masked", "grid_lines")),
                         ("reconstruction", ("reconstruction", "grid_lines")),
                         ("|error| (HU, 0-200)", ("abs_error", "grid_lines"))):
        before = _only(session, roles)
        _settle(viewer)
        panels.append((title, viewer.screenshot(canvas_only=True)))
        _restore(before)
    shots["reconstruction"] = _side_by_side(panels, out / "viewer_reconstruction.png", _metrics_title(session))

    # 3. the reconstruction-error map over the scan, with the widget's scores
    before = _only(session, ("scan", "error_map", "grid_lines", "selection", "grid"))
    _raise_dock(session, "Reconstruction")
    shots["error_map"] = save_window(viewer, out / "viewer_error_map.png")
    _restore(before)

    # 4. the attention of one patch of the selected superpatch (the liver's), both streams
    index = session.selected
    ctx = session.scan
    g = ctx.geometry.superpatch // ctx.geometry.patch
    pw = L.patch_world_affine(ctx.grid, index, ctx.geometry.patch)
    centre = _organ_centre_world(session, "liver")
    token = L.token_at(pw, g, centre) if centre is not None else None
    token = token or (g // 2, g // 2, g // 2)
    session.set_attention(True)
    session.show_attention(token, wait=True)
    token_world = pw[:3, :3] @ np.asarray(token, float) + pw[:3, 3]
    session.scene.centre_on(token_world)
    before = _only(session, ("scan", "attention_plane", "attention_axis", "grid_lines", "selection"))
    viewer.reset_view(layers=[session.layers["attention_plane"]])
    panels = []
    for title, order in (("axial: plane stream (orange)", (0, 1, 2)), ("coronal: axis stream (green)", (1, 0, 2))):
        viewer.dims.order = order
        viewer.reset_view(layers=[session.layers["attention_plane"]])
        session.scene.centre_on(token_world)
        _settle(viewer)
        panels.append((title, viewer.screenshot(canvas_only=True)))
    viewer.dims.order = (0, 1, 2)
    shots["attention"] = _side_by_side(
        panels, out / "viewer_attention.png",
        f"MATB attention of patch {token} (z y x) of superpatch {index}, last encoder block, mean over heads")
    _restore(before)
    session.set_attention(False)

    # 5. 3D: the wireframe of the boxes around the skeleton, the selected superpatch highlighted
    before = _only(session, ("scan", "grid_lines", "selection"))
    scan = session.layers["scan"]
    saved = (scan.rendering, tuple(scan.contrast_limits))
    scan.rendering = "iso"
    scan.iso_threshold = 200.0  # bone
    scan.contrast_limits = (-200.0, 1500.0)
    viewer.dims.ndisplay = 3
    _settle(viewer)
    viewer.reset_view()
    # from the front, below and to the patient's right, head up (lines seen end-on vanish in 3D)
    camera = viewer_camera(viewer)
    camera.set_view_direction((0.45, 1.0, 0.35), (1.0, 0.0, 0.0))
    camera.zoom *= 0.72
    _raise_dock(session, "Superpatch grid")
    shots["3d_wireframe"] = save_window(viewer, out / "viewer_3d_wireframe.png")
    viewer.dims.ndisplay = 2
    scan.rendering, scan.contrast_limits = saved
    _restore(before)
    focus_on_organ(session, "liver")

    # 6-7. labelling (the Labelling dock, the grid by label state), then a probe trained from the
    # labels in the background and its heatmaps (the Training dock's plot); in a throw-away project
    if session.scan is not None and _is_sample(session.scan.prepared.volume.source):
        shots.update(labelling_tour(session, out))
    return shots


def _is_sample(source) -> bool:
    from ..sample_data import sample_ct_path

    return source is not None and Path(str(source)).resolve() == sample_ct_path().resolve()


def label_and_train(session, fill_from=None, project=None, before_train=None, timeout_s: float = 900.0) -> dict:
    """The labelling workflow as a user does it in the two docks: the labels filled from a label
    map (``fill_from``: a file or an array on the scan's grid; None keeps the labels as they are),
    then "Train" (linear probe, in a child process); returns once the heatmaps show the new head.
    ``label_to_heatmap_seconds`` is the time from "Train" to those heatmaps. ``project``: the
    labelling project (default: the dock's); ``before_train()`` is called just before "Train"."""
    import time

    from .features.labelling.controller import MAP_NAME, labelling_for
    from .features.training.controller import TrainingConfig, training_for

    labelling = labelling_for(session)
    if project is not None:
        labelling.set_project(project, wait=True)
    labelling.wait()
    labelling.ensure_store()
    if labelling.store is None:
        raise RuntimeError(f"no labels open: {labelling.message}")
    if fill_from is not None:
        labelling.fill(fill_from, wait=True)
    training = training_for(session)
    config = TrainingConfig(mode="linear", device=session.settings.device, apply_when_done=True)
    if before_train is not None:
        before_train()
    t0 = time.perf_counter()
    run = training.start(config)
    training.wait(timeout_s)  # the run, then its head applied and the probabilities shown
    if run.status == "done" and run.head and (session.probabilities is None
                                              or session.probabilities.weights.probe != run.head):
        training.apply(run)  # a head near chance is not applied by itself: the workflow applies it
        training.wait(timeout_s)
    seconds = time.perf_counter() - t0
    if run.status != "done":
        raise RuntimeError(f"training from labels ended {run.status}: {run.message}")
    if session.probabilities is None or session.probabilities.weights.probe != run.head:
        raise RuntimeError(f"the heatmaps of the new head {run.head} were not shown")
    return {"label_to_heatmap_seconds": seconds, "run": run, "labelled": labelling.store.counts()["labelled"]}


def labelling_tour(session, out: Path, organ: str = "liver") -> dict[str, Path]:
    """Screenshots of the Labelling dock (grid coloured by label state) and of the Training dock
    after a probe trained from those labels updated the heatmaps. The labels go to a temporary
    project; the dock's own project is restored afterwards."""
    import tempfile

    from ..sample_data import sample_btcv_labels_path
    from .features.labelling.controller import MAP_NAME, labelling_for

    out = Path(out)
    viewer = session.viewer
    labelling = labelling_for(session)
    previous = labelling.project_dir
    weights = session.weights  # the tour's head lives in a temporary folder: the user's come back
    remembered = session.weights_remembered
    shots: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="nemesis-tour-") as tmp:
        try:
            labelling.set_project(Path(tmp) / "labelling-project", wait=True)
            labelling.fill(sample_btcv_labels_path(), wait=True)
            store = labelling.store
            index = focus_on_organ(session, organ)
            for name in session.probabilities.organs if session.probabilities else ():
                session.set_organ_visible(name, False)
            # a labelling session half-way: two superpatches still to do, one skipped, one corrected
            others = [i for i in range(store.n) if i != index]
            store.set(others[-1], (), "unlabelled")
            store.set(others[-2], (), "unlabelled")
            store.set(others[0], (), "skipped")
            session.select(index)
            labelling.act("toggle", store.organs.index("pancreas"))
            labelling.set_show_states(True)
            session.scene.settle()
            # what a labeller looks at: the scan, the grid and its label states (no earlier results)
            before = _only(session, ("scan", "grid", "grid_lines", "selection", f"map:{MAP_NAME}"))
            _raise_dock(session, "Labelling")
            _settle(viewer)
            shots["labelling"] = save_window(viewer, out / "viewer_labelling.png")
            _restore(before)

            result = label_and_train(session)
            focus_on_organ(session, organ)
            labelling.set_show_states(False)
            _raise_dock(session, "Training")
            widget = session.widgets.get("Training")
            if widget is not None:
                widget.plot._redraw()
            _settle(viewer, 10)
            shots["training"] = save_window(viewer, out / "viewer_training.png")
            session.label_to_heatmap_seconds = result["label_to_heatmap_seconds"]
        finally:
            labelling.set_project(previous, wait=True)
            if session.weights != weights:
                session.set_weights(weights.checkpoint, weights.probe, wait=True,
                                    remember=remembered)
            _raise_dock(session, "Superpatch grid")  # the tour leaves the user where a session starts
    return shots


def _metrics_title(session) -> str:
    run = session.reconstruction
    if run is None:
        return ""
    m = run.metrics()
    return (f"{run.strategy} mask {run.ratio:.2f}, noise {run.noise:g}, whole scan: PSNR masked "
            f"{m['psnr_masked']:.2f} dB (whole {m['psnr_all']:.2f}), SSIM masked {m['ssim_masked']:.3f} "
            f"(whole {m['ssim_all']:.3f})")


def _side_by_side(panels, path: Path, title: str = "") -> Path:
    """Canvas screenshots in a row with titles (matplotlib), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 4.9), dpi=110, layout="constrained", facecolor="black")
    for k, (name, image) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(_crop_black(np.asarray(image)))
        ax.set_title(name, color="white", fontsize=11)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), facecolor="black")
    return path


def _crop_black(image: np.ndarray, margin: int = 6) -> np.ndarray:
    """Trim the empty canvas around the picture."""
    rgb = image[..., :3].astype(np.int32)
    mask = rgb.max(axis=-1) > 8
    if not mask.any():
        return image
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - margin), min(image.shape[0], ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(image.shape[1], xs.max() + margin + 1)
    return image[y0:y1, x0:x1]
