"""The paper's Table IV as the paper does it: one model pretrained per masking strategy, equal budgets.

  python scripts/table_iv.py CACHE [--strategies S ...] [--steps 400] [--batch 4] [--work DIR]
                             [--rct-cache DIR] [--out FILE]

CACHE is a pretraining cache (``nemesis prepare ... --include-unlabelled``; the weights recipe makes
``WORK/cache_pretrain``). Each strategy gets a ``small`` model trained from scratch with that mask
only (``nemesis pretrain --mask S``), the same steps, batch, seed, learning rate and crops (the crops
of step s are the same for every strategy: they depend on the seed and the step, not on the mask).
Each model is then scored on the held-out real scans of ``score_held_out.py`` under every test mask
(ratio 0.75, no noise, mask seed 0): PSNR over the masked voxels inside the scan, data range 1 = the
[-175, 250] HU window, beside the visible-mean and local fills. The budget is tiny next to the paper's
(a CPU run of minutes): the table compares strategies at equal budget, it does not reproduce the
paper's figures. A stopped run continues where it saved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_registry_ct import default_cache, fetch_all  # noqa: E402
from score_held_out import HELD_OUT, print_json, score_scan  # noqa: E402


def pretrain_one(cache: Path, out: Path, strategy: str, steps: int, batch: int, lr: float, seed: int) -> dict:
    state = out / "last.state.json"
    done = json.loads(state.read_text())["step"] if state.is_file() else 0
    if done < steps:
        cmd = [sys.executable, "-m", "napari_nemesis.cli", "pretrain", str(cache), "--out", str(out),
               "--preset", "small", "--mask", strategy, "--steps", str(steps), "--batch", str(batch),
               "--lr", str(lr), "--seed", str(seed), "--device", "cpu", "--bf16", "--checkpoint-every", "100",
               "--log-every", "25", "--json"] + (["--resume"] if state.is_file() else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pretraining with --mask {strategy} failed: {proc.stderr.strip().splitlines()[-1:]}")
        (out.parent / f"{out.name}.result.json").write_text(proc.stdout.strip().splitlines()[-1] + "\n")
    result = out.parent / f"{out.name}.result.json"
    return json.loads(result.read_text()) if result.is_file() else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path, help="a pretraining cache (nemesis prepare --include-unlabelled)")
    ap.add_argument("--strategies", nargs="+", default=None, help="masking strategies to pretrain with "
                    "(default: every one the model knows)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/table_iv"))
    ap.add_argument("--rct-cache", type=Path, default=None, help="fetch_registry_ct.py's cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from napari_nemesis.data.spacing import DEFAULT_SPACING_ZYX
    from napari_nemesis.model import load_checkpoint
    from napari_nemesis.model.masking import mask_strategies

    strategies = args.strategies or list(mask_strategies())
    unknown = sorted(set(strategies) - set(mask_strategies()))
    if unknown:
        raise SystemExit(f"--strategies: unknown {', '.join(unknown)} (known: {', '.join(mask_strategies())})")
    t0 = time.time()
    fetch_all(args.rct_cache)
    rct = Path(args.rct_cache or default_cache())
    out = {"what": "one small model pretrained per masking strategy at equal budget (the paper's Table IV "
                   "protocol), scored on held-out real CT under every test mask",
           "budget": {"steps": args.steps, "batch": args.batch, "superpatches": args.steps * args.batch,
                      "lr": args.lr, "seed": args.seed, "device": "cpu", "bf16": True},
           "data": str(args.cache), "data_range": "1.0 = the [-175, 250] HU window", "models": []}
    for strategy in strategies:
        run = args.work / f"pretrain_{strategy}"
        res = pretrain_one(args.cache, run, strategy, args.steps, args.batch, args.lr, args.seed)
        model = load_checkpoint(run / "last.safetensors").eval()
        meta = {"spacing_zyx": tuple(model.checkpoint_extra.get("spacing_zyx") or DEFAULT_SPACING_ZYX)}
        scans = [score_scan(model, None, meta, name, rct / image, None, mask_strategies(), (0,))  # no probe
                 for name, image, _labels in HELD_OUT]
        by_mask = {}
        for test_mask in mask_strategies():
            rows = [r for s in scans for r in s["reconstruction"] if r["strategy"] == test_mask]
            by_mask[test_mask] = {k: float(np.mean([r[k] for r in rows]))
                                  for k in ("psnr_model", "gain_over_mean_fill", "gain_over_local_fill")}
        out["models"].append({"pretrained_with": strategy, "loss_last": res.get("loss_last"),
                              "seconds": res.get("seconds"), "scans": scans, "mean_over_scans": by_mask})
        print(f"{strategy}: " + ", ".join(f"test {m} {v['psnr_model']:.2f} dB ({v['gain_over_local_fill']:+.2f} "
                                          f"over local fill)" for m, v in by_mask.items()), flush=True)
    out["seconds"] = time.time() - t0
    print_json(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
