"""The sample data shipped inside the package: a real abdominal CT and its organ label maps.

Attribution (CC BY 4.0, see README.md in this folder): the TotalSegmentator CT dataset (Wasserthal
et al., Radiology: AI 2023), files from the test references of TotalSegmentator 2.18.0.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CT_FILE = "abdomen_ct.nii.gz"
BTCV_LABELS_FILE = "abdomen_label_btcv.nii.gz"
TOTALSEG_LABELS_FILE = "abdomen_seg_totalsegmentator.nii.gz"
ATTRIBUTION = (
    "Sample CT: TotalSegmentator CT dataset (Wasserthal et al., Radiology: AI 2023), CC BY 4.0; "
    "files from the test references of TotalSegmentator 2.18.0"
)


def _path(name: str) -> Path:
    from ..errors import NemesisInputError

    p = Path(str(resources.files(__name__).joinpath(name)))
    if not p.is_file():
        raise NemesisInputError(f"{p}: the sample data is missing from this installation")
    return p


def sample_ct_path() -> Path:
    """The real abdominal CT (NIfTI, 3 mm, HU)."""
    return _path(CT_FILE)


def sample_btcv_labels_path() -> Path:
    """Its label map reduced to the 8 BTCV organs (BTCV ids)."""
    return _path(BTCV_LABELS_FILE)


def sample_totalseg_labels_path() -> Path:
    """Its full TotalSegmentator label map (class map ``total``)."""
    return _path(TOTALSEG_LABELS_FILE)
