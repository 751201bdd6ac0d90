"""`LabelStore`: the superpatch labels of one scan, saved durably before every call returns.

Per superpatch index a state (``unlabelled`` / ``labelled`` / ``skipped``) and, when labelled, the
set of organs present (an empty set is a valid negative: "none of these organs here"). Each change
is written to the scan's sidecar (:mod:`.sidecar`) through a temporary file, flush, fsync and
rename before ``set`` returns, so killing the process at any moment leaves either the previous or
the new complete state on disk. Writers of one sidecar (the viewer and a ``nemesis labels fill``
at the same time) take a file lock and merge what the other wrote first, so neither loses rows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import file_lock, os_problem
from ..errors import NemesisInputError
from .sidecar import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    GridSpec,
    ScanFingerprint,
    check_sidecar,
    read_sidecar,
    sidecar_path_beside,
    write_sidecar,
)

__all__ = ["STATES", "SOURCES", "SuperpatchLabel", "UNLABELLED", "LabelStore"]

#: The states a superpatch can be in.
STATES: tuple[str, ...] = ("unlabelled", "labelled", "skipped")
#: Where a label came from: a person, or a segmentation (which a later fill may replace).
SOURCES: tuple[str, ...] = ("hand", "segmentation")
#: How many changes ``undo`` can take back.
UNDO_DEPTH = 1000


#: Opens a labelling project folder: ``labels.project`` (which builds on this module) registers
#: ``LabelProject.open`` here when it is imported, so this module never imports it back.
_project_opener: Callable[..., Any] | None = None


def register_project_opener(opener: Callable[..., Any]) -> None:
    global _project_opener
    _project_opener = opener


@dataclass(frozen=True)
class SuperpatchLabel:
    """One superpatch's label: state, organs present (in the store's organ order), provenance."""

    state: str = "unlabelled"
    organs: tuple[str, ...] = ()
    source: str | None = None
    updated: str | None = None

    @property
    def content(self) -> tuple[str, tuple[str, ...], str | None]:
        """What the label says (without its time stamp): equal contents mean no change."""
        return (self.state, self.organs, self.source)

    def to_json(self, index: int) -> dict[str, Any]:
        return {"index": int(index), "state": self.state, "organs": list(self.organs), "source": self.source,
                "updated": self.updated}


UNLABELLED = SuperpatchLabel()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# the lock and the OS-error wording live beside the atomic writes (atomic.py); the old private names stay
_file_lock, _os_problem = file_lock, os_problem


def _disk_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class LabelStore:
    """The labels of one scan on one superpatch grid, backed by a sidecar JSON file.

    Open it with :meth:`for_scan`. Reading (:meth:`get`, :meth:`items`, :meth:`presence`) is from
    memory; every change (:meth:`set`, :meth:`set_many`, :meth:`undo`) is on disk before it returns.
    ``subscribe(callback)`` calls ``callback(indices)`` after each change (e.g. to recolour a grid).
    """

    def __init__(self, path: str | os.PathLike, scan_path: str | os.PathLike, scan: ScanFingerprint,
                 grid: GridSpec, organs: Iterable[str], volume=None) -> None:
        self.path = Path(path)
        self.scan_path = Path(scan_path)
        self.scan = scan
        self.grid = grid
        self.organs: tuple[str, ...] = tuple(organs)
        #: the scan as read when the store was opened (``data.Volume``), or None
        self.volume = volume
        self._entries: dict[int, SuperpatchLabel] = {}
        self._revision = 0
        self._disk_id: tuple[int, int, int] | None = None
        self._undo: list[dict[int, SuperpatchLabel]] = []
        self._mutex = threading.RLock()
        self._listeners: list[Callable[[list[int]], None]] = []

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def for_scan(cls, scan_path: str | os.PathLike, project_dir: str | os.PathLike | None = None, *,
                 volume=None, superpatch: int | None = None, spacing_zyx=None,
                 organs: Iterable[str] | None = None) -> "LabelStore":
        """Open (or start) the labels of ``scan_path``.

        Without ``project_dir`` the sidecar lies beside the scan (``<scan>.nemesis-labels.json``) and
        the grid is ``superpatch`` (default 128) at ``spacing_zyx`` (default
        ``data.DEFAULT_SPACING_ZYX``) with ``organs`` (default the 8 BTCV organs). With a project
        folder the scan is added to the project if needed and the project's settings are used.
        ``volume``: the scan already read (``data.Volume``), to skip reading it again. A sidecar made
        for another scan, grid or organ list, or by a newer format version, is refused.
        """
        if project_dir is not None:
            if _project_opener is None:  # labels/__init__ imports labels.project, which registers it
                raise RuntimeError("labels.project is not imported: import napari_nemesis.labels")
            project = _project_opener(project_dir, create=True, superpatch=superpatch,
                                      spacing_zyx=spacing_zyx, organs=organs)
            return project.store(scan_path, volume=volume)
        from ..data import DEFAULT_SPACING_ZYX, ORGAN_NAMES

        return cls.open_sidecar(sidecar_path_beside(scan_path), scan_path, volume=volume,
                                superpatch=128 if superpatch is None else superpatch,
                                spacing_zyx=DEFAULT_SPACING_ZYX if spacing_zyx is None else spacing_zyx,
                                organs=ORGAN_NAMES if organs is None else organs)

    @classmethod
    def open_sidecar(cls, path: str | os.PathLike, scan_path: str | os.PathLike, *, volume=None,
                     superpatch: int, spacing_zyx, organs: Iterable[str]) -> "LabelStore":
        """Open the sidecar at ``path`` for ``scan_path`` (read unless ``volume`` is given)."""
        from ..data import read_volume

        path = Path(path)
        organs = tuple(str(o) for o in organs)
        if not organs or len(set(organs)) != len(organs):
            raise NemesisInputError(f"organ list {list(organs)}: must be non-empty without repeats")
        if volume is None:
            volume = read_volume(scan_path)
        scan = ScanFingerprint.of_volume(volume)
        grid = GridSpec.for_scan(scan.shape_zyx, volume.spacing, superpatch, spacing_zyx)
        store = cls(path, scan_path, scan, grid, organs, volume)
        if path.exists():
            with store._mutex:
                store._load(read_sidecar(path))
        elif not os.access(path.parent if path.parent.exists() else path.parent.parent, os.W_OK):
            raise NemesisInputError(f"{path.parent}: not writable, labels cannot be saved beside the scan; "
                                    "use a project folder (nemesis labels fill PROJECT ..., project_dir=...)")
        return store

    def _load(self, doc: dict[str, Any]) -> None:
        check_sidecar(doc, self.path, self.scan, self.scan_path, self.grid, self.organs)
        entries: dict[int, SuperpatchLabel] = {}
        for e in doc["superpatches"]:
            i = int(e["index"])
            label = SuperpatchLabel(str(e["state"]), tuple(e.get("organs") or ()), e.get("source"), e.get("updated"))
            try:
                self._check(i, label)
            except NemesisInputError as exc:
                raise NemesisInputError(f"{self.path}: malformed label sidecar ({exc})") from None
            if label.state != "unlabelled":
                entries[i] = label
        self._entries = entries
        self._revision = int(doc.get("revision", 0))
        self._disk_id = _disk_id(self.path)

    # ---- reading ----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of superpatches in the scan's grid."""
        return self.grid.n

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        c = self.counts()
        return (f"LabelStore({str(self.path)!r}, n={self.n}, labelled={c['labelled']}, skipped={c['skipped']}, "
                f"unlabelled={c['unlabelled']})")

    @property
    def revision(self) -> int:
        """How many changes the sidecar has seen (from every writer)."""
        return self._revision

    def get(self, i: int) -> SuperpatchLabel:
        """The label of superpatch ``i`` (``UNLABELLED`` when nothing was said)."""
        self._check_index(i)
        return self._entries.get(int(i), UNLABELLED)

    def items(self) -> Iterator[tuple[int, SuperpatchLabel]]:
        """``(index, label)`` for every superpatch of the grid, in index order."""
        entries = dict(self._entries)
        for i in range(self.n):
            yield i, entries.get(i, UNLABELLED)

    def counts(self) -> dict[str, int]:
        """How many superpatches are in each state."""
        out = {s: 0 for s in STATES}
        for label in self._entries.values():
            out[label.state] += 1
        out["unlabelled"] = self.n - out["labelled"] - out["skipped"]
        return out

    def indices(self, state: str) -> list[int]:
        """Superpatch indices in ``state``, ascending."""
        if state not in STATES:
            raise NemesisInputError(f"state {state!r}: choose one of {', '.join(STATES)}")
        if state == "unlabelled":
            return [i for i in range(self.n) if i not in self._entries]
        return sorted(i for i, lab in self._entries.items() if lab.state == state)

    def state_codes(self) -> np.ndarray:
        """``(n,)`` uint8 per superpatch: its index in :data:`STATES` (0 unlabelled, 1 labelled,
        2 skipped), e.g. to colour a grid layer by progress."""
        out = np.zeros(self.n, dtype=np.uint8)
        for i, label in self._entries.items():
            out[i] = STATES.index(label.state)
        return out

    def presence(self) -> np.ndarray:
        """``(n, K)`` uint8 organ presence; rows of superpatches that are not labelled are 0."""
        out = np.zeros((self.n, len(self.organs)), dtype=np.uint8)
        col = {o: k for k, o in enumerate(self.organs)}
        for i, label in self._entries.items():
            for o in label.organs:
                out[i, col[o]] = 1
        return out

    # ---- changing ---------------------------------------------------------------------------
    # Every change is a read-modify-write of the sidecar on disk under its file lock: the labels
    # another writer saved are read first, and a change that depends on the current label (a
    # toggle, a fill keeping hand labels, an undo) is decided on them, never on an older copy.
    def set(self, i: int, organs: Iterable[str] | np.ndarray = (), state: str = "labelled",
            source: str = "hand") -> SuperpatchLabel:
        """Label superpatch ``i``: ``organs`` present (names, or a (K,) 0/1 vector), ``state``.

        ``skipped`` and ``unlabelled`` take no organs. Saved to the sidecar before returning.
        """
        label = self._make(i, organs, state, source)
        self._commit(lambda current: {int(i): label})
        return self.get(i)

    def set_many(self, changes: Mapping[int, tuple[Iterable[str] | np.ndarray, str]], source: str = "hand") -> list[int]:
        """Several superpatches at once, ``{index: (organs, state)}``: one save, one undo step.

        Returns the indices whose label changed.
        """
        labels = {int(i): self._make(i, organs, state, source) for i, (organs, state) in changes.items()}
        return self._commit(lambda current: labels)

    def modify(self, decide: Callable[[Mapping[int, SuperpatchLabel]], Mapping[int, tuple[Iterable[str] | np.ndarray, str]]],
               source: str = "hand") -> list[int]:
        """Read-modify-write: ``decide(current)`` gets every labelled or skipped superpatch as it
        is on disk now (``{index: label}``, under the file lock) and returns the changes
        ``{index: (organs, state)}``; one save, one undo step. Returns the indices that changed."""
        def changes(current: Mapping[int, SuperpatchLabel]) -> dict[int, SuperpatchLabel]:
            return {int(i): self._make(i, organs, state, source) for i, (organs, state) in decide(current).items()}

        return self._commit(changes)

    def toggle(self, i: int, organ: str | int, source: str = "hand") -> SuperpatchLabel:
        """Flip one organ of superpatch ``i`` (name or index in :attr:`organs`) on its label as saved
        now; the superpatch becomes labelled. Saved before returning; returns the new label."""
        self._check_index(i)
        name = self.organs[organ] if isinstance(organ, (int, np.integer)) and not isinstance(organ, bool) else str(organ)
        if name not in self.organs:
            raise NemesisInputError(f"unknown organ {name!r}; this store's organs are {', '.join(self.organs)}")

        def flip(current: Mapping[int, SuperpatchLabel]):
            label = current.get(int(i), UNLABELLED)
            present = set(label.organs) if label.state == "labelled" else set()
            return {int(i): (present ^ {name}, "labelled")}

        self.modify(flip, source=source)
        return self.get(i)

    def undo(self) -> list[int]:
        """Take back the last change made through this store (one ``set``/``set_many``/fill).

        Each superpatch goes back to its label before that change, unless another writer has
        changed it since (their later label is kept). Returns the indices restored (empty when
        there is nothing to undo). Saved before returning.
        """
        with self._mutex:
            if not self._undo:
                return []
            step = self._undo.pop()

            def restore(current: Mapping[int, SuperpatchLabel]) -> dict[int, SuperpatchLabel]:
                return {i: before for i, (before, after) in step.items()
                        if current.get(i, UNLABELLED).content == after.content}

            try:
                return self._commit(restore, record_undo=False)
            except BaseException:
                self._undo.append(step)
                raise

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def reload(self) -> list[int]:
        """Re-read the sidecar if another writer changed it; returns the indices that changed."""
        with self._mutex:
            before = dict(self._entries)
            try:
                with _file_lock(self.path):
                    self._sync_from_disk()
            except NemesisInputError:  # no lock in a read-only folder: a rename is atomic, read anyway
                self._sync_from_disk()
            changed = sorted(i for i in set(before) | set(self._entries)
                             if before.get(i, UNLABELLED).content != self._entries.get(i, UNLABELLED).content)
        if changed:
            self._notify(changed)
        return changed

    def subscribe(self, callback: Callable[[list[int]], None]) -> Callable[[], None]:
        """Call ``callback(indices)`` after every change; returns a function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    # ---- internals --------------------------------------------------------------------------
    def _check_index(self, i) -> None:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= int(i) < self.n:
            raise NemesisInputError(f"{self.path}: superpatch {i!r} out of range 0..{self.n - 1}")

    def _check(self, i: int, label: SuperpatchLabel) -> None:
        self._check_index(i)
        if label.state not in STATES:
            raise NemesisInputError(f"state {label.state!r}: choose one of {', '.join(STATES)}")
        if label.source is not None and label.source not in SOURCES:
            raise NemesisInputError(f"label source {label.source!r}: choose one of {', '.join(SOURCES)}")
        unknown = [o for o in label.organs if o not in self.organs]
        if unknown:
            raise NemesisInputError(f"unknown organ(s) {', '.join(map(repr, unknown))}; this store's organs are "
                                    f"{', '.join(self.organs)}")
        if label.organs and label.state != "labelled":
            raise NemesisInputError(f"superpatch {i}: organs can only be given with state 'labelled', not {label.state!r}")

    def _make(self, i, organs, state: str, source: str) -> SuperpatchLabel:
        if isinstance(organs, str):
            organs = (organs,)
        if isinstance(organs, np.ndarray):
            vec = np.asarray(organs).ravel()
            if len(vec) != len(self.organs):
                raise NemesisInputError(f"presence vector of length {len(vec)}; this store has {len(self.organs)} organs")
            names = {self.organs[k] for k in np.flatnonzero(vec)}
        else:
            names = {str(o) for o in organs}
        ordered = tuple(o for o in self.organs if o in names) + tuple(sorted(names - set(self.organs)))
        label = SuperpatchLabel(state, ordered, None if state == "unlabelled" else source, _now())
        self._check(i, label)
        return label

    def _sync_from_disk(self) -> None:
        """Under the file lock: adopt what every writer saved, as it is on disk now.

        Read every time (not only when the file's inode / time / size look different: a rename
        can reuse an inode within one time-stamp tick with the same size, and then a change of
        another writer would be missed and overwritten)."""
        if self.path.exists():
            self._load(read_sidecar(self.path))
        else:
            self._entries, self._revision, self._disk_id = {}, 0, None

    def _document(self, entries: dict[int, SuperpatchLabel], revision: int) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "revision": revision,
            "saved": _now(),
            "scan": self.scan.to_json(path=self.scan_path.resolve() if self.scan_path else None),
            "grid": self.grid.to_json(),
            "organs": list(self.organs),
            "superpatches": [entries[i].to_json(i) for i in sorted(entries)],
        }

    def _commit(self, decide: Callable[[Mapping[int, SuperpatchLabel]], Mapping[int, SuperpatchLabel]],
                record_undo: bool = True) -> list[int]:
        """Under the lock: read the sidecar, ``decide(current)`` the changes, write them."""
        with self._mutex:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise NemesisInputError(f"{self.path.parent}: cannot create the labels folder "
                                        f"({_os_problem(exc)})") from None
            with _file_lock(self.path):
                self._sync_from_disk()
                changes = dict(decide(dict(self._entries)))
                before = {i: self._entries.get(i, UNLABELLED) for i in changes}
                changed = sorted(i for i, lab in changes.items() if lab.content != before[i].content)
                if not changed:
                    return []
                entries = dict(self._entries)
                for i in changed:
                    if changes[i].state == "unlabelled":
                        entries.pop(i, None)
                    else:
                        entries[i] = changes[i]
                try:
                    write_sidecar(self.path, self._document(entries, self._revision + 1))
                except OSError as exc:
                    raise NemesisInputError(f"{self.path}: could not save the labels ({_os_problem(exc)}); "
                                            "the previous state is kept") from None
                self._entries = entries
                self._revision += 1
                self._disk_id = _disk_id(self.path)
            if record_undo:
                self._undo.append({i: (before[i], changes[i]) for i in changed})
                del self._undo[:-UNDO_DEPTH]
        self._notify(changed)
        return changed

    def _notify(self, indices: list[int]) -> None:
        for callback in list(self._listeners):
            callback(list(indices))
