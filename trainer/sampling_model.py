"""The model sample.py draws from: the checkpoint CKPT names (a file, or an --out directory's
newest, looked for again where the run still writing there pruned it first), or a Hugging Face
GPT-2 state dict, built in a preset's shape or its weights'. Each is checked before its model
is built: a damaged or diverged checkpoint, or one too large for memory, is one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loader.checkpoints import list_checkpoints
from model import GPT, GPT2_VOCAB_SIZE, GPTConfig
from model.weights import state_positions, unwrapped, weights_shape
from prep.errors import UserError
from prep.streams import say
from trainer.checkpoint import check_checkpoint, read_torch_file
from trainer.logs import METRICS_NAME
from trainer.runtime import Runtime, is_out_of_memory
from trainer.step import first_not_finite
from trainer.weights import check_state_shape, is_checkpoint, load_init_weights


def checkpoint_file(path: Path) -> Path:
    """`path` itself, or the newest checkpoint in it when it is a directory."""
    if not is_directory(path):
        return path
    try:
        found = list_checkpoints(path)
    except OSError as e:  # no read permission (another user's run, mode 0711): its files may still be read
        raise UserError(f"{path}: this directory cannot be listed ({e.strerror or e}): pass a checkpoint "
                        f"file in it") from None
    if not found:
        why = (": the run there has written none (it ran with --ckpt-every 0, as `make demo`'s run, stopped before its "
               "first, or is still before it)"
               if (path / METRICS_NAME).is_file() else "")
        raise UserError(f"{path}: no checkpoint (ckpt_<step>.pt) in this directory{why}")
    return found[-1][1]


def newest_model(given: Path, rt: Runtime, preset: str | None, n_head: int | None,
                 tries: int = 3) -> tuple[Path, tuple[GPT, str]]:
    """checkpoint_file(given) and its load_model. An --out directory whose run is still
    writing there prunes its checkpoints (--keep-ckpts) as it goes: the newest one listed may be
    gone before it is read, or every one listed before the listing is done. Such a load is
    tried again, `tries` times in all, on the newest checkpoint there by then; a file's error,
    or a directory's whose checkpoints are still there, stands."""
    attempt = 1
    while True:
        path = given
        try:
            path = checkpoint_file(given)
            return path, load_model(path, rt, preset, n_head)
        except (RuntimeError, MemoryError) as e:  # a whole checkpoint that does not fit: no damage, no crash
            if not is_out_of_memory(e):
                raise
            raise UserError(out_of_memory_loading(path, rt, e)) from None
        except UserError:
            # the checkpoint read is gone since it was listed; or none was listed, and some are there now
            raced = is_directory(given) and (not path.exists() if path != given else has_checkpoints(given))
            if not raced or attempt == tries:
                raise
            attempt += 1


def out_of_memory_loading(path: Path, rt: Runtime, e: Exception) -> str:
    """The line for an allocation that failed while the model of `path` was read, checked or
    built (the CPU's memory: the weights are read and scanned there first), or moved onto
    rt.device (a GPU's: the CPU has room where it does not)."""
    on_device = (rt.device.type != "cpu" and isinstance(e, RuntimeError)
                 and "can't allocate memory" not in str(e))  # (the CPU allocator's words)
    where = f"{rt.device}" if on_device else "the CPU (this machine's memory)"
    return (f"checkpoint {path}: out of memory on {where} loading its model: free some memory or use a "
            f"machine with more" + (" (--device cpu samples in this machine's memory)" if on_device else ""))


def is_directory(path: Path) -> bool:
    """Whether `path` is a directory; False where it cannot be looked up (a directory on the way
    that may not be searched): reading it as a file says so in one line."""
    try:
        return path.is_dir()
    except OSError:
        return False


def has_checkpoints(directory: Path) -> bool:
    """Whether `directory` lists a checkpoint now (not where it cannot be listed)."""
    try:
        return bool(list_checkpoints(directory))
    except OSError:
        return False


