"""The performance benchmark: NEMESIS against a plain ViT peer and against the machine's own limit.

``python -m napari_nemesis.bench [--quick] [--json] [--device cpu|cuda] [--out DIR]`` (also
``nemesis bench``) prints a table and, with ``--json``, one JSON object as its last line.

Every comparison is measured in the same run, the contenders alternating inside each repeat,
median of the repeats after two untimed warm-up rounds. It measures (see ``docs/performance.md``):

1. FLOPs: GMACs of one pretraining forward pass per preset (the ``flops`` command's counting)
   beside the paper's 31.0 G, and the GFLOP/s each achieves;
2. encoder inference throughput (superpatches/s; batch 1 and 4; fp32 and bf16 where supported)
   against a plain ViT of the same width, depth, heads and tokens: MONAI's ``ViT`` with its
   defaults when MONAI is installed, and always a plain SDPA ViT (``model.vit.PlainViTEncoder``);
3. the pretraining step (forward + backward + AdamW, mask 0.75) against MONAI's
   ``MaskedAutoEncoderViT`` (or a plain SDPA MAE) of the same sizes;
4. the machine's limit: a large fp32 / bf16 matmul, and the fraction the encoder reaches (MFU);
5. whole-scan ``infer`` and ``reconstruct`` on synthetic CTs at 0.8 x 0.8 x 2.5 mm, each in its own
   child process (wall time and peak resident memory), at three scan sizes;
6. random superpatch sampling from a prepared cache, in one process and with a DataLoader.

The library itself never prints; this module is a benchmark and does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

PAPER_GMACS = 31.0
SCAN_SPACING_ZYX = (2.5, 0.8, 0.8)  # mm: 0.8 x 0.8 in-plane, 2.5 mm slices
# scan sizes as (x, y, z) voxels, the way CT sizes are usually quoted (512 x 512 x 256)
FULL_SCAN_SIZES_XYZ = ((256, 256, 128), (512, 512, 128), (512, 512, 256))
QUICK_SCAN_SIZES_XYZ = ((256, 256, 64), (256, 256, 128), (512, 512, 128))
ORGANS = ["aorta", "gallbladder", "spleen", "left kidney", "right kidney", "liver", "stomach", "pancreas"]

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


# ---- timing ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 2
) -> dict[str, dict[str, Any]]:
    """Median wall time of each contender; within every repeat each contender runs once, in turn
    (forwards in even repeats, backwards in odd ones), after ``warmup`` untimed rounds.

    Returns ``{name: {"median_s", "times_s"}}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(1, repeats)):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))  # nobody always goes first
        for k in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "times_s": [round(t, 5) for t in v],
                **({"flops": fns[k].flops} if hasattr(fns[k], "flops") else {})} for k, v in times.items()}


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is worth measuring: a CUDA card with bf16, or a CPU with native bf16 (AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - builds without oneDNN
        return False


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- 4. the machine's limit ----------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: str = "fp32", n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of one large square matmul (2 n^3 FLOPs), the practical ceiling for the encoder's GEMMs."""
    n = n or (8192 if device.type == "cuda" else 2048)
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, tdt)
    b = torch.randn(n, n, generator=g).to(device, tdt)
    out = torch.empty(n, n, device=device, dtype=tdt)
    res = time_alternating({"mm": lambda: torch.mm(a, b, out=out)}, repeats, device, warmup=2)["mm"]
    return {"n": n, "dtype": dtype, "gflops_per_s": 2 * n**3 / res["median_s"] / 1e9, "median_s": res["median_s"]}


def _matmul_fn(device: torch.device, dtype: str, n: int | None = None) -> Callable[[], Any]:
    """One large matmul as a contender (``fn.flops`` = 2 n^3), to time beside the encoder."""
    n = n or (8192 if device.type == "cuda" else 2048)
    tdt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=tdt)
    b = torch.randn(n, n, device=device, dtype=tdt)
    out = torch.empty(n, n, device=device, dtype=tdt)

    def fn():
        return torch.mm(a, b, out=out)

    fn.flops = 2 * n**3  # type: ignore[attr-defined]
    return fn


# ---- peers -----------------------------------------------------------------------------------------
def monai_available() -> bool:
    try:
        from monai.networks.nets import MaskedAutoEncoderViT, ViT  # noqa: F401
    except Exception:
        return False
    return True


def monai_vit(cfg) -> nn.Module:
    """MONAI's ViT with its defaults (conv patch embedding, learnable position, its own attention),
    sized like the NEMESIS encoder: same width, depth, heads, MLP ratio, image and patch size."""
    from monai.networks.nets import ViT

    return ViT(in_channels=cfg.in_chans, img_size=cfg.superpatch, patch_size=cfg.patch, hidden_size=cfg.embed_dim,
               mlp_dim=int(cfg.mlp_ratio * cfg.embed_dim), num_layers=cfg.depth, num_heads=cfg.num_heads,
               classification=False)


def monai_mae(cfg, mask_ratio: float) -> nn.Module:
    """MONAI's MaskedAutoEncoderViT at the NEMESIS model's encoder and decoder sizes. Its sin-cos
    position embeddings need widths divisible by 6; otherwise (the paper preset's decoder, 512) a
    learnable one is used, which costs the same."""
    from monai.networks.nets import MaskedAutoEncoderViT

    def pos(width: int) -> str:
        return "sincos" if width % 6 == 0 else "learnable"

    return MaskedAutoEncoderViT(
        in_channels=cfg.in_chans, img_size=cfg.superpatch, patch_size=cfg.patch, hidden_size=cfg.embed_dim,
        mlp_dim=int(cfg.mlp_ratio * cfg.embed_dim), num_layers=cfg.depth, num_heads=cfg.num_heads,
        masking_ratio=mask_ratio, decoder_hidden_size=cfg.decoder_embed_dim,
        decoder_mlp_dim=int(cfg.mlp_ratio * cfg.decoder_embed_dim), decoder_num_layers=cfg.decoder_depth,
        decoder_num_heads=cfg.decoder_num_heads, pos_embed_type=pos(cfg.embed_dim),
        decoder_pos_embed_type=pos(cfg.decoder_embed_dim))


class PlainSDPAMAE(nn.Module):
    """A plain MAE built from SDPA transformer blocks (the peer when MONAI is absent, and the
    honest SDPA reference beside it): random masking, encoder on the visible tokens, decoder on
    all tokens, MSE on the masked patches. Same sizes as the NEMESIS model it is compared with."""

    def __init__(self, cfg) -> None:
        super().__init__()
        from .model.layers import Block, init_weights, sincos_pos_embed_3d

        e, ed = cfg.embed_dim, cfg.decoder_embed_dim
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.patch_dim, e)
        self.register_buffer("pos", sincos_pos_embed_3d(e, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(e, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(e)
        self.decoder_embed = nn.Linear(e, ed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ed))
        self.register_buffer("dpos", sincos_pos_embed_3d(ed, cfg.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(ed, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(ed)
        self.decoder_pred = nn.Linear(ed, cfg.patch_dim)
        self.apply(init_weights)

    def forward(self, patches: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        b, n, _ = patches.shape
        keep = max(1, round(n * (1 - mask_ratio)))
        noise = torch.rand(b, n, generator=generator, device=generator.device if generator else "cpu").to(patches.device)
        vis = noise.argsort(1)[:, :keep].sort(1).values
        x = self.patch_embed(patches.gather(1, vis[..., None].expand(-1, -1, patches.shape[-1])))
        x = x + self.pos.expand(b, -1, -1).gather(1, vis[..., None].expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        y = self.decoder_embed(self.norm(x))
        full = self.mask_token.to(y.dtype).expand(b, n, y.shape[-1]).scatter(1, vis[..., None].expand(-1, -1, y.shape[-1]), y)
        full = full + self.dpos
        for blk in self.decoder_blocks:
            full = blk(full)
        pred = self.decoder_pred(self.decoder_norm(full))
        masked = torch.ones(b, n, device=patches.device).scatter(1, vis, 0.0)
        per_patch = (pred.float() - patches.float()).pow(2).mean(-1)
        return (per_patch * masked).sum() / masked.sum()


def _count_gmacs(fn: Callable[[], Any]) -> float:
    from .model.flops import flop_counter

    counter = flop_counter()
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() / 2e9


# ---- 1. FLOPs -----------------------------------------------------------------------------------------
def flops_section(presets: list[str], device: torch.device, repeats: int, log: Log = _nolog) -> dict[str, Any]:
    """GMACs per preset (forward pass, dual 0.75, batch 1; and the all-token encoder) and the
    GFLOP/s a timed no-grad forward pass achieves."""
    from .model import build_model
    from .model.flops import count_encoder, count_forward

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
    use_monai: bool, log: Log = _nolog, skip: Callable[[str, int, str], bool] | None = None,
) -> dict[str, Any]:
    """Superpatches per second of ``model.encode`` (all 512 tokens) against the peers, per preset,
    batch and dtype. Ratios are ours / peer (higher is better)."""
    from .model import build_model
    from .model.flops import count_encoder
    from .model.vit import PlainViTEncoder

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
        peer_gmacs = {"plain_sdpa_vit": _count_gmacs(lambda: plain(torch.rand(1, cfg.num_patches, cfg.patch_dim)))}
        if use_monai:
            peer_gmacs["monai_vit"] = _count_gmacs(lambda: contenders["monai_vit"](torch.rand(1, cfg.in_chans, s, s, s)))
        for m in contenders.values():
            m.to(device)
        rows: dict[str, Any] = {}
        for b in batches:
            x = torch.rand(b, cfg.in_chans, s, s, s, device=device)
            for dt in dtypes:
                if skip is not None and skip(preset, b, dt):
                    continue
                log(f"encoder: {preset} batch {b} {dt}")

                def run(name, b=b, x=x, dt=dt):
                    def call():
                        with torch.inference_mode(), _autocast(device, dt):
                            if name == "nemesis":
                                return model.encode(x)
                            if name == "plain_sdpa_vit":
                                return plain(model.patchify(x))
                            return contenders["monai_vit"](x)
                    return call

                fns = {k: run(k) for k in contenders}
                if b == 4:  # the machine's limit, measured in the same alternation as the MFU figure
                    fns["matmul"] = _matmul_fn(device, dt)
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
    log: Log = _nolog,
) -> dict[str, Any]:
    """Pretraining steps per second (forward + backward + AdamW step, mask ratio 0.75; NEMESIS with
    its dual mask and noise) against the peer MAE(s) of equal sizes."""
    from .model import build_model

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
                with _autocast(device, dt):
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


# ---- CUDA: which attention kernel runs -----------------------------------------------------------------
def sdpa_backend_report(device: torch.device, preset: str = "small") -> dict[str, Any]:
    """Which SDPA kernels the encoder (all tokens) and a masked forward pass use, and whether the
    encoder runs when only flash attention is allowed."""
    from torch.profiler import ProfilerActivity, profile

    from .model import build_model

    model = build_model(preset).to(device).eval()
    s = model.cfg.superpatch
    x = torch.rand(1, 1, s, s, s, device=device)
    dt = "bf16" if bf16_supported(device) else "fp32"

    def kernels(fn) -> list[str]:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            fn()
            _sync(device)
        keys = ("flash", "efficient", "cudnn", "math", "attention")
        names = {e.key for e in prof.key_averages() if any(k in e.key.lower() for k in keys)}
        return sorted(n[:120] for n in names)

    gen = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode(), _autocast(device, dt):
        report: dict[str, Any] = {
            "dtype": dt,
            "encoder_kernels": kernels(lambda: model.encode(x)),
            "masked_forward_kernels": kernels(lambda: model(x, "dual", 0.75, 0.0, gen)),
        }
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for name, fn in (("encoder", lambda: model.encode(x)), ("masked_forward", lambda: model(x, "dual", 0.75, 0.0, gen))):
            try:
                with torch.inference_mode(), _autocast(device, dt), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    fn()
                    _sync(device)
                report[f"{name}_flash_only_ok"] = True
            except RuntimeError as exc:
                report[f"{name}_flash_only_ok"] = False
                report[f"{name}_flash_only_error"] = str(exc).splitlines()[0][:200]
    return report


# ---- 5. whole scans (child processes) ---------------------------------------------------------------------
def synthetic_scan(size_xyz: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A CT-like int16 HU volume (z, y, x): air, an elliptic body with soft tissue, a spine, a
    liver-like and two kidney-like blobs, lungs at the top, and noise. Only its size matters here."""
    nx, ny, nz = size_xyz
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[-1:1:ny * 1j, -1:1:nx * 1j]
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[((x) / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2 <= 1] = 700  # spine
    vol = np.repeat(plane[None], nz, axis=0)
    z = np.linspace(-1, 1, nz)[:, None, None]
    liver = ((x + 0.35) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.5) ** 2 <= 1
    vol[liver] = 60
    for cx in (-0.3, 0.3):
        vol[((x - cx) / 0.1) ** 2 + ((y - 0.2) / 0.12) ** 2 + ((z + 0.2) / 0.2) ** 2 <= 1] = 150
    lungs = (z > 0.5) & body & (np.abs(x) > 0.15)
    vol[np.broadcast_to(lungs, vol.shape)] = -800
    vol += rng.integers(-15, 16, size=vol.shape[1:], dtype=np.int16)[None]  # cheap texture
    return vol


def write_synthetic_scan(path: Path, size_xyz: tuple[int, int, int], seed: int = 0) -> Path:
    from .data import volume_from_array, write_volume

    arr = synthetic_scan(size_xyz, seed)
    vol = volume_from_array(arr, spacing_zyx=SCAN_SPACING_ZYX)
    return write_volume(arr, path, reference=vol, dtype=np.int16)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM (the peak of this program's own memory:
    ru_maxrss would also carry the parent's size at fork, kept across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
    except ImportError:  # pragma: no cover - Windows
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One whole-scan job (inside the child process): build a randomly initialised model (speed
    does not depend on the weights), then time ``infer_scan`` or ``reconstruct_scan`` on the file."""
    from .model import build_model
    from .train.inference import infer_scan, reconstruct_scan
    from .train.probe import ProbeHead

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec.get("device", "cpu")
    torch.manual_seed(0)
    model = build_model(spec["preset"]).eval()
    bf16 = bool(spec.get("bf16", False))
    rss_model = _peak_rss_mb()
    t0 = time.perf_counter()
    if spec["task"] == "infer":
        head = ProbeHead(model.cfg.embed_dim, len(ORGANS))
        res = infer_scan(spec["scan"], model, head, ORGANS, batch=spec.get("batch", 2), device=device, bf16=bf16)
        n_sp = int(res.grid.n)
    else:
        res = reconstruct_scan(spec["scan"], model, strategy="dual", ratio=0.75, noise=0.0,
                               batch=spec.get("batch", 2), device=device, bf16=bf16)
        n_sp = int(res["superpatches"])
    seconds = time.perf_counter() - t0
    out = {"task": spec["task"], "preset": spec["preset"], "seconds": seconds, "superpatches": n_sp,
           "seconds_per_superpatch": seconds / max(n_sp, 1), "peak_rss_mb": _peak_rss_mb(),
           "rss_after_model_mb": rss_model, "device": device, "bf16": bf16}
    if device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def scan_job(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one whole-scan job in a fresh Python process; its peak RSS is its own ru_maxrss."""
    cmd = [sys.executable, "-m", "napari_nemesis.bench", "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec['task']} {spec['preset']}): {proc.stderr.strip()[-800:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    return res


def _linear_fit(n: list[float], t: list[float]) -> dict[str, float]:
    """Least-squares t = a + b n and its R^2."""
    a_mat = np.stack([np.ones(len(n)), np.asarray(n, float)], 1)
    coef, *_ = np.linalg.lstsq(a_mat, np.asarray(t, float), rcond=None)
    pred = a_mat @ coef
    ss_res = float(((np.asarray(t) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(t) - np.mean(t)) ** 2).sum())
    return {"intercept_s": float(coef[0]), "seconds_per_superpatch": float(coef[1]),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def full_scan_section(
    jobs: list[tuple[str, str]], sizes_xyz: list[tuple[int, int, int]], device: torch.device, workdir: Path,
    log: Log = _nolog, bf16: bool = False, threads: int | None = None,
    reconstruct_sizes: list[tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """``jobs``: (task, preset) pairs, each timed at every size in ``sizes_xyz`` (the reconstruct jobs
    only at ``reconstruct_sizes`` when given). Returns per job the runs, the largest size's seconds
    and peak RSS, and a linear fit of seconds against superpatches."""
    paths = {}
    for size in sizes_xyz:
        p = workdir / f"scan_{size[0]}x{size[1]}x{size[2]}.nii.gz"
        if not p.exists():
            log(f"writing synthetic scan {size[0]} x {size[1]} x {size[2]} (not timed)")
            write_synthetic_scan(p, size)
        paths[size] = p
    out: dict[str, Any] = {}
    for task, preset in jobs:
        key = f"{task}_{preset}"
        sizes = sizes_xyz if task == "infer" or not reconstruct_sizes else reconstruct_sizes
        runs = []
        for size in sizes:
            log(f"whole scan: {task} {preset} {size[0]} x {size[1]} x {size[2]}")
            spec = {"task": task, "preset": preset, "scan": str(paths[size]), "device": device.type,
                    "bf16": bf16, "threads": threads}
            res = scan_job(spec)
            res["size_xyz"] = list(size)
            runs.append(res)
        largest = runs[-1]
        entry: dict[str, Any] = {"runs": runs, "seconds": largest["seconds"], "peak_rss_mb": largest["peak_rss_mb"],
                                 "size_xyz": largest["size_xyz"], "superpatches": largest["superpatches"]}
        if len(runs) >= 2:
            entry["fit"] = _linear_fit([r["superpatches"] for r in runs], [r["seconds"] for r in runs])
        out[key] = entry
    return out


# ---- 6. data sampling ----------------------------------------------------------------------------------------
class _SampleDataset(torch.utils.data.Dataset):
    """Random superpatches from a cache, one seeded draw per index (what a pretraining loader does)."""

    def __init__(self, cache, length: int = 10**6) -> None:
        self.cache, self.length = cache, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.cache.sample(np.random.default_rng([0, i])))


def sampling_section(scan_path: Path, workdir: Path, superpatch: int, repeats: int, seconds: float,
                     loader_samples: int, log: Log = _nolog) -> dict[str, Any]:
    """Random superpatches/s from a cache prepared from the synthetic scan: ``SuperpatchCache.sample``
    in this process, and through a DataLoader with 2 worker processes."""
    import shutil

    from .data import open_cache, prepare_cache
    from .data.bench_sampling import measure_sampling_rate

    raw = workdir / "sampling_raw"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    target = raw / "imagesTr" / "img0001.nii.gz"
    if not target.exists():
        shutil.copyfile(scan_path, target)
    log("sampling: preparing the cache (not timed)")
    prepare_cache(raw, workdir / "sampling_cache", superpatch=superpatch, include_unlabelled=True)
    cache = open_cache(workdir / "sampling_cache", superpatch)
    one = measure_sampling_rate(cache, seconds=seconds, repeats=repeats)
    log("sampling: DataLoader, 2 workers")
    loader = torch.utils.data.DataLoader(_SampleDataset(cache), batch_size=1, num_workers=2, shuffle=False)
    it = iter(loader)
    for _ in range(4):  # warm-up: worker start-up and memory maps
        next(it)
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(loader_samples):
            next(it)
        rates.append(loader_samples / (time.perf_counter() - t0))
    del it, loader
    return {"one_process_per_s": one["median_per_s"], "one_process_rates": one["rates_per_s"],
            "dataloader_2_workers_per_s": statistics.median(rates),
            "dataloader_rates": [round(r, 2) for r in rates], "superpatch": superpatch,
            "source": "cache prepared from the largest synthetic scan"}


# ---- the whole benchmark ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "device": device.type, "python": platform.python_version(), "machine": platform.machine(),
           "processor": _cpu_name(), "bf16_supported": bf16_supported(device)}
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda_version"] = torch.version.cuda
    env["monai_version"] = _monai_version()
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _monai_version() -> str | None:
    try:
        import monai

        return monai.__version__
    except Exception:
        return None


def run_benchmark(
    quick: bool = False,
    device: str = "cpu",
    presets: list[str] | None = None,
    heavy_presets: list[str] | None = None,
    repeats: int | None = None,
    scan_sizes_xyz: list[tuple[int, int, int]] | None = None,
    scan_jobs: list[tuple[str, str]] | None = None,
    workdir: str | os.PathLike | None = None,
    sampling: bool = True,
    scans: bool = True,
    log: Log = _nolog,
) -> dict[str, Any]:
    """Run every part and return the results as one JSON-able dict (see the module docstring).

    ``presets`` get the FLOP count and the encoder comparison; ``heavy_presets`` the train step.
    Defaults: full run ``paper`` and ``small`` everywhere; ``quick``: ``small`` for the heavy parts,
    fewer repeats, smaller scans.
    """
    from .train.runtime import resolve_device

    dev = resolve_device(device)
    t_start = time.perf_counter()
    presets = presets or (["paper", "small"])
    heavy = heavy_presets or (["small"] if quick else list(presets))
    reps = repeats or (3 if quick else 5)
    use_monai = monai_available()
    res: dict[str, Any] = environment(dev)
    res["mode"] = "quick" if quick else "full"
    res["repeats"] = reps
    res["peer"] = "monai_vit" if use_monai else "plain_sdpa_vit"
    res["peer_train"] = "monai_mae" if use_monai else "plain_sdpa_mae"

    # 4. the machine's limit (first, so the encoder's MFU can use it)
    log("matmul peak")
    res["matmul_peak"] = {"fp32": matmul_peak(dev, "fp32", repeats=reps)}
    if res["bf16_supported"]:
        res["matmul_peak"]["bf16"] = matmul_peak(dev, "bf16", repeats=reps)
    res["matmul_peak_gflops"] = {k: v["gflops_per_s"] for k, v in res["matmul_peak"].items()}

    # 1. FLOPs
    res["flops"] = flops_section(presets, dev, reps, log)

    # 2. encoder throughput
    dtypes = ["fp32"] + (["bf16"] if res["bf16_supported"] else [])

    def skip(preset: str, b: int, dt: str) -> bool:
        # quick: the heavy presets' batch 1 and bf16 only where cheap
        return quick and preset not in heavy and (b != 1 or dt != "fp32")

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

    # 5. whole scans, 6. sampling
    sizes = [tuple(s) for s in (scan_sizes_xyz or (QUICK_SCAN_SIZES_XYZ if quick else FULL_SCAN_SIZES_XYZ))]
    if scan_jobs is None:
        scan_jobs = [("infer", "small"), ("reconstruct", "small" if quick else "paper")]
    if not scans:
        res["targets"] = targets(res)
        res["benchmark_seconds"] = time.perf_counter() - t_start
        return res
    tmp_ctx = tempfile.TemporaryDirectory(prefix="nemesis-bench-") if workdir is None else contextlib.nullcontext(workdir)
    with tmp_ctx as wd:
        wd = Path(wd)
        wd.mkdir(parents=True, exist_ok=True)
        recon_sizes = [sizes[-1]] if quick else None
        scans = full_scan_section(scan_jobs, sizes, dev, wd, log, bf16=dev.type == "cuda" and res["bf16_supported"],
                                  threads=torch.get_num_threads(), reconstruct_sizes=recon_sizes)
        res["full_scan"] = scans
        res["full_scan_size_xyz"] = list(sizes[-1])
        res["full_scan_spacing_xyz_mm"] = list(reversed(SCAN_SPACING_ZYX))
        res["full_scan_seconds"] = {k: v["seconds"] for k, v in scans.items()}
        res["full_scan_peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in scans.items()}
        res["scaling"] = {k: {"sizes_xyz": [r["size_xyz"] for r in v["runs"]],
                              "superpatches": [r["superpatches"] for r in v["runs"]],
                              "seconds": [r["seconds"] for r in v["runs"]], **v.get("fit", {})}
                          for k, v in scans.items()}
        if sampling:
            from .model import preset_config

            sp = preset_config(heavy[-1]).superpatch
            res["sampling"] = sampling_section(wd / f"scan_{sizes[-1][0]}x{sizes[-1][1]}x{sizes[-1][2]}.nii.gz", wd, sp,
                                               reps, 0.5 if quick else 1.0, 10 if quick else 20, log)
            res["sampling_per_s"] = {"one_process": res["sampling"]["one_process_per_s"],
                                     "dataloader_2_workers": res["sampling"]["dataloader_2_workers_per_s"]}
    res["targets"] = targets(res)
    res["benchmark_seconds"] = time.perf_counter() - t_start
    return res


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """Each target of the performance issue with its measured value and whether it is met."""
    out: dict[str, Any] = {}

    def put(name, value, ok):
        out[name] = {"value": value, "met": bool(ok) if value is not None else None}

    for p, r in res.get("encoder_speed_ratio_vs_vit", {}).items():
        put(f"encoder_speed_ratio_vs_vit[{p}] >= 1.0", r, r >= 1.0)
    for p, r in res.get("train_step_ratio_vs_vit", {}).items():
        put(f"train_step_ratio_vs_vit[{p}] >= 0.9", r, r >= 0.9)
    for p, r in res.get("encoder_mfu", {}).items():
        put(f"encoder_mfu[{p}] >= 0.5 (batch 4, fp32)", r, r >= 0.5)
    fs = res.get("full_scan", {})
    if "infer_small" in fs:
        put("infer small < 30 s", fs["infer_small"]["seconds"], fs["infer_small"]["seconds"] < 30)
    for k in ("reconstruct_paper", "reconstruct_small"):
        if k in fs:
            put(f"{k.replace('_', ' ')} < 120 s", fs[k]["seconds"], fs[k]["seconds"] < 120)
    for k, v in fs.items():
        put(f"{k} peak RSS < 3072 MB", v["peak_rss_mb"], v["peak_rss_mb"] < 3072)
        if "fit" in v:
            put(f"{k} linear in superpatches (R^2 >= 0.98)", v["fit"]["r2"], v["fit"]["r2"] >= 0.98)
    if "sampling" in res:
        v = res["sampling"]["one_process_per_s"]
        put("sampling > 50 /s (one process)", v, v > 50)
    return out


# ---- report -------------------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    """A plain-text report of ``run_benchmark``'s result."""
    L = []
    L.append(f"napari-nemesis benchmark ({res['mode']}): torch {res['torch_version']}, device {res['device']}"
             + (f" ({res['cuda_device']})" if res.get("cuda_device") else f" ({res['processor']})")
             + f", {res['threads']} threads, peer {res['peer']}, {res['repeats']} repeats (median)")
    mp = res["matmul_peak_gflops"]
    L.append("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in mp.items()))
    L.append("")
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
    L.append("")
    L.append(f"{'whole scan':<22} {'size (x y z)':>14} {'superpatches':>12} {'seconds':>8} {'peak RSS MB':>12}")
    for k, v in res.get("full_scan", {}).items():
        for r in v["runs"]:
            L.append(f"{k:<22} {' x '.join(map(str, r['size_xyz'])):>14} {r['superpatches']:>12} "
                     f"{r['seconds']:>8.1f} {r['peak_rss_mb']:>12.0f}")
        if "fit" in v:
            f = v["fit"]
            L.append(f"{'':<22} fit: {f['intercept_s']:.2f} s + {f['seconds_per_superpatch']:.3f} s/superpatch, "
                     f"R^2 {f['r2']:.3f}")
    if "sampling" in res:
        s = res["sampling"]
        L.append("")
        L.append(f"sampling (superpatches/s): one process {s['one_process_per_s']:.1f}, "
                 f"DataLoader 2 workers {s['dataloader_2_workers_per_s']:.1f}")
    if "sdpa" in res:
        L.append("")
        L.append("SDPA kernels: encoder " + ", ".join(res["sdpa"]["encoder_kernels"]))
        for k in ("encoder_flash_only_ok", "masked_forward_flash_only_ok"):
            if k in res["sdpa"]:
                L.append(f"{k}: {res['sdpa'][k]}")
    L.append("")
    L.append("targets:")
    for name, t in res["targets"].items():
        v = t["value"]
        L.append(f"  [{'met' if t['met'] else 'NOT met'}] {name}: {v:.3f}" if isinstance(v, float) else f"  {name}: {v}")
    L.append(f"benchmark took {res['benchmark_seconds']:.0f} s")
    return "\n".join(L)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def plot_scaling(res: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """A PNG of whole-scan seconds against superpatches (one line per job), drawn with PIL."""
    from PIL import Image, ImageDraw

    series = [(k, v["superpatches"], v["seconds"]) for k, v in res["scaling"].items() if len(v["seconds"]) >= 1]
    w, h, ml, mr, mt, mb = 760, 480, 80, 200, 50, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xmax = max(max(s[1]) for s in series) * 1.1
    ymax = max(max(s[2]) for s in series) * 1.15
    step_y = _nice_step(ymax)
    step_x = _nice_step(xmax)

    def px(xv, yv):
        return ml + xv / xmax * (w - ml - mr), h - mb - yv / ymax * (h - mt - mb)

    d.rectangle([ml, mt, w - mr, h - mb], outline="black")
    yv = 0.0
    while yv <= ymax:
        _, yy = px(0, yv)
        d.line([ml - 4, yy, w - mr, yy], fill=(220, 220, 220))
        d.text((ml - 50, yy - 6), f"{yv:g}", fill="black")
        yv += step_y
    xv = 0.0
    while xv <= xmax:
        xx, _ = px(xv, 0)
        d.line([xx, h - mb, xx, h - mb + 4], fill="black")
        d.text((xx - 6, h - mb + 8), f"{xv:g}", fill="black")
        xv += step_x
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for i, (name, xs, ys) in enumerate(series):
        c = colours[i % len(colours)]
        pts = [px(a, b) for a, b in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for xx, yy in pts:
            d.ellipse([xx - 4, yy - 4, xx + 4, yy + 4], fill=c)
        d.rectangle([w - mr + 15, mt + 20 * i + 4, w - mr + 27, mt + 20 * i + 16], fill=c)
        d.text((w - mr + 33, mt + 20 * i + 4), name.replace("_", " "), fill="black")
    d.text((ml + (w - ml - mr) // 2 - 100, h - 25), "superpatches (128^3) in the scan", fill="black")
    d.text((10, mt - 30), "seconds (wall, whole scan)", fill="black")
    d.text((ml + 120, 15), title or "whole-scan time against scan size", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _nice_step(span: float) -> float:
    raw = span / 6 if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


# ---- command line ---------------------------------------------------------------------------------------------
def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from .cli.bench_cmds import add_arguments

    p = parser or argparse.ArgumentParser(prog="python -m napari_nemesis.bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
        sys.stderr.flush()

    presets = args.presets.split(",") if args.presets else None
    res = run_benchmark(quick=args.quick, device=args.device, presets=presets, repeats=args.repeats,
                        sampling=not args.no_sampling, scans=not args.no_scans, log=log)
    table = format_table(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(res, indent=1, default=_json_default) + "\n")
        (out / "bench.txt").write_text(table + "\n")
        if "scaling" in res:
            plot_scaling(res, out / "scaling.png", f"whole-scan time, {res['device']} ({res['threads']} threads)")
    sys.stdout.write(table + "\n")
    if args.json:
        sys.stdout.write(json.dumps(res, default=_json_default) + "\n")
    sys.stdout.flush()
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        sys.stdout.write(json.dumps(run_child(json.loads(argv[1]))) + "\n")
        return 0
    return run_from_args(build_arg_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
