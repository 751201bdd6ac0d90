"""The peers section: NEMESIS against a plain ViT of the same sizes, and against the machine.

1. FLOPs: GMACs of one pretraining forward pass per preset (the ``flops`` command's counting)
   beside the paper's 31.0 G, and the GFLOP/s each achieves;
2. encoder inference throughput (superpatches/s; batch 1 and 4; fp32 and bf16 where supported)
   against MONAI's ``ViT`` (when installed) and a plain SDPA ViT (``model.vit.PlainViTEncoder``);
3. the pretraining step (forward + backward + AdamW, mask 0.75) against MONAI's
   ``MaskedAutoEncoderViT`` and a plain SDPA MAE of the same sizes;
4. the machine's limit: a large fp32 / bf16 matmul, and the fraction the encoder reaches (MFU);
and, for CUDA, which attention kernels the encoder runs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .peer_models import PlainSDPAMAE, count_gmacs, monai_available, monai_mae, monai_vit
from .sections import BenchContext, Log, no_log
from .timing import autocast, bf16_supported, sync, time_alternating

PAPER_GMACS = 31.0


# ---- the machine's limit ---------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of one large square matmul (2 n^3 FLOPs), the practical ceiling for the encoder's GEMMs."""
    fn = matmul_fn(device, dtype, n, seed=0)
    res = time_alternating({"mm": fn}, repeats, device, warmup=2)["mm"]
    return {"n": fn.n, "dtype": dtype, "gflops_per_s": fn.flops / res["median_s"] / 1e9, "median_s": res["median_s"]}


def matmul_fn(device: torch.device, dtype: str, n: int | None = None, seed: int | None = None) -> Callable[[], Any]:
    """One large matmul as a contender (``fn.flops`` = 2 n^3), to time beside the encoder."""
    n = n or (8192 if device.type == "cuda" else 2048)
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    a = torch.randn(n, n, generator=g).to(device, tdt)
    b = torch.randn(n, n, generator=g).to(device, tdt)
    out = torch.empty(n, n, device=device, dtype=tdt)

    def fn():
        return torch.mm(a, b, out=out)

    fn.flops = 2 * n**3  # type: ignore[attr-defined]
    fn.n = n  # type: ignore[attr-defined]
    return fn


# ---- 1. FLOPs -----------------------------------------------------------------------------------------
def flops_section(presets: list[str], device: torch.device, repeats: int, log: Log = no_log) -> dict[str, Any]:
    """GMACs per preset (forward pass, dual 0.75, batch 1; and the all-token encoder) and the
    GFLOP/s a timed no-grad forward pass achieves."""
    from ..model import build_model
    from ..model.flops import count_encoder, count_forward

    out: dict[str, Any] = {}
    for preset in presets:
        log(f"flops: {preset}")
        torch.manual_seed(0)
        model = build_model(preset).eval()
        fwd = count_forward(model, mask_ratio=0.75, mask_strategy="dual")
        enc = count_encoder(model)
        model = model.to(device)
        s = model.cfg.superpatch
        x = torch.rand(1, 1, s, s, s, device=device)
        gen = torch.Generator(device=device).manual_seed(0)

        def step():
            with torch.no_grad():
                model(x, mask_strategy="dual", mask_ratio=0.75, noise_sigma=0.0, generator=gen)

        t = time_alternating({"fwd": step}, repeats, device)["fwd"]["median_s"]
        out[preset] = {
            "forward_gmacs": fwd["gmacs"], "forward_parts_gmacs": fwd["parts"], "encoder_gmacs": enc,
            "paper_gmacs": PAPER_GMACS, "relative_to_paper": fwd["gmacs"] / PAPER_GMACS,
            "forward_seconds": t, "forward_gflops_per_s": 2 * fwd["gmacs"] / t,
        }
    return out


