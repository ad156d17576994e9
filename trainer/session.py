"""Setting up a run: everything the training loop or --bench needs, checked before step 1.

prepare() resolves the dataset, --out, the checkpoint to resume, the runtime, the model, the
optimizer and the loaders, in the order that refuses a user's mistake before anything is
written, and returns them as a Session. Under torchrun the ranks agree to start (or all stop)
before the first collective. Its phases are this module's functions; the model's shape, build
and wrapping are trainer.build's, the resumed checkpoint's checks and state trainer.restore's,
the notes on options that change nothing trainer.notes', and the loaders trainer.loaders'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from torch import nn

from loader import TokenLoader
from loader.checkpoints import list_checkpoints
from loader.windowlog import log_path
from model import GPT, GPTConfig
from prep.errors import UserError
from trainer.build import build_model, model_shape, step_parts
from trainer.checkpoint import checkpoint_digest
from trainer.config import CUDAGRAPH_MODES, TOKENS_MAX, TrainConfig
from trainer.data import dataset_settings, find_dataset, resumed_data, unread_shards
from trainer.evaluation import gpt2_encoding
from trainer.facts import start_facts
from trainer.launch import launched_world, rank_prefix
from trainer.loaders import open_loader, open_val_loader, read_val_batches
from trainer.notes import option_notes, runtime_notes
from trainer.outdir import (check_out_contents, check_out_dir, check_own_log, earlier_run_remedy, hold_out_dir,
                            nonempty_file)
from trainer.ranks import DIST_ERRORS, agree_to_start
from trainer.restore import restore_state, resume_checkpoint
from trainer.resume import resolve_resume, set_aside_logs
from trainer.runtime import Runtime, join_store, make_runtime, start_runtime
from trainer.step import StepParts


@dataclass
class Session:
    """A run ready to go: validated, data open, model built (and restored when resuming)."""

    cfg: TrainConfig
    rt: Runtime
    data: str
    model_config: GPTConfig
    raw: GPT  # the plain module: saved, sampled from
    # Validation runs through the compiled module (never the DDP wrapper): eager autocast would
    # materialise fp32 (B, T, V) log-probs, 13 GB at B=64, T=1024, that compile fuses away.
    eval_model: nn.Module
    parts: StepParts
    train_loader: TokenLoader
    run: dict  # what a checkpoint must match to be resumed here
    generator: torch.Generator  # sampling only: never disturbs the training RNG
    val_loader: TokenLoader | None = None
    val_batches: int = 0
    start_step: int = 0
    resumed_from: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    data_settings: dict | None = None  # the dataset's prep tokenize settings, as the run started (checkpoints)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.B * self.cfg.T * self.rt.world * self.parts.accum_steps


def prepare(cfg: TrainConfig, stack: contextlib.ExitStack) -> Session:
    """Check everything that can be checked, then build the run. Until the model is built
    nothing is written, so a user mistake leaves no trace on disk."""
    world = launched_world()
    # Under torchrun a rank can fail a check the others pass (a file missing on one node, a
    # shape flag given to one node only, no usable device there): the failure waits for
    # agree_to_start, so that no rank is left waiting for it. Until then nothing is written, so
    # a user mistake leaves no trace on disk.
    failure: Exception | None = None
    rt, ckpt, start_step, model_config, resume_digest = None, None, 0, None, 0
    try:
        rt = make_runtime(cfg)
        model_config = model_shape(cfg)
        data = _find_data(cfg)
        total, accum = _batch(cfg, rt)
        notes: list[str] = []
        resume_path, set_aside = _claim_out(cfg, rt, stack, notes, data)
        train_loader = open_loader(data, "train", cfg, rt, cfg.shuffle, model_config.vocab_size)
        stack.callback(train_loader.close)
        notes += unread_shards(data)
        run = {
            "data_tokens": train_loader.num_tokens, "B": cfg.B, "T": cfg.T, "world": rt.world,
            "total_batch_size": total, "shuffle": cfg.shuffle, "seed": cfg.seed,
        }
        if resume_path is not None:
            ckpt = resume_checkpoint(cfg, resume_path, run, model_config, train_loader, accum, data, rt,
                                     notes)
        notes += runtime_notes(cfg, rt, ckpt)
        val_loader = (open_val_loader(cfg, data, rt, notes, model_config.vocab_size, train_loader.shards)
                      if cfg.eval_every and not cfg.bench else None)
        notes += option_notes(cfg, ckpt, resume_path)
        val_batches = read_val_batches(cfg, val_loader, ckpt, stack, notes)
        if cfg.sample_every and not cfg.bench and rt.master:  # only rank 0 samples
            gpt2_encoding(f"--sample-every {cfg.sample_every}: ")  # samples are decoded with it

        # The model, and the checkpoint's state in it: a damaged one is still a check that fails.
        raw, optimizer, scaler, generator = build_model(cfg, rt, model_config, ckpt is not None, notes)
        if ckpt is not None:
            restore_state(cfg, ckpt, resume_path, rt, raw, optimizer, scaler, generator, notes)
            start_step, resume_digest = ckpt["step"], checkpoint_digest(resume_path) if world > 1 else 0
            del ckpt
    except Exception as e:  # under torchrun every rank hears of it first (a bug stays a traceback)
        if world == 1:
            raise
        failure = e

    _start(cfg, world, failure, rt, model_config, start_step,
           (train_loader, val_loader) if failure is None else (None, None), resume_digest)
    if rt.ddp:
        stack.callback(rt.close)
    if set_aside:  # --resume auto over a run that wrote no checkpoint: its logs are kept
        set_aside_logs(Path(cfg.out), rt)
    eval_model, parts = step_parts(cfg, rt, raw, optimizer, scaler, accum, start_step, stack)
    return Session(
        cfg, rt, data, model_config, raw, eval_model, parts, train_loader, run, generator,
        val_loader, val_batches,
        start_step, resume_path, notes, dataset_settings(data),
    )


def _find_data(cfg: TrainConfig) -> str:
    """--data's dataset (find_dataset); where none is found in a resume without --data, the
    error says the --data the checkpoint's run recorded."""
    try:
        return find_dataset(cfg.data)
    except UserError as e:
        hint = resumed_data(cfg)
        if not hint:
            raise
        raise UserError(f"{e}; {hint}") from None


