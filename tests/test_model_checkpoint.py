import json
import pickle
import struct

import pytest
import torch

from napari_nemesis.errors import NemesisCheckpointError
from napari_nemesis.model import build_model, checkpoint_extra, load_checkpoint, make_mask, save_checkpoint


def test_round_trip_gives_identical_outputs(tmp_path):
    model = build_model("tiny", depth=1).eval()
    with torch.no_grad():
        model.patch_embed.alpha.fill_(0.3)
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"step": 7})
    loaded = load_checkpoint(path).eval()
    assert loaded.cfg == model.cfg
    assert loaded.gate == pytest.approx(model.gate)
    assert checkpoint_extra(path) == {"step": 7}
    x = torch.rand(1, 1, 64, 64, 64)
    mask = make_mask("dual", model.grid, 0.75, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        assert torch.equal(model.reconstruct(x, mask), loaded.reconstruct(x, mask))
    assert not (tmp_path / "m.safetensors.tmp").exists()


def test_pickle_is_refused(tmp_path):
    model = build_model("tiny")
    p = tmp_path / "model.pt"
    torch.save(model.state_dict(), p)
    with pytest.raises(NemesisCheckpointError, match="model.pt: .*never pickles"):
        load_checkpoint(p)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(NemesisCheckpointError, match="raw.pkl: is a Python pickle"):
        load_checkpoint(raw)


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    model = build_model("tiny")
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(NemesisCheckpointError, match="trunc.safetensors"):
        load_checkpoint(trunc)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(NemesisCheckpointError, match="empty.safetensors: file is empty"):
        load_checkpoint(empty)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello world, not a checkpoint at all")
    with pytest.raises(NemesisCheckpointError, match="garbage.safetensors: not a safetensors file"):
        load_checkpoint(garbage)
    with pytest.raises(NemesisCheckpointError, match="missing.safetensors: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={"format": "pt"})
    with pytest.raises(NemesisCheckpointError, match="foreign.safetensors: not a napari-nemesis checkpoint"):
        load_checkpoint(p)


def _rewrite(path, out, mutate):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    mutate(state, meta)
    save_file(state, str(out), metadata=meta)
    return out


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    good = save_checkpoint(build_model("tiny"), tmp_path / "good.safetensors")
    missing = _rewrite(good, tmp_path / "missing.safetensors", lambda s, m: s.pop("norm.weight"))
    with pytest.raises(NemesisCheckpointError, match="missing tensors norm.weight"):
        load_checkpoint(missing)

    def shrink(state, meta):
        state["decoder_pred.bias"] = torch.zeros(3)

    bad = _rewrite(good, tmp_path / "bad.safetensors", shrink)
    with pytest.raises(NemesisCheckpointError, match=r"mis-shaped tensors decoder_pred.bias"):
        load_checkpoint(bad)

    def other_config(state, meta):
        cfg = json.loads(meta["config"])
        cfg["depth"] = 3
        meta["config"] = json.dumps(cfg)

    deeper = _rewrite(good, tmp_path / "deeper.safetensors", other_config)
    with pytest.raises(NemesisCheckpointError, match="missing tensors blocks.2"):
        load_checkpoint(deeper)


def test_header_sniffing_does_not_trust_huge_lengths(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 10**15) + b"{}")
    with pytest.raises(NemesisCheckpointError, match="huge.safetensors: not a safetensors file"):
        load_checkpoint(p)


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: it may be 0x80."""
    model = build_model("tiny")
    for pad in range(300):
        p = save_checkpoint(model, tmp_path / "c.safetensors", extra={"pad": "x" * pad})
        if p.read_bytes()[0] == 0x80:
            break
    else:  # pragma: no cover
        pytest.skip("could not produce a 0x80 header length")
    assert load_checkpoint(p).cfg == model.cfg


def test_float16_checkpoint_loads_into_float32_model(tmp_path):
    model = build_model("tiny").eval()
    p16 = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    p32 = save_checkpoint(model, tmp_path / "full.safetensors")
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    loaded = load_checkpoint(p16).eval()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), model.encode(x), atol=2e-2)
