"""Scores a NEMESIS checkpoint + probe head for the model card (docs/model-card.md); prints one JSON object.

  python scripts/score_default_weights.py PROBE_PHANTOM_CACHE [--checkpoint CKPT --probe HEAD]
                                          [--ct ../shared/data/ct] [--recon-cases 12]

Without --checkpoint/--probe it scores the bundled default weights. The same held-out data for every
set of weights, so before/after figures compare like with like:

- probe AUROC / F1 on the held-out (test-split) phantoms of the 30-case probe set;
- probe AUROC / F1 on the real CT's superpatches (its labels are used only to score);
- masked-patch reconstruction PSNR / SSIM per masking strategy at ratio 0.75 (no noise) on the
  held-out phantoms and on the real CT, beside two learning-free fills (train/baselines.py): the
  visible-mean fill (``baseline_psnr_masked``; ``gain_db`` = model PSNR - its PSNR) and the local fill
  (each masked patch = the mean of its nearest visible patches; ``local_fill_psnr_masked``,
  ``gain_over_local_fill_db``).

The real CT here is in the pretraining set, so its rows are training-set figures; held-out real CT
is scored by ``scripts/score_held_out.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


class MaskedScore:
    """Masked-voxel squared error of the model and of the two learning-free fills, summed over superpatches."""

    def __init__(self, patch: int) -> None:
        from napari_nemesis.train.baselines import FILLS
        from napari_nemesis.train.inference import ReconMetrics

        self.model, self.patch, self.fills = ReconMetrics(), patch, FILLS
        self.sq, self.n = {name: 0.0 for name in FILLS}, 0

    def add(self, clean: np.ndarray, recon: np.ndarray, masked: np.ndarray, valid: tuple[slice, ...]) -> None:
        self.model.add(clean, recon, masked, valid)
        inside = np.zeros(clean.shape, dtype=bool)
        inside[valid] = True
        hidden = inside & masked
        if not hidden.any():
            return
        for name, fill in self.fills.items():
            guess = fill(clean, masked, valid, self.patch)
            self.sq[name] += float(((clean[hidden].astype(np.float64) - guess[hidden]) ** 2).sum())
        self.n += int(hidden.sum())

    def result(self) -> dict:
        out = self.model.result()
        for name, sq in self.sq.items():
            key = "baseline_psnr_masked" if name == "mean_fill" else f"{name}_psnr_masked"
            out[key] = float(10 * np.log10(self.n / sq)) if self.n and sq else None
            if out["psnr_masked"] is not None and out[key] is not None:
                out["gain_db" if name == "mean_fill" else f"gain_over_{name}_db"] = out["psnr_masked"] - out[key]
        return out


def score_reconstruction(model, sources, device) -> list[dict]:
    """``sources``: list of (grid, iterable factory of (index, clean superpatch))."""
    from napari_nemesis.model.masking import mask_strategies
    from napari_nemesis.train.inference import reconstruct_superpatches

    rows = []
    for strategy in mask_strategies():
        score = MaskedScore(model.cfg.patch)
        for grid, items in sources:
            for i, clean, _, _, recon, vox in reconstruct_superpatches(model, items(), strategy, 0.75, 0.0, 0, device):
                box = grid.box(i, clip=True)
                score.add(clean, recon, vox, tuple(slice(0, d) for d in box.shape))
        rows.append({"strategy": strategy, "ratio": 0.75, **score.result()})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache", help="cache of the 30-case probe phantom set (nemesis phantom --cases 30 --seed 0 --size small)")
    ap.add_argument("--checkpoint", default=None, help="NEMESIS checkpoint (default: the bundled one)")
    ap.add_argument("--probe", default=None, help="probe head trained on that checkpoint (default: the bundled one)")
    ap.add_argument("--ct", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"))
    ap.add_argument("--recon-cases", type=int, default=12, help="held-out phantom cases to reconstruct (default all 12)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from napari_nemesis.data import (ORGAN_NAMES, SuperpatchGrid, open_dataset, preprocess, preprocess_labels,
                                     presence_labels, read_labels, read_volume)
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.train.inference import infer_scan
    from napari_nemesis.train.metrics import presence_metrics
    from napari_nemesis.train.probe import extract_features, head_probabilities, load_probe
    from napari_nemesis.weights import default_checkpoint_path, default_probe_path

    t0 = time.time()
    ckpt = Path(args.checkpoint or default_checkpoint_path())
    probe = Path(args.probe or default_probe_path())
    model = load_checkpoint(ckpt).eval()
    head, meta = load_probe(probe)
    spacing = tuple(meta["spacing_zyx"])
    device = torch.device("cpu")
    cache = open_dataset(args.cache, superpatch=model.cfg.superpatch)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    x, y, _ = extract_features(model, cache, test_ids, batch=4)
    out = {"checkpoint": str(ckpt), "probe": str(probe),
           "phantom_test_probe": presence_metrics(y, head_probabilities(head, x), ORGAN_NAMES),
           "phantom_test_superpatches": int(len(y))}

    recon_ids = test_ids[: args.recon_cases]

    def phantom_items(cid):
        return lambda: ((i, p) for _, i, p, _ in cache.superpatches([cid], model.cfg.superpatch))

    sources = [(cache.grid(cid, model.cfg.superpatch), phantom_items(cid)) for cid in recon_ids]
    out["phantom_reconstruction"] = score_reconstruction(model, sources, device)
    out["phantom_reconstruction_cases"] = recon_ids
    out["phantom_reconstruction_superpatches"] = sum(g.n for g, _ in sources)

    ct_dir = Path(args.ct)
    scan, lab = ct_dir / "abdomen_ct.nii.gz", ct_dir / "abdomen_label_btcv.nii.gz"
    if scan.is_file():
        vol = read_volume(scan)
        res = infer_scan(vol, model, head, list(meta["organs"]), spacing_zyx=spacing)
        pre_labels = preprocess_labels(read_labels(lab, vol), vol, spacing)
        truth = presence_labels(pre_labels, SuperpatchGrid(pre_labels.shape, model.cfg.superpatch))
        out["real_ct_probe"] = presence_metrics(truth, res.probabilities, ORGAN_NAMES)
        out["real_ct_superpatches"] = int(len(truth))
        pre = preprocess(vol, spacing)
        grid = SuperpatchGrid.for_preprocessed(pre, model.cfg.superpatch)
        items = lambda: ((i, p) for i, _, p in grid.iter_superpatches(pre.array))  # noqa: E731
        out["real_ct_reconstruction"] = score_reconstruction(model, [(grid, items)], device)
    out["seconds"] = time.time() - t0
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
