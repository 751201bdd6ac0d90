"""Datasets: BTCV-layout cases, the standard split, label-ratio subsets, the superpatch cache.

Case discovery (:func:`find_cases`) understands

* the BTCV/Synapse layout: ``imagesTr/imgXXXX.nii.gz`` with ``labelsTr/labelXXXX.nii.gz``
  (``imagesTs`` too with ``include_unlabelled=True``);
* any folder with a JSON list of image/label pairs: a ``.json`` file (given directly, or the only
  / ``dataset.json`` file in the folder) holding either ``[{"image": ..., "label": ...,
  "id": ...}, ...]`` or an object with such a list under ``"training"`` (MSD/MONAI style);
  paths are relative to the JSON file; an image may also be a DICOM directory, NRRD or MHA.

The cache (:func:`prepare_cache`) stores each case once, preprocessed (HU window, resampled to
the model's spacing), as memory-mappable ``.npy`` files plus a JSON index; see ``docs/data.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..atomic import write_json_atomic
from ..errors import NemesisCancelled, NemesisInputError
from .grid import MIN_MEAN, SuperpatchGrid, crop_superpatch, sample_superpatch_origin
from .io import NemesisDataWarning, check_ct, read_labels, read_volume
from .label_schemes import check_label_scheme, to_btcv_labels
from .organs import ORGAN_IDS, ORGAN_NAMES, PRESENCE_THRESHOLD, organ_voxel_counts
from .preprocess import HU_WINDOW, Preprocessed, preprocess, resample
from .fingerprint import ScanFingerprint
from .formats import DATASET_SUFFIXES, scan_stem
from .spacing import DEFAULT_SPACING_ZYX, Spacing

__all__ = [
    "BTCV_TEST_IDS",
    "BTCV_CASE_IDS",
    "Case",
    "CacheIndex",
    "SuperpatchCache",
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "cache_index",
    "replace_folder",
    "default_cache_dir",
    "find_cases",
    "split_cases",
    "split_description",
    "split_rule",
    "SPLITS",
    "SPLIT_RULES",
    "label_ratio_subset",
    "prepare_cache",
    "open_cache",
    "open_dataset",
    "is_cache",
]

#: The standard 12 BTCV test cases (TransUNet's Synapse list); the other 18 are training.
BTCV_TEST_IDS: tuple[str, ...] = (
    "0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038",
)
#: The 30 labelled BTCV training-set case ids (0001-0010, 0021-0040), the 12 above among them.
BTCV_CASE_IDS: tuple[str, ...] = tuple(f"{i:04d}" for i in list(range(1, 11)) + list(range(21, 41)))
CACHE_FORMAT = "napari-nemesis-superpatch-cache"
#: 2: labels are stored re-coded to BTCV ids, with the scheme they came in recorded per case.
CACHE_VERSION = 2
#: Cached windowed volumes are float16 (values in [0, 1], step <= 2**-11, about 0.2 HU).
CACHE_IMAGE_DTYPE = "float16"

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True)
class Case:
    """One scan of a dataset: ``case_id`` (e.g. ``"0001"``), its image and optional label map.

    ``split`` pins the case to ``"train"`` or ``"test"`` (a JSON case list's ``"split"`` field);
    ``None`` leaves it to the split rule, which then applies to the unpinned cases only.
    """

    case_id: str
    image: Path
    label: Path | None = None
    split: str | None = None


# ------------------------------------------------------------------------------------------
# Finding cases
# ------------------------------------------------------------------------------------------

_IMAGE_EXT = DATASET_SUFFIXES  # the files a dataset folder holds as images and label maps


def _digits_id(name: str) -> str | None:
    stem = name.split(".")[0]
    found = re.findall(r"\d+", stem)
    return found[-1] if found else None


def _scan_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.lower().endswith(_IMAGE_EXT) and not p.name.startswith("."))


def _find_json(data_dir: Path) -> Path | None:
    if data_dir.is_file() and data_dir.suffix.lower() == ".json":
        return data_dir
    if not data_dir.is_dir():
        return None
    if (data_dir / "dataset.json").is_file():
        return data_dir / "dataset.json"
    candidates = sorted(p for p in data_dir.glob("*.json") if p.name != "phantom.json")
    return candidates[0] if len(candidates) == 1 else None


def _cases_from_json(path: Path, include_unlabelled: bool) -> list[Case]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NemesisInputError(f"{path}: not a readable JSON case list ({exc})") from None
    entries: list[Any]
    unlabelled: list[Any] = []
    if isinstance(doc, list):
        entries = doc
    elif isinstance(doc, dict) and isinstance(doc.get("training"), list):
        entries = doc["training"]
        unlabelled = doc.get("test") or [] if include_unlabelled else []
    else:
        raise NemesisInputError(f"{path}: expected a list of image/label pairs or a 'training' list")
    root = path.parent
    cases: list[Case] = []
    for k, entry in enumerate(list(entries) + list(unlabelled)):
        pinned = None
        if isinstance(entry, str):
            image, label, cid = entry, None, None
        elif isinstance(entry, (list, tuple)) and 1 <= len(entry) <= 2:
            image, label, cid = entry[0], (entry[1] if len(entry) == 2 else None), None
        elif isinstance(entry, dict) and "image" in entry:
            image, label = entry["image"], entry.get("label")
            cid = entry.get("id", entry.get("case_id"))
            pinned = entry.get("split")
            if pinned is not None and pinned not in SPLITS:
                raise NemesisInputError(f"{path}: entry {k} has split {pinned!r}; a pinned split is "
                                        f"{' or '.join(repr(x) for x in SPLITS)}")
        else:
            raise NemesisInputError(f"{path}: entry {k} is not an image/label pair")
        if isinstance(image, list):  # MONAI multi-channel lists: take the first
            image = image[0]
        img = (root / str(image)).resolve()
        lab = (root / str(label)).resolve() if label else None
        if lab is None and not include_unlabelled:
            continue
        cid = str(cid) if cid is not None else (_digits_id(img.name) or img.name.split(".")[0])
        cases.append(Case(cid, img, lab, pinned))
    return cases


_CHANNEL_SUFFIX = re.compile(r"^(?P<base>.+)_(?P<channel>\d{4})$")


def _file_stem(path: Path) -> str:
    name = path.name
    stem = scan_stem(name, DATASET_SUFFIXES)
    return stem if stem != name else name.split(".")[0]


def _is_nnunet(data_dir: Path, image_stems: list[str], label_stems: set[str]) -> bool:
    """nnU-Net raw layout: every image carries a 4-digit channel suffix (``case_0000``) and the
    label maps are named after the case without it (or dataset.json says nnU-Net)."""
    matches = [_CHANNEL_SUFFIX.match(s) for s in image_stems]
    if not image_stems or not all(matches):
        return False
    if any(m.group("base") in label_stems for m in matches):  # type: ignore[union-attr]
        return True
    try:
        doc = json.loads((data_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and ("channel_names" in doc or "modality" in doc)


def _cases_from_folders(data_dir: Path, include_unlabelled: bool) -> list[Case]:
    """``imagesTr``/``labelsTr`` (and ``imagesTs``): BTCV names (``img0001`` with ``label0001``: equal
    trailing digits), equal names, or nnU-Net names (``BTCV_0001_0000`` with ``BTCV_0001``: the
    ``_0000`` channel suffix is dropped; other channels are extra modalities, skipped)."""
    label_files = _scan_files(data_dir / "labelsTr")
    by_stem = {_file_stem(p): p for p in label_files}
    by_digits = {}
    for p in label_files:
        cid = _digits_id(_file_stem(p))
        if cid is not None:
            by_digits.setdefault(cid, p)
    images = _scan_files(data_dir / "imagesTr")
    nnunet = _is_nnunet(data_dir, [_file_stem(p) for p in images], set(by_stem))

    def case_key(path: Path) -> tuple[str, str | None]:
        """(name without the channel suffix in nnU-Net layout, channel)."""
        stem = _file_stem(path)
        m = _CHANNEL_SUFFIX.match(stem) if nnunet else None
        return (m.group("base"), m.group("channel")) if m else (stem, None)

    cases, missing, channels = [], [], []
    for p in images:
        base, channel = case_key(p)
        if channel not in (None, "0000"):
            channels.append(p.name)
            continue
        cid = _digits_id(base) or base
        label = by_stem.get(base) or by_digits.get(_digits_id(base) or "")
        if label is not None:
            cases.append(Case(cid, p, label))
        elif include_unlabelled:
            cases.append(Case(cid, p, None))
        else:
            missing.append(p.name)
    if channels:
        warnings.warn(f"{data_dir}: {len(channels)} extra-channel image(s) skipped (only channel 0000 is CT): "
                      f"{', '.join(channels[:3])}{' ...' if len(channels) > 3 else ''}", NemesisDataWarning,
                      stacklevel=3)
    if missing and not cases:
        raise NemesisInputError(
            f"{data_dir}: no cases found: none of the {len(missing)} image(s) in imagesTr pairs with one of the "
            f"{len(label_files)} label map(s) in labelsTr (e.g. {missing[0]}"
            f"{' vs ' + label_files[0].name if label_files else ''}); pairs need equal names, equal trailing "
            "digits (img0001 / label0001) or the nnU-Net channel suffix (case_0000 / case)")
    if missing:
        warnings.warn(f"{data_dir}: {len(missing)} image(s) without a label map skipped: "
                      f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                      NemesisDataWarning, stacklevel=3)
    if include_unlabelled:
        for p in _scan_files(data_dir / "imagesTs"):
            base, channel = case_key(p)
            if channel in (None, "0000"):
                cases.append(Case(f"ts{_digits_id(base) or base}", p, None))
    return cases


def find_cases(data_dir: str | os.PathLike, include_unlabelled: bool = False) -> list[Case]:
    """The cases of a dataset folder (BTCV layout or a JSON list), sorted by case id.

    Only labelled cases are returned unless ``include_unlabelled`` (then ``imagesTs`` and
    images without a label map come too, with ``label=None``).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise NemesisInputError(f"{data_dir}: no such dataset directory")
    cases: list[Case]
    if (data_dir / "imagesTr").is_dir():
        cases = _cases_from_folders(data_dir, include_unlabelled)
    else:
        js = _find_json(data_dir)
        if js is None:
            raise NemesisInputError(
                f"{data_dir}: no cases found (expected imagesTr/ and labelsTr/, or a JSON list of "
                "image/label pairs)")
        cases = _cases_from_json(js, include_unlabelled)
    if not cases:
        raise NemesisInputError(f"{data_dir}: no cases found")
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise NemesisInputError(f"{data_dir}: duplicate case ids {', '.join(dup)}")
    for c in cases:
        if not c.image.exists():
            raise NemesisInputError(f"{c.image}: image of case {c.case_id} does not exist")
        if c.label is not None and not c.label.exists():
            raise NemesisInputError(f"{c.label}: label map of case {c.case_id} does not exist")
    return sorted(cases, key=lambda c: c.case_id)


# ------------------------------------------------------------------------------------------
# Splits and label-ratio subsets
# ------------------------------------------------------------------------------------------


#: The two splits a case can be in (and be pinned to: ``Case.split``).
SPLITS = ("train", "test")
#: What each split rule does (``split_rule``), for logs and summaries.
SPLIT_RULES = {
    "btcv": "standard BTCV split: TransUNet's 12 test cases, the other 18 train",
    "fallback": "fallback split: round(0.4 n) of n cases, evenly spread by sorted id, are test",
    "given": "the given test ids are test, the rest train",
}


def split_rule(cases: Sequence[Case], test_ids: Iterable[str] = BTCV_TEST_IDS) -> str:
    """Which rule :func:`split_cases` applies: ``"btcv"``, ``"given"`` or ``"fallback"``.

    The BTCV list applies only when the dataset *is* BTCV: its 30 labelled case ids are all there
    and every other case is unlabelled (``imagesTs``). A 4-case set holding ids 0001-0004, or a
    100-case set, gets the fallback. Other ``test_ids`` apply when any of them is present.
    Cases pinned to a split (``Case.split``) are left out: the rule is about the others.
    """
    cases = [c for c in cases if c.split is None]
    ids = {c.case_id for c in cases}
    test_ids = tuple(test_ids)
    if test_ids == BTCV_TEST_IDS:
        extra = [c for c in cases if c.case_id not in BTCV_CASE_IDS]
        if set(BTCV_CASE_IDS) <= ids and all(c.label is None for c in extra):
            return "btcv"
        return "fallback"
    return "given" if ids & set(test_ids) else "fallback"


def split_cases(cases: Sequence[Case], test_ids: Iterable[str] = BTCV_TEST_IDS
                ) -> tuple[list[Case], list[Case]]:
    """The (train, test) split by case id, each sorted by id (the rule: :func:`split_rule`).

    With the default ``test_ids``, BTCV's 30 cases get the standard 12 test cases; any other
    dataset gets the fallback rule, which keeps the BTCV proportion 12/30: with ``n`` cases sorted
    by id, ``k = round(0.4 * n)`` (0 when ``n < 2``) test cases at sorted positions
    ``floor((j + 0.5) * n / k)`` for ``j = 0..k-1``, spread evenly.

    A case pinned to a split (``Case.split``, the JSON list's ``"split"``) goes there, and the rule
    splits the rest as if the pinned cases were not in the dataset: BTCV's 30 cases plus a real
    scan pinned to ``"train"`` keep the standard 12 test cases.
    """
    ordered = sorted(cases, key=lambda c: c.case_id)
    pinned_train = [c for c in ordered if c.split == "train"]
    pinned_test = [c for c in ordered if c.split == "test"]
    free = [c for c in ordered if c.split is None]
    test_ids = tuple(test_ids)
    wanted = set(test_ids)
    if split_rule(free, test_ids) != "fallback":
        test = [c for c in free if c.case_id in wanted]
        train = [c for c in free if c.case_id not in wanted]
    else:
        n = len(free)
        k = 0 if n < 2 else int(round(0.4 * n))
        k = min(k, n - 1) if n else 0
        pos = {int(math.floor((j + 0.5) * n / k)) for j in range(k)} if k else set()
        test = [c for i, c in enumerate(free) if i in pos]
        train = [c for i, c in enumerate(free) if i not in pos]

    def by_id(group: list[Case]) -> list[Case]:
        return sorted(group, key=lambda c: c.case_id)
    return by_id(train + pinned_train), by_id(test + pinned_test)


def split_description(rule: str, pinned: dict[str, str] | None = None) -> str:
    """One line saying how a dataset was split: the rule's :data:`SPLIT_RULES` text, then the cases
    pinned by the case list (``{case_id: split}``), if any."""
    text = SPLIT_RULES[rule]
    if pinned:
        by_split = {s: sorted(c for c, v in pinned.items() if v == s) for s in SPLITS}
        parts = [f"{', '.join(ids)} -> {s}" for s, ids in by_split.items() if ids]
        text += f" (among the unpinned cases); pinned by the case list: {'; '.join(parts)}"
    return text


def label_ratio_subset(train_cases: Sequence[Case], ratio: float, seed: int = 0) -> list[Case]:
    """The first ``ceil(ratio * n)`` (at least 1) cases of a seeded permutation of ``train_cases``.

    ``ratio`` is a fraction in (0, 1] or a percentage in (1, 100]. The permutation depends only
    on ``seed`` and the sorted case ids, so subsets are nested: the 10 % cases are inside the
    25 %, which are inside the 50 %. Returned sorted by case id.
    """
    r = float(ratio)
    if r > 1:
        r /= 100.0
    if not 0 < r <= 1:
        raise NemesisInputError(f"label ratio {ratio}: must be in (0, 1] or a percentage in (1, 100]")
    ordered = sorted(train_cases, key=lambda c: c.case_id)
    if not ordered:
        return []
    n = len(ordered)
    k = max(1, min(n, math.ceil(r * n - 1e-9)))
    perm = np.random.default_rng(seed).permutation(n)
    chosen = sorted(perm[:k].tolist())
    return [ordered[i] for i in chosen]


# ------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where :func:`open_dataset` puts caches of raw data folders.

    ``$NEMESIS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/napari-nemesis`` (default
    ``~/.cache/napari-nemesis``), with a ``datasets/`` folder inside.
    """
    env = os.environ.get("NEMESIS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "napari-nemesis"


def _hash_path(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _stat_path(path: Path) -> dict[str, Any]:
    if path.is_file():
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    size, mtime = 0, 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
    return {"size": size, "mtime_ns": mtime}


def _source_record(path: Path) -> dict[str, Any]:
    rec = {"path": str(path.resolve())}
    rec.update(_stat_path(path))
    rec["sha256"] = _hash_path(path)
    return rec


def _source_unchanged(path: Path | None, old: dict[str, Any] | None) -> tuple[bool, dict | None]:
    """(unchanged?, refreshed record). Cheap stat check first, content hash when stats differ."""
    if path is None or old is None:
        return (path is None and old is None), None
    if not path.exists():
        return False, None
    stat = _stat_path(path)
    if old.get("path") == str(path.resolve()) and old.get("size") == stat["size"] \
            and old.get("mtime_ns") == stat["mtime_ns"]:
        return True, old
    if old.get("size") != stat["size"]:
        return False, None
    sha = _hash_path(path)
    if sha == old.get("sha256"):
        return True, {"path": str(path.resolve()), **stat, "sha256": sha}
    return False, None


@dataclass
class CacheIndex:
    """What :func:`prepare_cache` built: the JSON index plus what this run did."""

    path: Path
    spacing_zyx: tuple[float, float, float] | str  # or "native"
    superpatch: int
    cases: dict[str, dict[str, Any]]
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    split_rule: str = "fallback"
    pinned: dict[str, str] = field(default_factory=dict)  # case id -> the split the case list pinned it to

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.cases)

    def summary(self) -> dict[str, Any]:
        return {
            "cache": str(self.path),
            "spacing_zyx": Spacing.parse(self.spacing_zyx).to_json(),
            "superpatch": self.superpatch,
            "cases": len(self.cases),
            "train": sum(1 for c in self.cases.values() if c["split"] == "train"),
            "test": sum(1 for c in self.cases.values() if c["split"] == "test"),
            "split": self.split_rule,
            "split_description": split_description(self.split_rule, self.pinned),
            "pinned": dict(self.pinned),
            "superpatches": int(sum(np.prod(c["grid_shape"]) for c in self.cases.values())),
            "prepared": list(self.prepared),
            "skipped": list(self.skipped),
            "removed": list(self.removed),
        }


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj)


def cache_index(spacing_zyx, superpatch: int, data_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """A cache's ``index.json`` before its cases: what every writer of a cache records (format,
    version, spacing, HU window, image dtype, superpatch size, presence rule, organs, source folder),
    then ``fields`` (split, ``cases``, ...). One place, so every cache is read the same way."""
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "spacing": Spacing.parse(spacing_zyx).to_json(),
        "window": list(HU_WINDOW),
        "image_dtype": CACHE_IMAGE_DTYPE,
        "superpatch": int(superpatch),
        "presence_threshold": PRESENCE_THRESHOLD,
        "organs": list(ORGAN_NAMES),
        "organ_ids": list(ORGAN_IDS),
        "data_dir": str(Path(data_dir).resolve()),
        **fields,
    }


def replace_folder(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``. An existing ``dest`` is renamed aside first
    (``.old-<name>-<pid>``, a name the writers' cleanups remove) and deleted after, so ``dest`` is
    always a whole folder, old or new, never half of each."""
    if not dest.exists():
        os.replace(new, dest)
        return
    aside = dest.with_name(f".old-{dest.name}-{os.getpid()}")
    os.replace(dest, aside)
    os.replace(new, dest)
    shutil.rmtree(aside, ignore_errors=True)


