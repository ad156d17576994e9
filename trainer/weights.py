"""--init-from: a model's weights from a train.py checkpoint or a GPT-2 state dict saved with torch.save.

The state dict is Hugging Face's (OpenAI's released gpt2) or GPT's own; other files (llm.c's,
safetensors, another trainer's pickles) are refused by read_torch_file with what to pass instead.
A shape that does not fit the --model given is refused naming the preset (and shape flags) that
would fit (preset_flags), before any weight is copied. sample.py reads its weights through these
functions too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model import GPT, GPTConfig
from model.hf import is_hf_mask_buffer
from model.weights import block_indices, positions, to_model_state, unwrapped, weights_shape
from prep.errors import UserError
from trainer.checkpoint import check_checkpoint, read_torch_file
from trainer.config import flags_for
from trainer.runtime import is_out_of_memory
from trainer.step import first_not_finite


def preset_flags(config: dict) -> str:
    """The --model (and shape flags) that build `config` (a GPTConfig as a dict), dropout aside:
    the preset that needs the fewest flags (tiny with --n-layer 3, not gpt2 with four), the
    first in GPTConfig.presets() of those that need as few."""
    shape = {k: v for k, v in config.items() if k != "dropout"}
    best: tuple[str, dict] | None = None
    for name in GPTConfig.presets():
        preset = dataclasses.asdict(GPTConfig.preset(name))
        if all(preset.get(k) == v for k, v in shape.items()):
            return f"--model {name}"
        changed = {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")
                   if k in shape and shape[k] != preset[k]}
        if best is None or len(changed) < len(best[1]):
            best = (name, changed)
    return " ".join([f"--model {best[0]}", *flags_for(best[1])])


SHAPE_ONLY = "and no other --n-layer, --n-head or --n-embd"


def _check_same_shape(theirs: dict, config: GPTConfig, where: str) -> None:
    """A checkpoint's model_config must be `config`'s, but for dropout and block size."""
    here = dataclasses.asdict(config)
    differ = [f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in here.items()
              if k not in ("dropout", "block_size") and theirs.get(k) != v]
    if differ or not isinstance(theirs.get("block_size"), int):
        raise UserError(f"{where}: another model shape ({'; '.join(differ) or 'no block_size'}): "
                        f"use {preset_flags(theirs)} {SHAPE_ONLY}")


def check_state_shape(state: dict, config: GPTConfig, where: str, shape_flags: bool) -> None:
    """A state dict's layer count and width must be `config`'s (n_head is not in the shapes:
    the preset that has these says it); what else does not fit, loading says. `shape_flags`:
    the command has --n-layer and friends (train.py), and the hint names them."""
    blocks = block_indices(state)
    if blocks and blocks[-1] != len(blocks) - 1:  # before a model of that many layers is built
        numbers = ", ".join(f"{i:,}" for i in blocks[:4]) + (", ..." if len(blocks) > 4 else "")
        raise UserError(f"{where}: not one model's weights: its {len(blocks):,} blocks are numbered {numbers} "
                        f"(h.<i>.), where a model's are 0 to n_layer - 1")
    there = {k: v for k, v in weights_shape(state).items() if k in ("n_layer", "n_embd")}
    differ = [f"{k} {v} there, {getattr(config, k)} here" for k, v in there.items()
              if v is not None and v != getattr(config, k)]
    if differ:
        match = [n for n in GPTConfig.presets() if all(getattr(GPTConfig.preset(n), k) == v for k, v in there.items())]
        if match:
            hint = f"use --model {match[0]}" + (f" {SHAPE_ONLY}" if shape_flags else "")
        else:
            flags = " ".join(flags_for({k: v for k, v in there.items() if v is not None and v != getattr(config, k)}))
            hint = (f"pass {flags} (and the --n-head it was trained with: a state dict does not record it)"
                    if shape_flags else "no --model preset has its shape: pass the --n-head it was trained with, "
                    "and the rest is read off the weights")
        raise UserError(f"{where}: another model shape ({'; '.join(differ)}): {hint}")


def is_checkpoint(found: object) -> bool:
    """Whether what torch.load read looks like a train.py checkpoint (check_checkpoint says
    whether it is a whole one), not a bare state dict."""
    return isinstance(found, dict) and "model" in found and "model_config" in found


def load_init_weights(model: GPT, path: Path, flag: str = "--init-from", found: object = None,
                      finite_checked: bool = False, notes: list[str] | None = None) -> str:
    """--init-from: load into `model` the weights of a train.py checkpoint or of a GPT-2 state
    dict: Hugging Face's (GPT2LMHeadModel's or GPT2Model's: OpenAI's released gpt2 is one,
    saved with torch.save) or GPT's own. Only the weights: the optimizer, step, schedule and
    data start afresh (fine-tuning). The shape is the model's (--model and the shape flags),
    and the file must have it, but a smaller block size keeps the first rows of the position
    table (nanoGPT's crop_block_size), and `notes` gets a line saying so (a context the weights
    were trained for is given up, maybe unasked: the preset's block size is smaller than a
    file's); dropout is the run's. Returns "checkpoint" or "state dict" (whose n_head nothing
    can check); a user error says what does not fit."""
    config, where = model.config, f"{flag} {path}"
    if found is None:  # else: what torch.load read from `path` already
        found = read_torch_file(path, flag, "weights file", mapped=True)  # (the weights are copied into `model`)
    if is_checkpoint(found):
        _check_same_shape(check_checkpoint(found, path, flag)["model_config"], config, where)
        kind, state = "checkpoint", found["model"]
    elif isinstance(found, dict) and found and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in found.items()):
        # HF's causal-mask buffers (bool or uint8 in older versions) are not weights: dropped
        kind, state = "state dict", {k: v for k, v in unwrapped(found).items() if not is_hf_mask_buffer(k)}
        check_state_shape(state, config, where, shape_flags=flag == "--init-from")
    else:
        inner = found.get("model") if isinstance(found, dict) else None
        nested = (isinstance(inner, dict) and bool(inner)
                  and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()))
        raise UserError(f"{where}: neither a train.py checkpoint nor a GPT-2 state dict (names to tensors)" +
                        ("; its 'model' entry is a state dict (nanoGPT's and build-nanogpt's checkpoints keep theirs "
                         "there): torch.save that alone and pass its file" if nested else ""))
    try:
        state = {str(k): v for k, v in state.items()}
        odd = next((k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())), None)
        if odd is not None:
            raise ValueError(f"{odd} is not a floating-point tensor")
        bad = None if finite_checked else first_not_finite(state.items())  # (sample.py: scanned already)
        if bad is not None:
            raise ValueError(f"{bad} holds NaN or infinite values")
        rows = positions(state)
        if rows is not None and rows < config.block_size:
            raise UserError(f"{where}: {rows} positions, fewer than the block size {config.block_size} here" +
                            (f": pass --block-size {rows} (or less)" if rows and flag == "--init-from" else ""))
        model.load_state_dict(to_model_state(state, model))
        if rows is not None and rows > config.block_size and notes is not None:
            notes.append(f"{where}: its {rows:,} positions are cropped to the first {config.block_size:,}, the block "
                         f"size here" + (f"; --block-size {rows} keeps them all" if flag == "--init-from" else ""))
    except (ValueError, RuntimeError, TypeError, AttributeError, KeyError, MemoryError) as e:
        why = " ".join(str(e).split())[:300]  # one line, however long torch's is
        if is_out_of_memory(e):
            # the weights fit the model, the memory left does not hold their copies (the NaN scan's,
            # the conversion's, the model's device): "does not fit this model" blamed the file
            raise UserError(f"{where}: out of memory loading its weights ({why or type(e).__name__}): free some "
                            f"memory or use a machine with more") from None
        raise UserError(f"{where}: does not fit this model ({why})") from None
    return kind
