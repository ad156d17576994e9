"""GPT-2 weights to and from Hugging Face's layout (`transformers`' GPT2LMHeadModel).

The tensor names are the same; two things differ, and these functions undo them:

- HF's attention and MLP projections are `Conv1D` layers, whose weight is stored (in, out);
  ours are `nn.Linear`, stored (out, in). The four kinds (attn.c_attn, attn.c_proj,
  mlp.c_fc, mlp.c_proj) are transposed on the way.
- Our token embedding (tied to lm_head) has padded_vocab_size rows (50,304), HF's has
  vocab_size (50,257): the padded rows are cut off going out and added back as zeros coming
  in (zero is what GPT.__init__ gives them: they are never looked up, their logits are sliced
  off).

No `transformers` needed: state dicts in, state dicts out. To load OpenAI's released weights,
save `GPT2LMHeadModel.from_pretrained("gpt2").state_dict()` once where there is network, then
`GPT(config).load_state_dict(from_hf_state_dict(torch.load(path), config))`.
"""

from __future__ import annotations

import torch

from .config import GPTConfig

# the weights HF keeps as Conv1D, (in, out)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# buffers some HF versions save with the weights (the causal mask): h.<i>.attn.bias and
# h.<i>.attn.masked_bias, not parameters (attn.c_attn.bias is one)
HF_MASK_BUFFERS = (["attn", "bias"], ["attn", "masked_bias"])


def is_hf_mask_buffer(key: str) -> bool:
    """Whether `key` names one of those causal-mask buffers (bool or uint8 in older versions)."""
    return key.split(".")[-2:] in HF_MASK_BUFFERS


_PREFIX = "transformer."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's, in a wrapped model's state_dict


def check_tied(lm_head: torch.Tensor, wte: torch.Tensor) -> None:
    """ValueError unless `lm_head` holds the token embedding's values (in its dtype): GPT-2
    ties the two, and so does GPT, so a head of its own cannot be loaded."""
    if not torch.equal(lm_head.to(wte.dtype), wte):
        raise ValueError("lm_head.weight differs from the token embedding: GPT-2 ties them, this model too")


def _is_conv1d(key: str) -> bool:
    return key.startswith(_PREFIX + "h.") and key.endswith(CONV1D_WEIGHTS)


