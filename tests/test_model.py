"""Tests for model/: config and presets, parameter and FLOP counts, the GPT-2 forward pass,
training, generation, compile-cleanliness, the optimizer and checkpoint unwrapping.

CPU only. Anything that runs steps uses the tiny preset; gpt2 (124M) is built once per module
for the count cross-check, the initialisation statistics and the loss at initialisation.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model import GPT, PEAK_FLOPS, PRESETS, GPTConfig, mfu, peak_flops, raw_module

VOCAB = 50257
PADDED_VOCAB = 50304

# GPT-2's parameter counts with the real 50257-row embedding, tied head counted once.
# gpt2 is the well-known 124,439,808; the others were worked out by hand from
# V*C + P*C + L*(12*C^2 + 13*C) + 2*C with (L, C) = (24, 1024), (36, 1280), (48, 1600), P = 1024.
REAL_VOCAB_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.fixture(scope="module")
def gpt2() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("gpt2")).eval()


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", **overrides))


def random_tokens(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config, presets, counts


def test_presets_are_exact_names():
    assert GPTConfig.presets() == ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny")
    assert tuple(PRESETS) == GPTConfig.presets()
    assert GPTConfig.preset("gpt2") == GPTConfig()  # the defaults are GPT-2 small
    tiny = GPTConfig.preset("tiny")
    assert (tiny.n_layer, tiny.vocab_size, tiny.padded_vocab_size) == (2, VOCAB, PADDED_VOCAB)


@pytest.mark.parametrize("name", ["GPT2", "gpt", "gpt2-small", "gpt2-x", " tiny"])
def test_unknown_preset_lists_the_valid_ones(name):
    with pytest.raises(ValueError) as error:
        GPTConfig.preset(name)
    message = str(error.value)
    assert repr(name) in message
    for valid in GPTConfig.presets():
        assert valid in message


def test_preset_overrides_are_validated():
    assert GPTConfig.preset("tiny", block_size=16).block_size == 16
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig.preset("tiny", n_head=3)
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_heads.*valid fields"):
        GPTConfig.preset("tiny", n_heads=4)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_embd": 100, "n_head": 3}, r"n_embd \(100\) must be divisible by n_head \(3\)"),
        ({"n_layer": 0}, "n_layer must be a positive integer, got 0"),
        ({"n_head": -2}, "n_head must be a positive integer"),
        ({"block_size": 1.5}, "block_size must be a positive integer"),
        ({"n_embd": True}, "n_embd must be a positive integer"),
        ({"padded_vocab_size": 50000}, r"padded_vocab_size \(50000\) must be >= vocab_size"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout must be a probability"),
    ],
)
def test_config_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)


def test_numpy_scalars_are_taken_as_plain_numbers():
    """A sweep's np.arange gives np.int64 layers: "must be a positive integer, got np.int64(4)"."""
    config = GPTConfig.preset("tiny", n_layer=np.int64(4), n_embd=np.int32(64), dropout=np.float32(0.25))
    assert (config.n_layer, config.n_embd, config.dropout) == (4, 64, 0.25)
    assert type(config.n_layer) is int and type(config.n_embd) is int and type(config.dropout) is float
    with pytest.raises(ValueError, match="n_head must be a positive integer"):
        GPTConfig(n_head=np.int64(0))


def test_config_is_frozen():
    config = GPTConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_layer = 3  # type: ignore[misc]
    with pytest.raises(ValueError):  # replace validates too
        dataclasses.replace(config, n_head=5)


@pytest.mark.parametrize("name, expected", REAL_VOCAB_PARAMS.items())
def test_param_counts_real_vocab(name, expected):
    assert GPTConfig.preset(name).num_params(padded_vocab=False) == expected


@pytest.mark.parametrize("name", REAL_VOCAB_PARAMS)
def test_param_counts_padded_vocab(name):
    # The padded embedding adds 47 rows of n_embd: gpt2 has 124,439,808 + 47*768 = 124,475,904.
    config = GPTConfig.preset(name)
    assert config.num_params() == REAL_VOCAB_PARAMS[name] + (PADDED_VOCAB - VOCAB) * config.n_embd
    assert config.num_params(position_embeddings=False) == config.num_params() - 1024 * config.n_embd


