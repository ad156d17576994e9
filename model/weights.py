"""GPT-2 state dicts in the layouts people have on disk, read as ours.

What train.py --init-from and sample.py are handed, besides train.py's own checkpoints:

- ours: nn.Linear projections (out, in), 50,304 padded token rows, "transformer." names;
- nanoGPT's after init_from="gpt2": ours, but with GPT-2's 50,257 rows and lm_head saved;
- Hugging Face's GPT2LMHeadModel (or GPT2Model: no "transformer."): Conv1D (in, out), 50,257 rows;
- any of these saved from a DDP- or torch.compile-wrapped model ("module.", "_orig_mod.").

`weights_shape` reads a model's sizes off the tensors (all but n_head, which no shape holds);
`to_model_state` turns such a dict into one `model.load_state_dict` takes, or raises a
ValueError naming the tensor that does not fit. Imports torch only.
"""

from __future__ import annotations

import re

import torch

from .gpt import GPT
from .hf import WRAPPER_PREFIXES, check_tied, from_hf_state_dict


def unwrapped(state: dict) -> dict:
    """`state` without the prefixes DDP and torch.compile put on a wrapped model's names."""
    out = {}
    for key, tensor in state.items():
        while isinstance(key, str) and key.startswith(WRAPPER_PREFIXES):  # other keys: refused by the caller
            key = key.split(".", 1)[1]
        out[key] = tensor
    return out


def linear_layout(state: dict) -> bool:
    """Whether a GPT-2 state dict's projections are nn.Linear's (out, in), ours and nanoGPT's,
    not HF's Conv1D (in, out): c_attn maps C to 3C, so its shape says which, where the token
    embedding's rows do not (nanoGPT keeps GPT-2's 50,257 when it starts from them)."""
    c_attn = state.get("transformer.h.0.attn.c_attn.weight")
    return isinstance(c_attn, torch.Tensor) and c_attn.dim() == 2 and c_attn.shape[0] == 3 * c_attn.shape[1] > 0


def _key(state: dict, name: str) -> str:
    """`name`'s key in a GPT-2 state dict: "transformer."-prefixed (ours, GPT2LMHeadModel's)
    where that is there, else bare (GPT2Model's)."""
    return f"transformer.{name}" if f"transformer.{name}" in state else name


def positions(state: dict) -> int | None:
    """The rows of an unwrapped state dict's position table, or None if it has none."""
    wpe = state.get(_key(state, "wpe.weight"))
    return wpe.shape[0] if isinstance(wpe, torch.Tensor) and wpe.dim() == 2 else None


def state_positions(state: dict) -> int | None:
    """The rows of a GPT-2 state dict's position table (any layout, wrapped or not), or None."""
    return positions(unwrapped(state))


def weights_shape(state: dict) -> dict[str, int | None]:
    """The sizes an unwrapped GPT-2 state dict's weights give a model (ours, Hugging Face's,
    with or without "transformer."): n_layer (its blocks, numbered 0 to n_layer - 1; None
    where they are not: block_indices), n_embd and
    padded_vocab_size (the token embedding's columns and rows: padded in ours, 50,257 in
    Hugging Face's), block_size (the position table's rows); None where the tensor is
    missing or not a matrix."""
    wte = state.get(_key(state, "wte.weight"))
    rows, width = wte.shape if isinstance(wte, torch.Tensor) and wte.dim() == 2 else (None, None)
    layers = block_indices(state)
    return {"n_layer": len(layers) if layers and layers[-1] == len(layers) - 1 else None, "n_embd": width,
            "block_size": positions(state), "padded_vocab_size": rows}


def block_indices(state: dict) -> list[int]:
    """The block numbers (h.<i>.) of a state dict's keys, sorted: 0 to n_layer - 1 in one
    model's weights. weights_shape gives no n_layer for others: a gap, or one key numbered a
    billion, was a model of a billion layers, built until memory ran out."""
    found = (re.match(r"(?:transformer\.)?h\.(\d+)\.", k) for k in state if isinstance(k, str))
    return sorted({int(m[1]) for m in found if m})


def to_model_state(state: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    """An unwrapped state dict of any layout above as `model`'s own: a longer position table
    keeps its first block_size rows (nanoGPT's crop_block_size), nanoGPT's 50,257 token rows
    are padded with zeros, a tied lm_head must equal the token embedding, HF's layout goes
    through from_hf_state_dict. A shorter position table is the caller's to refuse (it knows
    which flag to name). `state` is not changed. Raises ValueError for what does not fit."""
    config, state = model.config, dict(state)
    rows = positions(state)
    if rows is not None and rows > config.block_size:
        wpe = _key(state, "wpe.weight")
        state[wpe] = state[wpe][:config.block_size]
    wte = state.get("transformer.wte.weight")
    if linear_layout(state) and isinstance(wte, torch.Tensor) and wte.dim() == 2 and (
            wte.shape[0] == config.vocab_size):  # nanoGPT's after init_from="gpt2": ours, with HF's rows
        check_tied(state.pop("lm_head.weight", wte), wte)
        pad = wte.new_zeros(config.padded_vocab_size - config.vocab_size, wte.shape[1])
        state["transformer.wte.weight"] = wte = torch.cat([wte, pad])  # zeros, as from_hf_state_dict pads
    if isinstance(wte, torch.Tensor) and wte.dim() == 2 and wte.shape[0] == config.padded_vocab_size:
        check_tied(state.setdefault("lm_head.weight", wte), wte)  # ours: the tied head may be left out
    else:
        state = from_hf_state_dict(state, config)
    check_layout(state, model)
    return state


def check_layout(state: dict, model: GPT) -> None:
    """ValueError naming the first tensor of `state` (in our names and layout) whose shape is
    not the model's, and saying so where it is the model's transposed: a file whose layout
    linear_layout took to be nn.Linear's from layer 0's c_attn, but whose other projections
    are Hugging Face's Conv1D (torch's own message named a tensor, cut at 300 characters)."""
    expected = model.state_dict()
    for key, tensor in state.items():
        want = expected.get(key)
        if want is None or tensor.shape == want.shape:  # (an unknown name: load_state_dict says so)
            continue
        why = ""
        if tensor.dim() == 2 and tuple(tensor.shape[::-1]) == tuple(want.shape):
            why = ": transposed, Hugging Face's Conv1D layout, " + (
                "where transformer.h.0.attn.c_attn.weight has nn.Linear's (ours, nanoGPT's): the file mixes the two"
                if linear_layout(state) else
                f"whose token embedding has GPT-2's {model.config.vocab_size:,} rows, not this file's "
                f"{model.config.padded_vocab_size:,}: keep the first {model.config.vocab_size:,}")
        raise ValueError(f"{key}: shape {tuple(tensor.shape)}, where this model has {tuple(want.shape)}{why}")
