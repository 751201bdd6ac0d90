"""Reading and writing CT scans: NIfTI, DICOM series, NRRD, MHA/MHD.

Every reader returns a :class:`Volume` whose ``array`` is float32 Hounsfield units with axes
ordered ``(z, y, x)`` in one canonical voxel orientation, **LPS+** for every format:

* ``x`` (last axis) increases toward the patient's **L**\\ eft,
* ``y`` (middle axis) increases toward **P**\\ osterior,
* ``z`` (first axis) increases toward **S**\\ uperior.

Shown as a plain array (row 0 at the top), an axial slice therefore looks the way radiologists
read it: anterior at the top, patient right on the left of the screen.

World coordinates (``Volume.affine``, ``Volume.canonical_affine``) are NIfTI scanner coordinates,
RAS+ millimetres, whatever the file format (ITK/DICOM LPS world coordinates are converted).
``Volume.affine`` is the file's own voxel-to-world matrix, kept so that :func:`write_volume` can
put results back on the scan's original voxel grid; ``Volume.canonical_affine`` maps canonical
``(z, y, x)`` indices to the same world millimetres.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import NemesisInputError, NemesisLimitError
from .formats import METAIMAGE_SUFFIXES, NIFTI_SUFFIXES, reader_for_name

__all__ = [
    "CANONICAL_ORIENTATION",
    "MAX_VOXELS",
    "MAX_VOXELS_ENV",
    "EXTERNAL_DATA_ENV",
    "NemesisDataWarning",
    "max_voxels",
    "check_voxels",
    "check_ct",
    "Volume",
    "read_volume",
    "read_labels",
    "write_volume",
    "volume_from_array",
]

#: Canonical voxel orientation of ``Volume.array`` (axis codes of x, y, z; stored as (z, y, x)).
CANONICAL_ORIENTATION = "LPS"
#: Default limit on the voxels of a scan, raw or resampled (2 GiB as float32): anything larger is
#: refused before it is allocated. ``$NEMESIS_MAX_VOXELS`` (or ``nemesis --max-voxels``) changes it.
MAX_VOXELS = 2**29
#: The environment variable that overrides :data:`MAX_VOXELS`.
MAX_VOXELS_ENV = "NEMESIS_MAX_VOXELS"
#: Stored bytes a scan may declare, per voxel of the limit (float32's 4: a float64 scan may hold half).
_BYTES_PER_LIMIT_VOXEL = 4
#: Set to 1 to let an MHD/NHDR header name a data file outside its own folder.
EXTERNAL_DATA_ENV = "NEMESIS_ALLOW_EXTERNAL_DATA"


# (z, y, x) canonical index -> (x, y, z) index of the LPS-ordered array, homogeneous.
_ZYX_TO_XYZ = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class NemesisDataWarning(UserWarning):
    """Something about a scan looks wrong but reading can go on (e.g. values that are not HU)."""


# --------------------------------------------------------------------------------------------
# Size limits: every size is known before it is allocated
# --------------------------------------------------------------------------------------------


def max_voxels() -> int:
    """The voxel limit in force: ``$NEMESIS_MAX_VOXELS`` when set (e.g. ``2e9``), else :data:`MAX_VOXELS`."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return int(MAX_VOXELS)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 1:
        raise NemesisInputError(f"{MAX_VOXELS_ENV}={raw!r}: give a positive number of voxels (e.g. 2e9)")
    return int(value)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def check_voxels(what, shape, itemsize: int = 4, dtype_name: str | None = None) -> int:
    """Refuse (one-line :class:`NemesisLimitError`) an array of ``shape`` larger than the voxel
    limit, or whose ``itemsize``-byte voxels exceed the byte budget (4 bytes per voxel of the
    limit); returns the voxel count. Called with sizes from headers, before anything is read.
    ``what`` starts the message: ``"scan.nii: image"`` reads "scan.nii: image of N voxels ..."."""
    dims = [int(d) for d in shape]
    n = 1
    for d in dims:
        n *= max(d, 0)  # Python ints: no overflow whatever a header claims
    limit = max_voxels()
    desc = " x ".join(map(str, dims))
    kind = dtype_name or f"{int(itemsize)}-byte"
    if n > limit:
        raise NemesisLimitError(
            f"{what} of {n} voxels ({desc}; {_gib(n * itemsize)} as {kind}) is larger than the {limit} voxel limit "
            f"({_gib(limit * 4)} as float32); set {MAX_VOXELS_ENV} or nemesis --max-voxels to raise it")
    budget = limit * _BYTES_PER_LIMIT_VOXEL
    if n * int(itemsize) > budget:
        raise NemesisLimitError(
            f"{what} of {n} voxels ({desc}) of {kind} takes {_gib(n * itemsize)}, more than the {_gib(budget)} "
            f"byte limit ({limit} voxels x 4 bytes); set {MAX_VOXELS_ENV} or nemesis --max-voxels to raise it")
    return n


