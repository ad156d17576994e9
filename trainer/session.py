"""Setting up a run: everything the training loop or --bench needs, checked before step 1.

prepare() resolves the dataset, --out, the checkpoint to resume, the runtime, the model, the
optimizer and the loaders, in the order that refuses a user's mistake before anything is
written, and returns them as a Session. Under torchrun the ranks agree to start (or all stop)
before the first collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from loader import DatasetMismatch, TokenLoader, TokenRangeError
from loader.audit import CKPT_PATTERN, list_checkpoints, log_path
from model import GPT, GPTConfig
from prep.atomic import file_identity
from prep.epoch import steps_per_epoch
from prep.errors import UserError
from prep.measure import physical_memory
from trainer.checkpoint import checkpoint_digest, ckpt_path, load_checkpoint, set_rng_state
from trainer.config import BENCH_IGNORES, BETAS, CUDAGRAPH_MODES, TOKENS_MAX, TrainConfig, flag_name, flags_for, lr_at
from trainer.data import (check_shards_are_gpt2s, find_dataset, resumed_data, unread_shards, val_data_split,
                          val_split_tokens)
from trainer.evaluation import gpt2_encoding
from trainer.facts import start_facts
from trainer.launch import launched_world, rank_prefix
from trainer.outdir import (check_out_contents, check_out_dir, check_own_log, earlier_run_remedy, hold_out_dir,
                            nonempty_file)
from trainer.ranks import DIST_ERRORS, agree_to_start
from trainer.resume import (OPTIMIZER_KERNEL, check_adamw_step, check_compatible, check_loss_scale,
                            check_optimizer_state, precision, resolve_resume, same_data, schedule_changes,
                            set_aside_logs, val_data_change)
from trainer.runtime import Runtime, emulated_bf16_note, join_store, make_runtime, start_runtime
from trainer.step import StepGraph, StepParts
from trainer.weights import load_init_weights


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

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.B * self.cfg.T * self.rt.world * self.parts.accum_steps


def _open_loader(data: str, split: str, cfg: TrainConfig, rt: Runtime, shuffle: bool,
                 vocab_size: int) -> TokenLoader:
    try:
        # Pinned only when batches go to CUDA: pinning opens a CUDA context, which a
        # --device cpu run on a GPU machine has no use for. vocab_size: every window is
        # checked as it is read, so a damaged shard is an error naming it, not an index error
        # (a device-side assert on CUDA) in the embedding.
        # CUDA: a ring of 9. A buffer is refilled only once its copy has run on the GPU, so the
        # ring bounds how far the host can run ahead; the default's 3 is ~7 ms at 4x32, and a
        # host pause longer than that would idle the GPU under the loader but not a fixed batch.
        cuda = rt.device.type == "cuda"
        loader = TokenLoader(data, split=split, B=cfg.B, T=cfg.T, rank=rt.rank, world=rt.world,
                             shuffle=shuffle, seed=cfg.seed, pin_memory=cuda, prefetch=8 if cuda else 2,
                             vocab_size=vocab_size)
    except ValueError as e:  # LoaderError, ShardError: the message names the file or the numbers
        raise UserError(str(e)) from None
    try:
        check_shards_are_gpt2s(loader.shards)
    except UserError:
        loader.close()
        raise
    return loader


def _the_one_before(cfg: TrainConfig, path: Path) -> str:
    """For the error refusing --resume auto's newest checkpoint as damaged: the checkpoint a
    resume continues from once that one is moved away ("" where none, or not --resume auto)."""
    older = [p for _, p in list_checkpoints(Path(cfg.out)) if p.name != path.name]
    if cfg.resume != "auto" or not older:
        return ""
    return f"; move it away, and --resume auto continues from {older[-1]}, the newest before it"


def _resume_checkpoint(cfg: TrainConfig, path: Path, run: dict, model_config: GPTConfig,
                       train_loader: TokenLoader, accum: int, data: str) -> dict:
    """Load and check the checkpoint to resume, and put the train loader at its step (`accum`
    micro-steps, loader steps, per optimizer step); `data`: the train split's --data."""
    try:
        ckpt = load_checkpoint(path)
    except UserError as e:  # damaged: --resume auto names the one to continue from instead
        e.message += _the_one_before(cfg, path)
        raise
    check_compatible(ckpt, path, run, model_config, cfg.model_overrides(), cfg.total_batch_size is not None, data)
    named = CKPT_PATTERN.fullmatch(path.name)
    if named and int(named[1]) != ckpt["step"]:  # else "newer than step 2": the file itself, to be moved away
        raise UserError(f"--resume {path}: its name says step {int(named[1])}, but it holds step {ckpt['step']} "
                        f"(renamed?): name it {ckpt_path(path.parent, ckpt['step']).name}, as --resume auto "
                        f"and --keep-ckpts order checkpoints by their names")
    newer = [p.name for step, p in list_checkpoints(Path(cfg.out)) if step > ckpt["step"]]
    if newer:  # they would outlive this run's own checkpoints and win a later --resume auto
        raise UserError(
            f"--out {cfg.out} holds {', '.join(newer)}, newer than step {ckpt['step']} of "
            f"--resume {path}: move them away or choose another --out"
        )
    try:
        train_loader.load_state_dict(ckpt["loader"])
    except DatasetMismatch as e:  # the same token count (check_compatible), other shards or sha256s
        then = ckpt["train_config"].get("data")
        if same_data(then, data):  # changed in place
            fix = f"{data} changed since that run's checkpoint: tokenize that run's text into it again"
        else:
            fix = "pass the --data that run trained on" + (f" ({then})" if isinstance(then, str) else "")
        raise UserError(f"--resume {path}: {e}: {fix}, or start a new run (another --out) from its weights with "
                        f"--init-from {path}") from None
    except ValueError as e:
        raise UserError(f"--resume {path}: {e}") from None
    # the loader's position and order are the run's (check_compatible compared ckpt["run"]):
    # a damaged state that differs trained on other windows than the run's without a word
    state = ckpt["loader"]
    there, due = (state["step"], state["shuffle"], state["seed"]), (ckpt["step"] * accum, run["shuffle"], run["seed"])
    if there[0] != due[0] or there[1] is not due[1] or there[2] != due[2]:
        raise UserError(f"--resume {path}: damaged train.py checkpoint (its loader state has step, shuffle, seed "
                        f"{there[0]!r}, {there[1]!r}, {there[2]!r}; its step {ckpt['step']} and run say "
                        f"{due[0]!r}, {due[1]!r}, {due[2]!r})" + _the_one_before(cfg, path))
    return ckpt