def _load_index(out_dir: Path) -> dict[str, Any] | None:
    index_path = out_dir / "index.json"
    if not index_path.is_file():
        return None
    try:
        doc = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NemesisInputError(f"{index_path}: unreadable cache index ({exc})") from None
    if doc.get("format") != CACHE_FORMAT:
        raise NemesisInputError(f"{index_path}: not a napari-nemesis cache index")
    return doc


def _check(cancel: Cancel | None, what: str) -> None:
    if cancel is not None and cancel():
        raise NemesisCancelled(f"{what}: cancelled")


def _prepare_one(case: Case, case_dir_tmp: Path, spacing_zyx, superpatch: int,
                 label_scheme: str = "auto") -> dict[str, Any]:
    vol = check_ct(read_volume(case.image), "image")
    labels, scheme = None, None
    if case.label is not None:
        labels, scheme = to_btcv_labels(read_labels(case.label, vol), label_scheme, source=case.label,
                                        refuse_binary=True)
    pre = preprocess(vol, spacing_zyx)
    SuperpatchGrid(pre.shape, superpatch).check_count(str(case.image))
    np.save(case_dir_tmp / "image.npy", pre.array.astype(CACHE_IMAGE_DTYPE))
    entry: dict[str, Any] = {
        "image": "image.npy",
        "labels": None,
        "shape_zyx": list(pre.shape),
        "spacing_zyx": list(pre.spacing_zyx),
        "source_shape_zyx": list(vol.shape),
        "source_spacing_zyx": list(vol.spacing),
        "source_orientation": vol.orientation,
        "scale_zyx": list(pre.scale_zyx),
        "source_canonical_affine": vol.canonical_affine.tolist(),
        "grid_shape": list(SuperpatchGrid(pre.shape, superpatch).grid_shape),
        "presence": None,
        "organ_voxels": None,
        "label_scheme": scheme,
        "voxel_sha256": ScanFingerprint.of_volume(vol).voxel_sha256,  # what a head trained on it records
    }
    del vol
    if labels is not None:
        lab = resample(labels, pre.source_spacing_zyx, pre.spacing_zyx, order=0)
        np.save(case_dir_tmp / "labels.npy", lab)
        counts = organ_voxel_counts(lab, SuperpatchGrid(pre.shape, superpatch))
        entry["labels"] = "labels.npy"
        entry["organ_voxels"] = counts.tolist()
        entry["presence"] = (counts >= PRESENCE_THRESHOLD).astype(int).tolist()
    return entry