# --------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A CT scan in canonical orientation.

    Attributes:
        array: float32 HU, shape ``(z, y, x)``, canonical LPS+ voxel orientation.
        spacing: voxel size ``(z, y, x)`` in mm.
        affine: the file's original 4x4 voxel-to-world (RAS+ mm) matrix, for its original voxel
            order; used by :func:`write_volume`.
        source: the path the scan was read from (``None`` for arrays made in memory).
        meta: format, original orientation codes and shape, series UID, rescale, ...
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the file's own voxel axes, e.g. ``"RAS"`` (before reorienting)."""
        return _axcodes(self.affine)

    @property
    def canonical_affine(self) -> np.ndarray:
        """4x4 matrix mapping canonical ``(z, y, x)`` voxel indices to world RAS+ mm."""
        return _canonical_affine(self.affine, self.array.shape)

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """World RAS+ mm ``(..., 3)`` of canonical voxel indices ``(..., 3)`` in (z, y, x)."""
        zyx = np.asarray(zyx, dtype=np.float64)
        a = self.canonical_affine
        return zyx @ a[:3, :3].T + a[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Canonical ``(z, y, x)`` continuous voxel indices of world RAS+ points ``(..., 3)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.canonical_affine)
        return xyz @ inv[:3, :3].T + inv[:3, 3]


# --------------------------------------------------------------------------------------------
# Orientation helpers (nibabel's orientation arithmetic; nibabel is a dependency anyway)
# --------------------------------------------------------------------------------------------


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def _to_canonical_transform(affine: np.ndarray) -> np.ndarray:
    from nibabel import orientations as no

    return no.ornt_transform(no.io_orientation(affine), no.axcodes2ornt(tuple(CANONICAL_ORIENTATION)))


def _file_shape(affine: np.ndarray, canonical_shape_zyx: tuple[int, ...]) -> tuple[int, int, int]:
    """The file's voxel shape, given the canonical (z, y, x) shape."""
    from nibabel import orientations as no

    ornt = no.io_orientation(affine)
    # file axis a points along world axis ornt[a, 0] (0=x, 1=y, 2=z); canonical index is 2 - that
    return tuple(int(canonical_shape_zyx[2 - int(ornt[a, 0])]) for a in range(3))  # type: ignore


def _canonical_affine(affine: np.ndarray, canonical_shape_zyx: tuple[int, ...]) -> np.ndarray:
    from nibabel import orientations as no

    transform = _to_canonical_transform(affine)
    lps_affine = affine @ no.inv_ornt_aff(transform, _file_shape(affine, canonical_shape_zyx))
    return lps_affine @ _ZYX_TO_XYZ


