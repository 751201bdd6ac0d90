"""Organ maps at patch resolution: a head on every encoder token, one per 16^3 patch.

A 128^3 superpatch at 1.5 mm is 19 cm wide, so superpatch-level probabilities say little about
where in it an organ lies. The frozen encoder already gives one token per patch (24 mm at 16^3 and
1.5 mm); a patch-level head (``model.heads.PatchHead``: LayerNorm + Linear shared by all tokens)
turns every token into organ logits, without pooling.

* Labels: a patch is labelled 1 for an organ when it holds at least ``patch_threshold`` (default
  :data:`~..data.PATCH_THRESHOLD`, 100) voxels of it on the label map at the model's spacing
  (:func:`~..data.patch_labels`, the rule superpatch presence follows). Patches wholly in the
  padding beyond the scan are neither trained on nor scored.
* Training (:func:`run_patch_probe`, ``nemesis probe DATA --level patch``): a linear head on the
  frozen encoder's tokens of the training split, full-batch AdamW for a fixed number of steps
  (``train.probe.train_linear_head``, ``train.heads_fit.fit_head``); reported once on the test split's
  patches. ``nemesis labels train PROJECT --level patch`` trains the same head from a project
  (``labels.training``).
* Inference (:func:`infer_patch_scan`, ``nemesis infer SCAN --level patch``): per-patch
  probabilities of a whole scan, superpatch by superpatch; :class:`PatchInferResult` paints them on
  the scan's own grid (:meth:`PatchInferResult.probability_map`), so ``train.write_infer_outputs``
  writes maps with the scan's shape and affine.

The head records ``"level": "patch"`` and the patch size beside the identity fields every head
carries (``encoder_sha256``, ``superpatch``, ``spacing_zyx``, ...), and ``check_probe_matches``
refuses it on another encoder, superpatch or patch size, or where a superpatch head is expected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..data.organs import PATCH_THRESHOLD, patch_inside, patch_labels
from ..data.spacing import Spacing
from ..errors import NemesisInputError
from ..model import NemesisMAE
from .events import CancelFn, ProgressFn, check_cancel, emit
from .inference import check_output, prepare_for_head
from .probe import (
    PATCH_PROBE_FILE,
    ProbeOptions,
    dataset_for,
    encode_features,
    head_probabilities,
    probe_metadata,
    save_probe,
    train_linear_head,
    training_case_ids,
    training_digests,
)
from .runtime import autocast, resolve_device

__all__ = ["PATCH_LEVEL", "patch_items", "extract_patch_features", "run_patch_probe", "infer_patch_scan",
           "PatchInferResult", "check_patch_threshold"]

PATCH_LEVEL = "patch"


def check_patch_threshold(threshold) -> int:
    """``threshold`` as an int >= 1; a one-line error otherwise."""
    if isinstance(threshold, bool) or int(threshold) != threshold or int(threshold) < 1:
        raise NemesisInputError(f"--patch-threshold {threshold}: must be a whole number of voxels, at least 1")
    return int(threshold)


# ---- labelled patches of a cache ---------------------------------------------------------------------
def patch_items(model: NemesisMAE, cache, case_ids: list[str], threshold: int = PATCH_THRESHOLD
                ) -> Iterator[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Every grid superpatch of ``case_ids``: ``(case_id, index, patch (S, S, S) float32, labels (N, 8)
    uint8, inside (N,) bool)``, the patch labels from the cached label map at the cache's spacing."""
    s, p = model.cfg.superpatch, model.cfg.patch
    for cid in case_ids:
        labels = cache.labels(cid)
        if labels is None:
            raise NemesisInputError(f"{cache.path}: case {cid} has no label map; patch-level probing needs "
                                    "labelled scans")
        grid = cache.grid(cid, s)
        image = cache.image(cid)
        for i in range(grid.n):
            patch = grid.superpatch_of(image, i).astype(np.float32)
            lab = patch_labels(grid.superpatch_of(labels, i), p, threshold)
            yield cid, i, patch, lab, patch_inside(grid, i, p)