def _batch(cfg: TrainConfig, rt: Runtime) -> tuple[int, int]:
    """The tokens per optimizer step (--total-batch-size, else one micro-step over all ranks)
    and the micro-steps of gradient accumulation that make it, refused where they cannot be;
    --cuda-graph's needs are checked here too."""
    micro_tokens = cfg.B * cfg.T * rt.world
    total = micro_tokens if cfg.total_batch_size is None else cfg.total_batch_size
    if total % micro_tokens:
        raise UserError(
            f"--total-batch-size {total} must be a multiple of B*T*W = {cfg.B}*{cfg.T}*{rt.world} = "
            f"{micro_tokens} (tokens per micro-step over all ranks)"
        )
    if cfg.steps * total > TOKENS_MAX:  # the step's accumulation count overflowed torch's int64
        raise UserError(f"--steps {cfg.steps} x --total-batch-size {total} is {cfg.steps * total:.3g} tokens, "
                        f"more than a run counts (2^63 - 1): lower one of them")
    accum = total // micro_tokens
    check_cuda_graph(cfg, rt)
    if accum > 1 and rt.compile and rt.device.type == "cuda" and cfg.compile_mode in CUDAGRAPH_MODES:
        # CUDA graph trees hand the backward graph's output buffers to .grad; the next
        # micro-step's replay overwrites them, so accumulated gradients come out wrong or the
        # step raises "accessing tensor output of CUDAGraphs that has been overwritten"
        # (pytorch/pytorch#169545, #96693). Refuse rather than train on wrong gradients.
        raise UserError(
            f"--compile-mode {cfg.compile_mode} uses CUDA graphs, which break gradient accumulation "
            f"({accum} micro-steps for --total-batch-size {total}): use --compile-mode default or "
            f"max-autotune-no-cudagraphs, or --total-batch-size {micro_tokens}"
        )
    return total, accum