def to_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our GPT's state_dict as GPT2LMHeadModel's: Conv1D weights transposed, the padded
    vocabulary rows dropped, lm_head.weight the same tensor as transformer.wte.weight (tied,
    as HF ties them). New tensors: `state` is not changed. Raises ValueError, naming the tensor,
    for a state_dict that is not our GPT's for `config` (_check_ours): one already in HF's layout
    was transposed back without a word."""
    _check_ours(state, config)
    out = {}
    for key, tensor in state.items():
        if key == "lm_head.weight":
            continue  # tied: added below as the same tensor as wte
        if key == _PREFIX + "wte.weight":
            tensor = tensor[: config.vocab_size]
        elif _is_conv1d(key):
            tensor = tensor.t()
        out[key] = tensor.contiguous().clone()
    out["lm_head.weight"] = out[_PREFIX + "wte.weight"]
    return out


def _check_ours(state: dict[str, torch.Tensor], config: GPTConfig) -> None:
    """ValueError unless `state` has our GPT's tensors for `config`, of their shapes (lm_head.weight
    may be left out; where present it must be the token embedding's values): not a wrapped model's
    (DDP, torch.compile), not one already in HF's layout, not another config's."""
    wte_key = _PREFIX + "wte.weight"
    if wte_key not in state:  # a KeyError after the loop, naming no cause
        wrapped = next((key.split(".")[0] for key in state if key.startswith(WRAPPER_PREFIXES)), None)
        hint = (f": its names start with {wrapped}. (a wrapped model's): pass the raw module's state_dict"
                if wrapped else "")
        raise ValueError(f"not a GPT state_dict: no {wte_key}{hint}")
    expected = _shapes(config)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - {"lm_head.weight"})
    if unknown or missing:
        names = [f"unknown {key}" for key in unknown] + [f"missing {key}" for key in missing]
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        mask = bool(unknown) and is_hf_mask_buffer(unknown[0])
        hf = " (Hugging Face's causal mask: from_hf_state_dict reads its layout)" if mask else ""
        raise ValueError(f"not a GPT state_dict for {config.n_layer} layers: {names[0]}{more}{hf}")
    for key, tensor in state.items():
        shape = tuple(tensor.shape)
        if shape != expected[key]:
            hf = ((config.vocab_size, *expected[key][1:]) if key in (wte_key, "lm_head.weight") else
                  expected[key][::-1] if _is_conv1d(key) else None)
            why = "; that is Hugging Face's layout (from_hf_state_dict reads it)" if shape == hf else ""
            raise ValueError(f"{key}: shape {shape}, where our GPT of this config (n_embd {config.n_embd}, "
                             f"block_size {config.block_size}, padded_vocab_size {config.padded_vocab_size}) "
                             f"has {expected[key]}{why}")
    if "lm_head.weight" in state:
        check_tied(state["lm_head.weight"], state[wte_key])


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A GPT2LMHeadModel (or GPT2Model: no "transformer." prefix) state_dict as ours, for
    `GPT(config).load_state_dict(...)`: Conv1D weights transposed, the token embedding padded
    to config.padded_vocab_size rows with zeros, the causal-mask buffers some versions save
    dropped. lm_head.weight, when present, must equal the token embedding (GPT-2 ties them).

    Raises ValueError naming the tensor when a shape does not fit `config` (the wrong preset,
    say) or a tensor is missing or unknown; n_head cannot be read off the shapes, so it comes
    from `config`.
    """
    state, named = {}, {}  # our name -> the caller's (GPT2Model's have no prefix), for errors
    for key, tensor in hf_state.items():
        if key == "lm_head.weight" or is_hf_mask_buffer(key):
            continue
        name = key if key.startswith(_PREFIX) else _PREFIX + key
        transpose = _is_conv1d(name) and tensor.dim() == 2  # another rank is refused below, by name
        state[name], named[name] = (tensor.t() if transpose else tensor), key
    bare = bool(named) and not any(key.startswith(_PREFIX) for key in named.values())

    def theirs(name: str) -> str:  # a tensor's name as the caller spells it
        return named.get(name, name.removeprefix(_PREFIX) if bare else name)

    wte_key = _PREFIX + "wte.weight"
    wte = state.get(wte_key)
    if wte is None:
        raise ValueError(f"not a GPT-2 state dict: missing {theirs(wte_key)}")
    if wte.dim() != 2 or wte.shape[0] != config.vocab_size:
        want = f"{config.vocab_size} rows" if wte.dim() == 2 else f"a matrix of {config.vocab_size} rows"
        raise ValueError(f"{theirs(wte_key)}: expected {want}, got shape {tuple(wte.shape)}")
    lm_head = hf_state.get("lm_head.weight")
    if lm_head is not None:
        check_tied(lm_head, wte)
    pad = wte.new_zeros(config.padded_vocab_size - config.vocab_size, wte.shape[1])
    state[wte_key] = torch.cat([wte, pad])
    expected = _shapes(config)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state) - {"lm_head.weight"})
    if unknown or missing:
        names = [f"unknown {theirs(key)}" for key in unknown] + [f"missing {theirs(key)}" for key in missing]
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise ValueError(f"not a GPT-2 state dict for {config.n_layer} layers: {names[0]}{more}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:  # said in HF's layout, as the caller passed it
            hf_layout = (lambda shape: shape[::-1]) if _is_conv1d(key) and tensor.dim() == 2 else (lambda shape: shape)
            given, needed = hf_layout(tuple(tensor.shape)), hf_layout(expected[key])
            if key == wte_key:
                given, needed = (config.vocab_size, given[1]), (config.vocab_size, needed[1])
            raise ValueError(f"{theirs(key)}: shape {given}, where this config (n_embd "
                             f"{config.n_embd}, block_size {config.block_size}) has {needed}")
    state = {key: tensor.contiguous().clone() for key, tensor in state.items()}
    state["lm_head.weight"] = state[wte_key]  # tied, as GPT's own state_dict has it
    return state


def _shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of our state_dict with its shape, for `config` (without building a model)."""
    C, V = config.n_embd, config.padded_vocab_size
    shapes = {f"{_PREFIX}wte.weight": (V, C), f"{_PREFIX}wpe.weight": (config.block_size, C),
              f"{_PREFIX}ln_f.weight": (C,), f"{_PREFIX}ln_f.bias": (C,), "lm_head.weight": (V, C)}
    per_layer = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C),
                 "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
                 "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,),
                 "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,)}
    for layer in range(config.n_layer):
        shapes.update({f"{_PREFIX}h.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes
