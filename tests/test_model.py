import pytest
import torch

from napari_nemesis.errors import NemesisInputError
from napari_nemesis.model import NemesisConfig, build_model, make_mask, preset_config

STRATEGIES = ["random", "plane", "axis", "dual"]


def _x(model, b=1, seed=0):
    s = model.cfg.superpatch
    return torch.rand(b, 1, s, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tiny_shapes(strategy):
    model = build_model("tiny")
    x = _x(model, 2)
    out = model(x, mask_strategy=strategy, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    n, pd = model.cfg.num_patches, model.cfg.patch_dim
    assert out.pred.shape == (2, n, pd)
    assert out.mask.shape == (2, n) and out.mask.dtype == torch.bool
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert model.encode(x).shape == (2, n, model.cfg.embed_dim)
    assert model.encode(x, out.mask).shape == (2, int((~out.mask[0]).sum()), model.cfg.embed_dim)
    assert model.reconstruct(x, out.mask).shape == x.shape


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["small", "paper"])
def test_large_preset_shapes(preset):
    model = build_model(preset)
    x = _x(model, 1)
    with torch.no_grad():
        for strategy in STRATEGIES:
            out = model(x, mask_strategy=strategy, generator=torch.Generator().manual_seed(0))
            assert out.pred.shape == (1, 512, 16**3)
            assert torch.isfinite(out.loss)
        assert model.encode(x).shape == (1, 512, model.cfg.embed_dim)


def test_presets_have_documented_sizes():
    paper = preset_config("paper")
    assert paper.embed_dim == 768 and paper.superpatch == 128 and paper.patch == 16
    assert paper.grid == (8, 8, 8)
    assert preset_config("tiny", depth=1, embed_dim=96).depth == 1


def test_config_validation_messages():
    with pytest.raises(NemesisInputError, match="superpatch 100 is not divisible by patch 16"):
        NemesisConfig(superpatch=100, patch=16)
    with pytest.raises(NemesisInputError, match="unknown NEMESIS config field"):
        build_model("tiny", depht=2)
    with pytest.raises(NemesisInputError, match="unknown preset"):
        build_model("huge")


def test_wrong_input_shape_is_refused():
    model = build_model("tiny")
    with pytest.raises(NemesisInputError, match=r"\(B, 1, 64, 64, 64\)"):
        model(torch.rand(1, 1, 32, 32, 32))


def test_patchify_round_trip_and_order():
    model = build_model("tiny")
    x = _x(model, 2)
    p = model.patchify(x)
    assert torch.equal(model.unpatchify(p), x)
    # token 1 is the patch at grid (z=0, y=0, x=1): voxels [0:8, 0:8, 8:16]
    assert torch.equal(p[0, 1].view(8, 8, 8), x[0, 0, 0:8, 0:8, 8:16])
    # token 64 is grid (z=1, 0, 0)
    assert torch.equal(p[0, 64].view(8, 8, 8), x[0, 0, 8:16, 0:8, 0:8])


def test_loss_counts_masked_patches_only():
    model = build_model("tiny")
    x = _x(model)
    mask = make_mask("dual", model.grid, 0.75, generator=torch.Generator().manual_seed(1))
    out = model(x, mask=mask, noise_sigma=0.0)
    target = model.patchify(x)
    pred = out.pred.detach().clone()
    visible = (~mask[0]).nonzero()[0, 0]
    masked = mask[0].nonzero()[0, 0]
    base = model.forward_loss(target, pred, mask)
    assert torch.allclose(base, out.loss)
    changed_visible = pred.clone()
    changed_visible[0, visible] += 5.0
    assert torch.equal(model.forward_loss(target, changed_visible, mask), base)
    changed_masked = pred.clone()
    changed_masked[0, masked] += 5.0
    assert model.forward_loss(target, changed_masked, mask) > base
    # and it is the mean over masked patches of the per-patch MSE
    per_patch = (pred - target).pow(2).mean(-1)
    assert torch.allclose(base, per_patch[mask].mean())


def test_noise_enhanced_input_targets_the_clean_image():
    model = build_model("tiny")
    x = _x(model)
    mask = make_mask("plane", model.grid, 0.75, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    clean = model(x, mask=mask, noise_sigma=0.0)
    noisy = model(x, mask=mask, noise_sigma=0.05, generator=torch.Generator().manual_seed(0))
    assert noisy.noise_sigma.tolist() == pytest.approx([0.05])
    assert not torch.allclose(clean.pred, noisy.pred)  # the encoder saw a different (noisy) input
    # sigma drawn per sample from the configured set when not given
    drawn = model(_x(model, 8), mask_strategy="dual", generator=torch.Generator().manual_seed(3)).noise_sigma
    drawn_set = {round(v, 6) for v in drawn.tolist()}
    assert drawn_set <= set(model.cfg.noise_sigmas) and len(drawn_set) > 1


def test_same_seed_same_forward():
    model = build_model("tiny")
    x = _x(model)
    a = model(x, generator=torch.Generator().manual_seed(11))
    b = model(x, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pred, b.pred)


@pytest.mark.parametrize("strategy", ["dual", "random"])
def test_matb_grid_invariant(strategy):
    """With one MATB, a visible token's input reaches only visible tokens of its slice or column."""
    torch.manual_seed(0)
    model = build_model("tiny", depth=1).eval()
    gz, gy, gx = model.grid
    x = _x(model)
    mask = make_mask(strategy, model.grid, 0.75, generator=torch.Generator().manual_seed(2))
    vis = (~mask[0]).nonzero()[:, 0]
    checked = 0
    for t in vis[:: max(1, len(vis) // 6)].tolist():
        z, yx = divmod(t, gy * gx)
        patches = model.patchify(x)
        patches[0, t] += torch.randn(patches.shape[-1])
        x2 = model.unpatchify(patches)
        with torch.no_grad():
            d = (model.encode(x2, mask) - model.encode(x, mask)).abs().amax(-1)[0]
        changed = set(vis[d > 1e-6].tolist())
        allowed = {v for v in vis.tolist() if v // (gy * gx) == z or v % (gy * gx) == yx}
        assert t in changed
        assert changed <= allowed, f"token {t} leaked into {sorted(changed - allowed)}"
        # it does reach other tokens of its slice and of its column when they are visible
        same_slice = {v for v in allowed if v // (gy * gx) == z and v != t}
        same_col = {v for v in allowed if v % (gy * gx) == yx and v != t}
        assert changed & same_slice == same_slice
        assert changed & same_col == same_col
        checked += 1
    assert checked >= 4


def test_grouping_uses_grid_index_not_rank():
    """Under an axis mask, columns hold different numbers of visible tokens; the padded grouping
    must still put every token with its own column."""
    from napari_nemesis.model.matb import grid_groups

    mask = make_mask("axis", (8, 8, 8), 0.75, batch=2, generator=torch.Generator().manual_seed(0))
    vis_idx = (~mask).nonzero()[:, 1].view(2, -1)
    plane, axis = grid_groups(vis_idx, (8, 8, 8))
    assert axis.attn_mask is not None  # uneven columns -> padding
    assert plane.attn_mask is None  # every slice has 16 visible tokens
    tok = vis_idx[..., None].float()
    col = axis.gather(tok).view(2, 64, -1)  # token index per (column, slot)
    valid = axis.valid.view(2, 64, axis.size)
    assert int(valid.sum()) == vis_idx.shape[1] * 2
    for b in range(2):
        for c in range(64):
            members = col[b, c][valid[b, c]].long()
            assert ((members % 64) == c).all()
            assert torch.equal(members, members.sort().values)
    assert torch.equal(axis.scatter(axis.gather(tok), 2), tok)
    assert torch.equal(plane.scatter(plane.gather(tok), 2), tok)


def test_gradients_reach_gate_nemesis_tokens_and_both_streams():
    model = build_model("tiny", shared_qkv=False)
    out = model(_x(model, 2), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    pe = model.patch_embed
    assert pe.alpha.grad is not None and pe.alpha.grad.abs() > 0
    assert pe.nemesis_tokens.grad is not None and pe.nemesis_tokens.grad.abs().sum() > 0
    e = model.cfg.embed_dim
    qkv_grad = model.blocks[0].qkv.weight.grad
    assert qkv_grad[: 3 * e].abs().sum() > 0, "plane stream receives no gradient"
    assert qkv_grad[3 * e :].abs().sum() > 0, "axis stream receives no gradient"
    fuse_grad = model.blocks[0].fuse.weight.grad
    assert fuse_grad[:, :e].abs().sum() > 0 and fuse_grad[:, e:].abs().sum() > 0


def test_gate_is_sigmoid_of_alpha():
    model = build_model("tiny")
    assert model.gate == pytest.approx(0.5)
    with torch.no_grad():
        model.patch_embed.alpha.fill_(20.0)
    assert 0.99 < model.gate <= 1.0


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model("tiny")
    x = _x(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mask = make_mask("dual", model.grid, 0.75, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(15):
        out = model(x, mask=mask, noise_sigma=0.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_reconstruct_keeps_visible_patches():
    model = build_model("tiny")
    x = _x(model)
    mask = make_mask("plane", model.grid, 0.75, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec = model.reconstruct(x, mask)
        out = model(x, mask=mask, noise_sigma=0.0)
    rp, xp = model.patchify(rec), model.patchify(x)
    assert torch.equal(rp[~mask], xp[~mask])
    assert torch.allclose(rp[mask], out.pred[mask], atol=1e-5)


def test_mask_with_uneven_batch_counts_is_refused():
    model = build_model("tiny")
    mask = torch.zeros(2, 512, dtype=torch.bool)
    mask[0, :10] = True
    with pytest.raises(NemesisInputError, match="same number of visible tokens"):
        model.encode(_x(model, 2), mask)