def prepare_cache(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    spacing_zyx=DEFAULT_SPACING_ZYX,
    superpatch: int = 128,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    include_unlabelled: bool = False,
    label_scheme: str = "auto",
) -> CacheIndex:
    """Preprocess every case of ``data_dir`` once into a superpatch cache at ``out_dir``.

    Each case is windowed, resampled to ``spacing_zyx`` (z, y, x; ``"native"`` keeps each scan's) and
    written as ``cases/<id>/image.npy`` (float16) and ``labels.npy`` (nearest-resampled labels),
    with presence labels for ``superpatch`` in ``index.json``. A case is written to a temporary
    folder and renamed, and the index is rewritten atomically after each case, so an interrupt
    never leaves a half-written entry. Re-running skips cases whose sources did not change
    (same size and mtime, or same SHA-256), recomputes only presence labels when just
    ``superpatch`` changed, and redoes everything when the spacing changed.

    Label maps are re-coded to BTCV ids (:func:`~.label_schemes.to_btcv_labels`) from
    ``label_scheme`` (``auto`` detects it per map); the scheme is recorded per case, and a case
    cached under another scheme than a named ``label_scheme`` is prepared again.
    """
    check_label_scheme(label_scheme)
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    if data_dir.resolve() == out_dir.resolve():
        raise NemesisInputError(f"{out_dir}: the cache must not be the data folder itself")
    cases = find_cases(data_dir, include_unlabelled=include_unlabelled)
    if out_dir.exists() and not out_dir.is_dir():
        raise NemesisInputError(f"{out_dir}: exists and is not a directory")
    old = _load_index(out_dir) if out_dir.exists() else None
    if out_dir.exists() and old is None and any(p for p in out_dir.iterdir()
                                                if not p.name.startswith(".")):
        raise NemesisInputError(f"{out_dir}: exists, is not empty and is not a napari-nemesis cache")
    spacing = Spacing.parse(spacing_zyx).to_json()
    superpatch = int(superpatch)
    (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted run
    for p in (out_dir / "cases").glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in (out_dir / "cases").glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)

    same_settings = old is not None and old.get("version") == CACHE_VERSION \
        and old.get("spacing") == spacing and old.get("window") == list(HU_WINDOW) \
        and old.get("image_dtype") == CACHE_IMAGE_DTYPE
    old_cases: dict[str, Any] = dict(old["cases"]) if same_settings else {}
    old_superpatch = int(old.get("superpatch", 0)) if same_settings else 0

    train, test = split_cases(cases)
    rule = split_rule(cases)
    pinned = {c.case_id: c.split for c in cases if c.split is not None}
    split_of = {c.case_id: "train" for c in train}
    split_of.update({c.case_id: "test" for c in test})
    index = cache_index(spacing, superpatch, data_dir, split_rule=rule, split=split_description(rule, pinned),
                        pinned=pinned, cases={})
    result = CacheIndex(out_dir, Spacing.from_json(spacing).value, superpatch, index["cases"], split_rule=rule,
                        pinned=pinned)
    wanted = {c.case_id for c in cases}
    for cid in sorted(set(old["cases"]) - wanted if old else ()):
        shutil.rmtree(out_dir / "cases" / cid, ignore_errors=True)
        result.removed.append(cid)

    total = len(cases)
    for k, case in enumerate(cases):
        _check(cancel, "prepare")
        if progress is not None:
            progress(k, total, f"case {case.case_id}")
        prev = old_cases.get(case.case_id)
        case_dir = out_dir / "cases" / case.case_id
        reuse = False
        if prev is not None and (case_dir / "image.npy").is_file():
            ok_img, rec_img = _source_unchanged(case.image, prev["sources"].get("image"))
            ok_lab, rec_lab = _source_unchanged(case.label, prev["sources"].get("label"))
            same_scheme = label_scheme == "auto" or prev.get("label_scheme") in (None, label_scheme)
            if ok_img and ok_lab and same_scheme and \
                    (prev.get("labels") is None or (case_dir / "labels.npy").is_file()):
                reuse = True
                entry = dict(prev)
                entry["sources"] = {"image": rec_img, "label": rec_lab}
                if entry.get("labels") and old_superpatch != superpatch:
                    lab = np.load(case_dir / "labels.npy", mmap_mode="r")
                    counts = organ_voxel_counts(lab, SuperpatchGrid(entry["shape_zyx"], superpatch))
                    entry["organ_voxels"] = counts.tolist()
                    entry["presence"] = (counts >= PRESENCE_THRESHOLD).astype(int).tolist()
                entry["grid_shape"] = list(SuperpatchGrid(entry["shape_zyx"], superpatch).grid_shape)
                if not entry.get("voxel_sha256"):  # cached before the digest was recorded: read once more
                    _check(cancel, "prepare")
                    entry["voxel_sha256"] = ScanFingerprint.of_volume(read_volume(case.image)).voxel_sha256
        if not reuse:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{case.case_id}-", dir=out_dir / "cases"))
            try:
                entry = _prepare_one(case, tmp, spacing, superpatch, label_scheme)
                entry["sources"] = {
                    "image": _source_record(case.image),
                    "label": _source_record(case.label) if case.label is not None else None,
                }
                _check(cancel, "prepare")
                replace_folder(tmp, case_dir)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        entry["split"] = split_of[case.case_id]
        entry["image"] = f"cases/{case.case_id}/image.npy"
        entry["labels"] = f"cases/{case.case_id}/labels.npy" if entry.get("labels") else None
        index["cases"][case.case_id] = entry
        (result.skipped if reuse else result.prepared).append(case.case_id)
        # keep the old entries of cases not reached yet, so an interrupt loses nothing
        partial = dict(index)
        partial["cases"] = {**{c: v for c, v in old_cases.items() if c in wanted},
                            **index["cases"]}
        if old_superpatch != superpatch:
            partial["cases"] = dict(index["cases"])
        _write_json_atomic(out_dir / "index.json", partial)
    if progress is not None:
        progress(total, total, "done")
    _write_json_atomic(out_dir / "index.json", index)
    return result