def _open_val_loader(cfg: TrainConfig, data: str, rt: Runtime, notes: list[str], vocab_size: int,
                     train_shards: list[Path]) -> TokenLoader | None:
    """The val split's loader (of --val-data when given), or None with a note saying why
    validation is skipped."""
    source = cfg.val_data or data
    split = "val" if cfg.val_data is None else val_data_split(cfg.val_data)
    val_tokens = val_split_tokens(source, given=cfg.val_data is not None, split=split)
    if split == "train" and val_tokens is not None:
        notes.append(f"--val-data {cfg.val_data} has no val split: its train split ({val_tokens:,} tokens) is the "
                     f"validation data")
    if val_tokens is None:
        notes.append(f"no val split in {data}: validation skipped (--val-data names one)")
        return None
    if steps_per_epoch(val_tokens, cfg.B, cfg.T, rt.world) == 0:
        short = f"{val_tokens:,} tokens, less than one batch of {cfg.B * cfg.T * rt.world:,} + 1"
        if cfg.val_data is not None:  # asked for by name: no run that skips it quietly
            raise UserError(f"--val-data {cfg.val_data}: {short} (B*T*world + 1): name more validation "
                            f"tokens, or a smaller --B or --T")
        notes.append(f"val split has {short}: validation skipped")
        return None
    loader = _open_loader(source, split, cfg, rt, False, vocab_size)
    train_files = {file_identity(p) for p in train_shards}  # (a hard link too: one file, two names)
    both = [p for p in loader.shards if file_identity(p) in train_files]
    if both:  # a val loss on the training data would say nothing
        loader.close()
        named = f"--val-data {cfg.val_data}" if cfg.val_data else f"{data}'s val split"
        raise UserError(f"{named}: {both[0]} is a train shard of this run too (the same file)")
    return loader


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


