"""The whole-scan section: ``infer`` (superpatch level), ``infer_patch`` (organ maps at patch
resolution), ``reconstruct``, ``triage`` and ``similar`` on synthetic CTs of growing size.

Each job runs in its own child process (``python -m napari_nemesis.bench --child SPEC``), so its
wall time includes nothing of this process's state and its peak resident memory is its own. A
linear fit of seconds against superpatches shows whether the time scales with the scan.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sections import BenchContext, Log, no_log
from .timing import bf16_supported

SCAN_SPACING_ZYX = (2.5, 0.8, 0.8)  # mm: 0.8 x 0.8 in-plane, 2.5 mm slices
# scan sizes as (x, y, z) voxels, the way CT sizes are usually quoted (512 x 512 x 256)
FULL_SCAN_SIZES_XYZ = ((256, 256, 128), (512, 512, 128), (512, 512, 256))
QUICK_SCAN_SIZES_XYZ = ((256, 256, 64), (256, 256, 128), (512, 512, 128))
ORGANS = ["aorta", "gallbladder", "spleen", "left kidney", "right kidney", "liver", "stomach", "pancreas"]


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
    from ..data import volume_from_array, write_volume

    arr = synthetic_scan(size_xyz, seed)
    vol = volume_from_array(arr, spacing_zyx=SCAN_SPACING_ZYX)
    return write_volume(arr, path, reference=vol, dtype=np.int16)


def synthetic_scan_file(workdir: Path, size_xyz: tuple[int, int, int], log: Log = no_log) -> Path:
    """The synthetic scan of this size in ``workdir``, written the first time it is asked for
    (not timed); the sampling section reads the same file."""
    path = Path(workdir) / f"scan_{size_xyz[0]}x{size_xyz[1]}x{size_xyz[2]}.nii.gz"
    if not path.exists():
        log(f"writing synthetic scan {size_xyz[0]} x {size_xyz[1]} x {size_xyz[2]} (not timed)")
        write_synthetic_scan(path, size_xyz)
    return path


def peak_rss_mb() -> float:
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
    does not depend on the weights), then time ``infer_scan``, ``infer_patch_scan`` (task
    ``infer_patch``, a random ``PatchHead``; ``map_seconds``: painting one organ's map on the scan's
    own grid, what ``nemesis infer --level patch`` writes per organ) or ``reconstruct_scan`` on the file."""
    from ..model import build_model
    from ..model.heads import PatchHead
    from ..train.inference import infer_scan
    from ..train.patch_level import infer_patch_scan
    from ..train.scan import reconstruct_scan
    from ..train.probe import ProbeHead

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = spec.get("device", "cpu")
    torch.manual_seed(0)
    model = build_model(spec["preset"]).eval()
    bf16 = bool(spec.get("bf16", False))
    rss_model = peak_rss_mb()
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    if spec["task"] == "infer":
        head = ProbeHead(model.cfg.embed_dim, len(ORGANS))
        res = infer_scan(spec["scan"], model, head, ORGANS, batch=spec.get("batch", 2), device=device, bf16=bf16)
        n_sp = int(res.grid.n)
    elif spec["task"] == "infer_patch":
        head = PatchHead(model.cfg.embed_dim, len(ORGANS))
        res = infer_patch_scan(spec["scan"], model, head, ORGANS, batch=spec.get("batch", 2), device=device,
                               bf16=bf16)
        n_sp = int(res.grid.n)
        t_infer = time.perf_counter()
        res.probability_map(0)
        map_seconds = time.perf_counter() - t_infer
    elif spec["task"] == "reconstruct":
        res = reconstruct_scan(spec["scan"], model, strategy="dual", ratio=0.75, noise=0.0,
                               batch=spec.get("batch", 2), device=device, bf16=bf16)
        n_sp = int(res["superpatches"])
    elif spec["task"] == "triage":
        n_sp, extra = _triage_job(spec, model, device, bf16)
    elif spec["task"] == "similar":
        n_sp, extra = _similar_job(spec, model, device, bf16)
    else:
        raise ValueError(f"unknown whole-scan task {spec['task']!r}")
    seconds = time.perf_counter() - t0 - extra.pop("untimed_s", 0.0)
    out = {"task": spec["task"], "preset": spec["preset"], "seconds": seconds, "superpatches": n_sp,
           "seconds_per_superpatch": seconds / max(n_sp, 1), "peak_rss_mb": peak_rss_mb(),
           "rss_after_model_mb": rss_model, "device": device, "bf16": bf16, **extra}
    if spec["task"] == "infer_patch":
        out["seconds"] = seconds = t_infer - t0  # the map's painting apart
        out["seconds_per_superpatch"] = seconds / max(n_sp, 1)
        out["map_seconds"] = map_seconds
        out["patches"] = int(res.inside.sum())
    if device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