class SuperpatchCache:
    """A prepared cache, memory-mapped.

    ``superpatch`` defaults to the size the cache was prepared for; another size works too (its
    presence labels are then computed from the cached label volumes, once per case).
    Pickling (e.g. to DataLoader workers) sends only the path; each process maps its own files.
    """

    def __init__(self, path: str | os.PathLike, superpatch: int | None = None):
        self.path = Path(path)
        doc = _load_index(self.path)
        if doc is None:
            raise NemesisInputError(f"{self.path}: not a napari-nemesis cache (no index.json)")
        if doc.get("version") != CACHE_VERSION:
            raise NemesisInputError(f"{self.path}: cache version {doc.get('version')} is not "
                                    f"{CACHE_VERSION} (made by an older napari-nemesis); run nemesis prepare again")
        self.index = doc
        self.superpatch = int(superpatch or doc["superpatch"])
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self._presence: dict[str, np.ndarray] = {}

    def __getstate__(self):
        return {"path": self.path, "superpatch": self.superpatch}

    def __setstate__(self, state):
        self.__init__(state["path"], state["superpatch"])

    def __repr__(self) -> str:
        return (f"SuperpatchCache({str(self.path)!r}, cases={len(self.case_ids)}, "
                f"superpatch={self.superpatch}, spacing_zyx={self.spacing_zyx})")

    # ---- cases ---------------------------------------------------------------------------
    @property
    def spacing_zyx(self) -> tuple[float, float, float] | str:
        """The cache's target spacing: (z, y, x) mm, or ``"native"`` (each scan kept at its own)."""
        return Spacing.from_json(self.index.get("spacing")).value

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.index["cases"])

    @property
    def train_ids(self) -> list[str]:
        return [c for c in self.case_ids if self.split_of(c) == "train"]

    @property
    def test_ids(self) -> list[str]:
        return [c for c in self.case_ids if self.split_of(c) == "test"]

    @property
    def labelled_ids(self) -> list[str]:
        return [c for c in self.case_ids if self._entry(c).get("labels")]

    def split_of(self, case_id: str) -> str:
        return self._entry(case_id)["split"]

    @property
    def split_rule(self) -> str:
        """How the cache's unpinned cases were split (``btcv``, ``given`` or ``fallback``; see
        :func:`split_rule`)."""
        return self.index.get("split_rule", "fallback")

    @property
    def pinned(self) -> dict[str, str]:
        """The cases the case list pinned to a split (``{case_id: "train" | "test"}``)."""
        return dict(self.index.get("pinned") or {})

    @property
    def split_description(self) -> str:
        """The split in one line: the rule, then the pinned cases (:func:`split_description`)."""
        return split_description(self.split_rule, self.pinned)

    def voxel_sha256(self, case_id: str) -> str | None:
        """The digest of the case's canonical voxels (:class:`~.fingerprint.ScanFingerprint`), or ``None``
        in a cache written before it was recorded."""
        return self._entry(case_id).get("voxel_sha256")

    def label_scheme(self, case_id: str) -> str | None:
        """The label-id scheme the case's label map came in (``None`` when unlabelled)."""
        return self._entry(case_id).get("label_scheme")

    def cases(self) -> list[Case]:
        """The cached cases as :class:`Case` (paths of their sources), e.g. for label ratios."""
        out = []
        for cid in self.case_ids:
            src = self._entry(cid)["sources"]
            lab = src.get("label")
            out.append(Case(cid, Path(src["image"]["path"]), Path(lab["path"]) if lab else None,
                            self.pinned.get(cid)))
        return out

    def _entry(self, case_id: str) -> dict[str, Any]:
        try:
            return self.index["cases"][case_id]
        except KeyError:
            raise NemesisInputError(f"{self.path}: no case {case_id!r} in this cache") from None

    def _map(self, case_id: str, key: str) -> np.ndarray | None:
        rel = self._entry(case_id).get(key)
        if not rel:
            return None
        k = (case_id, key)
        m = self._maps.get(k)
        if m is None:
            try:
                m = np.load(self.path / rel, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise NemesisInputError(f"{self.path / rel}: unreadable cache file ({exc}); "
                                        "run nemesis prepare again") from None
            self._maps[k] = m
        return m

    # ---- volumes, grids, labels ---------------------------------------------------------
    def image(self, case_id: str) -> np.ndarray:
        """The windowed volume (z, y, x), float16 memory map, values in [0, 1]."""
        return self._map(case_id, "image")  # type: ignore[return-value]

    def labels(self, case_id: str) -> np.ndarray | None:
        """The label volume at the cache's spacing (memory map), or ``None`` when unlabelled."""
        return self._map(case_id, "labels")

    def preprocessed(self, case_id: str) -> Preprocessed:
        """The case as a :class:`Preprocessed` (array = the float16 memory map)."""
        e = self._entry(case_id)
        return Preprocessed(
            array=self.image(case_id),
            spacing_zyx=tuple(e["spacing_zyx"]),  # type: ignore[arg-type]
            source_shape_zyx=tuple(e["source_shape_zyx"]),  # type: ignore[arg-type]
            source_spacing_zyx=tuple(e["source_spacing_zyx"]),  # type: ignore[arg-type]
            scale_zyx=tuple(e["scale_zyx"]),  # type: ignore[arg-type]
            source_canonical_affine=np.asarray(e["source_canonical_affine"]),
        )

    def grid(self, case_id: str, superpatch: int | None = None) -> SuperpatchGrid:
        """The case's superpatch grid, mapped to its original scan (boxes in voxels and mm)."""
        return SuperpatchGrid.for_preprocessed(self.preprocessed(case_id), superpatch or self.superpatch)

    def presence(self, case_id: str, superpatch: int | None = None) -> np.ndarray | None:
        """Organ presence (n, 8) uint8 per grid superpatch, ``None`` when unlabelled."""
        s = int(superpatch or self.superpatch)
        e = self._entry(case_id)
        if not e.get("labels"):
            return None
        if s == int(self.index["superpatch"]) and e.get("presence") is not None:
            return np.asarray(e["presence"], dtype=np.uint8)
        key = f"{case_id}/{s}"
        if key not in self._presence:
            lab = self.labels(case_id)
            counts = organ_voxel_counts(lab, SuperpatchGrid(e["shape_zyx"], s))
            self._presence[key] = (counts >= PRESENCE_THRESHOLD).astype(np.uint8)
        return self._presence[key]

    def n_superpatches(self, case_ids: Iterable[str] | None = None) -> int:
        ids = self.case_ids if case_ids is None else list(case_ids)
        return sum(self.grid(c).n for c in ids)

    # ---- sampling -----------------------------------------------------------------------
    def sample(
        self,
        rng: np.random.Generator,
        case_ids: Sequence[str] | None = None,
        min_mean: float = MIN_MEAN,
        max_tries: int = 20,
        return_info: bool = False,
        weights: Sequence[float] | None = None,
    ):
        """A random (S, S, S) float32 superpatch for pretraining.

        A case is drawn uniformly (from ``case_ids`` if given; with ``weights``, one probability per
        case, in proportion to them), then an origin with
        :func:`~.grid.sample_superpatch_origin` (the crop stays inside the scan along every axis
        at least one superpatch long); crops with mean < ``min_mean`` are redrawn (new case and origin), at
        most ``max_tries`` times, after which the crop with the highest mean is returned.
        ``return_info=True`` returns ``(patch, case_id, origin_zyx)``.
        """
        ids = list(case_ids) if case_ids is not None else self.case_ids
        if not ids:
            raise NemesisInputError(f"{self.path}: no cases to sample from")
        s = self.superpatch
        best = None
        if weights is not None and len(weights) != len(ids):
            raise NemesisInputError(f"{self.path}: {len(weights)} case weights for {len(ids)} cases")
        for _ in range(max(1, int(max_tries))):
            if weights is None:
                cid = ids[int(rng.integers(len(ids)))]
            else:
                cid = ids[int(rng.choice(len(ids), p=weights))]
            vol = self.image(cid)
            origin = sample_superpatch_origin(vol.shape, s, rng)
            patch = crop_superpatch(vol, origin, s)
            mean = float(patch.mean(dtype=np.float64))
            if mean >= min_mean:
                best = (mean, patch, cid, origin)
                break
            if best is None or mean > best[0]:
                best = (mean, patch, cid, origin)
        assert best is not None
        return (best[1], best[2], best[3]) if return_info else best[1]

    def superpatches(
        self, case_ids: Iterable[str] | None = None, superpatch: int | None = None
    ) -> Iterator[tuple[str, int, np.ndarray, np.ndarray | None]]:
        """Every grid superpatch: ``(case_id, index, patch (S,S,S) float32, labels (8,) uint8)``.

        ``labels`` is ``None`` for unlabelled cases. Streams one superpatch at a time.
        """
        s = int(superpatch or self.superpatch)
        for cid in (self.case_ids if case_ids is None else case_ids):
            grid = self.grid(cid, s)
            presence = self.presence(cid, s)
            vol = self.image(cid)
            for i in range(grid.n):
                patch = crop_superpatch(vol, grid.box(i).start, s)
                yield cid, i, patch, (presence[i] if presence is not None else None)


def is_cache(path_or_cache) -> bool:
    """True for a :class:`SuperpatchCache` or a folder holding a cache's ``index.json``."""
    if isinstance(path_or_cache, SuperpatchCache):
        return True
    return (Path(path_or_cache) / "index.json").is_file()


def open_cache(path: str | os.PathLike, superpatch: int | None = None) -> SuperpatchCache:
    """Open a cache made by :func:`prepare_cache` (``nemesis prepare``)."""
    return SuperpatchCache(path, superpatch)


def _default_cache_for(data_dir: Path, spacing, include_unlabelled: bool = False, label_scheme: str = "auto") -> Path:
    """One cache per data folder *and* what it holds (spacing, unlabelled scans, label scheme),
    so preparing it for pretraining never deletes the cases probing needs, and vice versa."""
    key = json.dumps([str(data_dir.resolve()), Spacing.parse(spacing).to_json(),
                      bool(include_unlabelled), label_scheme])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", data_dir.resolve().name) or "data"
    return default_cache_dir() / "datasets" / f"{name}-{digest}"


_UNSET: Any = object()


def open_dataset(
    path_or_cache: str | os.PathLike | SuperpatchCache,
    superpatch: int = 128,
    spacing_zyx=_UNSET,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    include_unlabelled: bool = False,
    label_scheme: str = "auto",
) -> SuperpatchCache:
    """A :class:`SuperpatchCache` from a cache, a cache folder, or a raw dataset folder.

    A raw folder (BTCV layout or JSON list) is prepared first, into ``cache_dir`` if given, else
    into ``default_cache_dir()/datasets/<folder>-<hash of path and spacing>``; the data folder
    itself is never written to. Up-to-date cases are reused. ``spacing_zyx`` defaults to the
    cache's own spacing, or :data:`DEFAULT_SPACING_ZYX` for raw data (``"native"`` keeps each
    scan's own); a cache prepared at
    another spacing than an explicit ``spacing_zyx`` is an error. ``label_scheme`` is how the
    label maps are read (``auto`` detects it); a cache whose cases were read under another named
    scheme is an error.
    """
    check_label_scheme(label_scheme)
    if isinstance(path_or_cache, SuperpatchCache):
        cache = path_or_cache if path_or_cache.superpatch == superpatch else \
            SuperpatchCache(path_or_cache.path, superpatch)
    else:
        path = Path(path_or_cache)
        if (path / "index.json").is_file():
            cache = SuperpatchCache(path, superpatch)
        else:
            spacing = DEFAULT_SPACING_ZYX if spacing_zyx is _UNSET else spacing_zyx
            target = Path(cache_dir) if cache_dir is not None else \
                _default_cache_for(path, spacing, include_unlabelled, label_scheme)
            prepare_cache(path, target, spacing, superpatch, progress=progress, cancel=cancel,
                          include_unlabelled=include_unlabelled, label_scheme=label_scheme)
            return SuperpatchCache(target, superpatch)
    if label_scheme != "auto":
        for cid in cache.labelled_ids:
            if cache.label_scheme(cid) != label_scheme:
                raise NemesisInputError(f"{cache.path}: case {cid} was cached as label scheme "
                                        f"{cache.label_scheme(cid)}, not {label_scheme}; prepare it again "
                                        f"with --label-scheme {label_scheme}")
    if spacing_zyx is not _UNSET:
        want = Spacing.parse(spacing_zyx).value
        if want != cache.spacing_zyx:
            raise NemesisInputError(f"{cache.path}: cache spacing {cache.spacing_zyx} (z, y, x) is "
                                    f"not the requested {want}; prepare it again")
    return cache
