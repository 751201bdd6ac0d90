"""The napari plugin in a real viewer (pytest-qt + napari's make_napari_viewer, Xvfb via pytest-xvfb).

One tiny model (32^3 superpatches, 8^3 patches, one block) and a small synthetic scan keep these
fast; the session is driven through the same calls the buttons make.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.gui

SUPERPATCH, PATCH = 32, 8


def _lps_zyx_from_ras(ras_xyz) -> np.ndarray:
    ras = np.asarray(ras_xyz, dtype=np.float64)
    return np.array([ras[2], -ras[1], -ras[0]])


def _unique_volume(shape_xyz) -> np.ndarray:
    """int16 voxels, all different: a voxel's value finds it in any orientation."""
    n = int(np.prod(shape_xyz))
    return (np.arange(n, dtype=np.int32) - 1000).reshape(shape_xyz).astype(np.int16)


def _world_of_preprocessed(session, index_zyx) -> np.ndarray:
    """World (LPS z y x mm) of a preprocessed voxel index of the session's scan."""
    from napari_nemesis.viewer._layers import preprocessed_world_affine

    m = preprocessed_world_affine(session.scan.prepared.pre)
    return m[:3, :3] @ np.asarray(index_zyx, dtype=float) + m[:3, 3]


def _value_at(layer, world_point):
    """The layer's voxel value at a world point (what napari shows there, in any slice)."""
    idx = np.floor(np.asarray(layer.world_to_data(world_point), dtype=float) + 0.5).astype(int)
    assert all(0 <= i < s for i, s in zip(idx, layer.data.shape)), (idx, layer.data.shape)
    return layer.data[tuple(idx)]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return make_tiny_weights(tmp_path_factory.mktemp("weights"))


def make_tiny_weights(folder: Path) -> tuple[str, str]:
    """A tiny checkpoint and a probe head made for its encoder (8 organs)."""
    import torch

    from napari_nemesis.data import ORGAN_NAMES
    from napari_nemesis.model import build_model, save_checkpoint
    from napari_nemesis.train.probe import ProbeHead, probe_metadata, save_probe

    torch.manual_seed(0)
    model = build_model("tiny", superpatch=SUPERPATCH, patch=PATCH, depth=1)
    ckpt = save_checkpoint(model, folder / "tiny.safetensors")
    head = ProbeHead(model.cfg.embed_dim, len(ORGAN_NAMES))
    probe = save_probe(head, folder / "probe.safetensors",
                       probe_metadata(model, (2.0, 1.5, 1.5), ORGAN_NAMES, checkpoint=ckpt))
    return str(ckpt), str(probe)


def _scan_volume():
    """A small axis-aligned CT-like volume: 30 x 40 x 50 voxels of 3 x 2 x 2 mm -> 2 x 2 x 3 superpatches."""
    from napari_nemesis.data import volume_from_array

    z, y, x = np.meshgrid(np.arange(30), np.arange(40), np.arange(50), indexing="ij")
    body = ((y - 20) ** 2 / 18**2 + (x - 25) ** 2 / 22**2) < 1
    hu = np.where(body, 40 + 30 * np.sin(z / 4.0) + 20 * np.cos(x / 5.0), -1000).astype(np.float32)
    vol = volume_from_array(hu, (3.0, 2.0, 2.0), (12.0, -30.0, 40.0))
    vol.source = Path("synthetic_ct.nii.gz")
    return vol


@pytest.fixture
def session(make_napari_viewer, tiny_weights):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer()
    s = launch(viewer=viewer, widgets=False)
    s.set_weights(*tiny_weights, wait=True)
    s.open_scan(_scan_volume(), wait=True)
    return s