# ---- 2. encoder throughput ----------------------------------------------------------------------------
def encoder_section(
    presets: list[str], batches: list[int], dtypes: list[str], device: torch.device, repeats: int,
    use_monai: bool, log: Log = no_log, skip: Callable[[str, int, str], bool] | None = None,
) -> dict[str, Any]:
    """Superpatches per second of ``model.encode`` (all 512 tokens) against the peers, per preset,
    batch and dtype. Ratios are ours / peer (higher is better). At batch 4 a large matmul joins the
    alternation, so the MFU divides two figures measured under the same conditions."""
    from ..model import build_model
    from ..model.flops import count_encoder
    from ..model.vit import PlainViTEncoder

    out: dict[str, Any] = {}
    for preset in presets:
        torch.manual_seed(0)
        model = build_model(preset).eval()
        cfg = model.cfg
        enc_gmacs = count_encoder(model)
        plain = PlainViTEncoder(cfg.grid, cfg.patch, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio,
                                cfg.in_chans).eval()
        s = cfg.superpatch
        contenders: dict[str, nn.Module] = {"nemesis": model, "plain_sdpa_vit": plain}
        if use_monai:
            contenders["monai_vit"] = monai_vit(cfg).eval()
        peer_gmacs = {"plain_sdpa_vit": count_gmacs(lambda: plain(torch.rand(1, cfg.num_patches, cfg.patch_dim)))}
        if use_monai:
            peer_gmacs["monai_vit"] = count_gmacs(lambda: contenders["monai_vit"](torch.rand(1, cfg.in_chans, s, s, s)))
        for m in contenders.values():
            m.to(device)
        rows: dict[str, Any] = {}
        for b in batches:
            x = torch.rand(b, cfg.in_chans, s, s, s, device=device)
            for dt in dtypes:
                if skip is not None and skip(preset, b, dt):
                    continue
                log(f"encoder: {preset} batch {b} {dt}")

                def run_one(name, x=x, dt=dt):
                    def call():
                        with torch.inference_mode(), autocast(device, dt):
                            if name == "nemesis":
                                return model.encode(x)
                            if name == "plain_sdpa_vit":
                                return plain(model.patchify(x))
                            return contenders["monai_vit"](x)
                    return call

                fns = {k: run_one(k) for k in contenders}
                if b == 4:  # the machine's limit, measured in the same alternation as the MFU figure
                    fns["matmul"] = matmul_fn(device, dt)
                t = time_alternating(fns, repeats, device)
                mm = t.pop("matmul", None)
                row: dict[str, Any] = {k: {"superpatches_per_s": b / v["median_s"], "median_s": v["median_s"],
                                           "times_s": v["times_s"]} for k, v in t.items()}
                ours = row["nemesis"]["superpatches_per_s"]
                row["ratio_vs_plain_sdpa_vit"] = ours / row["plain_sdpa_vit"]["superpatches_per_s"]
                if use_monai:
                    row["ratio_vs_monai_vit"] = ours / row["monai_vit"]["superpatches_per_s"]
                row["nemesis_gflops_per_s"] = 2 * enc_gmacs * b / t["nemesis"]["median_s"]
                if mm is not None:
                    row["matmul_gflops_per_s"] = mm["flops"] / mm["median_s"] / 1e9
                    row["mfu"] = row["nemesis_gflops_per_s"] / row["matmul_gflops_per_s"]
                rows[f"b{b}_{dt}"] = row
        out[preset] = {"encoder_gmacs": enc_gmacs, "peer_gmacs": peer_gmacs, "runs": rows}
    return out


# ---- 3. pretraining step --------------------------------------------------------------------------------
def train_section(
    presets: list[str], batch_of: dict[str, int], device: torch.device, repeats: int, use_monai: bool,
    log: Log = no_log,
) -> dict[str, Any]:
    """Pretraining steps per second (forward + backward + AdamW step, mask ratio 0.75; NEMESIS with
    its dual mask and noise) against the peer MAE(s) of equal sizes."""
    from ..model import build_model

    # fp32 for every contender: MONAI 1.6's MaskedAutoEncoderViT fails under bf16 autocast (its
    # index_put of bf16 encoder outputs into fp32 mask tokens), so a bf16 step is not comparable.
    dt = "fp32"
    out: dict[str, Any] = {}
    for preset in presets:
        log(f"train step: {preset}")
        torch.manual_seed(0)
        model = build_model(preset).to(device).train()
        cfg = model.cfg
        s, b = cfg.superpatch, batch_of.get(preset, 1)
        x = torch.rand(b, cfg.in_chans, s, s, s, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        nets: dict[str, nn.Module] = {"nemesis": model, "plain_sdpa_mae": PlainSDPAMAE(cfg).to(device).train()}
        if use_monai:
            nets["monai_mae"] = monai_mae(cfg, 0.75).to(device).train()
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
                for k, m in nets.items()}
        patches = model.patchify(x)

        def loss_of(name: str) -> torch.Tensor:
            if name == "nemesis":
                return model(x, mask_strategy="dual", mask_ratio=0.75, generator=gen).loss
            if name == "plain_sdpa_mae":
                return nets[name](patches, 0.75, gen)
            pred, mask = nets[name](x)
            per_patch = (pred.float() - patches.float()).pow(2).mean(-1)
            return (per_patch * mask).sum() / mask.sum()

        def step(name: str):
            def call():
                opts[name].zero_grad(set_to_none=True)
                with autocast(device, dt):
                    loss = loss_of(name)
                loss.backward()
                opts[name].step()
            return call

        t = time_alternating({k: step(k) for k in nets}, repeats, device)
        row: dict[str, Any] = {k: {"steps_per_s": 1 / v["median_s"], "superpatches_per_s": b / v["median_s"],
                                   "median_s": v["median_s"], "times_s": v["times_s"]} for k, v in t.items()}
        row["batch"], row["dtype"] = b, dt
        row["ratio_vs_plain_sdpa_mae"] = t["plain_sdpa_mae"]["median_s"] / t["nemesis"]["median_s"]
        if use_monai:
            row["ratio_vs_monai_mae"] = t["monai_mae"]["median_s"] / t["nemesis"]["median_s"]
        out[preset] = row
        del nets, opts, model
    return out