def test_gpt2_padded_count_is_stated():
    assert GPTConfig.preset("gpt2").num_params() == 124_475_904


def test_formula_matches_built_models(gpt2):
    assert gpt2.num_params() == gpt2.config.num_params() == 124_475_904
    tiny = tiny_model()
    assert tiny.num_params() == tiny.config.num_params()
    # the tied embedding is one tensor, counted once
    assert tiny.lm_head.weight is tiny.transformer.wte.weight


@settings(max_examples=25, deadline=None)
@given(
    n_layer=st.integers(1, 3),
    n_head=st.integers(1, 4),
    head_size=st.integers(1, 8),
    block_size=st.integers(1, 32),
    vocab_size=st.integers(1, 64),
    padding=st.integers(0, 16),
)
def test_formula_matches_any_small_model(n_layer, n_head, head_size, block_size, vocab_size, padding):
    config = GPTConfig(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_head * head_size,
        block_size=block_size,
        vocab_size=vocab_size,
        padded_vocab_size=vocab_size + padding,
    )
    assert GPT(config).num_params() == config.num_params()


@pytest.mark.parametrize(
    "name, layers_heads_width",
    [("gpt2", (12, 12, 768)), ("gpt2-medium", (24, 16, 1024)), ("gpt2-large", (36, 20, 1280)),
     ("gpt2-xl", (48, 25, 1600)), ("tiny", (2, 2, 32))],
)
def test_presets_have_gpt2_s_layers_heads_and_width(name, layers_heads_width):
    """The parameter counts pin n_layer and n_embd, but no count depends on n_head: a wrong
    head count built a model whose attention is not GPT-2's (and HF weights load into it)."""
    config = GPTConfig.preset(name)
    assert (config.n_layer, config.n_head, config.n_embd) == layers_heads_width
    assert config.head_size == (16 if name == "tiny" else 64)


# ---------------------------------------------------------------- FLOPs and MFU


def test_flops_per_token_gpt2_by_hand(gpt2):
    # N: parameters without the 1024x768 position table, with the padded 50304-row embedding
    # (the lm_head matmul runs over the padded vocabulary).
    N = 124_475_904 - 1024 * 768
    assert N == 123_689_472
    attention = 12 * 12 * 12 * 64 * 1024  # 12 * L * H * Q * T
    expected = 6 * N + attention
    assert expected == 855_383_040  # about 855 MFLOP per token
    assert GPTConfig.preset("gpt2").flops_per_token(1024) == expected
    assert gpt2.flops_per_token(1024) == expected
    assert type(gpt2.flops_per_token(np.int64(1024))) is int and gpt2.flops_per_token(np.int64(1024)) == expected


def test_flops_per_token_rejects_bad_T():
    config = GPTConfig.preset("tiny")
    assert config.flops_per_token(1) < config.flops_per_token(64)
    for T in (0, 65, 2.0):
        with pytest.raises(ValueError, match="T must be an integer in"):
            config.flops_per_token(T)


@pytest.mark.parametrize(
    "device_name, expected",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("nvidia a100 80gb pcie", 312e12),
        ("NVIDIA GeForce RTX 4090", None),
        ("NVIDIA RTX A1000", None),  # an Ampere workstation card, not an A100
        ("NVIDIA RTX A1000 6GB Laptop GPU", None),
        ("NVIDIA A100X", 312e12),  # converged A100: a letter may follow, not a digit
        ("Tesla V100-SXM2-16GB", 125e12),  # fp16: no bf16 tensor cores before Ampere
        ("Tesla V100-PCIE-32GB", 112e12),
        ("Tesla V100S-PCIE-32GB", 130e12),
        ("Tesla T4", 65e12),
        ("NVIDIA T400 4GB", None),  # a Turing workstation card, not a T4
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None),  # a slice (14 of 108 SMs): not the A100's peak
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", None),
        ("cpu", None),
        ("", None),
    ],
)
def test_peak_flops(device_name, expected):
    assert peak_flops(device_name) == expected


