"""Train the organ probe straight from a labelling project, with an honest estimate; stop and resume.

The labelled superpatches of every scan in the project (a snapshot taken when the run starts, kept
in ``OUT/labels.json``) train a head on the frozen encoder's mean token (``linear``) or the encoder
and head together (``finetune``), exactly as ``nemesis probe`` does. The run is a list of fits:

1. ``final``: every labelled superpatch; its head is saved first (``OUT/probe.safetensors``, and
   ``OUT/finetuned.safetensors`` when fine-tuning), so a run stopped later still leaves a head;
2. the cross-validation folds: whole scans held out when the labels come from several scans
   (leave-one-scan-out up to ``folds`` scans, ``GroupKFold`` beyond), superpatches otherwise
   (seeded ``KFold``). The pooled out-of-fold predictions give ``auroc_mean`` and ``f1_macro``
   (``train.metrics.presence_metrics``); nothing is tuned on them.

Every step reports a ``step`` event (global step, loss), every fold an ``eval`` event (the pooled
held-out AUROC so far). ``cancel()`` (and, in a child process, ``train.runtime.stop_requested()``) is checked before each
step: the fit in progress is saved (``OUT/state-<token>.safetensors`` with weights and AdamW
moments, then ``OUT/state.json`` naming that file and token, then ``OUT/state.safetensors`` as a
link to it and older tensor files removed, so a kill at any instant leaves a JSON whose tensors
are complete) and :class:`NemesisCancelled` is raised; ``resume=True`` continues at that step with
the same data order, so a resumed run ends where an uninterrupted one would. Resuming a finished
run reports its result again (exit 0; the ``start`` event says ``already_finished``).

``level="patch"`` (``nemesis labels train PROJECT --level patch``) trains a patch-level head (one
LayerNorm + Linear on every token of the frozen encoder, ``model.heads.PatchHead``) instead. Its
labels come from label maps, not from the superpatch labels: every scan the project records a
segmentation for (``labels fill``, ``LabelProject.record_segmentation``) gives patch labels by the
core's rule (``data.patch_labels``: ``patch_threshold`` organ voxels at the model's spacing), for
every superpatch of it and every patch that holds some of the scan. The snapshot keeps them, the
folds hold out the same whole scans (or superpatches) as at the superpatch level, and the held-out
metrics are over patches. A project whose scans have superpatch labels only is refused.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_json_atomic
from ..errors import NemesisCancelled, NemesisCheckpointError, NemesisInputError
from ..train.events import CancelFn, ProgressFn, emit
from ..train.heads_fit import fit_head, head_optimizer
from ..model.heads import HEADS
from ..model.levels import HEAD_LEVELS
from ..train.probe import ProbeHead, ProbeModel, ProbeOptions
from ..train.runtime import single_thread
from ..train.state import optimizer_tensors, restore_optimizer
from .project import LabelProject

__all__ = ["TrainOptions", "train_from_labels", "plan_folds", "RUN_FILES"]

STATE_FORMAT = "napari-nemesis/labels-train-state"
STATE_VERSION = 1
#: The files of a run folder (besides ``log.jsonl``, written by the caller).
RUN_FILES = {
    "options": "options.json",  # options, project, checkpoint (what the run is)
    "labels": "labels.json",  # the label snapshot the run trains on
    "features": "features.safetensors",  # linear: frozen features of every labelled superpatch
    "state": "state.json",  # where the run is; resumable
    "state_tensors": "state.safetensors",  # weights + AdamW moments of the fit in progress
    "head": "probe.safetensors",
    "head_patch": "probe_patch.safetensors",  # --level patch
    "finetuned": "finetuned.safetensors",
    "result": "train.json",
}


@dataclass
class TrainOptions(ProbeOptions):
    """``nemesis probe``'s options, plus cross-validation folds and checkpoint/log intervals."""

    folds: int = 5
    checkpoint_every: int = 50  # steps between resumable saves within a fit (and always on stop)
    log_every: int = 1  # steps between step events

    def check(self) -> None:
        if self.mode not in ("linear", "finetune"):
            raise NemesisInputError(f"--mode {self.mode}: choose linear or finetune")
        if self.label_ratio != 1.0:
            raise NemesisInputError("label ratios do not apply to training from labels (every label is used)")
        if self.folds < 2:
            raise NemesisInputError(f"--folds {self.folds}: need at least 2 for a held-out estimate")
        if self.resolved_epochs() < 1 or self.batch < 1 or self.log_every < 1 or self.checkpoint_every < 0:
            raise NemesisInputError("--epochs, --batch and --log-every must be positive, --checkpoint-every >= 0")
        if self.level not in HEAD_LEVELS:
            raise NemesisInputError(f"--level {self.level}: choose one of {', '.join(HEAD_LEVELS)}")
        if self.level == "patch" and self.mode != "linear":
            raise NemesisInputError(f"--level patch trains a linear head on the frozen encoder; --mode {self.mode} is "
                                    "for the superpatch level only")
        if isinstance(self.patch_threshold, bool) or int(self.patch_threshold) < 1:
            raise NemesisInputError(f"--patch-threshold {self.patch_threshold}: must be at least 1 voxel")