# ---- which attention kernel runs -----------------------------------------------------------------------
def sdpa_backend_report(device: torch.device, preset: str = "small") -> dict[str, Any]:
    """Which SDPA kernels the encoder (all tokens) and a masked forward pass use, and (CUDA) whether
    each runs when only flash attention is allowed."""
    from torch.profiler import ProfilerActivity, profile

    from ..model import build_model

    model = build_model(preset).to(device).eval()
    s = model.cfg.superpatch
    x = torch.rand(1, 1, s, s, s, device=device)
    dt = "bf16" if bf16_supported(device) else "fp32"

    def kernels(fn) -> list[str]:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fn()
            sync(device)
        keys = ("flash", "efficient", "cudnn", "math", "attention")
        names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)}
        return sorted(n[:120] for n in names)

    gen = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode(), autocast(device, dt):
        report: dict[str, Any] = {
            "dtype": dt,
            "encoder_kernels": kernels(lambda: model.encode(x)),
            "masked_forward_kernels": kernels(lambda: model(x, "dual", 0.75, 0.0, gen)),
        }
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name, fn in (("encoder", lambda: model.encode(x)), ("masked_forward", lambda: model(x, "dual", 0.75, 0.0, gen))):
            try:
                with torch.inference_mode(), autocast(device, dt), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    fn()
                    sync(device)
                report[f"{name}_flash_only_ok"] = True
            except RuntimeError as exc:
                report[f"{name}_flash_only_ok"] = False
                report[f"{name}_flash_only_error"] = str(exc).splitlines()[0][:200]
    return report


# ---- the section ----------------------------------------------------------------------------------------
def run(ctx: BenchContext, res: dict[str, Any]) -> None:
    """All of the above; the summary keys (``encoder_speed_ratio_vs_vit``, ``encoder_mfu``,
    ``train_step_ratio_vs_vit``, ...) are the headline figures of the performance issue."""
    dev, reps, log = ctx.device, ctx.repeats, ctx.log
    presets, heavy = ctx.presets, ctx.heavy_presets
    use_monai = monai_available()
    res["peer"] = "monai_vit" if use_monai else "plain_sdpa_vit"
    res["peer_train"] = "monai_mae" if use_monai else "plain_sdpa_mae"

    # 4. the machine's limit (first, so the encoder's MFU can be read against it)
    log("matmul peak")
    bf16 = bf16_supported(dev)
    res["matmul_peak"] = {"fp32": matmul_peak(dev, "fp32", repeats=reps)}
    if bf16:
        res["matmul_peak"]["bf16"] = matmul_peak(dev, "bf16", repeats=reps)
    res["matmul_peak_gflops"] = {k: v["gflops_per_s"] for k, v in res["matmul_peak"].items()}

    # 1. FLOPs
    res["flops"] = flops_section(presets, dev, reps, log)

    # 2. encoder throughput
    dtypes = ["fp32"] + (["bf16"] if bf16 else [])

    def skip(preset: str, b: int, dt: str) -> bool:
        # quick: the presets that are not heavy only at batch 1, fp32
        return ctx.quick and preset not in heavy and (b != 1 or dt != "fp32")

    res["encoder"] = encoder_section(presets, [1, 4], dtypes, dev, reps, use_monai, log, skip)
    peer_key = "ratio_vs_monai_vit" if use_monai else "ratio_vs_plain_sdpa_vit"
    res["encoder_speed_ratio_vs_vit"] = {}
    res["encoder_speed_ratio_vs_plain_sdpa_vit"] = {}
    res["encoder_mfu"] = {}
    res["encoder_mfu_bf16"] = {}
    for p, e in res["encoder"].items():
        runs = e["runs"]
        head = runs.get("b4_fp32") or runs.get("b1_fp32")
        res["encoder_speed_ratio_vs_vit"][p] = head[peer_key]
        res["encoder_speed_ratio_vs_plain_sdpa_vit"][p] = head["ratio_vs_plain_sdpa_vit"]
        if "b4_fp32" in runs:
            res["encoder_mfu"][p] = runs["b4_fp32"]["mfu"]
        if "b4_bf16" in runs:
            res["encoder_mfu_bf16"][p] = runs["b4_bf16"]["mfu"]
        e["batch_of_headline"] = 4 if "b4_fp32" in runs else 1

    # 3. pretraining step
    batch_of = {"paper": 1, "small": 2, "tiny": 2} if dev.type == "cpu" else {"paper": 8, "small": 16, "tiny": 16}
    res["train_step"] = train_section(heavy, batch_of, dev, reps, use_monai, log)
    tkey = "ratio_vs_monai_mae" if use_monai else "ratio_vs_plain_sdpa_mae"
    res["train_step_ratio_vs_vit"] = {p: r[tkey] for p, r in res["train_step"].items()}
    res["train_step_ratio_vs_plain_sdpa_mae"] = {p: r["ratio_vs_plain_sdpa_mae"] for p, r in res["train_step"].items()}

    res["sdpa"] = sdpa_backend_report(dev, heavy[-1])