def test_peak_flops_searches_once_per_device_name(monkeypatch):
    """train.py asks at every logging point (each step by default): the regular expressions run
    for a name's first question only, and a changed table is searched afresh."""
    import model.flops as flops

    searches = []
    real = flops.re.search
    monkeypatch.setattr(flops.re, "search", lambda *a: searches.append(a) or real(*a))
    name = "NVIDIA H200 (peak_flops cache test)"
    assert [peak_flops(name) for _ in range(3)] == [989e12] * 3
    assert 0 < len(searches) <= len(PEAK_FLOPS)  # the first question's search only
    monkeypatch.setattr(flops, "PEAK_FLOPS", (("H200", 1e15),))
    assert peak_flops(name) == 1e15


def test_peak_table_lists_specific_variants_first():
    patterns = [pattern for pattern, _ in PEAK_FLOPS]
    for i, pattern in enumerate(patterns):
        for later in patterns[i + 1 :]:  # first match wins: a later entry must stay reachable
            assert pattern.upper() not in later.upper(), f"{pattern!r} shadows {later!r}"


def test_mfu():
    flops_per_token = GPTConfig.preset("gpt2").flops_per_token(1024)
    assert mfu(400_000, flops_per_token, "NVIDIA H200") == pytest.approx(400_000 * 855_383_040 / 989e12)
    assert mfu(8 * 400_000, flops_per_token, "NVIDIA H200", num_devices=8) == pytest.approx(
        mfu(400_000, flops_per_token, "NVIDIA H200")
    )
    assert mfu(400_000, flops_per_token, "Apple M2") is None
    with pytest.raises(ValueError, match="num_devices"):
        mfu(1.0, 1.0, "NVIDIA H200", num_devices=0)


def test_flops_per_token_attention_term_by_hand():
    # gpt2's by-hand figure cannot tell n_head from n_layer (both 12): gpt2-medium has 24 layers
    # of 16 heads of 64 dims, and the attention term is 12 * L * H * Q * T
    config = GPTConfig.preset("gpt2-medium")
    N = config.num_params(position_embeddings=False)
    assert config.flops_per_token(1024) == 6 * N + 12 * 24 * 16 * 64 * 1024
    assert config.flops_per_token(1024) - config.flops_per_token(512) == 12 * 24 * 16 * 64 * 512


# ---------------------------------------------------------------- forward pass


def test_output_shapes():
    model = tiny_model()
    idx = random_tokens((3, 17), seed=1)
    logits, loss = model(idx)
    assert logits.shape == (3, 17, VOCAB)  # every position, padded ids already cut off
    assert loss is None
    logits, loss = model(idx, random_tokens((3, 17), seed=2))
    assert logits.shape == (3, 17, VOCAB)
    assert loss.shape == () and torch.isfinite(loss)


def test_full_block_ok_longer_is_an_error():
    model = tiny_model()
    model(random_tokens((1, 64), seed=1))
    with pytest.raises(ValueError, match="T=65 exceeds the model's block_size=64"):
        model(random_tokens((1, 65), seed=1))
    for wrong in (random_tokens((64,), seed=1), random_tokens((2, 0), seed=1)):  # 1-D, no position
        with pytest.raises(ValueError, match=r"^idx must be \(B, T\) token ids with T >= 1, got shape"):
            model(wrong)
    for dtype in (torch.uint16, torch.int16, torch.float32):  # a loader's window as it is, not widened
        with pytest.raises(ValueError, match=f"^idx must hold int64 \\(or int32\\) token ids, got {dtype}: widen"):
            model(random_tokens((2, 8), seed=1).to(dtype))
    model(random_tokens((2, 8), seed=1).int())  # int32: the embedding takes it
    with pytest.raises(ValueError, match="^targets must hold int64 token ids, got torch.int32: widen them"):
        model(random_tokens((2, 8), seed=1), random_tokens((2, 8), seed=1).int())  # cross_entropy takes no int32
    with pytest.raises(ValueError, match="targets must have idx's shape"):
        model(random_tokens((2, 8), seed=1), random_tokens((2, 7), seed=1))


