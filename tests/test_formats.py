"""data/formats.py: the one table of scan formats, napari.yaml kept equal to it, and no other
module listing scan suffixes of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from napari_nemesis.data import formats as F

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_nemesis"


def test_napari_manifest_reader_patterns_equal_the_table():
    manifest = yaml.safe_load((SRC / "napari.yaml").read_text(encoding="utf-8"))
    (reader,) = manifest["contributions"]["readers"]
    assert reader["filename_patterns"] == F.viewer_patterns()
    for writer in manifest["contributions"]["writers"]:
        assert set(writer["filename_extensions"]) == set(F.NIFTI_SUFFIXES)


def test_views_of_the_table():
    assert F.SCAN_SUFFIXES == (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
    assert F.VIEWER_SUFFIXES == (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
    assert set(F.DATASET_SUFFIXES) == {".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"}
    assert F.NIFTI_SUFFIXES == (".nii", ".nii.gz")
    assert F.DICOM_FILE_SUFFIXES == (".dcm", ".dicom", ".ima")
    # sidecar names on disk depend on this: it must not move with the table
    assert set(F.SIDECAR_STEM_SUFFIXES) == {".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"}
    every = [s for f in F.SCAN_FORMATS for s in f.suffixes]
    assert len(every) == len(set(every)) and all(s == s.lower() and s.startswith(".") for s in every)


@pytest.mark.parametrize("name, reader", [("a.nii", "nifti"), ("A.NII.GZ", "nifti"), ("a.nrrd", "itk"),
                                          ("a.nhdr", "itk"), ("a.mha", "itk"), ("a.MHD", "itk"),
                                          ("a.dcm", "dicom-file"), ("a.IMA", "dicom-file"), ("a.png", None)])
def test_reader_for_name(name, reader):
    assert F.reader_for_name(name) == reader


def test_scan_stem_longest_suffix_any_case():
    assert F.scan_stem("img0001.nii.gz") == "img0001"
    assert F.scan_stem("CASE.NII.GZ") == "CASE"
    assert F.scan_stem("a.b.mha") == "a.b"
    assert F.scan_stem("notes.txt") == "notes.txt"
    assert F.scan_stem("x.nhdr", F.DATASET_SUFFIXES) == "x.nhdr"


def test_callers_read_the_table():
    from napari_nemesis.data import io as data_io
    from napari_nemesis.labels.sidecar import sidecar_path_beside
    from napari_nemesis.train.inference import scan_stem
    from napari_nemesis.viewer import _io as viewer_io

    assert viewer_io.SCAN_SUFFIXES == F.VIEWER_SUFFIXES and viewer_io.NIFTI_SUFFIXES == F.NIFTI_SUFFIXES
    assert data_io._kind(Path("nowhere/a.ima")) == "dicom-file"
    assert data_io._kind(Path("nowhere/a.unknown")) == "itk"
    assert sidecar_path_beside("d/scan.nii.gz") == Path("d/scan.nemesis-labels.json")
    assert sidecar_path_beside("d/scan.nhdr") == Path("d/scan.nhdr.nemesis-labels.json")
    assert scan_stem("d/scan.nrrd") == "scan" and scan_stem(None) == "scan"
    assert F.file_dialog_filter("label maps") == "label maps (*.nii *.nii.gz *.nrrd *.mha *.mhd)"


def test_no_other_module_lists_scan_suffixes():
    """A tuple naming two or more scan suffixes outside data/formats.py is a second copy of the table."""
    suffix = r'"\.(?:nii(?:\.gz)?|nrrd|nhdr|mha|mhd|dcm|dicom|ima)"'
    pattern = re.compile(rf"{suffix}\s*,\s*{suffix}")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "formats.py" and pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders
