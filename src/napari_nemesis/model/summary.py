"""Human-readable summaries of a model: parameter counts and cost per part."""

from __future__ import annotations

from typing import Any

from .mae import NemesisMAE


def parameter_counts(model: NemesisMAE) -> dict[str, int]:
    """Parameters (in numbers, not bytes) of the patch embedding, encoder and decoder."""
    groups = {"patch_embedding": 0, "encoder": 0, "decoder": 0}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if top == "patch_embed":
            groups["patch_embedding"] += p.numel()
        elif top in ("blocks", "norm"):
            groups["encoder"] += p.numel()
        else:
            groups["decoder"] += p.numel()
    groups["total"] = sum(groups.values())
    return groups


def describe(model: NemesisMAE) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "preset": cfg.name,
        "superpatch": cfg.superpatch,
        "patch": cfg.patch,
        "grid": list(cfg.grid),
        "tokens": cfg.num_patches,
        "encoder": f"{cfg.depth} MATB x {cfg.embed_dim} wide, {cfg.num_heads} heads",
        "decoder": f"{cfg.decoder_depth} MATB x {cfg.decoder_embed_dim} wide, {cfg.decoder_num_heads} heads",
        "nemesis_tokens": f"{cfg.nt_tokens} x {cfg.nt_dim}",
        "gate_linear_path": round(model.gate, 4),
        "parameters": parameter_counts(model),
    }
