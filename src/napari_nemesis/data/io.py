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
from ..errors import NemesisInputError

__all__ = [
    "CANONICAL_ORIENTATION",
    "MAX_VOXELS",
    "NemesisDataWarning",
    "Volume",
    "read_volume",
    "read_labels",
    "write_volume",
    "volume_from_array",
]

#: Canonical voxel orientation of ``Volume.array`` (axis codes of x, y, z; stored as (z, y, x)).
CANONICAL_ORIENTATION = "LPS"
#: Refuse images larger than this many voxels (4 GiB as float32) instead of exhausting memory.
MAX_VOXELS = 1024**3

_NIFTI_EXT = (".nii", ".nii.gz")
_ITK_EXT = (".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_EXT = (".dcm", ".dicom", ".ima")

# (z, y, x) canonical index -> (x, y, z) index of the LPS-ordered array, homogeneous.
_ZYX_TO_XYZ = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class NemesisDataWarning(UserWarning):
    """Something about a scan looks wrong but reading can go on (e.g. values that are not HU)."""


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
    name = path.name.lower()
    if name.endswith(_NIFTI_EXT):
        return "nifti"
    if name.endswith(_ITK_EXT):
        return "itk"
    if name.endswith(_DICOM_EXT):
        return "dicom-file"
    return "itk"  # let SimpleITK try; a failure becomes "not an image"


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


def _read_raw(path: Path, series_uid: str | None, what: str):
    """Return (data in file voxel order (i, j, k), RAS affine, meta)."""
    if not path.exists():
        raise NemesisInputError(f"{path}: no such file or directory")
    kind = _kind(path)
    if kind == "nifti":
        data, affine, meta = _read_nifti(path)
    elif kind in ("dicom", "dicom-file"):
        data, affine, meta = _read_dicom(path, series_uid)
    else:
        data, affine, meta = _read_itk(path)
    _check_affine(path, affine)
    if data.size == 0:
        raise NemesisInputError(f"{path}: empty {what} (shape {tuple(data.shape)})")
    meta.setdefault("original_shape", tuple(int(s) for s in data.shape))
    meta["original_orientation"] = _axcodes(affine)
    return data, affine, meta


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
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
    if any(s == 0 for s in shape):
        raise NemesisInputError(f"{path}: empty image (shape {shape})")
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise NemesisInputError(
            f"{path}: image of {n} voxels {shape} is larger than the {MAX_VOXELS} voxel limit"
        )
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
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise NemesisInputError(f"{path}: truncated or corrupt archive ({_short(exc)})") from None
    except Exception as exc:  # nibabel raises ImageFileError / HeaderDataError / OSError ...
        raise NemesisInputError(f"{path}: not a readable NIfTI image ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NemesisInputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    hdr = img.header
    shape = _check_shape(path, img.shape)
    raw_hdr = _raw_nifti_header(path, type(hdr))
    if raw_hdr is not None and int(raw_hdr["sform_code"]) == 0:
        # nibabel quietly turns zero pixdims into 1; without an sform they define the spacing
        pix = [float(v) for v in raw_hdr["pixdim"][1:4]]
        if any(not v > 0 for v in pix):
            raise NemesisInputError(f"{path}: non-positive voxel spacing {tuple(pix)} in the header")
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

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NemesisInputError(f"{path}: not a readable image ({_short(exc)})") from None
    size = tuple(int(s) for s in reader.GetSize())
    shape = _check_shape(path, size)
    if any(float(s) <= 0 for s in reader.GetSpacing()[:3]):
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
    if not path.name.lower().endswith(_NIFTI_EXT):
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
    with atomic_path(path, suffix) as tmp:
        nib.save(img, str(tmp))
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