# ---- reader, writers -------------------------------------------------------------------------------
def _write_formats(folder: Path) -> dict[str, tuple[Path, object]]:
    """The same kind of scan as NIfTI (RAS), NRRD, a DICOM folder and an oblique LPS MetaImage.

    Each entry: path, and a function file-voxel-index (i, j, k) -> expected LPS (x, y, z) mm
    computed with the file's own library (nibabel or SimpleITK), never with our code."""
    from test_data_io import _write_dicom_series

    out = {}
    data = _unique_volume((9, 8, 7))  # (i, j, k) = (x, y, z) of the file
    affine = np.array([[-1.5, 0, 0, 20.0], [0, 1.25, 0, -40.0], [0, 0, 3.0, 7.0], [0, 0, 0, 1]])  # LAS
    nii = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(nii))
    out["nifti"] = (nii, lambda ijk: np.array([-1, -1, 1]) * (affine[:3, :3] @ ijk + affine[:3, 3]), data)

    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # sitk arrays are (k, j, i)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 5.0, 30.0))
    nrrd = folder / "scan.nrrd"
    sitk.WriteImage(img, str(nrrd))
    out["nrrd"] = (nrrd, lambda ijk, im=img: np.array(im.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in ijk])), data)

    t = np.deg2rad(10.0)
    oblique = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    oblique.SetSpacing((1.1, 0.7, 2.0))
    oblique.SetOrigin((3.0, -4.0, 50.0))
    oblique.SetDirection((np.cos(t), -np.sin(t), 0.0, np.sin(t), np.cos(t), 0.0, 0.0, 0.0, -1.0))
    mha = folder / "oblique.mha"
    sitk.WriteImage(oblique, str(mha))
    out["oblique_lps_mha"] = (mha, lambda ijk, im=oblique: np.array(im.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in ijk])), data)

    dicom_zyx = _unique_volume((6, 10, 12))  # the helper writes (z, y, x) LPS slices
    origin = (-30.0, 12.0, 100.0)
    _write_dicom_series(dicom_zyx, (2.5, 0.75, 0.6), origin, folder / "dicom", "1.2.826.0.1.3680043.8.498.901")
    out["dicom_folder"] = (folder / "dicom", lambda ijk: np.array(origin) + np.array([0.6, 0.75, 2.5]) * ijk,
                           dicom_zyx.transpose(2, 1, 0))
    return out


def test_reader_places_voxels_at_their_lps_position(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    for kind, (path, lps_of, file_data) in _write_formats(tmp_path).items():
        layers = viewer.open(str(path), plugin="napari-nemesis")
        assert len(layers) == 1, kind
        layer = layers[0]
        assert layer._type_string == "image" and layer.data.ndim == 3, kind
        assert tuple(layer.contrast_limits) == (-160.0, 240.0)
        assert layer.metadata["kind"] == "scan" and Path(layer.metadata["source"]) == Path(path)
        assert layer.metadata["original_affine"].shape == (4, 4)
        rng = np.random.default_rng(0)
        for _ in range(6):
            c = tuple(int(rng.integers(0, s)) for s in layer.data.shape)
            value = layer.data[c]
            ijk = np.argwhere(file_data == value)
            assert len(ijk) == 1, kind
            expected_lps = lps_of(ijk[0].astype(float))
            world = np.asarray(layer.data_to_world(c), dtype=float)
            assert world == pytest.approx(expected_lps[::-1], abs=1e-4), kind


def test_writer_round_trip_is_exact(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = _unique_volume((9, 8, 7))
    affine = np.array([[0, 0, 2.0, 1.0], [-1.2, 0, 0, 2.0], [0, 1.7, 0, 3.0], [0, 0, 0, 1]])  # a rotated order
    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))
    labels = np.zeros((9, 8, 7), np.uint8)
    labels[2:5, 1:4, 3:6] = 6
    labels[6:, :2, :2] = 1
    lab_src = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(lab_src))
    for path, original in ((src, data), (lab_src, labels)):
        layer = viewer.open(str(path), plugin="napari-nemesis")[0]
        out = tmp_path / f"out_{path.name}"
        layer.save(str(out), plugin="napari-nemesis")
        back = nib.load(str(out))
        assert np.array_equal(back.affine, nib.load(str(path)).affine)  # the file's own (float32) affine
        assert back.get_data_dtype() == original.dtype
        assert np.array_equal(np.asarray(back.dataobj), original)
    lab_layer = viewer.layers[-1]
    assert lab_layer._type_string == "labels"
    names = dict(zip(lab_layer.features["index"], lab_layer.features["structure"]))
    assert names == {0: "background", 1: "spleen", 6: "liver"}


