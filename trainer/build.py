"""The model and its optimizer: the shape checked before anything is built, the model built with
the same initial weights on every rank (or --init-from's), and, once every rank agreed to start,
wrapped for the step (compiled, DDP) into StepParts.
"""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import GPT, GPTConfig
from prep.errors import UserError
from prep.measure import physical_memory
from trainer.config import BETAS, TrainConfig, flag_name, flags_for
from trainer.graph import StepGraph
from trainer.runtime import Runtime
from trainer.step import StepParts
from trainer.weights import load_init_weights


def check_model_fits(config: GPTConfig, flags: str) -> None:
    """A user error when the model's fp32 weights alone exceed the machine's memory (it is built
    there first, whatever the device): a shape with a few zeros too many (--n-layer 10000000000,
    --block-size 1000000000000) hung building layers or raised the allocator's traceback."""
    params, memory = config.num_params(), physical_memory()
    if memory is not None and 4 * params > memory:
        raise UserError(f"{flags}: {params:,} parameters, {4 * params / 2**30:,.1f} GiB of fp32 weights alone, "
                        f"more than this machine's {memory / 2**30:,.1f} GiB of memory")


def model_shape(cfg: TrainConfig) -> GPTConfig:
    """The model --model and the shape flags build, refused where it cannot be (a bad shape,
    --T beyond its block size, more weights than the machine's memory)."""
    overrides = cfg.model_overrides()
    try:
        model_config = GPTConfig.preset(cfg.model, **overrides)
    except ValueError as e:  # "GPTConfig.n_embd (768) must be divisible by n_head (5)": say the flags
        message = re.sub(r"GPTConfig\.(\w+)", lambda m: f"--{flag_name(m[1])}", str(e))
        raise UserError(f"--model {cfg.model}: {message}") from None
    if cfg.T > model_config.block_size:
        where = "--block-size" if "block_size" in overrides else f"the block size of --model {cfg.model}"
        raise UserError(f"--T {cfg.T} is larger than {where} ({model_config.block_size})")
    flags = [f"--model {cfg.model}", *flags_for(overrides)]
    check_model_fits(model_config, " ".join(flags))
    return model_config


def build_model(cfg: TrainConfig, rt: Runtime, model_config: GPTConfig, resuming: bool, notes: list[str],
                ) -> tuple[GPT, torch.optim.Optimizer, torch.amp.GradScaler | None, torch.Generator]:
    """The model (--init-from's weights in it where given, unless `resuming`: the checkpoint's
    win), its optimizer, fp16's loss scaler and the sampling generator, all fresh."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    raw = GPT(model_config).to(rt.device)
    # Resuming: the checkpoint's weights win. Under torchrun rank 0 alone reads the file: DDP
    # broadcasts rank 0's weights to every rank when it wraps the model, so the file is read
    # once (gpt2-xl's is 6 GB) and need only be on rank 0's machine.
    if cfg.init_from is not None and not resuming and rt.rank == 0:
        kind = load_init_weights(raw, Path(cfg.init_from), notes=notes)
        preset_heads = GPTConfig.preset(cfg.model).n_head
        if kind == "state dict" and model_config.n_head != preset_heads:
            notes.append(f"--init-from {cfg.init_from}: a state dict does not record n_head; these weights are "
                         f"read as {model_config.n_head} heads (--model {cfg.model} has {preset_heads}), right "
                         "only if the model they come from had as many")
    if rt.rank:  # from here on each rank draws its own dropout masks (rank 0 goes on as it was)
        torch.manual_seed(cfg.seed + rt.rank)
    optimizer = raw.configure_optimizers(cfg.weight_decay, cfg.lr, BETAS, rt.device.type)
    scaler = rt.loss_scaler()
    generator = torch.Generator(device=rt.device).manual_seed(cfg.seed)
    return raw, optimizer, scaler, generator


def step_parts(cfg: TrainConfig, rt: Runtime, raw: GPT, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None, accum: int, start_step: int,
               stack: contextlib.ExitStack) -> tuple[nn.Module, StepParts]:
    """The model the step runs (compiled, in DDP under torchrun) as StepParts, and the one
    validation runs (compiled, never the DDP wrapper)."""
    model: nn.Module = raw
    if rt.compile:
        model = torch.compile(raw, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    eval_model = model
    if rt.ddp:
        # DDP around the compiled module: its first compile runs inside DDP's forward, where
        # dynamo's DDPOptimizer cuts the graph at DDP's bucket boundaries, so each bucket's
        # all-reduce starts while the rest of backward still runs.
        ids = [rt.local_rank] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if start_step > 0:
            settle_buckets(model, rt, cfg.B, cfg.T)
    parts = StepParts(model, optimizer, rt, accum, cfg.grad_clip, scaler=scaler)
    if cfg.cuda_graph:
        parts.graph = StepGraph(cfg.B, cfg.T)
    if rt.ddp:  # at exit, DDP (its reducer holds the process group too) goes before the group
        stack.callback(setattr, parts, "model", None)
    return eval_model, parts


def settle_buckets(model: nn.parallel.DistributedDataParallel, rt: Runtime, B: int, T: int) -> None:
    """A resumed DDP run's buckets as the uninterrupted run's were at that step. DDP's first
    backward all-reduces every gradient in one bucket, and then rebuilds its buckets in the
    order that backward made them: the uninterrupted run had rebuilt them at step 2, while a
    resume's first step reduced in one bucket. The ring all-reduce sums each element over the
    ranks in an order set by where the element falls in its bucket, so with 3 ranks or more
    (a + b + c is not c + a + b in floats) the resumed run's first step, and all after it, were
    not bit-identical. So a resume first takes one backward that trains nothing (an all-zero
    batch of the run's shape, the RNG put back, the gradients dropped): the next forward
    rebuilds the buckets."""
    x = torch.zeros((B, T), dtype=torch.long, device=rt.device)
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else [], device_type=rt.device.type):
        with rt.autocast():
            _, loss = model(x, x)
        loss.backward()
    model.zero_grad(set_to_none=True)