def no_effect(flags: list[str], why: str, joined: str = " and ") -> str:
    """The start-up note for options given that change nothing in this run (`why` says why,
    starting with its own ':' or ' with ...')."""
    return f"{joined.join(flags)} {'has' if len(flags) == 1 else 'have'} no effect{why}"


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
        try:
            data = find_dataset(cfg.data)
        except UserError as e:
            hint = resumed_data(cfg)
            if not hint:
                raise
            raise UserError(f"{e}; {hint}") from None
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
        resume_path, set_aside = None, False
        notes: list[str] = []
        if not cfg.bench:
            out = Path(cfg.out)
            check_out_dir(out)
            if rt.master:  # the one rank that writes there
                stack.enter_context(hold_out_dir(out, notes))
            resume_path, set_aside = resolve_resume(cfg, notes)
            if rt.master:
                check_out_contents(out, resume_path, cfg.init_from, logs_set_aside=set_aside,
                                   log_windows=cfg.log_windows)
            elif cfg.log_windows:
                check_own_log(out, log_path(out, rt.rank))
            if not rt.master and resume_path is None and not set_aside:
                # a node whose --out is its own: rank 0's check never sees this rank's log, which
                # a fresh run would empty, or leave beside it (without --log-windows) as its own
                own = log_path(out, rt.rank)
                if nonempty_file(own):
                    remedy = earlier_run_remedy(out, [own.name], bool(list_checkpoints(out)), cfg.init_from)
                    raise UserError(f"--out {out} holds an earlier run's {own.name}: {remedy}, or choose another --out")
        train_loader = _open_loader(data, "train", cfg, rt, cfg.shuffle, model_config.vocab_size)
        stack.callback(train_loader.close)
        notes += unread_shards(data)
        run = {
            "data_tokens": train_loader.num_tokens, "B": cfg.B, "T": cfg.T, "world": rt.world,
            "total_batch_size": total, "shuffle": cfg.shuffle, "seed": cfg.seed,
        }
        if resume_path is not None:
            unlisted = {name for name, _, sha in train_loader.identity if sha is None}
            ckpt = _resume_checkpoint(cfg, resume_path, run, model_config, train_loader, accum, data)
            notes += schedule_changes(ckpt, cfg, resume_path)
            hashed = [name for name, _, sha in train_loader.identity if name in unlisted and sha is not None]
            if hashed:  # (TokenLoader.load_state_dict read them whole)
                notes.append(f"--data {data}: no meta.json lists its shards, as one listed those of --resume's run: "
                             f"{len(hashed):,} shard(s) were read whole to check their sha256 against the checkpoint's")
            then, now = ckpt.get("precision"), precision(rt)
            if isinstance(then, dict) and then != now:  # (checkpoints before it: no word)
                notes.append(f"resumed on {now['device']} in {now['dtype']}, where the checkpoint's run computed on "
                             f"{then.get('device')!s} in {then.get('dtype')!s}: the steps from here on are not "
                             f"bit-identical to an uninterrupted run's")
            compiled = ckpt["train_config"].get("compile")
            if compiled is None:  # that run's default: on for CUDA where torch.compile could (make_runtime)
                compiled = ckpt.get("compiled")
            if compiled is None and isinstance(then, dict):  # (checkpoints before "compiled")
                compiled = then.get("device") == "cuda"
            if isinstance(compiled, bool) and compiled != rt.compile and not (isinstance(then, dict) and then != now):
                notes.append(f"resumed with compile {'on' if rt.compile else 'off'}, where the checkpoint's run had it "
                             f"{'on' if compiled else 'off'}: the steps from here on are not bit-identical to an "
                             f"uninterrupted run's (compiled kernels round otherwise, and draw other dropout masks)")
            if (cfg.log_windows and 0 < ckpt["step"] < cfg.steps  # (at --steps: nothing to log, a note below)
                    and not nonempty_file(log_path(Path(cfg.out), 0))):
                elsewhere = os.path.realpath(resume_path.parent) != os.path.realpath(cfg.out)
                before = (f"--out {cfg.out} has no window log of the steps before (--resume's run kept its own in "
                          f"{resume_path.parent}, if any)" if elsewhere else "the run before it kept no window log")
                notes.append(f"--log-windows starts at step {ckpt['step'] + 1}: {before}, so `python -m loader.audit` "
                             f"will find its batches missing")
            if (not cfg.log_windows and ckpt["step"] < cfg.steps  # (--bench resumes nothing)
                    and nonempty_file(log_path(Path(cfg.out), 0))):
                notes.append(f"no --log-windows: the run before kept window logs in {cfg.out}, and steps "
                             f"{ckpt['step'] + 1}-{cfg.steps} will not be in them, so `python -m loader.audit` will "
                             f"find their batches missing; pass --log-windows to go on logging")
            if cfg.init_from is not None and cfg.init_from != ckpt["train_config"].get("init_from"):
                notes.append(f"--init-from {cfg.init_from} has no effect on a resumed run: its weights are "
                             f"those of --resume {resume_path}")
        if cfg.dtype == "bf16" and (emulated := emulated_bf16_note(rt.device)):
            notes.append(emulated)
        refusal = rt.compile_refusal  # (make_runtime's: compile is off where it is not None)
        if cfg.compile is None and refusal and rt.device.type == "cuda":  # (on CUDA compile is on by default)
            notes.append(f"compile is off: {refusal}")
        if cfg.compile_mode != "default" and not rt.compile:
            notes.append(f"--compile-mode {cfg.compile_mode} has no effect: compile is off"
                         + ("" if refusal else " (--compile turns it on)"))
        if cfg.warmup_steps >= cfg.steps and not cfg.bench and not (ckpt is not None and ckpt["step"] == cfg.steps):
            notes.append(f"--warmup-steps {cfg.warmup_steps} >= --steps {cfg.steps}: the learning rate only "
                         f"warms up (to {lr_at(cfg.steps - 1, cfg):g}), it never decays")
        val_loader = (_open_val_loader(cfg, data, rt, notes, model_config.vocab_size, train_loader.shards)
                      if cfg.eval_every and not cfg.bench else None)
        if cfg.val_data is not None and not (cfg.eval_every and not cfg.bench):
            val_split_tokens(cfg.val_data, given=True, split=val_data_split(cfg.val_data))  # a typo is still one
            notes.append(f"--val-data has no effect: {'--bench' if cfg.bench else '--eval-every 0'} runs no validation")
        ignored = [f"--{flag_name(f.name)}" for f in dataclasses.fields(cfg)
                   if cfg.bench and f.name in BENCH_IGNORES and getattr(cfg, f.name) != f.default]
        if ignored:  # (--steps for --bench-steps, say)
            notes.append(no_effect(ignored, " with --bench: it times --bench-steps steps at --lr, and evaluates, "
                                             "samples and writes nothing", ", "))
        unused = [f"--{flag_name(name)}" for name in ("bench_warmup", "bench_steps")
                  if not cfg.bench and getattr(cfg, name) != getattr(TrainConfig, name)]
        if unused:  # (--bench-steps for --steps, say): this trains, and checkpoints into --out
            notes.append(no_effect(unused, " without --bench: this run trains"))
        # an option that tunes what another option turned off (--bench: BENCH_IGNORES' note above)
        for names, off, why in (
                (("eval_steps",), not cfg.eval_every, "--eval-every 0 runs no validation"),
                (("sample_tokens",), not cfg.sample_every, "--sample-every 0 prints no samples"),
                (("keep_ckpts", "async_ckpt"), not (cfg.ckpt_every or cfg.ckpt_minutes),
                 "--ckpt-every 0 without --ckpt-minutes writes no checkpoint")):
            given = [f"--{'no-' if getattr(cfg, name) is False else ''}{flag_name(name)}" for name in names
                     if getattr(cfg, name) != getattr(TrainConfig, name)]
            if given and off and not cfg.bench:
                notes.append(no_effect(given, f": {why}"))
        moot = [] if ckpt is None or ckpt["step"] < cfg.steps else (  # a resume at --steps: no step
            [f"--sample-every {cfg.sample_every}"] * bool(cfg.sample_every)
            + ["--log-windows"] * cfg.log_windows)
        if moot:
            sampled = (f" (`python sample.py {resume_path}` samples the checkpoint)" if cfg.sample_every
                       else "")
            notes.append(no_effect(moot, f": step {cfg.steps} is --steps, nothing is trained{sampled}"))
        val_batches = min(cfg.eval_steps, val_loader.steps_per_epoch) if val_loader else 0
        if ckpt is not None and val_loader is not None:
            notes += val_data_change(ckpt, cfg, val_loader.steps_per_epoch)
        if val_loader is not None:
            stack.callback(val_loader.close)
            # every evaluation reads the same first windows: read them once now, so a damaged
            # val shard stops the run here (on every rank) and not at the first evaluation
            try:
                for _ in range(val_batches):
                    val_loader.next_window()
            except TokenRangeError as e:
                raise UserError(str(e)) from None
            val_loader.reset()
        if cfg.sample_every and not cfg.bench and rt.master:  # only rank 0 samples
            gpt2_encoding(f"--sample-every {cfg.sample_every}: ")  # samples are decoded with it

        # The model, and the checkpoint's state in it: a damaged one is still a check that fails.
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        raw = GPT(model_config).to(rt.device)
        # Resuming: the checkpoint's weights win. Under torchrun rank 0 alone reads the file: DDP
        # broadcasts rank 0's weights to every rank when it wraps the model, so the file is read
        # once (gpt2-xl's is 6 GB) and need only be on rank 0's machine.
        if cfg.init_from is not None and ckpt is None and rt.rank == 0:
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
        if ckpt is not None:
            try:
                raw.load_state_dict(ckpt["model"])
                # The saved groups name the AdamW kernel of the device that saved them (fused on
                # CUDA only); this run keeps its own: a CPU checkpoint resumed on CUDA took the
                # foreach kernel, which refuses the grad_scale that clipping hands fused AdamW
                # (an AssertionError at the first step). Set before loading, so that the step
                # counts go where this run's kernel wants them (fused: on the device).
                saved = ckpt["optimizer"]
                for state in saved.get("state", {}).values():  # (what load_state_dict reads first)
                    if isinstance(state, dict) and "step" in state:
                        check_adamw_step(state["step"])
                kernel = {k: v for k, v in optimizer.defaults.items() if k in OPTIMIZER_KERNEL}
                optimizer.load_state_dict({**saved, "param_groups": [{**g, **kernel} for g in saved["param_groups"]]})
                check_optimizer_state(optimizer, stepped=ckpt["step"] > 0 and ckpt.get("loss_scale") is None)
                # load_state_dict restores the groups' settings too: this run's --weight-decay
                # holds (lr is set at every step), as the resume note says. Group 0 is the
                # decayed one (GPT.configure_optimizers); group 1 stays at 0.
                optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
                if scaler is not None and ckpt.get("loss_scale") is not None:  # an fp16 run's (else: a fresh one)
                    scaler.load_state_dict(check_loss_scale(ckpt["loss_scale"]))
                # this rank's RNG states (a DDP checkpoint holds every rank's): last, as building
                # the model drew from the RNG
                moved = set_rng_state(ckpt["rng_ranks"][rt.rank] if "rng_ranks" in ckpt else ckpt["rng"], rt, generator)
                if moved and rt.master:
                    notes.append(moved)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
                # AttributeError: a model key that is no string; OverflowError: an RNG word beyond uint32
                why = " ".join(f"{type(e).__name__}: {e}".split())  # one line, however long torch's is
                raise UserError(f"--resume {resume_path}: damaged train.py checkpoint ({why[:300]})"
                                + _the_one_before(cfg, resume_path)) from None
            start_step, resume_digest = ckpt["step"], checkpoint_digest(resume_path) if world > 1 else 0
            del ckpt
    except Exception as e:  # under torchrun every rank hears of it first (a bug stays a traceback)
        if world == 1:
            raise
        failure = e

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
                *((train_loader, val_loader) if failure is None else (None, None)), resume_digest))
        # Every check passed (on every rank): from here on, work starts. Nothing was written yet.
        start_runtime(rt, store, launch)
    except DIST_ERRORS as e:  # the store went with torchrun (SIGKILLed) as the ranks met
        if failure is not None:
            raise failure from None
        raise click.ClickException(f"{rank_prefix()}torchrun's store closed the connection as the ranks met to "
                                   f"start ({type(e).__name__}: torchrun gone?); nothing trained, no checkpoint "
                                   f"written") from None
    if rt.ddp:
        stack.callback(rt.close)
    if set_aside:  # --resume auto over a run that wrote no checkpoint: its logs are kept
        set_aside_logs(Path(cfg.out), rt)
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
    return Session(
        cfg, rt, data, model_config, raw, eval_model, parts, train_loader, run, generator,
        val_loader, val_batches,
        start_step, resume_path, notes,
    )


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
