"""model.hf: our GPT's weights in Hugging Face's GPT-2 layout and back. The HF side is checked
against GPT-2's forward pass written out here in HF's convention (Conv1D: x @ W + b, W stored
(in, out)), so a transpose missed or misplaced would show in the logits, not only in shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, from_hf_state_dict, to_hf_state_dict


def hf_logits(sd: dict[str, torch.Tensor], config: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's logits (B, T, vocab_size) from an HF-layout state dict, computed directly."""
    C, nh = config.n_embd, config.n_head
    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for layer in range(config.n_layer):
        p = f"transformer.h.{layer}."
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-5)
        qkv = h @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-2, -1) / math.sqrt(C // nh)).masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], eps=1e-5)
    return x @ sd["lm_head.weight"].t()


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny")).eval()
    with torch.no_grad():  # biases and LayerNorms off their init values, so each one counts
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def test_hf_layout_has_hf_shapes_and_gives_the_same_logits(model):
    config = model.config
    sd = to_hf_state_dict(model.state_dict(), config)
    C = config.n_embd
    assert sd["transformer.wte.weight"].shape == (config.vocab_size, C)  # padded rows cut off
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)  # Conv1D: (in, out)
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (C, 4 * C)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (4 * C, C)
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]  # tied
    idx = torch.randint(0, config.vocab_size, (2, 12))
    with torch.no_grad():
        ours, _ = model(idx, torch.zeros_like(idx))  # with targets: logits at every position
        torch.testing.assert_close(hf_logits(sd, config, idx), ours[..., : config.vocab_size],
                                   rtol=1e-4, atol=1e-4)


def test_a_round_trip_restores_every_tensor(model):
    config = model.config
    back = from_hf_state_dict(to_hf_state_dict(model.state_dict(), config), config)
    fresh = GPT(config)
    fresh.load_state_dict(back)
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    assert back["lm_head.weight"] is back["transformer.wte.weight"]  # tied, as GPT's own state_dict has it
    assert torch.count_nonzero(back["transformer.wte.weight"][config.vocab_size:]) == 0


def test_the_converted_tensors_are_new_ones(model):
    """Both ways give tensors of their own: changing what to_hf_state_dict gave (to fine-tune it in
    transformers, say) changed the model it came from wherever no transpose had copied a tensor."""
    config = model.config
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    hf = to_hf_state_dict(model.state_dict(), config)
    back = from_hf_state_dict(hf, config)
    hf_before = {key: tensor.clone() for key, tensor in hf.items()}
    with torch.no_grad():
        for tensors in (hf, back):
            for key, tensor in tensors.items():
                if key != "lm_head.weight":  # (the tied embedding, once)
                    tensor.add_(1.0)
    assert all(torch.equal(tensor, before[key]) for key, tensor in model.state_dict().items())
    assert all(torch.equal(hf[key], hf_before[key] + 1) for key in hf)