def test_bad_file_notifies_and_viewer_stays_usable(make_napari_viewer, tmp_path, monkeypatch):
    import napari_nemesis.viewer._io as io

    shown = []
    monkeypatch.setattr(io, "_notify_error", shown.append)
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 this is not a scan")
    assert viewer.open(str(bad), plugin="napari-nemesis") == []
    assert len(shown) == 1 and shown[0].startswith(str(bad)) and "\n" not in shown[0]
    assert len(viewer.layers) == 0
    good = tmp_path / "ok.nii.gz"
    nib.save(nib.Nifti1Image(_unique_volume((5, 6, 7)), np.eye(4)), str(good))
    assert len(viewer.open(str(good), plugin="napari-nemesis")) == 1


def test_sample_data_is_packaged_with_attribution():
    from napari_nemesis.sample_data import ATTRIBUTION, sample_ct_path
    from napari_nemesis.viewer._io import sample_abdomen_ct

    readme = (sample_ct_path().parent / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "Wasserthal" in readme and "TotalSegmentator" in ATTRIBUTION
    (image, kwargs, kind), (labels, lkw, lkind) = sample_abdomen_ct()
    assert kind == "image" and lkind == "labels" and image.shape == labels.shape == (112, 101, 122)
    assert set(lkw["features"]["structure"]) >= {"liver", "spleen", "aorta"}


# ---- grid and selection --------------------------------------------------------------------------
def test_grid_layers_match_the_core_grid_and_clicks_select(session):
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    grid = session.scan.grid
    assert grid.superpatch == SUPERPATCH and grid.n == 12
    layer = session.layers["grid"]
    assert layer.data.size <= 8 * grid.n * (SUPERPATCH // 2) ** 3  # a coarse picture of the ids, no scan copy
    assert session.layers["grid_lines"].data.shape[0] < 100
    for i in range(grid.n):  # each box's world corners hold its id (just inside them)
        box = grid.box(i, clip=True)
        for corner in (np.asarray(box.start) + 0.25, np.asarray(box.stop) - 1.25):
            world = _world_of_preprocessed(session, corner)
            assert _value_at(layer, world) == i + 1
    # the grid ends where the scan does (the sliders cover the scan, not the padded grid)
    scan_hi = np.asarray(session.layers["scan"].extent.world[1])
    for role in ("grid", "grid_lines"):
        assert np.all(np.asarray(session.layers[role].extent.world[1]) <= scan_hi + 3.0), role

    viewer = session.viewer
    target = 7
    ras = grid.box_world(target)
    centre = np.array([ras[:, 2].mean(), -ras[:, 1].mean(), -ras[:, 0].mean()])

    class Event:  # what napari hands a mouse callback
        def __init__(self, kind, position, pos, view_direction=None, displayed=(1, 2)):
            self.type, self.position, self.pos = kind, tuple(position), np.asarray(pos, float)
            self.view_direction, self.dims_displayed = view_direction, list(displayed)
            self.button, self.modifiers, self.handled = 1, [], False

    viewer.layers.selection.active = session.layers["grid"]
    mouse_press_callbacks(viewer, Event("mouse_press", centre, (100, 100)))
    mouse_release_callbacks(viewer, Event("mouse_release", centre, (101, 100)))
    assert session.selected == target
    assert session.layers["grid"].selected_label == target + 1
    # a drag is a pan, not a click
    other = np.array([ras[:, 2].min() + 1, -ras[:, 1].mean(), -ras[:, 0].mean()])
    mouse_press_callbacks(viewer, Event("mouse_press", other, (100, 100)))
    mouse_release_callbacks(viewer, Event("mouse_release", other, (160, 100)))
    assert session.selected == target
    # 3D: the ray from the front (anterior, -y) enters the superpatch with grid y = 0
    gz, gy, gx = grid.grid_index(target)
    mouse_press_callbacks(viewer, Event("mouse_press", centre, (5, 5), (0.0, 1.0, 0.0), (0, 1, 2)))
    mouse_release_callbacks(viewer, Event("mouse_release", centre, (5, 5), (0.0, 1.0, 0.0), (0, 1, 2)))
    assert grid.grid_index(session.selected) == (gz, 0, gx)
    # keyboard: Shift+Right moves one superpatch toward the patient's left (+x), clamped at the edge
    session.select(0)
    session.move_selection(2, 1)
    assert session.selected == 1
    session.move_selection(2, -5)
    assert session.selected == 0
    with pytest.raises(Exception, match="out of range"):
        session.select(grid.n)


# ---- organ probabilities -----------------------------------------------------------------------------
def test_heatmaps_hold_infer_scan_probabilities(session, tiny_weights):
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.train.inference import infer_scan
    from napari_nemesis.train.probe import load_probe

    result = session.run_probabilities(wait=True)
    ckpt, probe = tiny_weights
    head, meta = load_probe(probe)
    expected = infer_scan(session.scan.prepared.volume, load_checkpoint(ckpt), head, meta["organs"],
                          spacing_zyx=(2.0, 1.5, 1.5)).probabilities
    assert np.allclose(result.values, expected, atol=1e-6)
    # how far to trust them travels with them (train.trust): the head's recorded score, the scan's warnings
    from napari_nemesis.train.trust import trust_report

    trust = trust_report(session.scan.prepared.volume, meta, (2.0, 1.5, 1.5), load_checkpoint(ckpt).cfg.superpatch)
    assert (result.auroc, result.auroc_on, list(result.warnings)) == (
        trust["head_held_out_auroc"], trust["head_held_out_on"], trust["warnings"])
    # only the shown organ gets a layer at once; ticking another makes its layer
    assert set(session.scene.roles_with_prefix("prob:")) == {"prob:liver"}
    for organ in result.organs:
        session.set_organ_visible(organ, True)
    grid = session.scan.grid
    for k, organ in enumerate(result.organs):
        layer = session.layers[f"prob:{organ}"]
        for i in range(grid.n):
            ras = grid.box_world(i)
            # a point inside the box, off-centre, in world LPS mm
            point = np.array([ras[:, 2].min() + 3, -ras[:, 1].max() + 4, -ras[:, 0].max() + 5])
            assert _value_at(layer, point) == pytest.approx(expected[i, k], abs=1e-6)
    session.set_organ_visible("aorta", False)
    assert session.layers["prob:liver"].visible and not session.layers["prob:aorta"].visible
    features = session.layers["grid"].features
    assert features["P(liver)"].iloc[1:].to_numpy() == pytest.approx(expected[:, result.organs.index("liver")])
    # what a later Labelling widget uses: a column shown on hover and a map over the grid
    states = np.arange(grid.n) % 3
    session.set_grid_column("label state", states)
    session.show_grid_map("label state", states / 2.0)
    session.scene.flush()
    assert session.layers["grid"].features["label state"].iloc[1:].to_numpy() == pytest.approx(states)
    centre = session.scan.box_centre_world(4)
    assert _value_at(session.layers["map:label state"], centre) == pytest.approx(states[4] / 2.0)


def test_mismatched_probe_is_refused_with_a_notification(session, tmp_path, monkeypatch):
    import napari_nemesis.viewer._workers as workers
    from napari_nemesis.model import build_model, save_checkpoint

    shown = []
    monkeypatch.setattr(workers, "_notify_error", shown.append)
    other = save_checkpoint(build_model("tiny", superpatch=SUPERPATCH, patch=PATCH, depth=1), tmp_path / "other.st")
    before = session.weights
    with pytest.raises(Exception, match="trained on encoder"):
        session.set_weights(str(other), before.probe, wait=True)
    assert len(shown) == 1 and "\n" not in shown[0]
    assert session.weights == before  # nothing changed


def test_remembered_weights_deleted_since_fall_back_to_the_bundled_ones(make_napari_viewer, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    from napari_nemesis.viewer import launch
    from napari_nemesis.viewer._settings import Settings, save_settings

    gone = tmp_path / "deleted-run" / "probe.safetensors"
    save_settings(Settings(device="cpu", probe=str(gone)))
    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    session = launch(viewer=make_napari_viewer(), widgets=False)
    assert (session.weights.checkpoint, session.weights.probe) == (None, None)
    assert session.settings.device == "cpu"  # the rest of the settings kept
    assert len(shown) == 1 and shown[0].startswith(str(gone)) and "\n" not in shown[0]


# ---- reconstruction ------------------------------------------------------------------------------------
def test_reconstruction_layers_align_update_in_place_and_cancel(session, qtbot, tmp_path):
    from napari_nemesis.data import HU_WINDOW
    from napari_nemesis.train.inference import to_hu
    from napari_nemesis.train.scan import iter_reconstruction

    ctx = session.scan
    pre = ctx.prepared.pre
    session.update_settings(batch=1)
    session.run_reconstruction("plane", 0.75, 0.03, 1, scope="scan", wait=True)
    run = session.reconstruction
    assert run.done == run.total == ctx.n and session.runs["reconstruction"].status == "done"
    layers = {r: session.layers[r] for r in ("noisy", "masked", "reconstruction", "abs_error", "error_map")}
    recon = layers["reconstruction"]
    assert recon.data.shape == pre.shape
    ras = pre.affine @ np.array([5.0, 6.0, 7.0, 1.0])  # preprocessed voxel (5, 6, 7) in world
    assert np.asarray(recon.data_to_world((5, 6, 7))) == pytest.approx(_lps_zyx_from_ras(ras[:3]), abs=1e-6)
    # the layers hold what the core computes for a superpatch, in HU
    model = session.models.model(session.weights.checkpoint)
    item = next(iter_reconstruction(ctx.prepared, model, "plane", 0.75, 0.03, 1, indices=[5]))
    assert np.allclose(recon.data[item.box.slices], to_hu(item.recon), atol=1e-3)
    masked = layers["masked"].data[item.box.slices]
    assert np.all(masked[item.masked_voxels] == HU_WINDOW[0])  # masked patches blanked
    m = run.metrics()
    assert m["psnr_masked"] is not None and m["ssim_all"] is not None
    # the error map: one value per superpatch, the masked-patch RMSE in HU
    err = layers["error_map"]
    expected = np.sqrt(item.metrics["mse_masked"]) * (HU_WINDOW[1] - HU_WINDOW[0])
    assert _value_at(err, ctx.box_centre_world(5)) == pytest.approx(expected, rel=1e-5)
    assert not err.visible and recon.visible  # the error map never covers the reconstruction by itself

    # re-running updates the same layers in place
    before = recon.data.copy()
    recon.contrast_limits = (-100.0, 100.0)
    session.run_reconstruction("axis", 0.5, 0.0, 2, scope="scan", wait=True)
    assert all(session.layers[r] is layer for r, layer in layers.items())
    assert not np.array_equal(recon.data, before)
    assert tuple(recon.contrast_limits) == (-100.0, 100.0)

    # a reconstruction layer saved as NIfTI keeps its (model-spacing) grid and world position
    from napari_nemesis.data import read_volume

    saved = recon.save(str(tmp_path / "recon.nii.gz"), plugin="napari-nemesis")
    back = read_volume(saved[0])
    assert np.allclose(back.array, recon.data, atol=1e-3)
    lps = _lps_zyx_from_ras(back.voxel_to_world(np.array([5.0, 6.0, 7.0])))
    assert lps == pytest.approx(np.asarray(recon.data_to_world((5, 6, 7))), abs=1e-3)

    # the selected superpatch alone: layers shrink to its box, placed where it is
    session.select(5)
    session.run_reconstruction("plane", 0.75, 0.03, 1, scope="selected", wait=True)
    assert session.layers["reconstruction"] is recon and recon.data.shape == item.box.shape
    assert np.allclose(recon.data, to_hu(item.recon), atol=1e-3)  # same seed: same superpatch as in the scan
    start = np.asarray(item.box.start, dtype=float)
    ras = pre.affine @ np.append(start, 1.0)
    assert np.asarray(recon.data_to_world((0, 0, 0))) == pytest.approx(_lps_zyx_from_ras(ras[:3]), abs=1e-6)

    # Cancel: stop after the first superpatch arrives
    session.events.reconstruction.connect(lambda r: session.cancel("reconstruction") if r and r.done == 1 else None)
    job = session.run_reconstruction("dual", 0.75, 0.0, 3, scope="scan", wait=False)
    qtbot.waitUntil(lambda: job.finished, timeout=60000)
    assert session.runs["reconstruction"].status == "cancelled"
    assert 1 <= session.reconstruction.done < ctx.n


def test_attention_view_shows_the_two_streams(session):
    from napari_nemesis.viewer._layers import patch_world_affine

    grid = session.scan.grid
    session.select(4)
    token = (1, 2, 3)
    session.show_attention(token, wait=True)
    plane, axis = session.layers["attention_plane"], session.layers["attention_axis"]
    g = SUPERPATCH // PATCH
    assert plane.data.shape == axis.data.shape == (g, g, g)
    world = patch_world_affine(grid, 4, PATCH)
    for z in range(g):
        for y in range(g):
            for x in range(g):
                p = world[:3, :3] @ np.array([z, y, x], float) + world[:3, 3]
                vp, va = _value_at(plane, p), _value_at(axis, p)
                if z != token[0]:
                    assert vp == 0.0  # the plane stream stays in the query's slice
                if (y, x) != token[1:]:
                    assert va == 0.0  # the axis stream stays in the query's column
    assert plane.data[token[0]].sum() == pytest.approx(1.0, abs=1e-4)
    assert axis.data[:, token[1], token[2]].sum() == pytest.approx(1.0, abs=1e-4)
    assert session.attention.token_zyx == token and session.attention.index == 4


# ---- widgets --------------------------------------------------------------------------------------------
def test_widgets_drive_the_session(make_napari_viewer, tiny_weights, qtbot):
    from napari_nemesis.viewer import launch

    viewer = make_napari_viewer()
    session = launch(viewer=viewer, widgets=True)
    from napari_nemesis.viewer.features import DOCKS

    assert set(session.widgets) == set(DOCKS)  # every dock of the one list
    assert {"Superpatch grid", "Reconstruction", "Organ probabilities", "Labelling", "Training", "Project",
            "Triage"} <= set(session.widgets)
    session.set_weights(*tiny_weights, wait=True)
    session.open_scan(_scan_volume(), wait=True)
    probs = session.widgets["Organ probabilities"]
    probs.controls.run_button.click()
    qtbot.waitUntil(lambda: session.runs["probabilities"].status == "done", timeout=60000)
    assert probs.table.rowCount() == session.scan.n
    probs.table.cellClicked.emit(3, 0)
    assert session.selected == 3
    assert "superpatch 3" in session.widgets["Superpatch grid"].selection_info.text()
    rec = session.widgets["Reconstruction"]
    rec.scope.setCurrentText("selected superpatch")
    rec.controls.run_button.click()
    qtbot.waitUntil(lambda: session.runs["reconstruction"].status == "done", timeout=60000)
    assert "PSNR" in rec.metrics.text() and "cpu" in rec.device.used.text()
    session.widgets["Superpatch grid"].panels["radiology"].buttons["lung"].click()
    assert tuple(session.layers["scan"].contrast_limits) == (-1350.0, 150.0)
    assert tuple(session.layers["reconstruction"].contrast_limits) == (-1350.0, 150.0)  # linked