def targets(res: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    out = []
    for p, r in res.get("encoder_speed_ratio_vs_vit", {}).items():
        out.append((f"encoder_speed_ratio_vs_vit[{p}] >= 1.0", r, r >= 1.0))
    for p, r in res.get("train_step_ratio_vs_vit", {}).items():
        out.append((f"train_step_ratio_vs_vit[{p}] >= 0.9", r, r >= 0.9))
    for p, r in res.get("encoder_mfu", {}).items():
        out.append((f"encoder_mfu[{p}] >= 0.5 (batch 4, fp32)", r, r >= 0.5))
    return out


def table_lines(res: dict[str, Any]) -> list[str]:
    if "flops" not in res:
        return []
    L = ["matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in res["matmul_peak_gflops"].items()), ""]
    L.append(f"{'FLOPs':<10} {'fwd GMACs':>10} {'paper':>6} {'encoder GMACs':>14} {'fwd GFLOP/s':>12}")
    for p, f in res["flops"].items():
        L.append(f"{p:<10} {f['forward_gmacs']:>10.2f} {f['paper_gmacs']:>6.1f} {f['encoder_gmacs']:>14.2f} "
                 f"{f['forward_gflops_per_s']:>12.1f}")
    L.append("")
    L.append(f"{'encoder (superpatches/s)':<26} {'NEMESIS':>9} {'MONAI ViT':>10} {'SDPA ViT':>9} {'vs MONAI':>9} "
             f"{'vs SDPA':>8} {'GFLOP/s':>8}")
    for p, e in res["encoder"].items():
        for k, r in e["runs"].items():
            mon = r.get("monai_vit", {}).get("superpatches_per_s")
            L.append(f"{p + ' ' + k:<26} {r['nemesis']['superpatches_per_s']:>9.2f} "
                     f"{_fmt(mon):>10} {r['plain_sdpa_vit']['superpatches_per_s']:>9.2f} "
                     f"{_fmt(r.get('ratio_vs_monai_vit')):>9} "
                     f"{r['ratio_vs_plain_sdpa_vit']:>8.2f} {r['nemesis_gflops_per_s']:>8.1f}")
    L.append("encoder MFU (batch 4, fp32): " + ", ".join(f"{p} {v:.2f}" for p, v in res["encoder_mfu"].items())
             + ("; bf16: " + ", ".join(f"{p} {v:.2f}" for p, v in res["encoder_mfu_bf16"].items())
                if res.get("encoder_mfu_bf16") else ""))
    L.append("")
    L.append(f"{'train step (steps/s)':<22} {'batch':>5} {'NEMESIS':>8} {'MONAI MAE':>10} {'SDPA MAE':>9} "
             f"{'vs MONAI':>9} {'vs SDPA':>8}")
    for p, r in res["train_step"].items():
        mon = r.get("monai_mae", {}).get("steps_per_s")
        L.append(f"{p:<22} {r['batch']:>5} {r['nemesis']['steps_per_s']:>8.3f} {_fmt(mon, 3):>10} "
                 f"{r['plain_sdpa_mae']['steps_per_s']:>9.3f} "
                 f"{_fmt(r.get('ratio_vs_monai_mae')):>9} "
                 f"{r['ratio_vs_plain_sdpa_mae']:>8.2f}")
    if "sdpa" in res:
        L.append("")
        L.append("SDPA kernels: encoder " + ", ".join(res["sdpa"]["encoder_kernels"]))
        for k in ("encoder_flash_only_ok", "masked_forward_flash_only_ok"):
            if k in res["sdpa"]:
                L.append(f"{k}: {res['sdpa'][k]}")
    return L


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