#: Mask seeds of the timed triage (the command's default).
TRIAGE_SEEDS = 3


def _triage_job(spec: dict[str, Any], model, device: str, bf16: bool) -> tuple[int, dict[str, Any]]:
    """``nemesis triage`` on one scan: every superpatch reconstructed ``seeds`` times and scored."""
    from ..train.triage import triage

    seeds = int(spec.get("seeds", TRIAGE_SEEDS))
    res = triage([spec["scan"]], model, seeds=seeds, batch=spec.get("batch", 2), device=device, bf16=bf16)
    return int(res["scans"][0]["superpatches"]), {"seeds": seeds}


def _similar_job(spec: dict[str, Any], model, device: str, bf16: bool) -> tuple[int, dict[str, Any]]:
    """``nemesis similar`` of the scan's first superpatch among a copy of the scan (the query's own scan
    is never searched): first with an empty feature cache (the scan read, encoded and cached, what the
    first search of a scan costs; the copy, the same bytes, then comes from the cache), then again
    (``cached_seconds``: hashing the files and reading their features). ``bf16`` is not used: the search
    encodes in float32."""
    import shutil
    import tempfile

    from ..train.similarity import similar

    with tempfile.TemporaryDirectory(prefix="nemesis-bench-features-") as cache:
        copy = Path(cache) / f"copy_{Path(spec['scan']).name}"
        shutil.copyfile(spec["scan"], copy)
        first = similar(spec["scan"], 0, [copy], model, k=5, cache_dir=Path(cache) / "features",
                        batch=spec.get("batch", 2), device=device)
        t1 = time.perf_counter()
        again = similar(spec["scan"], 0, [copy], model, k=5, cache_dir=Path(cache) / "features", device=device)
        cached = time.perf_counter() - t1
    assert again["cache"]["computed"] == 0
    return int(first["candidates"]), {"cached_seconds": cached, "untimed_s": cached}


