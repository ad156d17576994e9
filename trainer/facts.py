"""The start-up facts: what a run says it is before its first step, and what the ranks compare.

print_facts prints them (the data's tokens, steps per epoch, model, device, dtype, the batch
arithmetic, the schedule, validation, and prepare()'s notes), so that a run that is not the one
meant says so before it trains; start_facts is the row agree_to_start compares across ranks under
torchrun. The phrases (count_of, batches_phrase) are shared with --bench's report and the closing
summary's line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loader import TokenLoader
from loader.state import dataset_digest
from model import GPTConfig
from trainer.config import TrainConfig, flag_name, flags_for, lr_at
from trainer.output import echo

if TYPE_CHECKING:
    from trainer.session import Session


def start_facts(cfg: TrainConfig, world: int, device: str, dtype: str, model_config: GPTConfig | None,
                start_step: int, train: TokenLoader | None, val: TokenLoader | None,
                resume_digest: int = 0) -> dict[str, int | float | str]:
    """What agree_to_start compares across ranks: the same names on every rank, a rank that
    failed its checks included (`model_config` None where its flags build no model, `device`
    "" where it has none, loaders None where it opened none, or no val split, `resume_digest` 0 where
    it resumes no checkpoint, else its checkpoint_digest; the facts of a rank that failed are
    never compared)."""
    shape = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
    return {"resume step": start_step,
            # another run's checkpoint of the same step (a stale copy on one node): each rank
            # resumed its own optimizer, loader and RNG states, and the replicas drifted apart
            "resume checkpoint": resume_digest,
            "train tokens": train.num_tokens if train else 0,
            "val tokens": val.num_tokens if val else 0,
            # the same counts, other shards: another tokenization of the corpus on one node
            **{f"{split} shards": dataset_digest(loader.identity) if loader else 0
               for split, loader in (("train", train), ("val", val))},
            # the same data and --seed, another shuffled order (a node whose numpy shuffles
            # otherwise): the ranks' windows would overlap, and some would be read by none
            "train order": int(train.order_digest(train.epoch) or "0", 16) if train else 0,
            # --device auto on a node whose GPUs cannot be used trains on its CPU: gloo, where
            # the other ranks wait in NCCL
            "device": device,
            # fp16 scales the gradients the ranks average (and skips steps), bf16 does not
            "dtype": dtype,
            # when the ranks meet in a collective: options that differ hang them
            "--steps": cfg.steps, "--log-every": cfg.log_every,
            "--eval-every": cfg.eval_every, "--ckpt-every": cfg.ckpt_every,
            "--ckpt-minutes given": int(cfg.ckpt_minutes > 0),
            # a sample step is a logging point (--log-every > 1) read back
            # at once, on every rank, though only rank 0 samples
            "--sample-every": cfg.sample_every,
            # --bench runs another loop: its steps, no logging points
            "--bench": int(cfg.bench), "--bench-warmup": cfg.bench_warmup if cfg.bench else 0,
            "--bench-steps": cfg.bench_steps if cfg.bench else 0,
            # one run: the same windows' geometry (another --B reads the
            # other ranks' windows), model, evaluation and schedule
            "--B": cfg.B, "--T": cfg.T,
            "--total-batch-size": cfg.total_batch_size or cfg.B * cfg.T * world,
            **{f"--{flag_name(k)}": getattr(model_config, k) if model_config else 0 for k in shape},
            "--eval-steps": cfg.eval_steps, "--shuffle": int(cfg.shuffle), "--seed": cfg.seed,
            "--lr": cfg.lr, "--min-lr": cfg.final_lr, "--warmup-steps": cfg.warmup_steps,
            "--weight-decay": cfg.weight_decay, "--grad-clip": cfg.grad_clip,
            # rank 0 alone reads it, and DDP hands its weights to the others: given to another
            # rank only, it was ignored without a word (the run started from random weights).
            # Given or not (the path need only be on rank 0's machine); a resume reads none
            "--init-from given": int(cfg.init_from is not None and start_step == 0)}


def count_of(n: int, thing: str) -> str:
    """"1 step", "3 steps": a count and its noun, plural but for one."""
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def batches_phrase(n: int, world: int = 1) -> str:
    """ "1 batch", "6 batches": the validation batches an evaluation reads; under torchrun each
    rank reads its own n (val_loss is their mean): "2 batches per rank (4 in all)"."""
    text = f"{n} batch{'es' if n != 1 else ''}"
    return text if world == 1 else f"{text} per rank ({n * world} in all)"


def optimizer_steps_per_epoch(E: int, accum: int) -> str:
    """E loader steps per epoch as optimizer steps of `accum` micro-batches: "1,188", "4.50"."""
    return f"{E // accum:,}" if E % accum == 0 else f"{E / accum:,.2f}"


def print_facts(s: Session) -> None:
    """What this run is, before it starts: data, epoch length, model, device, batch."""
    cfg, rt, mc = s.cfg, s.rt, s.model_config
    say = echo if rt.master else (lambda *_: None)
    E = s.train_loader.steps_per_epoch
    say(f"data: {s.data}: {s.train_loader.num_tokens:,} tokens in the train split")
    accum = s.parts.accum_steps
    per_optimizer_step = (f" = {optimizer_steps_per_epoch(E, accum)} optimizer steps of {accum} micro-batches"
                          if accum > 1 else "")
    say(f"steps per epoch: {E:,} (B={cfg.B} x T={cfg.T}, world size {rt.world}){per_optimizer_step}")
    changed = " ".join(["", *flags_for(cfg.model_overrides())])
    say(f"model: {cfg.model}{changed}, {s.raw.num_params():,} parameters "
        f"({mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} dims, block size {mc.block_size})")
    name = f" ({rt.device_name()})" if rt.device_name() else ""
    compiled = f"on ({cfg.compile_mode})" if rt.compile else "off"
    graph = ", the whole step one CUDA graph" if cfg.cuda_graph else ""
    scaling = " (a dynamic loss scale: steps whose gradients overflow are skipped)" if s.parts.scaler else ""
    say(f"device: {rt.device}{name}, dtype: {rt.dtype}{scaling}, compile: {compiled}{graph}")
    say(f"batch: {s.tokens_per_step:,} tokens per step = {cfg.B} x {cfg.T} x {rt.world} rank(s) "
        f"x {accum} gradient accumulation step(s)")
    if not cfg.bench:
        epochs = cfg.steps * accum / E
        if cfg.warmup_steps >= cfg.steps:  # prepare()'s --warmup-steps note, printed last, says so too
            after = f", which --steps {cfg.steps} ends (at {lr_at(cfg.steps - 1, cfg):g}): no decay"
        elif cfg.final_lr == cfg.lr:  # --min-lr equal to --lr: the cosine has nowhere to go
            after = ", then constant (--min-lr is --lr)"
        else:
            after = f", then cosine decay to {cfg.final_lr:g}, reached after step {cfg.steps}"
        warm_up = (f"linear warm-up to {cfg.lr:g} over {count_of(cfg.warmup_steps, 'step')}" if cfg.warmup_steps
                   else f"{cfg.lr:g} from the first step")
        say(f"steps: {cfg.steps} ({epochs:.3g} epoch{'' if f'{epochs:.3g}' == '1' else 's'}); lr: {warm_up}{after}")
    if s.resumed_from is not None:
        say(f"resumed from {s.resumed_from} at step {s.start_step}")
    elif cfg.init_from is not None:  # (not with --bench: refused)
        say(f"weights: from {cfg.init_from} (fine-tuning: optimizer, schedule and data start afresh)")
    if s.val_loader is not None:
        of = f"{cfg.val_data} " if cfg.val_data else "the val split "
        when = (f"once, of the checkpoint (step {cfg.steps} is the last)" if s.start_step == cfg.steps else
                f"{'at step 0, ' if s.start_step == 0 else ''}every {cfg.eval_every} steps and at the end")
        say(f"validation: {batches_phrase(s.val_batches, rt.world)} of {of}({s.val_loader.num_tokens:,} tokens) {when}")
    for note in s.notes:
        say(f"note: {note}")
