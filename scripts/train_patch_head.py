"""Trains the bundled patch-level head (``weights/probe_patch_small.safetensors``) on the bundled encoder.

  python scripts/train_patch_head.py [--work DIR] [--checkpoint CKPT] [--out FILE] [--epochs 200] [--lr 3e-3] [--held-out SCORES.json]

The labels are the real labelled scans that are not held out: the bundled sample abdomen CT with its BTCV
label map (``sample_data/abdomen_ct.nii.gz`` + ``abdomen_label_btcv.nii.gz``). The held-out LIDC chest of
``scripts/fetch_registry_ct.py`` is never used here. The recipe is the one a user runs on their own project:

  nemesis labels fill WORK/project abdomen_ct.nii.gz abdomen_label_btcv.nii.gz
  nemesis labels train WORK/project --level patch --out WORK/run      # linear head on the frozen encoder

(patch label: >= 100 organ voxels of the 16^3 patch at 1.5 x 1.5 x 2.0 mm; 200 full-batch AdamW steps,
lr 3e-3; the run's cross-validation over the scan's superpatches is its own estimate). The final head is
copied to ``--out`` with its provenance in the metadata. ``--held-out`` then records what
``scripts/score_patch_maps.py`` measured on the held-out scan (``held_out_auroc``, ``held_out_on``); nothing
is chosen on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "napari_nemesis" / "weights" / "probe_patch_small.safetensors"


def train(work: Path, epochs: int, lr: float, seed: int, checkpoint: Path | None = None) -> dict:
    from napari_nemesis.labels import LabelProject, fill_from_segmentation
    from napari_nemesis.labels.training import TrainOptions, train_from_labels
    from napari_nemesis.sample_data import sample_btcv_labels_path, sample_ct_path
    from napari_nemesis.weights import default_checkpoint_path

    project = LabelProject.open(work / "project", create=True)
    store = project.store(sample_ct_path())
    fill_from_segmentation(store, sample_btcv_labels_path(), threshold=project.threshold, overwrite=True,
                           scheme="btcv", project=project)
    opts = TrainOptions(level="patch", epochs=epochs, lr=lr, seed=seed, device="cpu")
    return train_from_labels(project, work / "run", checkpoint or default_checkpoint_path(), opts)


def held_out_fields(scores_path: Path) -> dict:
    """``held_out_auroc`` and ``held_out_on`` from ``score_patch_maps.py``'s JSON (the patch level's mean
    voxel-level AUROC over every voxel of the held-out scan)."""
    scores = json.loads(scores_path.read_text())
    scan = scores["held_out"][0]
    patch = scan["levels"]["patch"]
    n = len(patch["organs_scored"])
    return {"held_out_auroc": round(float(patch["auroc_mean_all"]), 4),
            "held_out_on": f"real CT no training step saw: LIDC-IDRI-0001 (voxel-level AUROC of the patch maps, mean "
                           f"over the {n} organs present, TotalSegmentator labels; scripts/score_patch_maps.py)",
            "held_out_auroc_body": round(float(patch["auroc_mean_body"]), 4)}


def bundle(head_path: Path, out: Path, result: dict | None, extra: dict, checkpoint: Path | None = None) -> Path:
    from napari_nemesis.train.probe import load_probe, save_probe

    head, meta = load_probe(head_path)
    meta = dict(meta)
    if result is not None:
        meta.update(checkpoint=str(checkpoint) if checkpoint else "napari_nemesis/weights/nemesis_small.safetensors (bundled)",
                    labels_project="sample_data: abdomen_ct.nii.gz + abdomen_label_btcv.nii.gz (nemesis labels fill)",
                    trained_on="the bundled sample abdomen CT (TotalSegmentator CT dataset, CC BY 4.0) with its BTCV "
                               "labels; scripts/train_patch_head.py",
                    cv_auroc_mean=result["auroc_mean"], cv_estimate=result["estimate"], n_patches=result["n_patches"])
    meta.update(extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_probe(head, out, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the project and the run (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the head goes (default {DEFAULT_OUT})")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="the encoder to train on (default: the bundled one; the recipe passes the model it just bundled)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", type=Path, default=None,
                    help="score_patch_maps.py JSON: only record its held-out figures in --out's metadata (no training)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.environ.setdefault("NEMESIS_CONFIG_DIR", tempfile.mkdtemp(prefix="nemesis-config-"))
    if args.held_out is not None:
        path = bundle(args.out, args.out, None, held_out_fields(args.held_out))
        print(json.dumps({"head": str(path), **held_out_fields(args.held_out)}, indent=1))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="nemesis-patch-head-"))
    result = train(work, args.epochs, args.lr, args.seed, args.checkpoint)
    path = bundle(Path(result["head"]), args.out, result, {}, args.checkpoint)
    summary = {k: result[k] for k in ("auroc_mean", "f1_macro", "estimate", "n_labelled", "n_patches", "positives",
                                      "per_organ", "seconds_this_run")}
    print(json.dumps({"head": str(path), "bytes": path.stat().st_size, "work": str(work), **summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