def extract_patch_features(model: NemesisMAE, cache, case_ids: list[str], threshold: int, *encode_args: Any,
                           **encode_kwargs: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """Token features (M, E), patch labels (M, 8) and (case, superpatch, token) of the M patches of
    ``case_ids`` that hold some of their scan; the other arguments are ``encode_features``'s."""
    labels, inside, where = [], [], []

    def superpatches():
        for cid, i, patch, lab, ins in patch_items(model, cache, case_ids, threshold):
            labels.append(lab)
            inside.append(ins)
            where.extend((cid, i, int(t)) for t in np.flatnonzero(ins))
            yield patch

    tokens = encode_features(model, superpatches(), *encode_args, total=cache.n_superpatches(case_ids), pool=False,
                             **encode_kwargs)
    if not len(tokens):
        return np.zeros((0, model.cfg.embed_dim), np.float32), np.zeros((0, 8), np.uint8), []
    keep = np.stack(inside)
    return tokens[keep], np.stack(labels)[keep], where


def run_patch_probe(
    data,
    model: NemesisMAE,
    opts: ProbeOptions,
    out_dir: str | Path | None = None,
    checkpoint_name: str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    keep_predictions: bool = False,
    label_scheme: str = "auto",
    spacing_zyx=None,
) -> dict[str, Any]:
    """``run_probe`` at the patch level: a linear head on every token of the training split, scored
    once on the test split's patches. Saves ``OUT/probe_patch.safetensors`` (``"level": "patch"``).

    The result has ``run_probe``'s keys (``auroc_mean``, ``f1_macro``, ``per_organ`` over patches ...)
    plus ``level``, ``patch``, ``patch_threshold``, ``n_train_patches`` and ``n_test_patches``.
    """
    from ..data import ORGAN_NAMES
    from .metrics import presence_metrics

    if opts.mode != "linear":
        raise NemesisInputError(f"--level patch trains a linear head on the frozen encoder; --mode {opts.mode} is for "
                                "the superpatch level only")
    if not 0 < opts.label_ratio <= 1:
        raise NemesisInputError(f"--label-ratio {opts.label_ratio} must be in (0, 1]")
    threshold = check_patch_threshold(opts.patch_threshold)
    device = resolve_device(opts.device)
    checkpoint_name = checkpoint_name or (str(model.checkpoint_path) if model.checkpoint_path else None)
    cache = dataset_for(data, model, spacing_zyx, label_scheme)
    train_ids = training_case_ids(cache, opts.label_ratio, opts.seed)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    if not test_ids:
        raise NemesisInputError(f"{cache.path}: no labelled test scans to report on")
    emit(progress, "start", mode=opts.mode, level=PATCH_LEVEL, train_cases=len(train_ids), test_cases=len(test_ids),
         split=cache.split_rule)
    xtr, ytr, _ = extract_patch_features(model, cache, train_ids, threshold, opts.batch, device, opts.bf16, progress,
                                         cancel, "train features")
    head = train_linear_head(xtr, ytr, opts, cancel)
    xte, yte, _ = extract_patch_features(model, cache, test_ids, threshold, opts.batch, device, opts.bf16, progress,
                                         cancel, "test features")
    prob = head_probabilities(head, xte)
    result = presence_metrics(yte, prob, ORGAN_NAMES, opts.threshold)
    result["mean_over"] = result["mean_over"].replace("superpatches", "patches")
    result.update(
        mode=opts.mode, level=PATCH_LEVEL, patch=model.cfg.patch, patch_threshold=threshold,
        label_ratio=opts.label_ratio,
        n_train_patches=int(len(ytr)), n_test_patches=int(len(yte)),
        n_train_superpatches=int(cache.n_superpatches(train_ids)), n_test_superpatches=int(cache.n_superpatches(test_ids)),
        train_cases=train_ids, test_cases=test_ids, split=cache.split_rule,
        split_description=cache.split_description, spacing_zyx=Spacing.parse(cache.spacing_zyx).to_json(),
        options=asdict(opts),
    )
    if keep_predictions:
        result["y_true"] = yte.tolist()
        result["y_prob"] = prob.tolist()
    if out_dir is not None:
        meta = probe_metadata(model, cache.spacing_zyx, ORGAN_NAMES, opts.threshold, checkpoint=checkpoint_name,
                              level=PATCH_LEVEL, mode=opts.mode, label_ratio=opts.label_ratio, patch_threshold=threshold,
                              source_checkpoint=checkpoint_name, auroc_mean_test=result["auroc_mean"],
                              train_cases=list(train_ids), split=cache.split_description,
                              train_voxel_sha256=training_digests(cache, train_ids))
        result["probe"] = str(save_probe(head, Path(out_dir) / PATCH_PROBE_FILE, meta))
        result["encoder_sha256"] = meta["encoder_sha256"]
    emit(progress, "end", auroc_mean=result["auroc_mean"], f1_macro=result["f1_macro"])
    return result


# ---- inference -----------------------------------------------------------------------------------------
@dataclass
class PatchInferResult:
    """Per-patch organ probabilities of a whole scan, with what maps them back onto it.

    ``probabilities`` is ``(n_superpatches, N, K)``: superpatch ``i``'s N tokens in raster (z, y, x)
    order, ``inside`` ``(n_superpatches, N)`` says which patches hold some of the scan (the others
    lie in the padding; their probabilities are kept but never painted or listed). The same
    reading API as the superpatch level's ``InferResult``: ``organs``, ``threshold``, ``info``,
    ``rows()``, ``probability_map(k)`` (on the scan's own grid).
    """

    volume: Any  # data.Volume
    pre: Any  # data.Preprocessed: the scan at the model's spacing
    grid: Any  # data.SuperpatchGrid, mapped to the scan
    patch: int
    probabilities: np.ndarray  # (n_superpatches, N, K)
    inside: np.ndarray  # (n_superpatches, N) bool
    organs: list[str]
    threshold: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)
    level: ClassVar[str] = PATCH_LEVEL

    @property
    def tokens_per_axis(self) -> int:
        return self.grid.superpatch // self.patch

    def patch_box(self, i: int, t: int):
        """Patch ``t`` of superpatch ``i`` as a ``data.Box`` in preprocessed voxels, cut at the scan."""
        from ..data import Box

        g, p = self.tokens_per_axis, self.patch
        start0 = self.grid.box(i).start
        tz, ty, tx = np.unravel_index(int(t), (g, g, g))
        start = tuple(int(s + v * p) for s, v in zip(start0, (tz, ty, tx)))
        stop = tuple(int(min(s + p, d)) for s, d in zip(start, self.grid.shape))
        return Box(start, stop)  # type: ignore[arg-type]

    def probability_grid(self, k: int) -> np.ndarray:
        """Organ ``k``'s probability painted on each patch's voxels at the model's spacing (``pre.shape``)."""
        g, p = self.tokens_per_axis, self.patch
        out = np.zeros(self.grid.shape, dtype=np.float32)
        for i in range(self.grid.n):
            block = self.probabilities[i, :, k].reshape(g, g, g)
            block = np.repeat(np.repeat(np.repeat(block, p, 0), p, 1), p, 2)
            box = self.grid.box(i, clip=True)
            out[box.slices] = block[tuple(slice(0, d) for d in box.shape)]
        return out

    def probability_map(self, k: int) -> np.ndarray:
        """Organ ``k``'s map on the original scan's voxels (its shape; write it with the scan as
        reference for its affine): each voxel holds the probability of the patch its centre lies in."""
        return self.pre.to_original(self.probability_grid(k), order=0).astype(np.float32)

    def rows(self) -> list[dict[str, Any]]:
        """One row per patch inside the scan: superpatch index and grid position, token index and its
        position in the superpatch's token grid, world box (RAS+ mm min/max corners) clipped to the
        scan, and one probability per organ."""
        m = self.grid.mapping
        extent = np.asarray(m.source_shape_zyx, dtype=np.float64)
        a = m.source_canonical_affine
        g = self.tokens_per_axis
        out = []
        for i in range(self.grid.n):
            for t in np.flatnonzero(self.inside[i]):
                box = self.patch_box(i, int(t))
                lo = np.clip(m.edges_to_source(box.start), 0.0, extent) - 0.5
                hi = np.clip(m.edges_to_source(box.stop), 0.0, extent) - 0.5
                corners = np.array([lo, hi]) @ a[:3, :3].T + a[:3, 3]
                wlo, whi = corners.min(0), corners.max(0)
                row = {"superpatch": i, "grid_zyx": "x".join(map(str, self.grid.grid_index(i))), "patch": int(t),
                       "patch_zyx": "x".join(str(int(v)) for v in np.unravel_index(int(t), (g, g, g))),
                       "world_min_xyz_clipped": " ".join(f"{v:.1f}" for v in wlo),
                       "world_max_xyz_clipped": " ".join(f"{v:.1f}" for v in whi)}
                row.update({o: round(float(p), 5) for o, p in zip(self.organs, self.probabilities[i, t])})
                out.append(row)
        return out

    def inside_probabilities(self) -> np.ndarray:
        """``(n_inside, K)``: the probabilities of the patches that hold some of the scan."""
        return self.probabilities[self.inside]