def _file_to_canonical(data_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nibabel import orientations as no

    lps = no.apply_orientation(data_ijk, _to_canonical_transform(affine))
    return lps.transpose(2, 1, 0)


def _canonical_to_file(array_zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nibabel import orientations as no

    back = no.ornt_transform(no.axcodes2ornt(tuple(CANONICAL_ORIENTATION)), no.io_orientation(affine))
    return no.apply_orientation(np.asarray(array_zyx).transpose(2, 1, 0), back)


def _spacing_from(canonical_affine: np.ndarray) -> tuple[float, float, float]:
    norms = np.linalg.norm(canonical_affine[:3, :3], axis=0)
    return tuple(float(v) for v in norms)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    if path.is_dir():
        return "dicom"
    # by the formats table; an unknown name: let SimpleITK try (a failure becomes "not an image")
    return reader_for_name(path.name) or "itk"


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT scan into a canonical :class:`Volume` (float32 HU, (z, y, x), LPS+).

    ``path`` is a NIfTI file (``.nii``, ``.nii.gz``), an NRRD or MHA/MHD file, a directory holding
    a DICOM series, or one file of a DICOM series (its whole series is read). In a directory with
    several series the one with the most slices is read unless ``series_uid`` names another; the
    others are listed in a :class:`NemesisDataWarning`.

    Raises:
        NemesisInputError: one line naming the file and the problem (missing, corrupt, not an
            image, not 3D, empty, NaN/Inf, bad spacing, DICOM slices missing or mixed sizes, ...).
    """
    _check_nonempty(path, "scan")
    path = Path(path)
    data, affine, meta = _read_raw(path, series_uid=series_uid, what="scan")
    stored = np.dtype(meta["stored_dtype"])
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise NemesisInputError(f"{path}: {bad} voxel(s) are NaN or Inf")
        del finite
    vmin, vmax = float(np.min(data)), float(np.max(data))
    meta["hu_min"], meta["hu_max"] = vmin, vmax
    if stored.kind in "ui" and not meta.get("rescaled") and vmin >= 0:
        warnings.warn(
            f"{path}: integer voxels {vmin:g}..{vmax:g} with no rescale slope/intercept do not "
            "look like HU (a CT holds air near -1000); values are used as they are",
            NemesisDataWarning,
            stacklevel=2,
        )
    array = np.ascontiguousarray(_file_to_canonical(data, affine), dtype=np.float32)
    del data
    canonical = _canonical_affine(affine, array.shape)
    return Volume(
        array=array,
        spacing=_spacing_from(canonical),
        affine=affine,
        source=path,
        meta=meta,
    )


def read_labels(path: str | os.PathLike, reference: Volume) -> np.ndarray:
    """Read a label map for ``reference`` in the same canonical (z, y, x) orientation.

    The label map may be stored in another voxel order than the scan, but it must describe the
    same voxel grid in world space (shape and affine, to 0.01 mm / 1e-4). Values must be
    non-negative integers. Returns ``uint8`` when every label is below 256, else ``int32``.
    """
    _check_nonempty(path, "label map")
    path = Path(path)
    data, affine, _meta = _read_raw(path, series_uid=None, what="label map")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise NemesisInputError(f"{path}: label map holds NaN or Inf values")
        if not np.array_equal(data, np.round(data)):
            raise NemesisInputError(f"{path}: label map holds non-integer values")
    canonical = _file_to_canonical(data, affine)
    if canonical.shape != reference.array.shape:
        raise NemesisInputError(
            f"{path}: label map shape {tuple(canonical.shape)} (z, y, x) does not match its scan "
            f"{reference.shape}"
        )
    lab_aff = _canonical_affine(affine, canonical.shape)
    ref_aff = reference.canonical_affine
    if not np.allclose(lab_aff, ref_aff, rtol=1e-4, atol=1e-2):
        diff = float(np.max(np.abs(lab_aff - ref_aff)))
        raise NemesisInputError(
            f"{path}: label map affine does not match its scan (max difference {diff:.3g} mm)"
        )
    lo, hi = (float(np.min(canonical)), float(np.max(canonical))) if canonical.size else (0, 0)
    if lo < 0:
        raise NemesisInputError(f"{path}: label map holds negative labels (min {lo:g})")
    dtype = np.uint8 if hi < 256 else np.int32
    return np.ascontiguousarray(canonical, dtype=dtype)


def _check_nonempty(path, what: str) -> None:
    if isinstance(path, str) and not path.strip():
        raise NemesisInputError(f"empty {what} path {path!r}: give a file or a DICOM folder")


#: Most distinct values a label map holds (TotalSegmentator's 117 classes and background).
_LABEL_MAP_VALUES = 120


def check_ct(volume: Volume, what: str = "scan") -> Volume:
    """Refuse (one line) a volume read from a file that is a label map rather than a CT in HU:
    integer values from 0 (background) up to at most 255 with at most 120 distinct values, not
    rescaled. Whatever feeds the model calls this (a CT always holds air far below 0 HU)."""
    meta = volume.meta or {}
    if "stored_dtype" not in meta or meta.get("rescaled") or "hu_min" not in meta:
        return volume
    lo, hi = float(meta["hu_min"]), float(meta["hu_max"])
    if lo != 0 or hi > 255:
        return volume
    flat = volume.array.reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)]
    if not np.array_equal(sample, np.rint(sample)):
        return volume
    distinct = np.unique(sample)
    if distinct.size > _LABEL_MAP_VALUES:
        return volume
    name = volume.source if volume.source is not None else "the volume"
    raise NemesisInputError(
        f"{name}: looks like a label map ({distinct.size} distinct integer values {lo:g}..{hi:g}), not a CT in "
        f"HU (a CT holds air near -1000); give the CT as the {what}")


def _read_raw(path: Path, series_uid: str | None, what: str):
    """Return (data in file voxel order (i, j, k), RAS affine, meta)."""
    if not path.exists():
        raise NemesisInputError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except OSError as exc:
        raise NemesisInputError(f"{path}: cannot read the {what} ({_os_reason(exc)})") from None
    kind = _kind(path)
    try:
        if kind == "nifti":
            data, affine, meta = _read_nifti(path)
        elif kind in ("dicom", "dicom-file"):
            data, affine, meta = _read_dicom(path, series_uid)
        else:
            data, affine, meta = _read_itk(path)
    except MemoryError:
        raise NemesisLimitError(f"{path}: out of memory reading the {what}; lower {MAX_VOXELS_ENV} to refuse such "
                                "scans before reading") from None
    except OSError as exc:
        raise NemesisInputError(f"{path}: cannot read the {what} ({_os_reason(exc)})") from None
    _check_affine(path, affine)
    if data.size == 0:
        raise NemesisInputError(f"{path}: empty {what} (shape {tuple(data.shape)})")
    meta.setdefault("original_shape", tuple(int(s) for s in data.shape))
    meta["original_orientation"] = _axcodes(affine)
    return data, affine, meta


def _check_shape(path: Path, shape: tuple[int, ...], itemsize: int = 4,
                 dtype_name: str | None = None) -> tuple[int, int, int]:
    """Validate the number of axes and size *before* loading voxels; return the 3D shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise NemesisInputError(f"{path}: {len(shape)}D image {shape}, a 3D CT volume is needed")
    if len(shape) > 3:
        extra = shape[3:]
        if any(s != 1 for s in extra):
            raise NemesisInputError(
                f"{path}: {len(shape)}D image {shape}, a 3D CT volume is needed (extra axes are "
                "not singleton)"
            )
        shape = shape[:3]
    if any(s <= 0 for s in shape):
        raise NemesisInputError(f"{path}: empty image (shape {shape})")
    check_voxels(f"{path}: image", shape, itemsize, dtype_name)
    return shape  # type: ignore[return-value]


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)):
        raise NemesisInputError(f"{path}: the voxel-to-world matrix holds NaN or Inf")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(norms <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-12:
        raise NemesisInputError(
            f"{path}: non-positive voxel spacing {tuple(round(float(v), 6) for v in norms)} mm"
        )


def _read_nifti(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise NemesisInputError(f"{path}: cannot open ({exc.__class__.__name__})") from None
    except PermissionError as exc:
        raise NemesisInputError(f"{path}: cannot read the image ({_os_reason(exc)})") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise NemesisInputError(f"{path}: truncated or corrupt archive ({_short(exc)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises ImageFileError / HeaderDataError / OSError ...
        raise NemesisInputError(f"{path}: not a readable NIfTI image ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NemesisInputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    hdr = img.header
    stored = hdr.get_data_dtype()
    shape = _check_shape(path, img.shape, stored.itemsize, str(stored))
    raw_hdr = _raw_nifti_header(path, type(hdr))
    if raw_hdr is not None and int(raw_hdr["sform_code"]) == 0:
        # nibabel quietly turns zero pixdims into 1; without an sform they define the spacing
        pix = [float(v) for v in raw_hdr["pixdim"][1:4]]
        if any(not v > 0 for v in pix):
            raise NemesisInputError(f"{path}: non-positive voxel spacing {tuple(pix)} in the header")
    _check_nifti_layout(path, raw_hdr if raw_hdr is not None else hdr, img.shape, stored.itemsize)
    # the array proxy holds the header's scl_slope / scl_inter (the image header is reset)
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    rescaled = slope != 1.0 or inter != 0.0
    try:
        data = img.get_fdata(dtype=np.float32) if rescaled or hdr.get_data_dtype().kind == "f" \
            else np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise NemesisInputError(f"{path}: truncated or corrupt archive ({_short(exc)})") from None
    except (OSError, ValueError) as exc:
        raise NemesisInputError(f"{path}: truncated or corrupt image data ({_short(exc)})") from None
    data = np.asarray(data).reshape(shape)
    meta = {
        "format": "nifti",
        "stored_dtype": str(hdr.get_data_dtype()),
        "rescaled": bool(rescaled),
        "rescale": [slope, inter] if rescaled else None,
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
    }
    return data, np.asarray(img.affine, dtype=np.float64), meta


def _check_nifti_layout(path: Path, raw_hdr, shape, itemsize: int) -> None:
    """Before reading voxels: an uncompressed file must hold all the voxels its header declares,
    and a single-file NIfTI's voxels must start after the header (vox_offset 0 would read the
    header's own bytes as voxels)."""
    try:
        offset = float(raw_hdr["vox_offset"])
        header_size = int(raw_hdr["sizeof_hdr"])
        magic = bytes(raw_hdr["magic"]).rstrip(b"\0")
    except (KeyError, TypeError, ValueError):  # pragma: no cover - every NIfTI header has them
        return
    n_bytes = int(itemsize)
    for d in shape:
        n_bytes *= int(d)
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        start = max(int(offset) if np.isfinite(offset) else 0, header_size + 4)
        if size < start + n_bytes:
            raise NemesisInputError(
                f"{path}: truncated or corrupt image data (the header declares {n_bytes} bytes of voxels "
                f"from byte {start}, the file holds {size} bytes)")
    if magic in (b"n+1", b"n+2") and (not np.isfinite(offset) or offset < header_size + 4):
        raise NemesisInputError(
            f"{path}: header vox_offset {offset:g} lies inside the {header_size}-byte header (voxels of a "
            f".nii file start at byte {header_size + 4} or later); the header is corrupt")


def _raw_nifti_header(path: Path, header_class):
    """The header as stored (nibabel's loaded header has some fields repaired), or None."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as fobj:
            return header_class.from_fileobj(fobj, check=False)
    except Exception:  # pragma: no cover - the image itself loaded, so this is a nicety
        return None


def _itk_affine(image) -> np.ndarray:
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def _read_itk(path: Path):
    import SimpleITK as sitk

    _check_text_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NemesisInputError(f"{path}: not a readable image ({_short(exc)})") from None
    size = tuple(int(s) for s in reader.GetSize())
    try:
        itemsize = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()
        itemsize *= max(1, int(reader.GetNumberOfComponents()))
    except (RuntimeError, TypeError):  # pragma: no cover - an odd pixel type: count float32
        itemsize = 4
    shape = _check_shape(path, size, itemsize, sitk.GetPixelIDValueAsString(reader.GetPixelID()))
    if any(not (np.isfinite(float(s)) and float(s) > 0) for s in reader.GetSpacing()[:3]):
        raise NemesisInputError(
            f"{path}: non-positive voxel spacing {tuple(reader.GetSpacing())} in the header"
        )
    if reader.GetNumberOfComponents() != 1:
        raise NemesisInputError(
            f"{path}: {reader.GetNumberOfComponents()} components per voxel, a scalar CT is needed"
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise NemesisInputError(f"{path}: truncated or corrupt image data ({_short(exc)})") from None
    if image.GetDimension() > 3:
        extractor_size = list(image.GetSize()[:3]) + [0] * (image.GetDimension() - 3)
        image = sitk.Extract(image, extractor_size, [0] * image.GetDimension())
    arr = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    data = np.array(arr).transpose(2, 1, 0).reshape(shape)
    meta = {
        "format": path.suffix.lower().lstrip(".") or "itk",
        "stored_dtype": str(data.dtype),
        "rescaled": False,
    }
    return data, _itk_affine(image), meta

# ---- text headers (NRRD, MetaImage): checked before SimpleITK reads a byte of voxels ----------

_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
        "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
        "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
        "double"),
}
_NRRD_ITEMSIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_MET_ITEMSIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                 "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                 "MET_DOUBLE": 8}
_MAX_HEADER = 1 << 16


def _check_text_header(path: Path) -> None:
    """NRRD / NHDR / MHA / MHD: finite spacings, and a data file that holds image data of the
    declared size, inside the header's folder (``$NEMESIS_ALLOW_EXTERNAL_DATA=1`` allows others)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MAX_HEADER)
    except OSError as exc:
        raise NemesisInputError(f"{path}: cannot open ({_os_reason(exc)})") from None
    if head.startswith(b"NRRD"):
        _check_nrrd(path, head)
    elif path.name.lower().endswith(METAIMAGE_SUFFIXES) or b"ElementDataFile" in head:
        _check_metaimage(path, head)


def _numbers(path: Path, field_name: str, text: str) -> list[float]:
    out = []
    for tok in text.replace("(", " ").replace(")", " ").replace(",", " ").split():
        if tok.lower() == "none":
            continue
        try:
            v = float(tok)
        except ValueError:
            raise NemesisInputError(f"{path}: header field '{field_name}' holds {tok!r}, not a number") from None
        if not np.isfinite(v):
            raise NemesisInputError(f"{path}: header field '{field_name}' holds {tok} ({text.strip()}); "
                                    "a CT needs finite spacing and geometry")
        out.append(v)
    return out


def _data_file(path: Path, name: str, field_name: str) -> Path:
    """The data file a header names, refused when it escapes the header's folder or is no file."""
    if "%" in name or name.strip().upper() == "LIST":
        raise NemesisInputError(f"{path}: header field '{field_name}' names several data files ({name}); "
                                "only a single data file is read")
    data = Path(name)
    folder = path.parent.resolve()
    full = (data if data.is_absolute() else path.parent / data)
    allow = os.environ.get(EXTERNAL_DATA_ENV, "").strip() == "1"
    try:
        resolved = full.resolve()
    except (OSError, RuntimeError):  # pragma: no cover - a symlink loop
        raise NemesisInputError(f"{path}: data file {name} cannot be resolved") from None
    if not allow and folder not in resolved.parents:
        raise NemesisInputError(f"{path}: data file {name} lies outside the header's folder {folder}; move the "
                                f"header beside its data (or set {EXTERNAL_DATA_ENV}=1)")
    if not resolved.is_file():
        raise NemesisInputError(f"{path}: data file {name} is not a regular file" if resolved.exists()
                                else f"{path}: data file {name} does not exist")
    return resolved


def _check_data_size(path: Path, data: Path, skip: int, n_bytes: int, exact: bool) -> None:
    size = data.stat().st_size
    need = max(skip, 0) + n_bytes
    if size < need or (exact and skip >= 0 and size != need):
        where = "" if data == path.resolve() else f"data file {data.name}: "
        raise NemesisInputError(
            f"{path}: {where}{size} bytes, but the header declares {n_bytes} bytes of voxels"
            f"{f' after {skip} header bytes' if skip > 0 else ''}; not the image data of this header")


def _check_nrrd(path: Path, head: bytes) -> None:
    end = head.find(b"\n\n")
    end_crlf = head.find(b"\r\n\r\n")
    if end < 0 and end_crlf < 0:
        if len(head) >= _MAX_HEADER:
            raise NemesisInputError(f"{path}: NRRD header longer than {_MAX_HEADER} bytes")
        end = len(head)  # a detached header without a blank line
        data_start = len(head)
    elif end < 0 or (0 <= end_crlf < end):
        end, data_start = end_crlf, end_crlf + 4
    else:
        data_start = end + 2
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":=" if ":=" in line else ":")
        fields[key.strip().lower()] = value.strip()
    for key in ("spacings", "space directions", "space origin", "thicknesses", "axis mins", "axis maxs"):
        if key in fields:
            values = _numbers(path, key, fields[key])
            if key == "spacings" and any(v <= 0 for v in values):
                raise NemesisInputError(f"{path}: header field 'spacings' holds non-positive spacing {fields[key]}")
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
    except ValueError:
        raise NemesisInputError(f"{path}: NRRD header field 'sizes' is not integers ({fields.get('sizes')})") from None
    itemsize = _NRRD_ITEMSIZE.get(" ".join(fields.get("type", "").lower().split()))
    if not sizes or itemsize is None or any(v <= 0 for v in sizes):
        return  # SimpleITK refuses it with its own message
    check_voxels(f"{path}: image", sizes, itemsize, fields.get("type"))
    n_bytes = itemsize
    for v in sizes:
        n_bytes *= v
    encoding = fields.get("encoding", "raw").lower()
    name = fields.get("data file", fields.get("datafile"))
    if name is not None:
        data = _data_file(path, name.split()[0] if name.split() else name, "data file")
        skip = int(fields.get("byte skip", "0") or 0)
        if encoding == "raw":
            _check_data_size(path, data, skip, n_bytes, exact=True)
    elif encoding == "raw":
        _check_data_size(path, path.resolve(), data_start, n_bytes, exact=False)


def _check_metaimage(path: Path, head: bytes) -> None:
    fields: dict[str, str] = {}
    offset = 0
    data_name = None
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        fields[key] = value.strip()
        if key == "ElementDataFile":
            data_name = value.strip()
            break
    for key in ("ElementSpacing", "ElementSize", "Offset", "Origin", "Position", "TransformMatrix", "Rotation",
                "Orientation", "CenterOfRotation"):
        if key in fields:
            values = _numbers(path, key, fields[key])
            if key in ("ElementSpacing", "ElementSize") and any(v <= 0 for v in values):
                raise NemesisInputError(f"{path}: header field '{key}' holds non-positive spacing {fields[key]}")
    if data_name is None:
        return  # SimpleITK refuses a header without data
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        skip = int(fields.get("HeaderSize", "0"))
    except ValueError:
        raise NemesisInputError(f"{path}: MetaImage DimSize / ElementNumberOfChannels / HeaderSize are not "
                                "integers") from None
    itemsize = _MET_ITEMSIZE.get(fields.get("ElementType", "").upper())
    if not dims or itemsize is None or any(v <= 0 for v in dims):
        return
    check_voxels(f"{path}: image", dims + [max(channels, 1)], itemsize, fields.get("ElementType"))
    n_bytes = itemsize * max(channels, 1)
    for v in dims:
        n_bytes *= v
    compressed = fields.get("CompressedData", "False").lower() in ("true", "1")
    if data_name.upper() == "LOCAL":
        data, skip = path.resolve(), offset
        exact = False
    else:
        data = _data_file(path, data_name, "ElementDataFile")
        exact = True
    if compressed:
        declared = fields.get("CompressedDataSize")
        if declared is not None and declared.isdigit() and data.stat().st_size < int(declared) + (
                skip if data_name.upper() == "LOCAL" else 0):
            raise NemesisInputError(f"{path}: compressed data shorter than the declared {declared} bytes")
        return
    _check_data_size(path, data, skip, n_bytes, exact=exact)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__



def _dicom_series(directory: Path) -> dict[str, list[str]]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader
    series = {}
    for uid in reader.GetGDCMSeriesIDs(str(directory)) or ():
        files = reader.GetGDCMSeriesFileNames(str(directory), uid)
        if files:
            series[uid] = list(files)
    return series


def _read_dicom(path: Path, series_uid: str | None):
    import SimpleITK as sitk

    directory = path if path.is_dir() else path.parent
    wanted = series_uid
    if not path.is_dir() and wanted is None:
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        try:
            info.ReadImageInformation()
            wanted = info.GetMetaData("0020|000e").strip() if info.HasMetaDataKey("0020|000e") \
                else None
        except RuntimeError as exc:
            raise NemesisInputError(f"{path}: not a readable DICOM file ({_short(exc)})") from None
    series = _dicom_series(directory)
    if not series:
        raise NemesisInputError(f"{directory}: no DICOM series found in this directory")
    if wanted is not None:
        if wanted not in series:
            raise NemesisInputError(
                f"{directory}: no DICOM series {wanted!r} (found {', '.join(sorted(series))})"
            )
        uid = wanted
    else:
        uid = max(series, key=lambda u: (len(series[u]), u))
    others = {u: len(f) for u, f in series.items() if u != uid}
    if others and series_uid is None and path.is_dir():
        listing = ", ".join(f"{u} ({n} slices)" for u, n in sorted(others.items()))
        warnings.warn(
            f"{directory}: {len(series)} DICOM series; reading {uid} ({len(series[uid])} slices), "
            f"ignoring {listing}",
            NemesisDataWarning,
            stacklevel=3,
        )
    files = series[uid]
    _check_dicom_slices(directory, files)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise NemesisInputError(f"{directory}: cannot read DICOM series ({_short(exc)})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise NemesisInputError(f"{directory}: DICOM series is not a scalar (greyscale) image")
    shape = _check_shape(directory, tuple(image.GetSize()))
    rescaled = False
    slope_inter = None
    if reader.HasMetaDataKey(0, "0028|1052"):
        try:
            inter = float(reader.GetMetaData(0, "0028|1052"))
            slope = float(reader.GetMetaData(0, "0028|1053")) \
                if reader.HasMetaDataKey(0, "0028|1053") else 1.0
            slope_inter = [slope, inter]
            rescaled = True  # SimpleITK applies the rescale while reading
        except ValueError:
            pass
    data = np.array(sitk.GetArrayViewFromImage(image)).transpose(2, 1, 0).reshape(shape)
    meta = {
        "format": "dicom",
        "stored_dtype": str(data.dtype),
        "rescaled": rescaled,
        "rescale": slope_inter,
        "series_uid": uid,
        "n_files": len(files),
        "other_series": others,
    }
    return data, _itk_affine(image), meta


def _check_dicom_slices(directory: Path, files: list[str]) -> None:
    """Refuse a series with slices of different sizes or with gaps in slice position."""
    import SimpleITK as sitk

    sizes = {}
    positions = []
    normal = None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise NemesisInputError(f"{f}: not a readable DICOM file ({_short(exc)})") from None
        size = tuple(int(s) for s in r.GetSize()[:2])
        sizes.setdefault(size, f)
        if normal is None:
            d = np.asarray(r.GetDirection(), dtype=np.float64).reshape(r.GetDimension(), -1)
            normal = d[:3, 2] if d.shape[0] >= 3 else np.array([0.0, 0.0, 1.0])
        positions.append(float(np.dot(np.asarray(r.GetOrigin()[:3], dtype=np.float64), normal)))
    if len(sizes) > 1:
        desc = ", ".join(f"{a}x{b}" for a, b in sorted(sizes))
        raise NemesisInputError(f"{directory}: DICOM slices of mixed sizes ({desc})")
    if sizes:
        (columns, rows), = sizes
        check_voxels(f"{directory}: DICOM series", (columns, rows, len(files)), 4, "float32")
    if len(positions) < 2:
        raise NemesisInputError(
            f"{directory}: DICOM series with {len(positions)} slice, a 3D CT volume is needed"
        )
    pos = np.sort(np.asarray(positions))
    steps = np.diff(pos)
    if np.any(steps < 1e-4):
        raise NemesisInputError(f"{directory}: DICOM series holds duplicate slice positions")
    step = float(np.median(steps))
    if np.any(steps > 1.5 * step):
        missing = int(np.round(np.sum(steps[steps > 1.5 * step] / step - 1)))
        raise NemesisInputError(
            f"{directory}: DICOM series has missing slices (about {missing} missing; slice "
            f"spacing {step:.3g} mm, largest gap {float(steps.max()):.3g} mm)"
        )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_volume(
    array_zyx: np.ndarray | Volume,
    path: str | os.PathLike,
    reference: Volume,
    dtype: np.dtype | str | None = None,
) -> Path:
    """Write a canonical ``(z, y, x)`` array as NIfTI on ``reference``'s original voxel grid.

    The array is put back into the file voxel order of the reference scan and saved with its
    original affine, so the result lies voxel for voxel on the scan in any viewer. ``dtype``
    chooses the stored type (e.g. ``np.uint8``/``np.int16`` for labels, ``np.float32`` for
    probability maps); by default integer arrays keep their type and others become float32.
    The file is written to a temporary name first and renamed.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise NemesisInputError(f"{path}: write_volume writes NIfTI; use .nii or .nii.gz")
    array = array_zyx.array if isinstance(array_zyx, Volume) else np.asarray(array_zyx)
    if array.shape != reference.array.shape:
        raise NemesisInputError(
            f"{path}: array shape {tuple(array.shape)} does not match the reference scan "
            f"{reference.shape} (z, y, x)"
        )
    if dtype is None:
        dtype = array.dtype if array.dtype.kind in "uib" else np.float32
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    data = np.ascontiguousarray(_canonical_to_file(array, reference.affine)).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, reference.affine)
    code_q = int(reference.meta.get("qform_code") or 1)
    code_s = int(reference.meta.get("sform_code") or 1)
    img.set_qform(reference.affine, code=code_q)
    img.set_sform(reference.affine, code=code_s)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    try:
        with atomic_path(path, suffix) as tmp:
            nib.save(img, str(tmp))
    except OSError as exc:  # disk full, read-only folder, no inodes left ...
        raise NemesisInputError(f"{path}: cannot write ({_os_reason(exc)})") from None
    return path


def volume_from_array(
    array_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0),
    file_orientation: str = "RAS",
    canonical_affine: np.ndarray | None = None,
    source: Path | None = None,
) -> Volume:
    """Make a :class:`Volume` from a canonical (z, y, x) array, as if read from a file.

    ``canonical_affine`` (canonical (z, y, x) index -> world RAS mm) defaults to an axis-aligned
    LPS+ grid with ``spacing_zyx`` and the world position ``origin_xyz`` of voxel (0, 0, 0).
    ``file_orientation`` (axis codes such as ``"RAS"``, ``"LPS"``, ``"PIL"``) is the voxel order
    :func:`write_volume` will store, i.e. the "original" orientation of the made-up file.
    """
    from nibabel import orientations as no

    array = np.asarray(array_zyx)
    if array.ndim != 3:
        raise NemesisInputError(f"volume_from_array: a 3D array is needed, got {array.ndim}D")
    if canonical_affine is None:
        sz, sy, sx = (float(s) for s in spacing_zyx)
        canonical_affine = np.array(
            [[0, 0, -sx, origin_xyz[0]], [0, -sy, 0, origin_xyz[1]], [sz, 0, 0, origin_xyz[2]],
             [0, 0, 0, 1]],
            dtype=np.float64,
        )
    canonical_affine = np.asarray(canonical_affine, dtype=np.float64)
    lps_affine = canonical_affine @ np.linalg.inv(_ZYX_TO_XYZ)
    lps_shape = array.shape[::-1]
    target = no.axcodes2ornt(tuple(file_orientation.upper()))
    transform = no.ornt_transform(no.axcodes2ornt(tuple(CANONICAL_ORIENTATION)), target)
    file_affine = lps_affine @ no.inv_ornt_aff(transform, lps_shape)
    vol = Volume(
        array=array,
        spacing=_spacing_from(canonical_affine),
        affine=file_affine,
        source=source,
        meta={"format": "memory", "qform_code": 1, "sform_code": 1},
    )
    if _axcodes(file_affine) != file_orientation.upper():  # pragma: no cover - defensive
        raise NemesisInputError(f"volume_from_array: cannot make orientation {file_orientation}")
    return vol
