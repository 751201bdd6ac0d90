"""NemesisConfig: every size and choice of the model in one dataclass, plus named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import NemesisInputError


#: Sanity bounds on a config (a checkpoint's config is checked against them before anything is built):
#: far above every preset, low enough that nothing is allocated for a corrupt or hostile file.
MAX_WIDTH = 16384
MAX_TOKENS = 32768
LIMITS = {"superpatch": 512, "patch": 128, "in_chans": 16, "depth": 256, "decoder_depth": 256, "num_heads": 256,
          "decoder_num_heads": 256, "nt_tokens": 256, "se_num_heads": 256}


@dataclass
class NemesisConfig:
    """Sizes of a NEMESIS masked autoencoder.

    Geometry: a cubic superpatch of ``superpatch`` voxels per side, cut into cubic patches of
    ``patch`` voxels, gives a token grid of ``(superpatch // patch) ** 3`` tokens in raster (z, y, x)
    order. Encoder and decoder are stacks of MATBs (plane-wise + axis-wise attention, fused by a
    Linear(2E -> E)).
    """

    superpatch: int = 128
    patch: int = 16
    in_chans: int = 1
    # encoder
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # adaptive patch embedding: k NEMESIS tokens of width E / k, one self-attention block
    nt_tokens: int = 8
    se_num_heads: int = 4
    # decoder
    decoder_embed_dim: int = 512
    decoder_depth: int = 10
    decoder_num_heads: int = 16
    # pretext task
    mask_strategy: str = "dual"
    mask_ratio: float = 0.75
    noise_sigmas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.05)
    norm_pix_loss: bool = False
    qkv_bias: bool = True
    shared_qkv: bool = True  # MATB streams share one q/k/v projection (see matb.py)
    name: str = "custom"

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.noise_sigmas = tuple(float(s) for s in self.noise_sigmas)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Tokens per axis of the superpatch grid."""
        return self.superpatch // self.patch

    @property
    def grid(self) -> tuple[int, int, int]:
        g = self.grid_size
        return (g, g, g)

    @property
    def num_patches(self) -> int:
        return self.grid_size**3

    @property
    def patch_dim(self) -> int:
        """Voxels in one patch (the prediction size per token)."""
        return self.in_chans * self.patch**3

    @property
    def nt_dim(self) -> int:
        """Width of one NEMESIS token (E / k)."""
        return self.embed_dim // self.nt_tokens

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise NemesisInputError(f"invalid NEMESIS config '{self.name}': {msg}")

        ints = ("superpatch", "patch", "in_chans", "embed_dim", "depth", "num_heads", "nt_tokens", "se_num_heads",
                "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        for name in ints:
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} {value!r} is not an integer")
            need(value >= 1, f"{name} {value} must be >= 1")
            need(value <= LIMITS.get(name, MAX_WIDTH), f"{name} {value} is larger than {LIMITS.get(name, MAX_WIDTH)}")
        for name in ("mlp_ratio", "mask_ratio"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} {value!r} is not a finite number")
        need(0 < self.mlp_ratio <= 64, f"mlp_ratio {self.mlp_ratio} must be in (0, 64]")
        need(all(math.isfinite(v) and v >= 0 for v in self.noise_sigmas), f"noise_sigmas {self.noise_sigmas} must be "
             "finite and >= 0")
        need(self.superpatch > 0 and self.patch > 0, "superpatch and patch must be positive")
        need(
            self.superpatch % self.patch == 0,
            f"superpatch {self.superpatch} is not divisible by patch {self.patch}",
        )
        need(self.embed_dim % self.num_heads == 0, f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        need(
            self.decoder_embed_dim % self.decoder_num_heads == 0,
            f"decoder_embed_dim {self.decoder_embed_dim} not divisible by decoder_num_heads {self.decoder_num_heads}",
        )
        need(self.embed_dim % self.nt_tokens == 0, f"embed_dim {self.embed_dim} not divisible by nt_tokens {self.nt_tokens}")
        need(
            self.nt_dim % self.se_num_heads == 0,
            f"NEMESIS token width {self.nt_dim} not divisible by se_num_heads {self.se_num_heads}",
        )
        need(self.depth >= 1 and self.decoder_depth >= 1, "depth and decoder_depth must be >= 1")
        need(self.num_patches <= MAX_TOKENS, f"{self.num_patches} tokens per superpatch ({self.grid_size}^3) is more "
             f"than {MAX_TOKENS}")
        need(0.0 <= self.mask_ratio < 1.0, f"mask_ratio {self.mask_ratio} must be in [0, 1)")

    # ---- (de)serialisation for checkpoints ------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["noise_sigmas"] = list(self.noise_sigmas)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NemesisConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise NemesisInputError(f"unknown NEMESIS config field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **overrides: Any) -> "NemesisConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise NemesisInputError(
                f"unknown NEMESIS config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **overrides)


# ``paper``: E = 768 as in the paper (Table V's best). The decoder depth is set so that one forward
# pass at mask ratio 0.75 costs ~31.0 GMACs, the paper's figure (see docs/model.md for the count).
# ``small``: what the bundled default weights use; trainable on a laptop CPU, 12 M parameters
# (24 MB as float16, so the bundled weights stay under 30 MB).
# ``tiny``: 64^3 superpatches of 8^3 patches (same 8x8x8 token grid), for tests and CPU demos.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        superpatch=128, patch=16, embed_dim=768, depth=12, num_heads=12, nt_tokens=8, se_num_heads=4,
        decoder_embed_dim=512, decoder_depth=10, decoder_num_heads=16,
    ),
    "small": dict(
        superpatch=128, patch=16, embed_dim=384, depth=4, num_heads=6, nt_tokens=8, se_num_heads=2,
        decoder_embed_dim=256, decoder_depth=2, decoder_num_heads=8,
    ),
    "tiny": dict(
        superpatch=64, patch=8, embed_dim=48, depth=2, num_heads=4, nt_tokens=4, se_num_heads=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4,
    ),
}


def preset_config(preset: str = "tiny", **overrides: Any) -> NemesisConfig:
    """Config of a named preset with field overrides (``depth=1``, ``embed_dim=96``, ...)."""
    if preset not in PRESETS:
        raise NemesisInputError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    base = NemesisConfig(name=preset, **PRESETS[preset])
    return base.replace(**overrides) if overrides else base