def infer_patch_scan(
    scan,
    model: NemesisMAE,
    head,
    organs: list[str],
    spacing_zyx=None,
    threshold: float = 0.5,
    batch: int = 2,
    device: str = "auto",
    bf16: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PatchInferResult:
    """Per-patch organ probabilities for a whole scan (path, ``data.Volume`` or ``train.scan.PreparedScan``),
    streamed superpatch by superpatch; ``head`` must be a patch-level head of ``model``'s encoder.

    The spacing rule is ``infer_scan``'s: ``spacing_zyx=None`` takes the spacing the head was
    trained at, else the checkpoint's, else the default.
    """
    vol, pre, grid, spacing_source, dev = prepare_for_head(scan, model, head, PATCH_LEVEL, spacing_zyx, device,
                                                           progress)
    model = model.to(dev).eval()
    head = head.to(dev).eval()
    p = model.cfg.patch
    n_tok = model.cfg.num_patches
    probs = np.zeros((grid.n, n_tok, len(organs)), dtype=np.float32)
    inside = np.stack([patch_inside(grid, i, p) for i in range(grid.n)]) if grid.n else np.zeros((0, n_tok), bool)
    emit(progress, "start", step=0, total=grid.n)
    chunk: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        check_cancel(cancel, "inference")
        x = torch.from_numpy(np.stack([sp for _, sp in chunk]))[:, None].to(dev)
        with autocast(dev, bf16):
            logits = head(model.encode(x))
        out = torch.sigmoid(logits.float()).cpu().numpy()
        check_output(out, "organ probabilities", model, getattr(head, "path", None))
        idx = [i for i, _ in chunk]
        probs[idx] = out
        emit(progress, "step", step=idx[-1] + 1, total=grid.n)
        chunk.clear()

    with torch.inference_mode():
        for i, _, sp in grid.iter_superpatches(pre.array):
            chunk.append((i, sp))
            if len(chunk) == batch:
                flush()
        if chunk:
            flush()
    head.cpu()
    info = {"shape_zyx": list(vol.shape), "spacing_zyx": list(pre.spacing_zyx), "spacing_source": spacing_source,
            "grid": list(grid.grid_shape), "superpatches": grid.n, "level": PATCH_LEVEL, "patch": p,
            "patches": int(inside.sum())}
    return PatchInferResult(vol, pre, grid, p, probs, inside, list(organs), threshold, info)
