"""NemesisMAE: the NEMESIS masked autoencoder on one superpatch, readable in one sitting.

x (B, 1, S, S, S) in [0, 1]  -> noise (pretext task) -> patchify -> mask -> embed visible patches
-> + 3D sin-cos position -> MATB encoder -> decoder (mask tokens, MATB blocks) -> patch pixels;
loss = MSE on masked patches only (paper eq. 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import NemesisInputError
from .config import NemesisConfig
from .embed import AdaptivePatchEmbed
from .layers import init_weights, sincos_pos_embed_3d, trunc_normal_
from .masking import make_mask
from .matb import MATB, TokenGroups, grid_groups


@dataclass
class MAEOutput:
    """What a forward pass returns: the loss, predictions for every token, and the mask used."""

    loss: torch.Tensor  # scalar, MSE over masked patches
    pred: torch.Tensor  # (B, N, p^3) predicted patch voxels (normalised if norm_pix_loss)
    mask: torch.Tensor  # (B, N) bool, True = masked
    noise_sigma: torch.Tensor  # (B,) the noise level added to each sample


class NemesisMAE(nn.Module):
    def __init__(self, cfg: NemesisConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid
        e, ed = cfg.embed_dim, cfg.decoder_embed_dim
        # encoder
        self.patch_embed = AdaptivePatchEmbed(cfg)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(e, cfg.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(MATB(e, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.shared_qkv) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(e)
        # decoder
        self.decoder_embed = nn.Linear(e, ed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ed))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_3d(ed, cfg.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(
            MATB(ed, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.shared_qkv) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(ed)
        self.decoder_pred = nn.Linear(ed, cfg.patch_dim)
        self._init_weights()
        # provenance, set by load_checkpoint: the file and its ``extra`` JSON (training spacing, step, ...)
        self.checkpoint_path = None
        self.checkpoint_extra: dict = {}

    def _init_weights(self) -> None:
        self.apply(init_weights)  # linears and norms; the embedder's own parameters keep their init
        trunc_normal_(self.mask_token)

    # ---- geometry ------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S, S) -> (B, N, C * p^3), tokens in raster (z, y, x) order."""
        self._check_input(x)
        b, c = x.shape[:2]
        g, p = self.cfg.grid_size, self.cfg.patch
        x = x.reshape(b, c, g, p, g, p, g, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(b, g**3, c * p**3)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, C * p^3) -> (B, C, S, S, S)."""
        b = patches.shape[0]
        g, p, c = self.cfg.grid_size, self.cfg.patch, self.cfg.in_chans
        x = patches.reshape(b, g, g, g, c, p, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, g * p, g * p, g * p)

    def _check_input(self, x: torch.Tensor) -> None:
        s, c = self.cfg.superpatch, self.cfg.in_chans
        if x.ndim != 5 or tuple(x.shape[1:]) != (c, s, s, s):
            raise NemesisInputError(
                f"expected a batch of superpatches of shape (B, {c}, {s}, {s}, {s}), got {tuple(x.shape)}"
            )

    def _visible_index(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) raster indices of the visible tokens, ascending; L must match across the batch."""
        n = self.cfg.num_patches
        if mask.shape[-1] != n or mask.ndim != 2:
            raise NemesisInputError(f"mask must have shape (B, {n}), got {tuple(mask.shape)}")
        counts = (~mask).sum(1)
        if bool((counts != counts[0]).any()):
            raise NemesisInputError("every sample of a batch must have the same number of visible tokens")
        if int(counts[0]) == 0:
            raise NemesisInputError("mask hides every token; at least one must stay visible")
        return (~mask).nonzero()[:, 1].view(mask.shape[0], -1)

    def _all_visible(self, vis_idx: torch.Tensor) -> bool:
        """True when ``vis_idx`` lists every token in raster order."""
        n = self.cfg.num_patches
        if vis_idx.shape[-1] != n:
            return False
        return bool((vis_idx == torch.arange(n, device=vis_idx.device)).all())

    def _full_groups(self, batch: int, device: torch.device) -> tuple[TokenGroups, TokenGroups]:
        idx = torch.arange(self.cfg.num_patches, device=device).expand(batch, -1)
        return grid_groups(idx, self.grid)

    # ---- encoder / decoder -----------------------------------------------------------------
    def forward_encoder(self, patches: torch.Tensor, vis_idx: torch.Tensor) -> torch.Tensor:
        """Embed only the visible patches (B, L) and run the MATB encoder -> (B, L, E)."""
        e = self.cfg.embed_dim
        if self._all_visible(vis_idx):  # every token, in order (inference): no gathers needed
            x = self.patch_embed(patches) + self.pos_embed
        else:
            visible = patches.gather(1, vis_idx[..., None].expand(-1, -1, patches.shape[-1]))
            x = self.patch_embed(visible)
            x = x + self.pos_embed.expand(x.shape[0], -1, -1).gather(1, vis_idx[..., None].expand(-1, -1, e))
        plane, axis = grid_groups(vis_idx, self.grid)
        for blk in self.blocks:
            x = blk(x, plane, axis)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, vis_idx: torch.Tensor) -> torch.Tensor:
        """Visible latents + mask tokens on the full grid -> (B, N, p^3) predictions."""
        b = latent.shape[0]
        ed = self.cfg.decoder_embed_dim
        y = self.decoder_embed(latent)
        x = self.mask_token.to(y.dtype).expand(b, self.cfg.num_patches, ed).clone()
        x = x.scatter(1, vis_idx[..., None].expand(-1, -1, ed), y)
        x = x + self.decoder_pos_embed
        plane, axis = self._full_groups(b, x.device)
        for blk in self.decoder_blocks:
            x = blk(x, plane, axis)
        return self.decoder_pred(self.decoder_norm(x))

    def target_patches(self, patches: torch.Tensor) -> torch.Tensor:
        if not self.cfg.norm_pix_loss:
            return patches
        mean = patches.mean(-1, keepdim=True)
        var = patches.var(-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the masked patches only (eq. 6)."""
        per_patch = (pred.float() - target.float()).pow(2).mean(-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum().clamp_min(1.0)

    # ---- public API ------------------------------------------------------------------------
    def add_noise(
        self, x: torch.Tensor, noise_sigma: float | torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-enhanced input: Gaussian noise with sigma per sample (drawn from the config's set
        when ``noise_sigma`` is None)."""
        b = x.shape[0]
        gdev = generator.device if generator is not None else x.device
        if noise_sigma is None:
            choices = torch.tensor(self.cfg.noise_sigmas, device=gdev)
            sigma = choices[torch.randint(len(choices), (b,), generator=generator, device=gdev)]
        else:
            sigma = torch.as_tensor(noise_sigma, dtype=torch.float32, device=gdev).expand(b).clone()
        sigma = sigma.to(x.device, torch.float32)
        if bool((sigma == 0).all()):
            return x, sigma
        noise = torch.randn(x.shape, generator=generator, device=gdev).to(x.device, x.dtype)
        return x + noise * sigma.view(b, 1, 1, 1, 1).to(x.dtype), sigma

    def forward(
        self,
        x: torch.Tensor,
        mask_strategy: str | None = "dual",
        mask_ratio: float | None = 0.75,
        noise_sigma: float | None = None,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
    ) -> MAEOutput:
        """One pretraining step's forward: mask, noise, encode, decode, loss against the clean input.

        The mask is drawn from ``generator`` before the noise, so with the same seed the noise level
        (0 or not) never changes which patches are masked.
        """
        target = self.target_patches(self.patchify(x))
        if mask is None:
            mask = make_mask(
                mask_strategy or self.cfg.mask_strategy,
                self.grid,
                self.cfg.mask_ratio if mask_ratio is None else mask_ratio,
                batch=x.shape[0],
                generator=generator,
            )
        mask = mask.to(x.device)
        noisy, sigma = self.add_noise(x, noise_sigma, generator)
        vis_idx = self._visible_index(mask)
        latent = self.forward_encoder(self.patchify(noisy), vis_idx)
        pred = self.forward_decoder(latent, vis_idx)
        return MAEOutput(self.forward_loss(target, pred, mask), pred, mask, sigma)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder features (B, L, E) of the visible tokens in ascending raster order; no noise.
        With ``mask=None`` all N tokens are visible (what probing and inference use)."""
        patches = self.patchify(x)
        if mask is None:
            vis_idx = torch.arange(self.cfg.num_patches, device=x.device).expand(x.shape[0], -1)
        else:
            vis_idx = self._visible_index(mask.to(x.device))
        return self.forward_encoder(patches, vis_idx)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image the decoder paints (B, 1, S, S, S): masked patches predicted, visible patches
        copied from ``x``. ``x`` is used as given (add noise beforehand to show the pretext task).

        With ``norm_pix_loss`` the predictions are per-patch normalised. A masked patch's own mean
        and std are part of the answer, so they are not used: predictions are scaled back with the
        visible patches' average per-patch mean and std (nothing of a masked patch reaches the output).
        """
        mask = mask.to(x.device)
        patches = self.patchify(x)
        vis_idx = self._visible_index(mask)
        pred = self.forward_decoder(self.forward_encoder(patches, vis_idx), vis_idx).to(patches.dtype)
        if self.cfg.norm_pix_loss:
            visible = (~mask).to(patches.dtype)[..., None]  # (B, N, 1)
            n_visible = visible.sum(1, keepdim=True)
            mean = (patches.mean(-1, keepdim=True) * visible).sum(1, keepdim=True) / n_visible
            std = ((patches.var(-1, keepdim=True) + 1e-6).sqrt() * visible).sum(1, keepdim=True) / n_visible
            pred = pred * std + mean
        out = torch.where(mask[..., None], pred, patches)
        return self.unpatchify(out)

    @property
    def gate(self) -> float:
        """Current weight a of the linear path in the adaptive patch embedding."""
        return float(self.patch_embed.gate.detach())


def build_model(preset: str = "tiny", **overrides) -> NemesisMAE:
    """A freshly initialised NEMESIS MAE of a preset (``paper``, ``small``, ``tiny``) with overrides."""
    from .config import preset_config

    return NemesisMAE(preset_config(preset, **overrides))