def test_gpt2model_keys_and_mask_buffers_are_accepted(model):
    """GPT2Model's state dict has no "transformer." prefix and no lm_head; older versions also
    save the causal mask (attn.bias, attn.masked_bias)."""
    config = model.config
    sd = {k.removeprefix("transformer."): v for k, v in to_hf_state_dict(model.state_dict(), config).items()
          if k != "lm_head.weight"}
    sd["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    fresh = GPT(config)
    fresh.load_state_dict(from_hf_state_dict(sd, config))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_a_wrapped_model_s_state_dict_is_refused_with_the_cause(model):
    """torch.compile's and DDP's prefixes: to_hf_state_dict raised KeyError('transformer.wte.weight')."""
    for prefix in ("_orig_mod.", "module._orig_mod.", "module."):
        wrapped = {prefix + key: value for key, value in model.state_dict().items()}
        with pytest.raises(ValueError, match=rf"^not a GPT state_dict: no transformer.wte.weight: its names start "
                                             rf"with {prefix.split('.')[0]}. \(a wrapped model's\): pass the raw "
                                             rf"module's state_dict$"):
            to_hf_state_dict(wrapped, model.config)
    with pytest.raises(ValueError, match=r"^not a GPT state_dict: no transformer.wte.weight$"):
        to_hf_state_dict({"foo": torch.zeros(1)}, model.config)


def test_to_hf_refuses_what_is_not_our_state_dict_of_the_config(model):
    """to_hf_state_dict transposed an HF-layout state dict (its own output) back without a word, and
    took another config's: a ValueError now names the tensor and what is wrong with it."""
    config = model.config
    hf = to_hf_state_dict(model.state_dict(), config)
    said = (r"^transformer.wte.weight: shape \(50257, 32\), where our GPT of this config \(n_embd 32, "
            r"block_size 64, padded_vocab_size 50304\) has \(50304, 32\); that is Hugging Face's layout "
            r"\(from_hf_state_dict reads it\)$")
    with pytest.raises(ValueError, match=said):
        to_hf_state_dict(hf, config)
    ours = model.state_dict()
    flipped = {**ours, "transformer.h.1.mlp.c_fc.weight": ours["transformer.h.1.mlp.c_fc.weight"].t()}
    with pytest.raises(ValueError, match=r"^transformer.h.1.mlp.c_fc.weight: shape \(32, 128\), .* has "
                                         r"\(128, 32\); that is Hugging Face's layout"):
        to_hf_state_dict(flipped, config)
    said = r"^transformer.wte.weight: shape \(50304, 64\), where our GPT of this config \(n_embd 32, .* has "
    with pytest.raises(ValueError, match=said + r"\(50304, 32\)$"):
        to_hf_state_dict(GPT(GPTConfig.preset("tiny", n_embd=64)).state_dict(), config)
    said = r"^not a GPT state_dict for 2 layers: "
    with pytest.raises(ValueError, match=said + r"unknown transformer.h.2.attn.c_attn.bias \(and 11 more\)$"):
        to_hf_state_dict(GPT(GPTConfig.preset("tiny", n_layer=3)).state_dict(), config)
    with pytest.raises(ValueError, match=said + r"missing transformer.ln_f.bias$"):
        to_hf_state_dict({k: v for k, v in ours.items() if k != "transformer.ln_f.bias"}, config)
    with pytest.raises(ValueError, match=said + r"unknown transformer.h.0.attn.bias \(Hugging Face's causal "
                                                r"mask: from_hf_state_dict reads its layout\)$"):
        to_hf_state_dict({**ours, "transformer.h.0.attn.bias": torch.ones(1, 1, 64, 64)}, config)
    with pytest.raises(ValueError, match="lm_head.weight differs from the token embedding"):
        to_hf_state_dict({**ours, "lm_head.weight": ours["lm_head.weight"] + 1}, config)
    # the tied head may be left out (it is the token embedding)
    assert set(to_hf_state_dict({k: v for k, v in ours.items() if k != "lm_head.weight"}, config)) == set(hf)


def test_a_state_dict_that_does_not_fit_says_which_tensor(model):
    config = model.config
    sd = to_hf_state_dict(model.state_dict(), config)
    with pytest.raises(ValueError, match=r"transformer.wte.weight: expected 50257 rows"):
        from_hf_state_dict({**sd, "transformer.wte.weight": sd["transformer.wte.weight"][:100]}, config)
    # the rows are right, the dimensions are not: it said "expected 50257 rows" of (50257, 16, 2)
    with pytest.raises(ValueError, match=r"transformer.wte.weight: expected a matrix of 50257 rows, got shape "
                                         r"\(50257, 16, 2\)"):
        from_hf_state_dict({**sd, "transformer.wte.weight": sd["transformer.wte.weight"].view(50257, 16, 2)}, config)
    wider = GPTConfig(**{**vars(config), "n_embd": 64})
    with pytest.raises(ValueError, match=r"transformer.wte.weight: shape \(50257, 32\), where this config "
                                         r"\(n_embd 64, block_size 64\) has \(50257, 64\)"):
        from_hf_state_dict(sd, wider)
    longer = GPTConfig(**{**vars(config), "block_size": 128})
    with pytest.raises(ValueError, match=r"transformer.wpe.weight: shape \(64, 32\), .* has \(128, 32\)"):
        from_hf_state_dict(sd, longer)
    sd_bad = {**sd, "transformer.h.1.mlp.c_fc.weight": sd["transformer.h.1.mlp.c_fc.weight"][:, :100]}
    with pytest.raises(ValueError, match=r"transformer.h.1.mlp.c_fc.weight: shape \(32, 100\), .* has \(32, 128\)"):
        from_hf_state_dict(sd_bad, config)
    # a Conv1D weight of another rank than 2: said torch's "t() expects a tensor with <= 2
    # dimensions", a RuntimeError naming no tensor; now named, in the shape as given
    for conv1d in ("transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_attn.weight"):
        for shape in [(1, *sd[conv1d].shape), sd[conv1d].shape[:1]]:
            given = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
            with pytest.raises(ValueError, match=rf"^{conv1d}: shape \({given}\), where this config"):
                from_hf_state_dict({**sd, conv1d: sd[conv1d].reshape(shape) if len(shape) > 1 else sd[conv1d][:, 0]},
                                   config)
    deeper = GPTConfig(**{**vars(config), "n_layer": 3})
    with pytest.raises(ValueError, match=r"for 3 layers: missing transformer.h.2.attn.c_attn.bias \(and 11 more\)"):
        from_hf_state_dict(sd, deeper)
    extra = {**sd, "transformer.h.0.attn.c_extra.weight": torch.zeros(config.n_embd)}
    with pytest.raises(ValueError, match=r"for 2 layers: unknown transformer.h.0.attn.c_extra.weight$"):
        from_hf_state_dict(extra, config)
    # GPT2Model's names have no "transformer." prefix: the errors name the tensors as given
    bare = {k.removeprefix("transformer."): v for k, v in extra.items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match=r"for 2 layers: unknown h.0.attn.c_extra.weight$"):
        from_hf_state_dict(bare, config)
    with pytest.raises(ValueError, match=r"for 3 layers: unknown h.0.attn.c_extra.weight \(and 12 more\)"):
        from_hf_state_dict(bare, deeper)
    del bare["h.0.attn.c_extra.weight"]
    with pytest.raises(ValueError, match=r"for 3 layers: missing h.2.attn.c_attn.bias \(and 11 more\)"):
        from_hf_state_dict(bare, deeper)
    with pytest.raises(ValueError, match=r"^h.1.mlp.c_fc.weight: shape \(32, 100\), .* has \(32, 128\)"):
        from_hf_state_dict({**bare, "h.1.mlp.c_fc.weight": bare["h.1.mlp.c_fc.weight"][:, :100]}, config)
    with pytest.raises(ValueError, match=r"^wte.weight: expected 50257 rows"):
        from_hf_state_dict({**bare, "wte.weight": bare["wte.weight"][:100]}, config)
    with pytest.raises(ValueError, match=r"^not a GPT-2 state dict: missing wte.weight$"):  # said "got shape None"
        from_hf_state_dict({"foo": torch.zeros(3)}, config)
    with pytest.raises(ValueError, match=r"^not a GPT-2 state dict: missing transformer.wte.weight$"):
        from_hf_state_dict({k: v for k, v in sd.items() if "wte" not in k}, config)
    untied = {**sd, "lm_head.weight": sd["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        from_hf_state_dict(untied, config)
