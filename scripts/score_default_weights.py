"""Scores the bundled default weights for the model card (docs/model-card.md); prints one JSON object.

  python scripts/score_default_weights.py PROBE_PHANTOM_CACHE [--ct ../shared/data/ct] [--recon-cases 4]

- probe AUROC / F1 on the held-out (test-split) phantoms of the 30-case probe set;
- probe AUROC / F1 on the real CT's superpatches (its labels are used only to score);
- reconstruction PSNR / SSIM per masking strategy at ratio 0.75 on held-out phantoms and the real CT.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--ct", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"))
    ap.add_argument("--recon-cases", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from napari_nemesis.data import (ORGAN_NAMES, SuperpatchGrid, open_dataset, preprocess, preprocess_labels,
                                     presence_labels, read_labels, read_volume)
    from napari_nemesis.train.evaluate import evaluate_reconstruction
    from napari_nemesis.train.inference import infer_scan
    from napari_nemesis.train.metrics import presence_metrics
    from napari_nemesis.train.probe import extract_features, head_probabilities
    from napari_nemesis.weights import load_default_model, load_default_probe

    t0 = time.time()
    model = load_default_model().eval()
    head, meta = load_default_probe()
    cache = open_dataset(args.cache, superpatch=model.cfg.superpatch)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    x, y, _ = extract_features(model, cache, test_ids, batch=4)
    out = {"phantom_test_probe": presence_metrics(y, head_probabilities(head, x), ORGAN_NAMES),
           "phantom_test_superpatches": int(len(y))}

    ct_dir = Path(args.ct)
    scan, lab = ct_dir / "abdomen_ct.nii.gz", ct_dir / "abdomen_label_btcv.nii.gz"
    if scan.is_file():
        vol = read_volume(scan)
        res = infer_scan(vol, model, head, list(ORGAN_NAMES), spacing_zyx=meta.get("spacing_zyx"))
        pre_labels = preprocess_labels(read_labels(lab, vol), vol, tuple(meta.get("spacing_zyx")))
        truth = presence_labels(pre_labels, SuperpatchGrid(pre_labels.shape, model.cfg.superpatch))
        out["real_ct_probe"] = presence_metrics(truth, res.probabilities, ORGAN_NAMES)
        out["real_ct_superpatches"] = int(len(truth))
        real = {"id": "realct"}
        pre = preprocess(vol, tuple(meta.get("spacing_zyx")))
        grid = SuperpatchGrid.for_preprocessed(pre, model.cfg.superpatch)

        class _One:  # the real CT as a one-case source for evaluate_reconstruction
            def grid(self, cid, s):
                return grid

            def superpatches(self, ids, s):
                for i, _, p in grid.iter_superpatches(pre.array):
                    yield real["id"], i, p, None

        out["real_ct_reconstruction"] = evaluate_reconstruction(_One(), model, ["realct"])
    out["phantom_reconstruction"] = evaluate_reconstruction(cache, model, test_ids[: args.recon_cases])
    out["phantom_reconstruction_cases"] = test_ids[: args.recon_cases]
    out["seconds"] = time.time() - t0
    print(json.dumps(out, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