@pytest.mark.parametrize("t", [0, 5, 31])
def test_causality(t):
    model = tiny_model().eval()
    idx = random_tokens((2, 32), seed=3)
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert not torch.allclose(after[:, t], before[:, t])  # the change is seen from t on


def test_gpt2_initialisation(gpt2):
    std_residual = 0.02 / math.sqrt(2 * 12)
    block = gpt2.transformer.h[5]
    assert gpt2.transformer.wte.weight[:VOCAB].std().item() == pytest.approx(0.02, rel=0.01)
    assert gpt2.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(std_residual, rel=0.01)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(std_residual, rel=0.01)
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert torch.count_nonzero(gpt2.transformer.wte.weight[VOCAB:]) == 0  # padded rows unused
    assert torch.all(block.ln_1.weight == 1) and torch.all(block.ln_1.bias == 0)


def test_gpt2_loss_at_init_is_about_ln_vocab(gpt2):
    # Random targets and nearly uniform predictions: loss ~ ln(50257) = 10.82. The logits at
    # init have std about 0.02 * sqrt(768) = 0.55, which adds about 0.55^2 / 2 = 0.15.
    idx, targets = random_tokens((2, 128), seed=4), random_tokens((2, 128), seed=5)
    with torch.no_grad():
        _, loss = gpt2(idx, targets)
    assert abs(loss.item() - math.log(VOCAB)) < 0.2


def test_logits_stay_in_autocast_dtype():
    model = tiny_model()
    idx, targets = random_tokens((2, 16), seed=6), random_tokens((2, 16), seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    assert logits.dtype == torch.bfloat16  # no fp32 (B, T, V) copy made by the model
    assert torch.isfinite(loss)


def test_padded_embedding_rows_get_no_gradient():
    model = tiny_model()
    _, loss = model(random_tokens((2, 16), seed=8), random_tokens((2, 16), seed=9))
    loss.backward()
    grad = model.transformer.wte.weight.grad
    assert torch.count_nonzero(grad[VOCAB:]) == 0
    assert torch.count_nonzero(grad[:VOCAB]) > 0


def test_adamw_steps_on_one_batch_drive_loss_down():
    model = tiny_model()
    window = random_tokens((4, 33), seed=10)
    idx, targets = window[:, :-1], window[:, 1:]
    optimizer = model.configure_optimizers(weight_decay=0.1, lr=1e-2, betas=(0.9, 0.95), device_type="cpu")
    _, initial = model(idx, targets)
    assert abs(initial.item() - math.log(VOCAB)) < 0.2
    for _ in range(25):
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, final = model(idx, targets)
    assert final.item() < initial.item() / 2, (initial.item(), final.item())


def test_mlp_uses_gpt2_s_tanh_approximated_gelu():
    """GPT-2 was trained with the tanh GELU. At initialisation the MLP's inputs are too small
    for the logits comparisons to tell it from the exact GELU, so the activation is driven
    over [-5, 5] here, where the two differ by up to ~1e-3."""
    mlp = tiny_model().transformer.h[0].mlp
    with torch.no_grad():
        mlp.c_fc.weight.zero_()
        mlp.c_fc.bias.copy_(torch.linspace(-5, 5, mlp.c_fc.out_features))  # c_fc(x) = the bias, any x
        mlp.c_proj.weight.fill_(1.0)
        x = torch.randn(2, 3, mlp.c_fc.in_features)
        expected = mlp.c_proj(F.gelu(mlp.c_fc(x), approximate="tanh"))
        torch.testing.assert_close(mlp(x), expected)
        assert not torch.allclose(mlp(x), mlp.c_proj(F.gelu(mlp.c_fc(x))))  # the test can tell them apart


def test_layer_norms_use_gpt2_s_epsilon():
    """GPT-2's layer_norm_epsilon is 1e-5 (torch's default). The HF logits comparison sees another
    epsilon in ln_1, whose input at initialisation is small, but not in ln_f, whose input is not:
    GPT-2's weights would have run with another normalisation there, unseen."""
    model = tiny_model()
    norms = [(name, module.eps) for name, module in model.named_modules()
             if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) == 2 * model.config.n_layer + 1
    assert all(eps == 1e-5 for _, eps in norms), norms


# ---------------------------------------------------------------- compile-cleanliness


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_training_forward_has_no_graph_breaks(dropout):
    torch._dynamo.reset()
    model = tiny_model(dropout=dropout).train()
    idx, targets = random_tokens((2, 64), seed=11), random_tokens((2, 64), seed=12)
    explanation = torch._dynamo.explain(model)(idx, targets)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "clang++", "c++")), reason="Inductor on CPU needs a C++ compiler"
)
@pytest.mark.skipif(  # a property of inductor, not of our code: seen failing on 2.4.1
    torch.__version__ < "2.11", reason="checked on torch 2.11 and 2.13; 2.4's inductor saves fp32 logits"
)
def test_compiled_loss_keeps_no_fp32_logits():
    # What backward holds on to in a compiled bf16 training step: the logits in bf16 and
    # per-row statistics, but no fp32 (B, T, V) tensor (eager autocast would keep two).
    torch._dynamo.reset()
    model = tiny_model()
    idx, targets = random_tokens((2, 64), seed=19), random_tokens((2, 64), seed=20)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = torch.compile(model)(idx, targets)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    big = [(tuple(t.shape), t.dtype) for t in saved if t.numel() >= 2 * 64 * VOCAB]
    assert big and all(dtype == torch.bfloat16 for _, dtype in big), big
    assert model.transformer.wte.weight.grad is not None
    torch._dynamo.reset()


