"""napari reader, writers and sample data (npe2 commands). No torch and no Qt at import time.

The reader opens CT scans (NIfTI, NRRD, MetaImage, DICOM series folders) through
``data.read_volume`` and places them in napari's world frame, DICOM patient coordinates (LPS+ mm,
z y x; see :mod:`._layers`). A label map (integer ids that fit a known label scheme) opens as a
Labels layer whose ``features`` name each structure. Bad input never raises into napari: the
one-line ``NemesisInputError`` becomes a notification and nothing is added.

Layer ``metadata`` keeps what the writers need to put data back exactly where it came from:
``source``, ``original_affine`` (the file's voxel-to-RAS matrix), ``volume_meta`` and ``kind``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..data.formats import DICOM_FILE_SUFFIXES, NIFTI_SUFFIXES, VIEWER_SUFFIXES, scan_stem
from ..errors import NemesisInputError
from ._layers import AXIS_LABELS, DEFAULT_WINDOW, UNITS, WINDOW_PRESETS, ras_affine, transform_kwargs, \
    window_limits, world_affine

__all__ = [
    "SCAN_SUFFIXES",
    "get_reader",
    "read_scan",
    "scan_layer_data",
    "labels_layer_data",
    "volume_from_layer",
    "write_image",
    "write_labels",
    "sample_abdomen_ct",
    "sample_phantom",
]

SCAN_SUFFIXES = VIEWER_SUFFIXES  # the files napari hands this reader (data/formats.py; napari.yaml)
#: Largest id of a known label scheme (TotalSegmentator ``total``): integer maps up to it are labels.
_MAX_LABEL_ID = 117
_NULL_LAYER = [(None,)]  # napari's "read, but nothing to add" sentinel
_REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


# ---- reader ------------------------------------------------------------------------------------
def get_reader(path):
    """The reader for ``path`` if it is a scan this plugin opens, else None (napari tries others).

    Cheap checks only (names, a DICOM folder's first files): napari calls this for every path.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if p.is_dir():
        if _looks_like_dicom_folder(p) or _holds_nothing_readable(p):
            return read_scan
        return None
    if p.name.lower().endswith(SCAN_SUFFIXES):
        return read_scan
    return None


def _holds_nothing_readable(folder: Path, limit: int = 64) -> bool:
    """A folder with no image data for any reader (empty, or only text and the like): ours answers
    it with a message that says so, instead of napari's generic "no reader". Folders another reader
    may know (zarr stores, folders of images) are left to them."""
    if folder.name.lower().endswith((".zarr", ".n5")):
        return False
    try:
        entries = sorted(folder.iterdir())[:limit]
    except OSError:
        return True  # unreadable: ours says so
    for entry in entries:
        name = entry.name.lower()
        if entry.is_dir() or name in (".zarray", ".zgroup", ".zattrs", "zarr.json"):
            return False
        if name.endswith(SCAN_SUFFIXES) or name.endswith((".tif", ".tiff", ".png", ".jpg", ".jpeg", ".czi", ".lif",
                                                           ".nd2", ".h5", ".hdf5", ".npy", ".zip")):
            return False
    return True


def _looks_like_dicom_folder(folder: Path, limit: int = 32) -> bool:
    try:
        entries = sorted(folder.iterdir())[:limit]
    except OSError:
        return False
    for entry in entries:
        if not entry.is_file():
            continue
        if entry.suffix.lower() in DICOM_FILE_SUFFIXES:
            return True
        try:
            with open(entry, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def read_scan(path) -> list[tuple]:
    """npe2 reader: one Image layer (HU) or one Labels layer, in LPS mm world coordinates. Whatever
    goes wrong becomes a one-line notification naming the file (nothing raises into napari)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(str(path))
    try:
        if p.is_dir() and not _looks_like_dicom_folder(p):
            raise NemesisInputError(f"{p}: no DICOM series or scan file in this folder (NEMESIS opens NIfTI, NRRD, "
                                    "MetaImage files and DICOM series folders)")
        layer = _read_layer(p)
    except NemesisInputError as exc:
        _notify_error(" ".join(str(exc).split()))
        return _NULL_LAYER
    except MemoryError:
        _notify_error(f"{p}: not enough memory to read this scan")
        return _NULL_LAYER
    except OSError as exc:
        _notify_error(f"{p}: cannot read ({exc.strerror or type(exc).__name__})")
        return _NULL_LAYER
    _show_radiologically_later()
    return [layer]


def _show_radiologically_later() -> None:
    """Once napari has added the layer: head-up coronal and sagittal views, orientation markers
    and the scale bar in the viewer that opened it (even before any NEMESIS dock exists)."""
    try:
        import napari
        from qtpy.QtCore import QTimer
    except ImportError:  # pragma: no cover
        return
    viewer = napari.current_viewer()
    if viewer is None:
        return

    def install() -> None:
        from .features.radiology.controller import install_for_viewer

        try:
            install_for_viewer(viewer)
        except RuntimeError:  # the window closed meanwhile
            pass

    QTimer.singleShot(0, install)


def dicom_series(folder: Path) -> dict[str, int]:
    """The DICOM series of a folder: series UID -> number of slices (empty for anything else)."""
    from ..data.io import _dicom_series

    try:
        return {uid: len(files) for uid, files in _dicom_series(Path(folder)).items()}
    except Exception:  # not a DICOM folder, or unreadable: no chooser
        return {}


def open_series(session, layer, series_uid: str):
    """Open another series of the DICOM folder ``layer`` came from, as the active scan."""
    from ..data import read_volume

    source = layer.metadata.get("source")
    folder = Path(str(source)) if source else None
    if folder is not None and folder.is_file():
        folder = folder.parent
    if folder is None or not folder.is_dir():
        raise NemesisInputError(f"{layer.name}: not opened from a DICOM folder")
    for other in session.scan_layers():  # already open: switch to it
        if other.metadata.get("volume_meta", {}).get("series_uid") == series_uid and \
                other.metadata.get("source") == source:
            return session.use_scan_layer(other, wait=False)
    volume = read_volume(folder, series_uid=series_uid)
    data, kwargs, _kind = scan_layer_data(volume, name=f"{_stem(folder, 'CT')} [{series_uid[-12:]}]")
    kwargs["metadata"]["dicom_series"] = dict(layer.metadata.get("dicom_series") or {})
    kwargs["metadata"]["source"] = source
    session.viewer.add_image(data, **kwargs)  # becomes the active scan (the session sees it inserted)


def _read_layer(path: Path) -> tuple:
    from ..data import NemesisDataWarning, read_volume

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NemesisDataWarning)
        volume = read_volume(path)
    if _is_label_map(volume):
        return labels_layer_data(volume)
    for w in caught:  # a scan's data warnings (e.g. values that are not HU, several series) reach the user
        _notify_warning(" ".join(str(w.message).split()))
    data, kwargs, kind = scan_layer_data(volume)
    if path.is_dir():
        series = dicom_series(path)
        if len(series) > 1:  # the grid dock offers a chooser
            kwargs["metadata"]["dicom_series"] = series
    return data, kwargs, kind


def _is_label_map(volume) -> bool:
    meta = volume.meta
    stored = np.dtype(meta.get("stored_dtype", "float32"))
    if stored.kind not in "ui" or meta.get("rescaled"):
        return False
    lo, hi = meta.get("hu_min", 0.0), meta.get("hu_max", 0.0)
    return lo >= 0 and hi <= _MAX_LABEL_ID


def _metadata(volume, kind: str, **extra) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": str(volume.source) if volume.source is not None else None,
        "original_affine": np.asarray(volume.affine, dtype=np.float64).copy(),
        "canonical_affine": np.asarray(volume.canonical_affine, dtype=np.float64),
        "spacing_zyx": tuple(float(s) for s in volume.spacing),
        "volume_meta": dict(volume.meta),
        **extra,
    }


def _stem(source, fallback: str) -> str:
    if source is None:
        return fallback
    return scan_stem(Path(str(source)).name) or fallback


def scan_layer_data(volume, name: str | None = None) -> tuple:
    """``(data, kwargs, "image")`` for a CT ``Volume``: HU, abdomen window, LPS mm world transform."""
    level, width = WINDOW_PRESETS[DEFAULT_WINDOW]
    kwargs = {
        "name": name or _stem(volume.source, "CT"),
        "colormap": "gray",
        "contrast_limits": window_limits(level, width),
        "metadata": _metadata(volume, "scan"),
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        **transform_kwargs(world_affine(volume.canonical_affine)),
    }
    return np.asarray(volume.array, dtype=np.float32), kwargs, "image"


def labels_layer_data(volume, labels: np.ndarray | None = None, name: str | None = None,
                      scheme: str = "auto") -> tuple:
    """``(data, kwargs, "labels")`` for a label map on ``volume``'s grid, structures named in ``features``.

    ``labels`` defaults to ``volume.array`` (a label map read as a volume). The scheme (BTCV,
    TotalSegmentator, AMOS) is detected from the ids unless given.
    """
    from ..data.label_schemes import detect_label_scheme, label_names

    data = np.asarray(volume.array if labels is None else labels)
    top = int(data.max()) if data.size else 0
    data = data.astype(np.uint8 if top < 256 else np.int32)
    ids = np.flatnonzero(np.bincount(data.ravel())) if data.dtype == np.uint8 else np.unique(data)
    if scheme == "auto":
        scheme = detect_label_scheme(ids, source=volume.source)
    names = label_names(scheme)
    index = np.union1d([0], ids).astype(np.int64)
    features = {
        "index": index,
        "structure": np.array(["background" if i == 0 else names.get(int(i), f"label {int(i)}")
                               for i in index], dtype=object),
    }
    kwargs = {
        "name": name or _stem(volume.source, "labels"),
        "features": features,
        "opacity": 0.5,
        "metadata": _metadata(volume, "labels", label_scheme=scheme),
        "axis_labels": AXIS_LABELS,
        "units": UNITS,
        **transform_kwargs(world_affine(volume.canonical_affine)),
    }
    return data, kwargs, "labels"


# ---- from a layer back to a Volume ---------------------------------------------------------------
def layer_world_matrix(layer_or_meta) -> np.ndarray:
    """The 4x4 data -> world matrix of a napari layer (or of a writer's ``meta`` dict)."""
    from napari.utils.transforms import Affine

    if isinstance(layer_or_meta, dict):
        m = layer_or_meta
        physical = Affine(scale=m.get("scale"), translate=m.get("translate"), rotate=m.get("rotate"),
                          shear=m.get("shear"), ndim=len(m.get("scale")))
        affine = m.get("affine")
        affine = affine.affine_matrix if hasattr(affine, "affine_matrix") else np.asarray(affine)
        return affine @ physical.affine_matrix
    return np.asarray(layer_or_meta._data_to_world.affine_matrix, dtype=np.float64)


def volume_from_layer(data, metadata: dict | None, world: np.ndarray | None = None):
    """A ``data.Volume`` for a layer's 3D array: the file's own geometry when the layer came from
    this reader (exact round trip), else the layer's world transform (LPS mm z y x) as the affine."""
    from ..data import Volume

    data = np.asarray(data)
    if data.ndim != 3:
        raise NemesisInputError(f"a 3D volume is needed, this layer is {data.ndim}D {tuple(data.shape)}")
    md = metadata or {}
    original = md.get("original_affine")
    canonical = md.get("canonical_affine")
    if original is not None and canonical is not None:
        source = md.get("source")
        volume = Volume(array=data, spacing=tuple(md.get("spacing_zyx")), affine=np.asarray(original),
                        source=Path(source) if source else None, meta=dict(md.get("volume_meta") or {}))
        if np.allclose(volume.canonical_affine, canonical, atol=1e-6):  # same grid as when it was read
            return volume
    if world is None:
        raise NemesisInputError("this layer has no geometry: open the scan with the napari-nemesis reader")
    return _volume_from_world(data, world, md.get("source"))


def _volume_from_world(data: np.ndarray, world: np.ndarray, source=None):
    """A Volume for a layer array ``data`` placed by ``world`` (index z y x -> LPS mm z y x).

    The layer's axes are taken as a file's (x, y, z) voxel axes in reverse, so a layer that is not
    in the canonical orientation (e.g. a negative scale) is reoriented like any file.
    """
    from ..data import Volume
    from ..data.io import _file_to_canonical

    file_affine = ras_affine(world) @ _REVERSE
    array = np.ascontiguousarray(_file_to_canonical(np.asarray(data).transpose(2, 1, 0), file_affine))
    volume = Volume(array=array, spacing=(1.0, 1.0, 1.0), affine=file_affine,
                    source=Path(source) if source else None,
                    meta={"format": "napari-layer", "qform_code": 1, "sform_code": 1, "file_order": "xyz"})
    volume.spacing = tuple(float(v) for v in np.linalg.norm(volume.canonical_affine[:3, :3], axis=0))
    return volume


# ---- writers -------------------------------------------------------------------------------------
def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: an Image layer to NIfTI on its scan's original voxel grid and affine."""
    return [_write_layer(path, data, meta, labels=False)]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: a Labels layer to NIfTI (uint8, or int32 above 255) with the scan's affine."""
    return [_write_layer(path, data, meta, labels=True)]


def _write_layer(path: str, data: Any, meta: dict, labels: bool) -> str:
    from ..data import write_volume

    out = Path(path)
    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        out = out.with_name(out.name + ".nii.gz")
    array = np.asarray(data)
    md = meta.get("metadata") or {}
    reference = volume_from_layer(array, md, layer_world_matrix(meta))
    dtype = _labels_dtype(array) if labels else _image_dtype(array, reference.meta)
    if reference.meta.get("file_order") == "xyz":  # a layer made elsewhere: its own grid, as it is
        _write_plain_nifti(array.astype(dtype), out, ras_affine(layer_world_matrix(meta)) @ _REVERSE)
    else:
        write_volume(array, out, reference, dtype=dtype)
    return str(out)


def _labels_dtype(array: np.ndarray) -> np.dtype:
    if array.size and int(array.min()) < 0:
        raise NemesisInputError("labels with negative ids cannot be written as a label map")
    top = int(array.max()) if array.size else 0
    return np.dtype(np.uint8 if top < 256 else np.int32)


def _image_dtype(array: np.ndarray, volume_meta: dict) -> np.dtype:
    """The file's stored integer type when the values still fit it exactly, else float32."""
    stored = volume_meta.get("stored_dtype")
    if stored and not volume_meta.get("rescaled"):
        dt = np.dtype(stored)
        if dt.kind in "ui" and array.size:
            info = np.iinfo(dt)
            lo, hi = float(np.min(array)), float(np.max(array))
            if info.min <= lo and hi <= info.max and np.array_equal(array, np.round(array)):
                return dt
    return np.dtype(np.float32)


def _write_plain_nifti(array_zyx: np.ndarray, path: Path, affine_xyz: np.ndarray) -> None:
    import nibabel as nib

    from ..atomic import atomic_path

    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine_xyz)
    img.set_qform(affine_xyz, code=1)
    img.set_sform(affine_xyz, code=1)
    img.header.set_xyzt_units("mm")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        nib.save(img, str(tmp))


# ---- sample data ---------------------------------------------------------------------------------
def sample_abdomen_ct() -> list[tuple]:
    """The real abdominal CT shipped with the package and its 8 BTCV organ labels (CC BY 4.0)."""
    from ..data import read_labels, read_volume
    from ..sample_data import ATTRIBUTION, sample_btcv_labels_path, sample_ct_path

    volume = read_volume(sample_ct_path())
    image = scan_layer_data(volume, name="abdomen CT")
    image[1]["metadata"]["attribution"] = ATTRIBUTION
    labels = labels_layer_data(volume, read_labels(sample_btcv_labels_path(), volume), name="organs (BTCV)",
                               scheme="btcv")
    labels[1]["metadata"]["source"] = str(sample_btcv_labels_path())
    labels[1]["visible"] = False
    return [image, labels]


def sample_phantom() -> list[tuple]:
    """A generated abdominal phantom (seed 0) with its organ labels: no file needed."""
    from ..data import volume_from_array
    from ..data.phantom import make_phantom

    image, labels, spacing, affine = make_phantom(seed=0, case_index=0, size="small")
    volume = volume_from_array(image.astype(np.float32), spacing, canonical_affine=affine)
    volume.meta.update({"format": "phantom", "stored_dtype": "int16", "rescaled": False,
                        "hu_min": float(image.min()), "hu_max": float(image.max())})
    scan = scan_layer_data(volume, name="phantom CT")
    lab = labels_layer_data(volume, labels, name="phantom organs (BTCV)", scheme="btcv")
    lab[1]["visible"] = False
    return [scan, lab]


# ---- notifications (napari imported only when there is something to say) -----------------------
def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # pragma: no cover - napari is a dependency
        raise NemesisInputError(message) from None
    show_error(message)


def _notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def same_file(a, b) -> bool:
    """Whether two paths (str, Path or None) name the same file, after resolving links and ``..``."""
    if not a or not b:
        return False
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return str(a) == str(b)
