"""model.weights: GPT-2 state dicts of the layouts on people's disks (ours, nanoGPT's, Hugging
Face's, wrapped by DDP or torch.compile) read as ours, and their sizes read off the tensors.
train.py --init-from's files and messages are tested in test_train.py."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig, to_hf_state_dict
from model.hf import check_tied
from model.weights import block_indices, state_positions, to_model_state, unwrapped, weights_shape

CONFIG = GPTConfig.preset("tiny")  # 2 layers, 32 dims, 64 positions


@pytest.fixture(scope="module")
def ours() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return GPT(CONFIG).state_dict()


def layouts(state: dict) -> dict[str, dict]:
    """The same weights as each trainer or library saves them (LAYOUTS)."""
    V = CONFIG.vocab_size
    wte = state["transformer.wte.weight"][:V]
    hf = to_hf_state_dict(state, CONFIG)
    return {
        "ours": state,
        "ours, tied head left out": {k: v for k, v in state.items() if k != "lm_head.weight"},
        "nanoGPT after init_from='gpt2'": {**state, "transformer.wte.weight": wte, "lm_head.weight": wte},
        "GPT2LMHeadModel": hf,
        "GPT2Model": {k.removeprefix("transformer."): v for k, v in hf.items() if k != "lm_head.weight"},
        "HF with its mask buffers": {**hf, "transformer.h.0.attn.masked_bias": torch.tensor(-1e4)},
        "DDP around torch.compile": {f"module._orig_mod.{k}": v for k, v in state.items()},
    }


LAYOUTS = ("ours", "ours, tied head left out", "nanoGPT after init_from='gpt2'", "GPT2LMHeadModel", "GPT2Model",
           "HF with its mask buffers", "DDP around torch.compile")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_as_the_same_weights(ours, layout):
    saved = layouts(ours)[layout]
    before = {k: v.clone() for k, v in saved.items()}
    model = GPT(CONFIG)
    model.load_state_dict(to_model_state(unwrapped(saved), model))
    for key, tensor in ours.items():  # the padded rows are zeros in GPT's init: equal in every layout
        assert torch.equal(model.state_dict()[key], tensor), (layout, key)
    assert all(torch.equal(saved[k], v) for k, v in before.items()) and saved.keys() == before.keys()


def test_a_longer_position_table_keeps_its_first_rows_and_the_callers_dict(ours):
    longer = GPT(GPTConfig.preset("tiny", block_size=100)).state_dict()
    for key in ("transformer.wte.weight", "lm_head.weight"):
        longer[key] = ours[key]
    model = GPT(CONFIG)
    state = to_model_state(longer, model)
    assert torch.equal(state["transformer.wpe.weight"], longer["transformer.wpe.weight"][:64])
    assert longer["transformer.wpe.weight"].shape == (100, 32)  # not changed in place
    model.load_state_dict(state)


def test_sizes_are_read_off_the_tensors(ours):
    expected = {"n_layer": 2, "n_embd": 32, "block_size": 64, "padded_vocab_size": 50304}
    assert weights_shape(ours) == expected
    bare = layouts(ours)["GPT2Model"]
    assert weights_shape(bare) == {**expected, "padded_vocab_size": 50257}
    assert weights_shape({"lm_head.weight": torch.zeros(3, 3)}) == dict.fromkeys(expected)
    # blocks numbered with a gap, or from a billion: no n_layer (it was the highest number + 1)
    for renumbered in ("h.5.", "h.999999999."):
        odd = {k.replace("h.1.", renumbered): v for k, v in ours.items()}
        assert block_indices(odd) == [0, int(renumbered[2:-1])] and weights_shape(odd)["n_layer"] is None
    assert state_positions(layouts(ours)["DDP around torch.compile"]) == 64
    assert state_positions({"wpe.weight": torch.zeros(64)}) is None  # not a matrix


def test_what_does_not_fit_is_a_value_error_naming_the_tensor(ours):
    model = GPT(CONFIG)
    untied = {**ours, "lm_head.weight": ours["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs from the token embedding"):
        to_model_state(untied, model)
    mixed = to_hf_state_dict(ours, CONFIG)  # HF's layout, but layer 0's c_attn in nn.Linear's
    mixed["transformer.h.0.attn.c_attn.weight"] = mixed["transformer.h.0.attn.c_attn.weight"].t()
    with pytest.raises(ValueError, match=r"^transformer.h.0.mlp.c_fc.weight: shape \(32, 128\), where this model has "
                                         r"\(128, 32\): transposed, .* the file mixes the two$"):
        to_model_state(mixed, model)
    wide = GPT(GPTConfig.preset("tiny", n_embd=64)).state_dict()
    with pytest.raises(ValueError, match=r"^transformer.wte.weight: shape \(50304, 64\), where this model has "
                                         r"\(50304, 32\)$"):
        to_model_state(wide, model)


def test_a_tied_head_is_compared_in_the_embeddings_dtype():
    wte = torch.randn(5, 4)
    check_tied(wte.double(), wte)  # the same values, saved in another precision
    with pytest.raises(ValueError, match="GPT-2 ties them"):
        check_tied(wte.double() + 1e-3, wte)