def test_compiled_loss_masks_the_padded_ids_as_eager_cuts_them():
    """Compiled, the loss scores the padded vocabulary ids -inf instead of cutting them off
    (no zero-filled padded gradient in backward): the same loss and gradients as eager's cut,
    to rounding, even with padded rows of the embedding that would dominate the softmax if they
    were scored."""
    torch._dynamo.reset()
    model = tiny_model()
    with torch.no_grad():
        model.transformer.wte.weight[VOCAB:] = 1e3  # the tied lm_head's padded rows: huge scores
    idx, targets = random_tokens((2, 64), seed=21), random_tokens((2, 64), seed=22)
    results = []
    for run in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        logits, loss = run(idx, targets)
        loss.backward()
        results.append((logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (logits, loss, grads), (c_logits, c_loss, c_grads) = results
    assert c_logits.shape == logits.shape == (2, 64, VOCAB)
    assert math.isfinite(loss.item()) and loss.item() < 20  # the huge padded scores took no part
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=0)
    for c_grad, grad in zip(c_grads, grads):
        torch.testing.assert_close(c_grad, grad, rtol=1e-4, atol=1e-6)
    assert c_grads[0][VOCAB:].abs().max() == 0  # nothing flows to the padded rows
    torch._dynamo.reset()


# ---------------------------------------------------------------- optimizer


def test_configure_optimizers_decays_only_matrices():
    model = tiny_model()
    optimizer = model.configure_optimizers(weight_decay=0.1, lr=6e-4, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    # every parameter exactly once (the tied embedding included once)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    # wte, wpe and four matrices per block; the rest are biases and LayerNorm parameters
    assert len(decay["params"]) == 2 + 4 * model.config.n_layer
    assert optimizer.defaults["lr"] == 6e-4 and optimizer.defaults["betas"] == (0.9, 0.95)
    assert not optimizer.defaults["fused"]


@pytest.mark.parametrize("device_type, fused", [("cuda", True), ("cuda:1", True), ("cpu", False), ("mps", False)])
def test_configure_optimizers_fused_on_cuda(device_type, fused):
    optimizer = tiny_model().configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
    assert bool(optimizer.defaults["fused"]) is fused


# ---------------------------------------------------------------- generation


def test_generation_is_reproducible_with_a_seed():
    model = tiny_model()
    prompt = random_tokens((2, 5), seed=13)

    def sample(seed: int) -> torch.Tensor:
        return model.generate(prompt, 20, generator=torch.Generator().manual_seed(seed))

    first = sample(0)
    assert first.shape == (2, 25)
    assert torch.equal(first[:, :5], prompt)
    assert torch.equal(sample(0), first)
    assert not torch.equal(sample(1), first)


def test_generation_beyond_block_size():
    model = tiny_model()
    out = model.generate(random_tokens((1, 3), seed=14), 100, top_k=50, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 103)  # more than block_size=64: the context is cropped
    assert int(out.max()) < VOCAB


def test_generation_beyond_block_size_sees_the_last_block_size_tokens(monkeypatch):
    """Past block_size, each token is predicted from the last block_size tokens, all the model
    can see (one token less changes the text, if not always its argmax)."""
    model = tiny_model().eval()
    block, seen = model.config.block_size, []
    hidden = model._hidden
    monkeypatch.setattr(model, "_hidden", lambda context: seen.append(context.clone()) or hidden(context))
    out = model.generate(random_tokens((2, block - 2), seed=21), 8, temperature=0.0)
    assert len(seen) == 8
    for end, context in zip(range(block - 2, block + 6), list(seen)):  # the token at `end`: from the window before it
        assert torch.equal(context, out[:, max(0, end - block):end]), end
        with torch.no_grad():
            assert torch.equal(out[:, end], model(context)[0][:, -1].argmax(dim=-1))


def test_top_k_one_less_than_the_vocabulary_never_draws_the_least_likely_token():
    model = tiny_model(vocab_size=3).eval()
    out = model.generate(torch.zeros((64, 1), dtype=torch.long), 1, temperature=1e6, top_k=2,
                         generator=torch.Generator().manual_seed(0))  # near uniform over the 2 kept
    with torch.no_grad():
        least = model(out[:, :1])[0][:, -1].argmin(dim=-1)
    assert not (out[:, 1] == least).any() and len(set(out[:, 1].tolist())) == 2


def two_token_model(gap: float) -> GPT:
    """A tiny model over two real tokens whose logits are (gap, 0) after any context: the final
    LayerNorm outputs e_0 (weight 0, bias one-hot) and only token 0's embedding row has a 1 there."""
    model = tiny_model(vocab_size=2).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[0, 0] = gap
    return model


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits_before_the_softmax(temperature):
    """Logits (1, 0) at temperature t: token 0 is drawn with probability sigmoid(1 / t) (0.88, 0.73,
    0.62). Temperature left out, multiplied in, or applied to the probabilities after the softmax
    (where multinomial's renormalising undoes it) draws at another rate. 4,000 seeded draws: the
    rate's standard deviation is below 0.008, the margin 0.03."""
    model = two_token_model(1.0)
    out = model.generate(torch.zeros((4000, 1), dtype=torch.long), 1, temperature=temperature,
                         generator=torch.Generator().manual_seed(0))
    rate = (out[:, 1] == 0).double().mean().item()
    assert abs(rate - 1 / (1 + math.exp(-1 / temperature))) < 0.03, rate


def test_a_tiny_temperature_above_float32_s_smallest_normal_number_samples_the_likeliest_token():
    """1e-37 is not greedy's (float32 holds it): logits (100, 0) divided by it overflow to inf
    unless the largest is subtracted first, and inf - inf in the softmax is nan."""
    model = two_token_model(100.0)
    out = model.generate(torch.zeros((8, 1), dtype=torch.long), 3, temperature=1e-37,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.zeros((8, 4), dtype=torch.long))


def test_generation_never_yields_padded_ids():
    # Rig the model so the padded ids would win every time if they could be predicted: the
    # final LayerNorm outputs all ones, and the padded embedding rows are large and positive.
    model = tiny_model()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[VOCAB:] = 10.0
        padded_logits = model.lm_head(torch.ones(model.config.n_embd))[VOCAB:]
    assert padded_logits.min() > 100  # they would dominate the softmax
    out = model.generate(random_tokens((4, 2), seed=15), 30, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < VOCAB
    logits, _ = model(out[:, :64])
    assert logits.shape[-1] == VOCAB


def test_greedy_and_top_1_are_deterministic():
    model = tiny_model()
    prompt = random_tokens((2, 4), seed=16)
    greedy = model.generate(prompt, 10, temperature=0.0)
    for seed in (0, 1):
        top_1 = model.generate(prompt, 10, top_k=1, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(top_1, greedy)
    # temperatures below float32's smallest normal number: greedy too (below 1.4e-45 float32 holds
    # them as 0: the top logit was 0/0 = nan, and multinomial raised)
    for temperature in (1e-46, 5e-324, 1e-40):
        assert torch.equal(model.generate(prompt, 10, temperature=temperature), greedy)


def test_generation_restores_mode_and_validates():
    model = tiny_model(dropout=0.1).train()
    model.generate(random_tokens((1, 2), seed=17), 2)
    assert model.training
    prompt = random_tokens((1, 2), seed=17)
    for temperature in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            model.generate(prompt, 2, temperature=temperature)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)
    for count in (-1, 2.5, "2", True):
        with pytest.raises(ValueError, match="^max_new_tokens must be an integer >= 0"):
            model.generate(prompt, count)
    for wrong in (prompt[0], prompt[:, :0], prompt.to(torch.uint16)):  # 1-D, empty, not widened
        with pytest.raises(ValueError, match="^idx must "):
            model.generate(wrong, 2)
    assert model.generate(prompt, 0).equal(prompt)
    assert model.generate(prompt, np.int64(2)).shape == (1, 4)  # a numpy integer is an integer


def test_eval_mode_and_generation_use_no_dropout():
    """Dropout in training only: an eval forward is deterministic (attention's dropout_p too),
    and generate samples with the model in eval mode whatever mode it was in."""
    model = tiny_model(dropout=0.5)
    idx = random_tokens((2, 16), seed=23)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)
    greedy = model.generate(idx, 5, temperature=0.0)
    model.train()
    assert torch.equal(model.generate(idx, 5, temperature=0.0), greedy)
    assert model.training


def test_generation_leaves_an_eval_model_in_eval_mode():
    """generate puts the model back in the mode it found it in: an evaluation after sampling
    (train.py's validation) ran with dropout on."""
    model = tiny_model(dropout=0.1).eval()
    model.generate(random_tokens((1, 2), seed=17), 2)
    assert not model.training and not any(module.training for module in model.modules())


def test_a_training_forward_applies_every_dropout(monkeypatch):
    """--dropout p drops in training at all of GPT-2's places: the embeddings' sum, attention's
    probabilities (scaled_dot_product_attention's dropout_p) and each residual branch's output
    (attention's and the MLP's), as nanoGPT does; a dropout left out regularised less than asked."""
    model = tiny_model(dropout=0.25).train()
    applied = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(
                lambda m, args, out, name=name: applied.append((name, m.p, m.training)))
    probabilities = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **kw: probabilities.append(kw.get("dropout_p", 0.0)) or sdpa(*a, **kw))
    model(random_tokens((2, 16), seed=24), random_tokens((2, 16), seed=25))
    L = model.config.n_layer
    expected = ["transformer.drop"] + [f"transformer.h.{i}.{at}" for i in range(L)
                                       for at in ("attn.resid_dropout", "mlp.dropout")]
    assert applied == [(name, 0.25, True) for name in expected]
    assert probabilities == [0.25] * L
    model.eval()
    probabilities.clear()
    model(random_tokens((2, 16), seed=24))
    assert probabilities == [0.0] * L


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_of_compiled_model_has_raw_keys():
    model = tiny_model()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert raw_module(compiled) is model
    assert raw_module(model) is model
    assert any(key.startswith("_orig_mod.") for key in compiled.state_dict())
    state = raw_module(compiled).state_dict()
    assert not any(key.startswith(("_orig_mod.", "module.")) for key in state)
    restored = tiny_model(seed=1)
    restored.load_state_dict(state)
    idx = random_tokens((1, 8), seed=18)
    torch.testing.assert_close(restored(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert restored.lm_head.weight is restored.transformer.wte.weight  # still tied after loading


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_raw_module_unwraps_ddp_and_compile_in_any_order():
    model = tiny_model()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = torch.compile(torch.nn.parallel.DistributedDataParallel(torch.compile(model)))
        assert raw_module(wrapped) is model
        assert raw_module(torch.nn.parallel.DistributedDataParallel(model)) is model
    finally:
        dist.destroy_process_group()
