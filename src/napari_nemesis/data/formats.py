"""The scan formats: one table of file suffixes, the reader each goes to, and where each is accepted.

Every list of scan suffixes in the package is a view of :data:`SCAN_FORMATS`:

* :data:`SCAN_SUFFIXES`: every suffix :func:`data.read_volume` reads (``reader`` says how;
  a folder is read as a DICOM series).
* :data:`VIEWER_SUFFIXES`: the files napari hands to this plugin's reader by name (the
  ``filename_patterns`` in ``napari.yaml``, which a test holds equal to this).
* :data:`DATASET_SUFFIXES`: the files taken as images or label maps in a dataset folder or a
  labelling project (one file, one whole volume).
* :data:`NIFTI_SUFFIXES`: what :func:`data.write_volume` writes.

:func:`scan_stem` strips a suffix from a file name (longest match first, any letter case).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScanFormat", "SCAN_FORMATS", "SCAN_SUFFIXES", "VIEWER_SUFFIXES", "DATASET_SUFFIXES",
           "NIFTI_SUFFIXES", "DICOM_FILE_SUFFIXES", "METAIMAGE_SUFFIXES", "SIDECAR_STEM_SUFFIXES", "reader_for_name",
           "scan_stem", "viewer_patterns", "file_dialog_filter"]


@dataclass(frozen=True)
class ScanFormat:
    """One scan file format.

    ``reader``: ``"nifti"`` (nibabel), ``"itk"`` (SimpleITK) or ``"dicom-file"`` (a slice of a
    series: its folder is read). ``viewer``: napari offers these files to this plugin.
    ``dataset``: one file holds a whole volume that a dataset folder or a labelling project may
    name as an image or label map."""

    name: str
    suffixes: tuple[str, ...]
    reader: str
    viewer: bool = True
    dataset: bool = True


#: The table. Order is the order names are listed in (napari.yaml, messages).
SCAN_FORMATS: tuple[ScanFormat, ...] = (
    ScanFormat("NIfTI", (".nii", ".nii.gz"), "nifti"),
    ScanFormat("NRRD", (".nrrd",), "itk"),
    ScanFormat("NRRD (detached header)", (".nhdr",), "itk", dataset=False),
    ScanFormat("MetaImage", (".mha", ".mhd"), "itk"),
    ScanFormat("DICOM slice", (".dcm",), "dicom-file", dataset=False),
    ScanFormat("DICOM slice (other names)", (".dicom", ".ima"), "dicom-file", viewer=False, dataset=False),
)


def _suffixes(keep) -> tuple[str, ...]:
    return tuple(s for f in SCAN_FORMATS if keep(f) for s in f.suffixes)


SCAN_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: True)
VIEWER_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: f.viewer)
DATASET_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: f.dataset)
NIFTI_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: f.reader == "nifti")
DICOM_FILE_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: f.reader == "dicom-file")
METAIMAGE_SUFFIXES: tuple[str, ...] = _suffixes(lambda f: f.name == "MetaImage")
#: The suffixes a label sidecar's name drops (``scan.nii.gz`` -> ``scan.nemesis-labels.json``).
#: Fixed: sidecars already on disk are found by these names.
SIDECAR_STEM_SUFFIXES: tuple[str, ...] = DATASET_SUFFIXES + (".dcm",)


def _longest_first(suffixes) -> tuple[str, ...]:
    return tuple(sorted(suffixes, key=len, reverse=True))


def reader_for_name(name: str) -> str | None:
    """The reader of a file name by its suffix (``"nifti"``, ``"itk"``, ``"dicom-file"``), or None."""
    low = name.lower()
    for fmt in SCAN_FORMATS:
        if low.endswith(fmt.suffixes):
            return fmt.reader
    return None


def scan_stem(name: str, suffixes: tuple[str, ...] = SCAN_SUFFIXES) -> str:
    """``name`` without its scan suffix (one of ``suffixes``, longest first, any case); unchanged
    when it has none."""
    low = name.lower()
    for ext in _longest_first(suffixes):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def viewer_patterns() -> list[str]:
    """napari.yaml's reader ``filename_patterns``: ``*`` + each viewer suffix."""
    return [f"*{s}" for s in VIEWER_SUFFIXES]


def file_dialog_filter(label: str, suffixes: tuple[str, ...] = DATASET_SUFFIXES) -> str:
    """A Qt file-dialog filter such as ``"label maps (*.nii *.nii.gz ...)"``."""
    return f"{label} ({' '.join('*' + s for s in suffixes)})"
