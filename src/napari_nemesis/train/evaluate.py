"""The paper's Tables II-IV on any labelled dataset: linear probe and fine-tune of a checkpoint,
the same probe on a randomly initialised encoder, across label ratios; reconstruction per mask.

Features of the frozen encoders are extracted once per split and reused by every linear head, so
the label-ratio sweep costs one pass over the data per encoder.

Each row carries the paper's figures only for the *same* method and protocol (``paper_row`` says
which): the paper's random-init ViT was fine-tuned, so it is not set beside our linear probe of
a random encoder.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import torch

from ..data.preprocess import HU_WINDOW
from ..data.spacing import Spacing
from ..model import NemesisMAE
from ..model.masking import check_strategy, mask_strategies
from .events import CancelFn, ProgressFn, emit
from .metrics import MEAN_CONVENTION, presence_metrics
from .probe import (ProbeOptions, dataset_for, extract_features, finetune, head_probabilities, train_linear_head,
                    training_case_ids)
from .runtime import resolve_device

LABEL_RATIOS = (0.1, 0.25, 0.5, 1.0)
#: Bins of the intensity-histogram baseline (the windowed [0, 1] range), plus the share inside the scan.
HISTOGRAM_BINS = 32
#: A superpatch counts as "mostly scan" when at least this share of it lies inside the scan.
MOSTLY_INSIDE = 0.5


def histogram_features(cache, case_ids: list[str], superpatch: int, bins: int = HISTOGRAM_BINS):
    """A learning-free feature per superpatch: the normalised histogram of its windowed voxels inside the
    scan and the share of it inside the scan. ``(x (n, bins + 1), y (n, 8), where)`` in
    :func:`~.probe.extract_features`'s order, so a head on it is a baseline for the encoder's features."""
    xs, ys, where = [], [], []
    for cid, i, patch, lab in cache.superpatches(case_ids, superpatch):
        box = cache.grid(cid, superpatch).box(i, clip=True)
        inside = patch[tuple(slice(0, d) for d in box.shape)]      # the crop starts at the box's corner
        hist = np.histogram(inside, bins=bins, range=(0.0, 1.0))[0].astype(np.float32)
        hist /= max(1.0, float(hist.sum()))
        xs.append(np.append(hist, inside.size / superpatch ** 3))
        ys.append(np.asarray(lab, dtype=np.uint8))
        where.append((cid, i))
    return np.stack(xs).astype(np.float32), np.stack(ys), where


def inside_share(cache, where, superpatch: int) -> np.ndarray:
    """Share of each superpatch (``where``: (case, index)) that lies inside its scan."""
    return np.array([float(np.prod(cache.grid(c, superpatch).box(i, clip=True).shape)) / superpatch ** 3
                     for c, i in where])

#: Paper, Table II (BTCV organ presence; AUROC, F1 at 0.5) and Table III (linear AUROC by label ratio).
PAPER_TABLE_II = {
    "ResNet3D-50 (fine-tune)": (0.9720, 0.782),
    "SuPreM (fine-tune)": (0.9493, 0.678),
    "VoCo (fine-tune)": (0.9387, 0.701),
    "Random ViT (fine-tune)": (0.5602, 0.000),
    "NEMESIS (linear)": (0.9633, 0.753),
    "NEMESIS (fine-tune)": (0.9702, 0.791),
}
PAPER_TABLE_III = {0.1: 0.9075, 0.25: 0.9347, 0.5: 0.9570, 1.0: 0.9633}
#: Paper, Table IV (ratio 0.75): PSNR dB, SSIM.
PAPER_TABLE_IV = {"axis": (24.87, 0.294), "plane": (27.75, 0.529)}


def evaluate(
    data,
    model: NemesisMAE,
    ratios=LABEL_RATIOS,
    finetune_model: bool = True,
    random_baseline: bool = True,
    reconstruction: bool = False,
    opts: ProbeOptions | None = None,
    finetune_epochs: int | None = None,
    recon_seed: int = 0,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    label_scheme: str = "auto",
    spacing_zyx=None,
    seeds: int = 1,
    histogram_baseline: bool = True,
) -> dict[str, Any]:
    """Rows of (method, protocol, label_ratio, auroc_mean, f1_macro, paper_auroc, paper_f1, paper_row).

    A raw data folder is read with ``label_scheme`` and prepared at ``spacing_zyx`` (default: the
    spacing the checkpoint was pretrained at, else the default); a cache is used as it is.

    Every linear row also carries ``auroc_mean_mostly_inside``: the same on the test superpatches at least
    half inside their scan (superpatches of padding are easy negatives). ``seeds`` > 1 draws each label
    ratio below 1 with that many seeds: ``auroc_mean`` is then their mean, ``auroc_seeds`` each, and
    ``auroc_std`` their spread. ``histogram_baseline`` adds rows of a head on intensity histograms
    (:func:`histogram_features`), beside the random encoder: what intensity alone tells.
    """
    from ..data import ORGAN_NAMES

    opts = opts or ProbeOptions()
    device = resolve_device(opts.device)
    cache = dataset_for(data, model, spacing_zyx, label_scheme)
    test_ids = [c for c in cache.test_ids if c in cache.labelled_ids]
    full_train = training_case_ids(cache, 1.0, opts.seed)
    rows: list[dict[str, Any]] = []

    s = model.cfg.superpatch

    def linear_rows(name: str, encoder: NemesisMAE | None, paper: dict[float, tuple[float | None, float | None, str]]):
        emit(progress, "stage", name=f"{name}: features")
        if encoder is None:          # the intensity-histogram baseline
            xtr, ytr, where = histogram_features(cache, full_train, s)
            xte, yte, where_te = histogram_features(cache, test_ids, s)
        else:
            xtr, ytr, where = extract_features(encoder, cache, full_train, opts.batch, device, opts.bf16, progress,
                                               cancel, f"{name} train features")
            xte, yte, where_te = extract_features(encoder, cache, test_ids, opts.batch, device, opts.bf16, progress,
                                                  cancel, f"{name} test features")
        case_of = np.array([c for c, _ in where])
        mostly = inside_share(cache, where_te, s) >= MOSTLY_INSIDE
        for r in ratios:
            runs = []
            for seed in range(opts.seed, opts.seed + (seeds if r < 1.0 else 1)):
                sel = np.isin(case_of, training_case_ids(cache, r, seed))
                head = train_linear_head(xtr[sel], ytr[sel], dataclasses.replace(opts, mode="linear"), cancel)
                prob = head_probabilities(head, xte)
                m = presence_metrics(yte, prob, ORGAN_NAMES, opts.threshold)
                inside = presence_metrics(yte[mostly], prob[mostly], ORGAN_NAMES, opts.threshold) if mostly.any() else {}
                runs.append((m, inside.get("auroc_mean"), int(sel.sum())))
            m = runs[0][0]
            aurocs = [run[0]["auroc_mean"] for run in runs if run[0]["auroc_mean"] is not None]
            inside_aurocs = [run[1] for run in runs if run[1] is not None]
            pa, pf, prow = paper.get(r, (None, None, None))
            rows.append({"method": name, "protocol": "linear", "label_ratio": r,
                         "auroc_mean": float(np.mean(aurocs)) if aurocs else None,
                         "f1_macro": float(np.mean([run[0]["f1_macro"] for run in runs])),
                         "auroc_mean_mostly_inside": float(np.mean(inside_aurocs)) if inside_aurocs else None,
                         "n_test_superpatches_mostly_inside": int(mostly.sum()),
                         "organs_scored": m["organs_scored"], "per_organ": m["per_organ"],
                         "n_train_superpatches": runs[0][2], "n_test_superpatches": int(len(yte)),
                         "seeds": len(runs), "auroc_seeds": aurocs,
                         "auroc_std": float(np.std(aurocs)) if len(aurocs) > 1 else None,
                         "paper_auroc": pa, "paper_f1": pf, "paper_row": prow})
            emit(progress, "row", **{k: v for k, v in rows[-1].items() if k != "per_organ"})

    paper_linear = {r: (a, PAPER_TABLE_II["NEMESIS (linear)"][1] if r == 1.0 else None,
                        "Table II NEMESIS linear" if r == 1.0 else "Table III NEMESIS linear")
                    for r, a in PAPER_TABLE_III.items()}
    linear_rows("NEMESIS", model, paper_linear)
    if random_baseline:
        torch.manual_seed(opts.seed + 1)
        random_model = NemesisMAE(model.cfg)  # same config, fresh random weights
        # the paper has no linear probe of a random encoder (its "Random ViT" was fine-tuned): no paper figures
        linear_rows("Random ViT", random_model, {})
    if histogram_baseline:
        linear_rows("Histogram", None, {})  # no encoder at all: intensities inside the superpatch
    if finetune_model:
        emit(progress, "stage", name="fine-tune")
        ft_opts = dataclasses.replace(opts, mode="finetune", epochs=finetune_epochs, lr=None)
        net = finetune(copy.deepcopy(model), cache, full_train, ft_opts, device, progress, cancel)
        xte, yte, _ = extract_features(net.encoder, cache, test_ids, opts.batch, device, opts.bf16, progress, cancel,
                                       "fine-tuned test features")
        m = presence_metrics(yte, head_probabilities(net.head.cpu(), xte), ORGAN_NAMES, opts.threshold)
        pa, pf = PAPER_TABLE_II["NEMESIS (fine-tune)"]
        rows.append({"method": "NEMESIS", "protocol": "finetune", "label_ratio": 1.0, "auroc_mean": m["auroc_mean"],
                     "f1_macro": m["f1_macro"], "organs_scored": m["organs_scored"], "per_organ": m["per_organ"],
                     "n_train_superpatches": cache.n_superpatches(full_train), "n_test_superpatches": int(len(yte)),
                     "paper_auroc": pa, "paper_f1": pf, "paper_row": "Table II NEMESIS fine-tune"})
    result: dict[str, Any] = {"rows": rows, "train_cases": full_train, "test_cases": test_ids,
                              "split": cache.split_rule, "split_description": cache.split_description,
                              "spacing_zyx": Spacing.parse(cache.spacing_zyx).to_json(),
                              "mean_over": MEAN_CONVENTION,
                              "paper_table_ii": PAPER_TABLE_II, "paper_table_iii": PAPER_TABLE_III}
    if reconstruction:
        result["reconstruction"] = evaluate_reconstruction(cache, model, test_ids, device=device, seed=recon_seed,
                                                           progress=progress, cancel=cancel)
    return result


def evaluate_reconstruction(
    cache,
    model: NemesisMAE,
    case_ids: list[str],
    strategies=None,
    ratio: float = 0.75,
    noise: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch: int = 2,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[dict[str, Any]]:
    """The test-mask sweep: one model's PSNR / SSIM under each masking strategy (default: every one in
    ``model.masking.MASKS``) at ``ratio``, over every grid
    superpatch of ``case_ids``, beside the visible-mean fill and the local fill (:mod:`.baselines`).

    Not the paper's Table IV, which pretrains one model per strategy: this tests one model under
    different test masks. ``gain_over_<fill>`` = model PSNR - fill PSNR over the masked voxels (dB).
    """
    from .baselines import FILLS
    from .inference import ReconMetrics, reconstruct_superpatches

    strategies = mask_strategies() if strategies is None else [check_strategy(s) for s in strategies]

    device = torch.device(device)
    rows = []
    s = model.cfg.superpatch
    for strategy in strategies:
        metrics = ReconMetrics()
        fills = {name: ReconMetrics() for name in FILLS}
        for cid in case_ids:
            grid = cache.grid(cid, s)
            items = ((i, p) for _, i, p, _ in cache.superpatches([cid], s))
            for i, clean, _, _, recon, vox in reconstruct_superpatches(model, items, strategy, ratio, noise, seed,
                                                                        device, batch, cancel=cancel):
                box = grid.box(i, clip=True)
                valid = tuple(slice(0, d) for d in box.shape)
                metrics.add(clean, recon, vox, valid)
                for name, fill in FILLS.items():
                    fills[name].add(clean, fill(clean, vox, valid, model.cfg.patch), vox, valid)
        paper = PAPER_TABLE_IV.get(strategy, (None, None))
        row = {"strategy": strategy, "ratio": ratio, **metrics.result(), "paper_psnr": paper[0], "paper_ssim": paper[1]}
        for name, m in fills.items():
            scores = m.result()
            row[f"{name}_psnr_masked"], row[f"{name}_ssim_masked"] = scores["psnr_masked"], scores["ssim_masked"]
            if row["psnr_masked"] is not None and scores["psnr_masked"] is not None:
                row[f"gain_over_{name}"] = row["psnr_masked"] - scores["psnr_masked"]
        rows.append(row)
        emit(progress, "row", **rows[-1])
    return rows


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a plain-text table beside the paper's numbers."""
    def f(v, nd=4):
        return "-" if v is None else f"{v:.{nd}f}"

    lines = [f"{'method':<12}{'protocol':<10}{'labels':>7}{'AUROC':>9}{'+-':>7}{'inside':>8}{'F1':>8}{'organs':>8}"
             f"{'train SP':>10}   {'paper AUROC':>11}{'paper F1':>10}  paper row (same method and protocol)"]
    for r in result["rows"]:
        scored = r.get("organs_scored")
        organs = f"{len(scored)}/{len(r['per_organ'])}" if scored is not None else "-"
        lines.append(f"{r['method']:<12}{r['protocol']:<10}{int(r['label_ratio'] * 100):>6}%{f(r['auroc_mean']):>9}"
                     f"{f(r.get('auroc_std'), 3):>7}{f(r.get('auroc_mean_mostly_inside'), 3):>8}"
                     f"{f(r['f1_macro'], 3):>8}{organs:>8}{r['n_train_superpatches']:>10}   "
                     f"{f(r['paper_auroc']):>11}{f(r['paper_f1'], 3):>10}  {r.get('paper_row') or '- (not in the paper)'}")
    lines.append(f"AUROC and F1: {result.get('mean_over', MEAN_CONVENTION)} ('organs'); F1 at threshold 0.5; "
                 f"'+-': spread over label-ratio seeds; 'inside': AUROC on the test superpatches at least "
                 f"{MOSTLY_INSIDE:.0%} inside their scan. 'Histogram': a head on intensity histograms, no encoder.")
    if "split_description" in result:
        lines.append(f"Split: {result['split_description']} ({len(result['train_cases'])} train / "
                     f"{len(result['test_cases'])} test scans).")
    if "reconstruction" in result:
        lines.append("")
        lines.append("Test-mask sweep of this one model (not Table IV, which pretrains one model per strategy); "
                     f"PSNR data range 1 = the [{HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}] HU window, inside the scan only")
        lines.append(f"{'mask @0.75':<12}{'PSNR masked':>12}{'SSIM masked':>12}{'PSNR all':>10}{'SSIM all':>10}"
                     f"{'mean fill':>11}{'local fill':>11}{'paper PSNR':>12}{'paper SSIM':>12}")
        for r in result["reconstruction"]:
            lines.append(f"{r['strategy']:<12}{f(r['psnr_masked'], 2):>12}{f(r['ssim_masked'], 3):>12}{f(r['psnr_all'], 2):>10}"
                         f"{f(r['ssim_all'], 3):>10}{f(r.get('mean_fill_psnr_masked'), 2):>11}"
                         f"{f(r.get('local_fill_psnr_masked'), 2):>11}{f(r['paper_psnr'], 2):>12}{f(r['paper_ssim'], 3):>12}")
    lines.append("Paper rows for other methods (Table II, AUROC/F1, all fine-tuned on BTCV): " + "; ".join(
        f"{k} {a:.4f}/{b:.3f}" for k, (a, b) in PAPER_TABLE_II.items() if not k.startswith("NEMESIS")))
    lines.append("Our 'Random ViT' rows are a linear probe of a randomly initialised encoder, not the paper's "
                 "fine-tuned random-init ViT.")
    return "\n".join(lines)