def check_cuda_graph(cfg: TrainConfig, rt: Runtime) -> None:
    """--cuda-graph's needs (StepGraph): a CUDA device, one process, no CUDA graphs of the
    compiler's own inside its capture."""
    if not cfg.cuda_graph:
        return
    if rt.device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device; this run's is {rt.device.type} "
                        f"(--device {cfg.device}): drop --cuda-graph")
    if rt.dtype == "fp16":
        picked = " (--dtype auto is fp16 on this GPU)" if cfg.dtype == "auto" else ""
        raise UserError(f"--cuda-graph does not capture fp16's loss scaling{picked}: drop --cuda-graph, or pass "
                        f"--dtype bf16 or fp32")
    if rt.world > 1:
        raise UserError(f"--cuda-graph runs in one process (DDP's all-reduce is not captured), and "
                        f"torchrun started {rt.world}: drop --cuda-graph")
    if rt.compile and cfg.compile_mode in CUDAGRAPH_MODES:
        raise UserError(f"--cuda-graph captures the whole step in a CUDA graph itself, and --compile-mode "
                        f"{cfg.compile_mode} replays CUDA graphs of its own inside it: use --compile-mode "
                        f"default or max-autotune-no-cudagraphs")


def _claim_out(cfg: TrainConfig, rt: Runtime, stack: contextlib.ExitStack,
               notes: list[str], data: str) -> tuple[Path | None, bool]:
    """--out checked, and held by rank 0 for the run (`stack`), with the checkpoint to resume
    (None: a fresh run) and whether --resume auto set an earlier run's logs aside; --bench
    writes nothing, and resumes nothing: (None, False)."""
    if cfg.bench:
        return None, False
    out = Path(cfg.out)
    check_out_dir(out)
    if rt.master:  # the one rank that writes there
        stack.enter_context(hold_out_dir(out, notes))
    resume_path, set_aside = resolve_resume(cfg, notes)
    if rt.master:
        check_out_contents(out, resume_path, cfg.init_from, logs_set_aside=set_aside,
                           log_windows=cfg.log_windows, data=data)
    elif cfg.log_windows:
        check_own_log(out, log_path(out, rt.rank))
    if not rt.master and resume_path is None and not set_aside:
        # a node whose --out is its own: rank 0's check never sees this rank's log, which
        # a fresh run would empty, or leave beside it (without --log-windows) as its own
        own = log_path(out, rt.rank)
        if nonempty_file(own):
            remedy = earlier_run_remedy(out, [own.name], bool(list_checkpoints(out)), cfg.init_from)
            raise UserError(f"--out {out} holds an earlier run's {own.name}: {remedy}, or choose another --out")
    return resume_path, set_aside


def _start(cfg: TrainConfig, world: int, failure: Exception | None, rt: Runtime | None,
           model_config: GPTConfig | None, start_step: int,
           loaders: tuple[TokenLoader | None, TokenLoader | None], resume_digest: int) -> None:
    """Under torchrun, the ranks agree to start, or all stop on one's `failure` (this rank's
    own is raised where it has one); then the runtime starts (start_runtime). `loaders`: the
    train and val loaders, (None, None) after a failure."""
    store, launch = None, ""
    if world > 1:
        try:
            store = join_store(world)
        except UserError:  # no torchrun's store: this rank's own failure says more, where it had one
            if failure is not None:  # (RANK=5 with WORLD_SIZE=2, by hand; a bug's own traceback)
                raise failure
            raise
    try:
        if store is not None:
            launch = agree_to_start(store, int(os.environ["RANK"]), world, failure, start_facts(
                cfg, world, rt.device.type if rt else "", rt.dtype if rt else "", model_config, start_step,
                *loaders, resume_digest))
        # Every check passed (on every rank): from here on, work starts. Nothing was written yet.
        start_runtime(rt, store, launch)
    except DIST_ERRORS as e:  # the store went with torchrun (SIGKILLed) as the ranks met
        if failure is not None:
            raise failure from None
        raise click.ClickException(f"{rank_prefix()}torchrun's store closed the connection as the ranks met to "
                                   f"start ({type(e).__name__}: torchrun gone?); nothing trained, no checkpoint "
                                   f"written") from None