def scan_job(spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run one whole-scan job in a fresh Python process; ``process_seconds`` adds its start-up."""
    cmd = [sys.executable, "-m", "napari_nemesis.bench", "--child", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({spec['task']} {spec['preset']}): {proc.stderr.strip()[-800:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_seconds"] = wall
    return res


def linear_fit(n: list[float], t: list[float]) -> dict[str, float]:
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
    log: Log = no_log, bf16: bool = False, threads: int | None = None,
    reconstruct_sizes: list[tuple[int, int, int]] | None = None,
    task_sizes: dict[str, list[tuple[int, int, int]]] | None = None,
) -> dict[str, Any]:
    """``jobs``: (task, preset) pairs, each timed at every size in ``sizes_xyz`` (the reconstruct jobs
    only at ``reconstruct_sizes`` when given; any task only at ``task_sizes[task]`` when given). Returns
    per job the runs, the largest size's seconds and peak RSS, and a linear fit of seconds against
    superpatches."""
    task_sizes = dict(task_sizes or {})
    if reconstruct_sizes:
        task_sizes.setdefault("reconstruct", list(reconstruct_sizes))
    wanted = {tuple(s) for s in sizes_xyz} | {tuple(s) for v in task_sizes.values() for s in v}
    paths = {size: synthetic_scan_file(workdir, size, log) for size in sorted(wanted, key=lambda s: s[0] * s[1] * s[2])}
    out: dict[str, Any] = {}
    for task, preset in jobs:
        key = f"{task}_{preset}"
        sizes = [tuple(s) for s in task_sizes.get(task, sizes_xyz)]
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
        for extra in ("map_seconds", "patches"):
            if extra in largest:
                entry[extra] = largest[extra]
        if len(runs) >= 2:
            entry["fit"] = linear_fit([r["superpatches"] for r in runs], [r["seconds"] for r in runs])
        out[key] = entry
    return out


# ---- the section ----------------------------------------------------------------------------------------
def run(ctx: BenchContext, res: dict[str, Any]) -> None:
    """Every job at every size (quick: the jobs other than ``infer`` at the largest size only); the
    ``scaling`` key holds what the scaling plot draws."""
    sizes = ctx.scan_sizes_xyz
    # quick: reconstruct and patch-level inference at the largest size only, triage and similarity at the
    # smallest; full: triage (three reconstructions per superpatch) at the largest size only
    task_sizes = ({"reconstruct": [sizes[-1]], "infer_patch": [sizes[-1]], "triage": [sizes[0]],
                   "similar": [sizes[0]]} if ctx.quick else {"triage": [sizes[-1]]})
    scans = full_scan_section(ctx.scan_jobs, sizes, ctx.device, ctx.workdir, ctx.log,
                              bf16=ctx.device.type == "cuda" and bf16_supported(ctx.device),
                              threads=torch.get_num_threads(), task_sizes=task_sizes)
    res["full_scan"] = scans
    res["full_scan_size_xyz"] = list(sizes[-1])
    res["full_scan_spacing_xyz_mm"] = list(reversed(SCAN_SPACING_ZYX))
    res["full_scan_seconds"] = {k: v["seconds"] for k, v in scans.items()}
    res["full_scan_peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in scans.items()}
    res["scaling"] = {k: {"sizes_xyz": [r["size_xyz"] for r in v["runs"]],
                          "superpatches": [r["superpatches"] for r in v["runs"]],
                          "seconds": [r["seconds"] for r in v["runs"]], **v.get("fit", {})}
                      for k, v in scans.items()}


def targets(res: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    fs = res.get("full_scan", {})
    out = []
    for k in ("infer_small", "infer_patch_small"):
        if k in fs:
            out.append((f"{k.replace('_', ' ')} < 30 s", fs[k]["seconds"], fs[k]["seconds"] < 30))
    for k in ("reconstruct_paper", "reconstruct_small"):
        if k in fs:
            out.append((f"{k.replace('_', ' ')} < 120 s", fs[k]["seconds"], fs[k]["seconds"] < 120))
    for k, v in fs.items():
        out.append((f"{k} peak RSS < 3072 MB", v["peak_rss_mb"], v["peak_rss_mb"] < 3072))
        if "fit" in v:
            out.append((f"{k} linear in superpatches (R^2 >= 0.98)", v["fit"]["r2"], v["fit"]["r2"] >= 0.98))
    return out


def table_lines(res: dict[str, Any]) -> list[str]:
    if "full_scan" not in res:
        return []
    L = [f"{'whole scan':<22} {'size (x y z)':>14} {'superpatches':>12} {'seconds':>8} {'peak RSS MB':>12}"]
    for k, v in res["full_scan"].items():
        for r in v["runs"]:
            L.append(f"{k:<22} {' x '.join(map(str, r['size_xyz'])):>14} {r['superpatches']:>12} "
                     f"{r['seconds']:>8.1f} {r['peak_rss_mb']:>12.0f}")
            if "cached_seconds" in r:
                L.append(f"{'':<22} {'':>14} {'':>12} {r['cached_seconds']:>8.2f} (features from the cache)")
        if "fit" in v:
            f = v["fit"]
            L.append(f"{'':<22} fit: {f['intercept_s']:.2f} s + {f['seconds_per_superpatch']:.3f} s/superpatch, "
                     f"R^2 {f['r2']:.3f}")
        if "map_seconds" in v:
            L.append(f"{'':<22} {v['patches']} patches; one organ's map on the scan's grid {v['map_seconds']:.2f} s")
    return L