# ---- the label snapshot ---------------------------------------------------------------------
def _snapshot(project: LabelProject, read_images: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every labelled superpatch of the project, and the scans' volumes (read and verified once).

    ``read_images=False``: from the sidecars alone (no image is read; the volumes are ``{}``):
    :class:`_Patches` reads a scan only when one of its superpatches is needed, and checks then
    that its voxels are the ones the labels were made for (the label curve, whose features are
    mostly cached, opens no image it does not need).
    """
    status = {row["id"]: row for row in project.status()["scans"]}
    scans, items, volumes = [], [], {}
    for sc in project.scans:
        if not status[sc.scan_id]["labelled"]:
            continue
        if read_images:
            store = project.store(sc, add=False)
            sha, revision = store.scan.voxel_sha256, store.revision
            presence = store.presence()
            labelled = store.indices("labelled")
            volumes[sc.scan_id] = store.volume
        else:
            sha, revision, labelled, presence = _sidecar_labels(project, sc)
        scans.append({"id": sc.scan_id, "image": str(sc.image.resolve()), "labels": str(sc.labels.resolve()),
                      "voxel_sha256": sha, "revision": revision})
        for i in labelled:
            items.append({"scan": sc.scan_id, "index": i, "presence": presence[i].tolist()})
    if not items:
        raise NemesisInputError(f"{project.root}: no labelled superpatches to train on; label some first")
    doc = {"project": str(project.root.resolve()), "organs": list(project.organs), "superpatch": project.superpatch,
           "spacing_zyx": list(project.spacing_zyx), "presence_threshold": project.threshold,
           "scans": scans, "items": items}
    return doc, volumes


def _patch_snapshot(project: LabelProject, patch: int, threshold: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Patch labels of every superpatch of the scans with a recorded segmentation: each item holds the
    tokens inside the scan (``tokens``) and, per organ, those labelled 1 (``positives``)."""
    from ..data import patch_inside, patch_labels

    from .fill import segmentation_at_model

    with_seg = [sc for sc in project.scans if sc.segmentation is not None]
    if not with_seg:
        raise NemesisInputError(f"{project.root}: --level patch needs label maps, but no scan of this project was filled "
                                "from a segmentation (its labels say only which organs each superpatch holds, not where); "
                                "fill scans with 'nemesis labels fill PROJECT SCAN SEG' first")
    scans, items, volumes = [], [], {}
    for sc in with_seg:
        if not sc.segmentation.exists():
            raise NemesisInputError(f"{sc.segmentation}: the segmentation scan {sc.scan_id} was filled from is gone; "
                                    "fill it again or restore the file")
        store = project.store(sc, add=False)
        at_model, grid, scheme, columns = segmentation_at_model(store, sc.segmentation, sc.segmentation_scheme or "auto")
        scans.append({"id": sc.scan_id, "image": str(sc.image.resolve()), "labels": str(sc.labels.resolve()),
                      "segmentation": str(sc.segmentation.resolve()), "label_scheme": scheme,
                      "voxel_sha256": store.scan.voxel_sha256, "revision": store.revision})
        for i in range(grid.n):
            lab = patch_labels(grid.superpatch_of(at_model, i), patch, threshold)[:, columns]
            tokens = np.flatnonzero(patch_inside(grid, i, patch))
            items.append({"scan": sc.scan_id, "index": i, "tokens": tokens.tolist(),
                          "positives": {o: [int(t) for t in tokens if lab[t, k]] for k, o in enumerate(store.organs)}})
        volumes[sc.scan_id] = store.volume
    skipped = [sc.scan_id for sc in project.scans if sc.segmentation is None]
    doc = {"project": str(project.root.resolve()), "organs": list(project.organs), "superpatch": project.superpatch,
           "spacing_zyx": list(project.spacing_zyx), "presence_threshold": project.threshold, "level": "patch",
           "patch": int(patch), "patch_threshold": int(threshold), "skipped_scans": skipped,
           "scans": scans, "items": items}
    return doc, volumes


def _units(snapshot: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """What one row of features and labels is: a superpatch (``level`` superpatch) or a patch inside
    the scan. Returns ``(item of each row, labels (rows, K))``."""
    items, organs = snapshot["items"], snapshot["organs"]
    if snapshot.get("level", "superpatch") != "patch":
        return np.arange(len(items)), np.asarray([it["presence"] for it in items], dtype=np.float32).reshape(-1, len(organs))
    unit_item, rows = [], []
    for j, it in enumerate(items):
        lab = np.zeros((len(it["tokens"]), len(organs)), np.float32)
        where = {t: r for r, t in enumerate(it["tokens"])}
        for k, o in enumerate(organs):
            for t in it["positives"][o]:
                lab[where[t], k] = 1.0
        rows.append(lab)
        unit_item += [j] * len(it["tokens"])
    y = np.concatenate(rows) if rows else np.zeros((0, len(organs)), np.float32)
    return np.asarray(unit_item, dtype=np.int64), y


def _sidecar_labels(project: LabelProject, sc) -> tuple[str, int, list[int], dict[int, np.ndarray]]:
    """A scan's voxel hash, revision, labelled indices and their presence rows, from its sidecar."""
    from .sidecar import GridSpec, read_sidecar

    doc = read_sidecar(sc.labels)
    if list(doc["organs"]) != list(project.organs):
        raise NemesisInputError(f"{sc.labels}: labels for the organs {doc['organs']}, not the project's "
                                f"{list(project.organs)}")
    col = {o: k for k, o in enumerate(project.organs)}
    n = GridSpec.from_json(doc["grid"]).n
    labelled, presence = [], {}
    for e in doc["superpatches"]:
        if e["state"] != "labelled":
            continue
        i = int(e["index"])
        unknown = [o for o in e.get("organs") or () if o not in col]
        if not 0 <= i < n or unknown:
            raise NemesisInputError(f"{sc.labels}: malformed label sidecar (superpatch {i}: "
                                    f"{'unknown organ ' + unknown[0] if unknown else f'outside the grid of {n}'})")
        row = np.zeros(len(col), dtype=np.uint8)
        for o in e.get("organs") or ():
            row[col[o]] = 1
        labelled.append(i)
        presence[i] = row
    return str(doc["scan"]["voxel_sha256"]), int(doc.get("revision", 0)), sorted(labelled), presence


class _Patches:
    """The (S, S, S) windowed superpatch of a snapshot item, each scan preprocessed once."""

    def __init__(self, snapshot: dict[str, Any], volumes: dict[str, Any] | None = None, *,
                 since: str = "this run started", advice: str = "start a new run instead of resuming") -> None:
        self.snapshot = snapshot
        self.since, self.advice = since, advice  # what a scan changed on disk is told
        self.volumes = dict(volumes or {})
        self._pre: dict[str, Any] = {}

    def _grid(self, scan_id: str):
        from ..data import SuperpatchGrid, preprocess, read_volume

        from .sidecar import ScanFingerprint

        if scan_id not in self._pre:
            volume = self.volumes.pop(scan_id, None)
            if volume is None:
                rec = next(s for s in self.snapshot["scans"] if s["id"] == scan_id)
                volume = read_volume(rec["image"])
                if ScanFingerprint.of_volume(volume).voxel_sha256 != rec["voxel_sha256"]:
                    raise NemesisInputError(f"{rec['image']}: the scan changed since {self.since}; "
                                            f"{self.advice}")
            pre = preprocess(volume, self.snapshot["spacing_zyx"])
            self._pre[scan_id] = (pre.array, SuperpatchGrid(pre.shape, self.snapshot["superpatch"]))
        return self._pre[scan_id]

    def __call__(self, item: dict[str, Any]) -> np.ndarray:
        array, grid = self._grid(item["scan"])
        return grid.superpatch_of(array, item["index"])


# ---- cross-validation -----------------------------------------------------------------------
def plan_folds(groups: list[str], folds: int = 5, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Held-out folds ``[(train_idx, test_idx), ...]`` over items whose scan ids are ``groups``.

    Several scans: whole scans held out (leave-one-scan-out when there are at most ``folds``,
    else ``GroupKFold(folds)``). One scan: ``KFold(min(folds, n), shuffle, seed)`` over its
    superpatches. Fewer than 2 items: no estimate. Returns the folds and a description.
    """
    from sklearn.model_selection import GroupKFold, KFold

    n = len(groups)
    scans = sorted(set(groups))
    idx = np.arange(n)
    if n < 2:
        return [], {"estimate": "none (fewer than 2 labelled superpatches)", "cv_over": None, "cv_folds": 0}
    if len(scans) >= 2:
        k = min(folds, len(scans))
        codes = np.asarray([scans.index(g) for g in groups])
        splits = [(tr, te) for tr, te in GroupKFold(n_splits=k).split(idx, groups=codes)]
        what = (f"leave-one-scan-out cross-validation ({len(scans)} scans)" if k == len(scans)
                else f"{k}-fold cross-validation over scans ({len(scans)} scans)")
        return splits, {"estimate": what, "cv_over": "scans", "cv_folds": k}
    k = min(folds, n)
    splits = [(tr, te) for tr, te in KFold(n_splits=k, shuffle=True, random_state=seed).split(idx)]
    return splits, {"estimate": f"{k}-fold cross-validation over superpatches (1 scan)", "cv_over": "superpatches",
                    "cv_folds": k}


# ---- resumable state ------------------------------------------------------------------------
class _RunState:
    """``state.json`` (+ ``state.safetensors`` while a fit is in progress), token-matched.

    A fit's weights and optimizer are stored as every resumable run stores them
    (``train.state.optimizer_tensors``); the JSON also says where in the list of fits the run is.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.doc: dict[str, Any] = {"format": STATE_FORMAT, "version": STATE_VERSION, "fit": 0, "step": 0,
                                    "token": None, "features_done": 0, "folds_done": [], "oof": {}, "head": None}

    @property
    def json_path(self) -> Path:
        return self.out / RUN_FILES["state"]

    @property
    def tensor_path(self) -> Path:
        return self.out / RUN_FILES["state_tensors"]

    def _tensor_file(self, doc: dict[str, Any]) -> Path:
        """The tensor file a state names: ``state-<token>.safetensors`` (or, as earlier versions
        wrote, ``state.safetensors``), always inside the run folder."""
        name = doc.get("tensors")
        if name is None:
            return self.tensor_path
        if not isinstance(name, str) or Path(name).name != name or not name.startswith("state-"):
            raise NemesisCheckpointError(f"{self.json_path}: names a tensor file outside the run folder ({name!r})")
        return self.out / name

    def load(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        from ..model.checkpoint import read_metadata

        try:
            doc = json.loads(self.json_path.read_text())
        except FileNotFoundError:
            return None  # stopped before anything was saved: start from the beginning
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise NemesisCheckpointError(f"{self.json_path}: unreadable training state "
                                         f"({exc.__class__.__name__})") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT \
                or not isinstance(doc.get("version", 0), int) or int(doc.get("version", 0)) > STATE_VERSION:
            raise NemesisCheckpointError(f"{self.json_path}: not a labels training state this version can resume")
        for key, kind in (("fit", int), ("step", int), ("features_done", int), ("folds_done", list), ("oof", dict)):
            if key in doc and (not isinstance(doc[key], kind) or isinstance(doc[key], bool)):
                raise NemesisCheckpointError(f"{self.json_path}: malformed training state ({key} is "
                                             f"{type(doc[key]).__name__}, not {kind.__name__})")
        self.doc = {**self.doc, **doc}
        if doc.get("token") is None:
            return None
        path = self._tensor_file(doc)
        token = read_metadata(path).get("token")
        if token != doc["token"]:
            raise NemesisCheckpointError(f"{self.out}: {RUN_FILES['state']} and {path.name} disagree "
                                         "(a save was cut short); start the run again")
        return load_file(str(path))

    def save(self, tensors: dict[str, torch.Tensor] | None = None, **fields: Any) -> None:
        """Tensors first (if any) to a file of their own, then the JSON naming it, then the older
        tensor files go: a kill at any instant leaves a JSON whose tensor file is complete."""
        from safetensors.torch import save_file

        from ..train.runtime import SAVE_LOCK

        with SAVE_LOCK:
            self.doc.update(fields)
            self.doc["token"] = None
            self.doc.pop("tensors", None)
            keep = None
            if tensors is not None:
                token = uuid.uuid4().hex
                keep = self.out / f"state-{token[:16]}.safetensors"
                with atomic_path(keep) as tmp:
                    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "token": token})
                self.doc["token"] = token
                self.doc["tensors"] = keep.name
            self.doc["saved"] = time.time()
            write_json_atomic(self.json_path, self.doc, durable=True)
            if keep is not None:  # the familiar name, for people and older readers
                tmp = self.out / f".{RUN_FILES['state_tensors']}.tmp{os.getpid()}"
                tmp.unlink(missing_ok=True)
                try:
                    os.link(keep, tmp)
                except OSError:
                    import shutil

                    shutil.copyfile(keep, tmp)
                os.replace(tmp, self.tensor_path)
            for old in self.out.glob("state-*.safetensors"):
                if keep is None or old.name != keep.name:
                    old.unlink(missing_ok=True)


# ---- the run ----------------------------------------------------------------------------------
def _steps_per_fit(opts: TrainOptions, n_train: int) -> int:
    if opts.mode == "linear":
        return opts.resolved_epochs()
    return opts.resolved_epochs() * max(1, -(-n_train // opts.batch))


def train_from_labels(
    project: LabelProject | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    opts: TrainOptions | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Train a probe head (``linear``) or encoder + head (``finetune``) from a project's labels.

    ``checkpoint``: the NEMESIS encoder (default: the bundled weights). ``resume=True`` continues
    the run in ``out_dir`` with its own options, checkpoint and label snapshot (``project`` and
    ``checkpoint`` may then be ``None``; ``opts`` only changes ``device`` and ``bf16``). Returns the
    result dict (``auroc_mean``, ``f1_macro``, ``estimate``, ``n_labelled``, ``head``, ...), also
    written to ``OUT/train.json``.
    """
    from ..model import load_checkpoint
    from ..train.probe import encoder_digest
    from ..train.runtime import resolve_device
    from ..weights import default_checkpoint_path

    out = Path(out_dir)
    state = _RunState(out)
    volumes: dict[str, Any] = {}
    if resume:
        try:
            config = json.loads((out / RUN_FILES["options"]).read_text())
            snapshot = json.loads((out / RUN_FILES["labels"]).read_text())
        except FileNotFoundError:
            raise NemesisInputError(f"{out}: no run to resume (no {RUN_FILES['options']}); start one without --resume") from None
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise NemesisCheckpointError(f"{out}: unreadable run files ({exc.__class__.__name__}); start a new run") from None
        try:
            saved = TrainOptions(**config["options"])
            for key in ("checkpoint", "encoder_sha256"):
                if not isinstance(config[key], str):
                    raise TypeError(f"{key} is not text")
            if not isinstance(snapshot["items"], list) or not isinstance(snapshot["scans"], list):
                raise TypeError("items / scans are not lists")
        except (KeyError, TypeError, AttributeError) as exc:
            raise NemesisCheckpointError(f"{out}: malformed {RUN_FILES['options']} or {RUN_FILES['labels']} "
                                         f"({exc.__class__.__name__}: {exc}); start a new run") from None
        if opts is not None:
            saved.device, saved.bf16 = opts.device, opts.bf16
        opts = saved
        checkpoint = config["checkpoint"]
        resumed = state.load()
    else:
        if project is None:
            raise NemesisInputError("train_from_labels: give a labelling project (or resume=True)")
        opts = opts or TrainOptions()
        opts.check()
        if not isinstance(project, LabelProject):
            project = LabelProject.open(project)
        checkpoint = str(checkpoint or default_checkpoint_path())
        if opts.level == "patch":
            model = load_checkpoint(checkpoint)  # its patch size cuts the labels
            snapshot, volumes = _patch_snapshot(project, model.cfg.patch, opts.patch_threshold)
        else:
            snapshot, volumes = _snapshot(project)
        resumed = None
    if resume or opts.level != "patch":
        model = load_checkpoint(checkpoint)
    digest = encoder_digest(model)
    if resume and digest != config["encoder_sha256"]:
        raise NemesisCheckpointError(f"{checkpoint}: the checkpoint changed since this run started (encoder "
                                     f"{digest[:12]}, run {config['encoder_sha256'][:12]}); start a new run")
    if model.cfg.superpatch != snapshot["superpatch"]:
        raise NemesisCheckpointError(f"{checkpoint}: the model takes {model.cfg.superpatch}^3 superpatches but the "
                                     f"project's labels are on {snapshot['superpatch']}^3; use a matching checkpoint")
    if snapshot.get("level") == "patch" and model.cfg.patch != snapshot["patch"]:
        raise NemesisCheckpointError(f"{checkpoint}: the model cuts {model.cfg.patch}^3 patches but this run's patch "
                                     f"labels are on {snapshot['patch']}^3; start a new run")
    if not resume:  # a new run in this folder: what an earlier one left is not resumable any more
        out.mkdir(parents=True, exist_ok=True)
        for name in ("options", "state", "state_tensors", "features", "result"):
            (out / RUN_FILES[name]).unlink(missing_ok=True)
        for old in out.glob("state-*.safetensors"):
            old.unlink(missing_ok=True)
        write_json_atomic(out / RUN_FILES["labels"], snapshot, durable=True)
        config = {"options": asdict(opts), "checkpoint": checkpoint, "encoder_sha256": digest,
                  "project": snapshot["project"], "started": time.time()}
        write_json_atomic(out / RUN_FILES["options"], config, durable=True)

    device = resolve_device(opts.device)
    items = snapshot["items"]
    organs = snapshot["organs"]
    unit_item, y = _units(snapshot)  # rows: superpatches, or the patches inside the scan (level patch)
    folds, estimate = plan_folds([it["scan"] for it in items], opts.folds, opts.seed)

    def rows(item_idx: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(unit_item, item_idx))

    fits: list[tuple[str, np.ndarray, np.ndarray | None]] = [("final", np.arange(len(y)), None)]
    fits += [(f"fold {j + 1}/{len(folds)}", rows(tr), rows(te)) for j, (tr, te) in enumerate(folds)]
    steps = [_steps_per_fit(opts, len(tr)) for _, tr, _ in fits]
    patches = _Patches(snapshot, volumes)
    t0 = time.perf_counter()
    emit(progress, "start", step=sum(steps[: state.doc["fit"]]) + state.doc["step"], total=sum(steps),
         mode=opts.mode, n_labelled=len(items), scans=len(snapshot["scans"]), folds=len(folds),
         estimate=estimate["estimate"], device=str(device), resumed=bool(resume),
         already_finished=bool(resume) and state.doc["fit"] >= len(fits))

    from ..train.runtime import stop_requested as stop_asked_in_process

    def stop_requested() -> bool:  # the caller's cancel, or the stop channel of a child process
        return (cancel is not None and bool(cancel())) or stop_asked_in_process()

    # ---- frozen features (linear) -----------------------------------------------------------
    features = None
    if opts.mode == "linear":
        features = _features(model, items, patches, opts, device, out, state, resume, progress, stop_requested,
                             patch_level=snapshot.get("level") == "patch")

    # ---- fits: final first, then the folds --------------------------------------------------
    oof = {int(k): v for k, v in state.doc["oof"].items()}
    result_head = state.doc.get("head")
    for f in range(state.doc["fit"], len(fits)):
        name, train_idx, test_idx = fits[f]
        start = state.doc["step"] if f == state.doc["fit"] else 0
        tensors = resumed if f == state.doc["fit"] else None
        emit(progress, "stage", name=name, fit=f, fits=len(fits))
        with single_thread() if opts.mode == "linear" else nullcontext():  # a head's steps are tiny
            net = _fit(f, name, train_idx, start, tensors, model, checkpoint, features, y, patches, items, opts,
                       device, state, sum(steps[:f]), sum(steps), progress, stop_requested)
        if test_idx is None:
            result_head = _save_final(net, model, opts, out, snapshot, checkpoint, estimate, len(items))
            emit(progress, "checkpoint", what="head", path=result_head, step=sum(steps[: f + 1]))
        else:
            prob = _predict(net, test_idx, features, patches, items, opts, device)
            for k, i in enumerate(test_idx):
                oof[int(i)] = prob[k].tolist()
            held = sorted(oof)
            m = _metrics(y[held], np.asarray([oof[i] for i in held]), organs, opts.threshold)
            emit(progress, "eval", step=sum(steps[: f + 1]), fold=f, folds=len(folds), auroc_mean=m["auroc_mean"],
                 f1_macro=m["f1_macro"], n_held_out=len(held))
        state.save(None, fit=f + 1, step=0, oof={str(k): v for k, v in oof.items()}, head=result_head,
                   folds_done=state.doc["folds_done"] + ([f] if test_idx is not None else []))
        resumed = None
        del net

    if folds:
        held = sorted(oof)
        metrics = _metrics(y[held], np.asarray([oof[i] for i in held]), organs, opts.threshold)
    else:
        metrics = {"auroc_mean": None, "f1_macro": None, "per_organ": None}
    patch_extra: dict[str, Any] = {}
    if snapshot.get("level") == "patch":
        patch_extra = {"n_patches": int(len(y)), "patch": snapshot["patch"], "patch_threshold": snapshot["patch_threshold"],
                       "skipped_scans": snapshot["skipped_scans"]}
    result = {
        "auroc_mean": metrics["auroc_mean"],
        "f1_macro": metrics["f1_macro"],
        "estimate": estimate["estimate"],
        "n_labelled": len(items),
        "head": result_head,
        "checkpoint": str(out / RUN_FILES["finetuned"]) if opts.mode == "finetune" else checkpoint,
        "source_checkpoint": checkpoint,
        "mode": opts.mode,
        "cv_over": estimate["cv_over"],
        "cv_folds": estimate["cv_folds"],
        "per_organ": metrics["per_organ"],
        "positives": dict(zip(organs, y.sum(0).astype(int).tolist())),
        "n_scans": len(snapshot["scans"]),
        "steps": sum(steps),
        "seconds_this_run": time.perf_counter() - t0,
        "resumed": bool(resume),
        "out": str(out),
        "options": asdict(opts),
        "level": snapshot.get("level", "superpatch"),
        **patch_extra,
    }
    write_json_atomic(out / RUN_FILES["result"], result)
    emit(progress, "end", step=sum(steps), total=sum(steps), auroc_mean=result["auroc_mean"],
         f1_macro=result["f1_macro"], head=result_head)
    return result


def _metrics(y_true, y_prob, organs, threshold) -> dict[str, Any]:
    from ..train.metrics import presence_metrics

    return presence_metrics(y_true, y_prob, organs, threshold)


def _features(model, items, patches, opts, device, out, state, resume, progress, stop_requested,
              patch_level: bool = False) -> np.ndarray:
    """Frozen features of every item (``patch_level``: of each item's tokens inside the scan, one row
    per patch), saved to ``features.safetensors``; a stop keeps the rows done."""
    from safetensors.torch import load_file, save_file

    from ..train.probe import encode_features

    path = out / RUN_FILES["features"]
    done = np.zeros((0, model.cfg.embed_dim), np.float32)
    if resume and path.is_file():
        done = load_file(str(path))["features"].numpy()
    offsets = np.cumsum([0] + [len(it["tokens"]) if patch_level else 1 for it in items])
    n = int(np.searchsorted(offsets, len(done)))
    if n > len(items) or offsets[n] != len(done):  # not a whole number of items: extract them again
        done, n = done[:0], 0
    chunks = [done]
    while n < len(items):
        if stop_requested():
            _save_features(path, np.concatenate(chunks), save_file)
            state.save(None, features_done=n)
            emit(progress, "interrupted", stage="features", done=n, total=len(items))
            raise NemesisCancelled("training from labels stopped while extracting features; --resume continues")
        batch = items[n:n + opts.batch]
        feats = encode_features(model, (patches(it) for it in batch), opts.batch, device, opts.bf16, pool=not patch_level)
        if patch_level:
            feats = np.concatenate([f[it["tokens"]] for f, it in zip(feats, batch)])
        chunks.append(feats)
        n += len(batch)
        emit(progress, "item", stage="features", done=n, total=len(items))
    features = np.concatenate(chunks)
    if len(done) < len(items):
        _save_features(path, features, save_file)
        state.save(None, features_done=len(items))
    return features


def _save_features(path: Path, features: np.ndarray, save_file) -> None:
    with atomic_path(path) as tmp:
        save_file({"features": torch.from_numpy(np.ascontiguousarray(features))}, str(tmp))


def _fit(f, name, train_idx, start, tensors, model, checkpoint, features, y, patches, items, opts, device, state,
         global_start, global_total, progress, stop_requested):
    """One fit from ``start`` (its weights and moments in ``tensors`` when resuming); saves on stop."""
    from ..model import load_checkpoint

    torch.manual_seed(opts.seed * 1000 + f)
    k = y.shape[1]
    if opts.mode == "linear":
        net: nn.Module = HEADS[opts.level](features.shape[1], k)
        x_all = torch.from_numpy(features[train_idx]).float()
        y_all = torch.from_numpy(y[train_idx])
    else:
        # the final fit trains the loaded model in place; every fold starts again from the checkpoint
        encoder = model if f == 0 else load_checkpoint(checkpoint)
        net = ProbeModel(encoder, ProbeHead(encoder.cfg.embed_dim, k)).to(device)
    net.train()
    opt = head_optimizer(net, opts.resolved_lr(), opts.weight_decay)
    if tensors is not None:
        net.load_state_dict({key[len("net."):]: v for key, v in tensors.items() if key.startswith("net.")})
        restore_optimizer(opt, tensors, state.doc["optimizer"], device, source=state.tensor_path)
    total = _steps_per_fit(opts, len(train_idx))
    n_batches = max(1, -(-len(train_idx) // opts.batch))

    def save(step: int) -> None:
        opt_tensors, opt_doc = optimizer_tensors(opt)
        weights = {f"net.{key}": v.detach().cpu().contiguous() for key, v in net.state_dict().items()}
        state.save({**weights, **opt_tensors}, fit=f, step=step, optimizer=opt_doc)
        emit(progress, "checkpoint", what="state", step=global_start + step, path=str(state.json_path))

    def before_step(step: int) -> None:
        if stop_requested():
            save(step)
            emit(progress, "interrupted", step=global_start + step, total=global_total, stage=name)
            raise NemesisCancelled(f"training from labels stopped at step {global_start + step}; --resume continues")

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if opts.mode == "linear":
            return x_all, y_all
        # the order of an epoch depends only on (seed, fit, epoch): a resumed fit sees the same batches
        epoch, b = divmod(step, n_batches)
        order = np.random.default_rng([opts.seed, f, epoch]).permutation(len(train_idx))
        sel = train_idx[order[b * opts.batch:(b + 1) * opts.batch]]
        x = torch.from_numpy(np.stack([patches(items[j]) for j in sel]).astype(np.float32))[:, None].to(device)
        return x, torch.from_numpy(y[sel]).to(device)

    def after_step(done: int, loss: torch.Tensor) -> None:
        if done % opts.log_every == 0 or done == total:
            emit(progress, "step", step=global_start + done, total=global_total, loss=float(loss.detach()),
                 stage=name, fit=f)
        if opts.checkpoint_every and done % opts.checkpoint_every == 0 and done < total:
            save(done)

    return fit_head(net, opt, batch, total, start=start, device=device, bf16=opts.mode != "linear" and opts.bf16,
                    clip=1.0 if opts.mode == "finetune" else None, before_step=before_step, after_step=after_step)


@torch.no_grad()
def _predict(net, idx, features, patches, items, opts, device) -> np.ndarray:
    from ..train.probe import encode_features, head_probabilities

    if opts.mode == "linear":
        return head_probabilities(net, features[idx])
    x = encode_features(net.encoder, (patches(items[i]) for i in idx), opts.batch, device, opts.bf16)
    return head_probabilities(net.head.cpu(), x)


def _save_final(net, model, opts, out: Path, snapshot, checkpoint, estimate, n_labelled) -> str:
    """The final fit's head (and fine-tuned encoder), with the metadata ``nemesis infer`` checks."""
    from ..model import save_checkpoint
    from ..train.probe import probe_metadata, save_probe

    if opts.mode == "linear":
        head, encoder, source = net, model, checkpoint
    else:
        head, encoder = net.head.cpu(), net.encoder.cpu()
        source = str(save_checkpoint(encoder, out / RUN_FILES["finetuned"],
                                     extra={"finetuned_from": checkpoint, "labels_project": snapshot["project"]}))
    trained_on = {"train_voxel_sha256": {sc["id"]: sc["voxel_sha256"] for sc in snapshot["scans"]}}  # train.trust
    if snapshot.get("level") == "patch":
        meta = probe_metadata(encoder, snapshot["spacing_zyx"], organs=snapshot["organs"], threshold=opts.threshold,
                              checkpoint=source, level="patch", mode=opts.mode,
                              patch_threshold=snapshot["patch_threshold"], labels_project=snapshot["project"],
                              n_labelled=n_labelled, estimate=estimate["estimate"], **trained_on)
        return str(save_probe(head, out / RUN_FILES["head_patch"], meta))
    meta = probe_metadata(encoder, snapshot["spacing_zyx"], organs=snapshot["organs"], threshold=opts.threshold,
                          checkpoint=source, mode=opts.mode, presence_threshold=snapshot["presence_threshold"],
                          labels_project=snapshot["project"], n_labelled=n_labelled, estimate=estimate["estimate"],
                          **trained_on)
    return str(save_probe(head, out / RUN_FILES["head"], meta))
