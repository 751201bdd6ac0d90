"""CT data: readers, canonical orientation, HU window, resampling, the superpatch grid, organ
presence labels, BTCV-layout datasets with a memory-mapped superpatch cache, and phantoms.

numpy / nibabel / SimpleITK / scipy only: importing this package never imports torch or Qt.
Axes are (z, y, x) everywhere in the Python API; see ``docs/data.md``.
"""

from ..errors import NemesisCancelled, NemesisInputError
from .datasets import (
    BTCV_CASE_IDS,
    BTCV_TEST_IDS,
    Case,
    CacheIndex,
    SuperpatchCache,
    default_cache_dir,
    find_cases,
    is_cache,
    label_ratio_subset,
    open_cache,
    open_dataset,
    prepare_cache,
    split_cases,
    split_description,
    split_rule,
    SPLITS,
    SPLIT_RULES,
)
from .fingerprint import ScanFingerprint
from .grid import (
    MAX_SUPERPATCHES,
    MIN_MEAN,
    Box,
    SuperpatchGrid,
    crop_box,
    crop_superpatch,
    inside_fraction,
    sample_superpatch,
    sample_superpatch_origin,
)
from .io import (
    CANONICAL_ORIENTATION,
    MAX_VOXELS,
    MAX_VOXELS_ENV,
    NemesisDataWarning,
    Volume,
    check_ct,
    check_voxels,
    max_voxels,
    read_labels,
    read_volume,
    volume_from_array,
    write_volume,
)
from .label_schemes import (
    LABEL_SCHEMES,
    btcv_id_map,
    check_label_scheme,
    detect_label_scheme,
    label_names,
    to_btcv_labels,
)
from .organs import (
    ORGAN_IDS,
    ORGAN_NAMES,
    ORGANS,
    PATCH_THRESHOLD,
    PRESENCE_THRESHOLD,
    Organ,
    organ_voxel_counts,
    patch_inside,
    patch_labels,
    patch_voxel_counts,
    presence_labels,
)
from .phantom import PHANTOM_SIZES, make_phantom, phantom_case_id, write_phantom_dataset
from .spacing import DEFAULT_SPACING_ZYX, NATIVE_SPACING, Spacing, as_spacing, recorded_spacing
from .preprocess import (
    HU_WINDOW,
    Preprocessed,
    preprocess,
    preprocess_labels,
    resample,
    window_hu,
)

__all__ = [
    "NemesisInputError", "NemesisCancelled", "NemesisDataWarning",
    "CANONICAL_ORIENTATION", "Volume", "read_volume", "read_labels", "write_volume",
    "volume_from_array", "MAX_VOXELS", "MAX_VOXELS_ENV", "max_voxels", "check_voxels", "check_ct",
    "MAX_SUPERPATCHES",
    "DEFAULT_SPACING_ZYX", "NATIVE_SPACING", "Spacing", "as_spacing", "recorded_spacing", "HU_WINDOW", "Preprocessed", "window_hu", "resample", "preprocess",
    "preprocess_labels",
    "Box", "SuperpatchGrid", "MIN_MEAN", "sample_superpatch_origin", "sample_superpatch",
    "crop_superpatch", "inside_fraction",
    "Organ", "ORGANS", "ORGAN_NAMES", "ORGAN_IDS", "PRESENCE_THRESHOLD", "organ_voxel_counts",
    "presence_labels", "PATCH_THRESHOLD", "patch_voxel_counts", "patch_labels", "patch_inside",
    "LABEL_SCHEMES", "detect_label_scheme", "to_btcv_labels", "label_names", "btcv_id_map",
    "check_label_scheme",
    "BTCV_TEST_IDS", "BTCV_CASE_IDS", "Case", "CacheIndex", "SuperpatchCache", "default_cache_dir", "find_cases",
    "ScanFingerprint", "split_cases", "split_description", "split_rule", "SPLITS", "SPLIT_RULES", "label_ratio_subset", "prepare_cache", "open_cache", "open_dataset", "is_cache",
    "PHANTOM_SIZES", "make_phantom", "phantom_case_id", "write_phantom_dataset",
    "measure_sampling_rate",
]


def measure_sampling_rate(*args, **kwargs):
    """See :func:`napari_nemesis.bench.sampling_rate.measure_sampling_rate`."""
    from ..bench.sampling_rate import measure_sampling_rate as _m

    return _m(*args, **kwargs)