def config_differences(config: GPTConfig, state: dict) -> str:
    """Where a checkpoint's model_config differs from the shape of its own weights, "" where it
    does not: the sizes that building the model allocates (layers, width, positions, token rows)
    are checked before it is built."""
    there = weights_shape(state)
    return "; ".join(f"{name} {getattr(config, name)!r}, {'no such tensor' if v is None else v} in the weights"
                     for name, v in there.items() if v != getattr(config, name))


def load_model(path: Path, rt: Runtime, preset: str | None = None,
               n_head: int | None = None) -> tuple[GPT, str]:
    """The checkpoint's model on rt.device, in eval mode, and where it comes from ("step N").
    A Hugging Face GPT-2 state dict instead (train.py --init-from's kinds) is built as
    `preset` (default gpt2: n_head is not in the weights), or, given `n_head`, in the shape
    its weights have (layers, width, positions) with that many heads."""
    found = read_torch_file(path, "checkpoint", mapped=True)  # (the weights alone are read: into the model)
    if not is_checkpoint(found):
        name = "gpt2" if preset is None else preset
        config = GPTConfig.preset(name)  # (main checked the name)
        rows = state_positions(found) if isinstance(found, dict) else None
        # names to tensors, without DDP's and compile's prefixes (else: refused by load_init_weights)
        named = unwrapped(found) if isinstance(found, dict) and all(isinstance(k, str) for k in found) else None
        if n_head is not None and named is not None:
            shape = weights_shape(named)
            sizes = {k: shape[k] for k in ("n_layer", "n_embd", "block_size") if shape[k] is not None}
            try:
                config = GPTConfig.preset(name, n_head=n_head, **sizes)
            except ValueError as e:  # heads that do not divide the width
                raise UserError(f"--n-head {n_head}: {e} (checkpoint {path}: {sizes.get('n_embd')} dims)") from None
        elif rows and rows != config.block_size:  # the context the weights have: a model fine-tuned
            config = GPTConfig.preset(name, block_size=rows)  # with a cropped block size, or a longer one
        if named is not None:  # before gpt2-xl's 6 GB is built
            check_state_shape(named, config, f"checkpoint {path}", shape_flags=False)
        model = GPT(config)
        load_init_weights(model, path, "checkpoint", found)
        source = (f"weights of {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dims"
                  if n_head is not None else f"--model {name} weights")
        return model.to(rt.device).eval(), source
    ckpt = check_checkpoint(found, path, "checkpoint")
    vocab = ckpt["model_config"].get("vocab_size")  # (a dict: check_checkpoint's)
    if isinstance(vocab, int) and vocab > GPT2_VOCAB_SIZE:  # ids the GPT-2 tokenizer cannot decode
        raise UserError(f"checkpoint {path}: its model predicts {vocab:,} token ids, more than GPT-2's "
                        f"{GPT2_VOCAB_SIZE:,}: sample.py decodes with the GPT-2 tokenizer")
    for flag, value in (("--model", preset), ("--n-head", n_head)):
        if value is not None:
            say(f"note: {flag} {value} has no effect: the checkpoint holds its model's shape")
    try:
        config = GPTConfig(**ckpt["model_config"])
        differ = config_differences(config, ckpt["model"])
        if differ:  # built first, a damaged n_layer of 2**63 built layers for ever
            raise ValueError(f"its model_config is not its weights' shape: {differ}")
        model = GPT(config)
        floats = [(k, v) for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError) as e:  # a config or tensor that won't fit
        if is_out_of_memory(e):  # a whole checkpoint: newest_model says so
            raise
        reason = str(e).splitlines()[0]
        raise UserError(f"checkpoint {path}: damaged model ({reason})") from None
    bad = first_not_finite(floats)
    if bad is not None:  # a run that diverged: nothing to sample
        raise UserError(f"checkpoint {path}: {bad} holds NaN or infinite values (the run diverged by step "
                        f"{ckpt['step']}): no text to sample")
    # the weights checked as --init-from checks them (floating point, the head tied to the
    # embedding; not again for NaN), then loaded: a damaged checkpoint is one line, not text from garbage
    load_init_weights(model, path, "checkpoint", found, finite_checked=True)
    return model.to(rt.device).eval(), f"step {ckpt['step']}"
