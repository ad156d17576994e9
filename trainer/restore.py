"""--resume's checkpoint brought into this run: read and checked against it, the train loader put
at its step, the notes on what the resumed run does otherwise than the uninterrupted one, and its
model, optimizer, loss scale and RNG states put back (prepare() calls each in its place).

A checkpoint that cannot be resumed is a one-line error naming it, and, under --resume auto,
the checkpoint a resume continues from once it is moved away.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from loader import DatasetMismatch, TokenLoader
from loader.checkpoints import CKPT_PATTERN, list_checkpoints
from loader.windowlog import log_path
from model import GPT, GPTConfig
from prep.errors import UserError
from trainer.checkpoint import ckpt_path, load_checkpoint, set_rng_state
from trainer.config import TrainConfig
from trainer.data import retokenize_hint
from trainer.outdir import nonempty_file
from trainer.resume import (OPTIMIZER_KERNEL, check_adamw_step, check_compatible, check_loss_scale,
                            check_optimizer_state, precision, same_data, schedule_changes)
from trainer.runtime import Runtime


def _the_one_before(cfg: TrainConfig, path: Path) -> str:
    """For the error refusing --resume auto's newest checkpoint as damaged: the checkpoint a
    resume continues from once that one is moved away ("" where none, or not --resume auto)."""
    older = [p for _, p in list_checkpoints(Path(cfg.out)) if p.name != path.name]
    if cfg.resume != "auto" or not older:
        return ""
    return f"; move it away, and --resume auto continues from {older[-1]}, the newest before it"


def _checked_checkpoint(cfg: TrainConfig, path: Path, run: dict, model_config: GPTConfig,
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
            fix = f"{data} changed since that run's checkpoint: {retokenize_hint(ckpt.get('data_settings'), data)}"
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


def resume_checkpoint(cfg: TrainConfig, path: Path, run: dict, model_config: GPTConfig,
                      train_loader: TokenLoader, accum: int, data: str, rt: Runtime, notes: list[str]) -> dict:
    """The checkpoint to resume, loaded and checked, the train loader at its step (see
    _checked_checkpoint), and the notes on what this resumed run changes added to `notes`."""
    unlisted = {name for name, _, sha in train_loader.identity if sha is None}
    ckpt = _checked_checkpoint(cfg, path, run, model_config, train_loader, accum, data)
    notes += schedule_changes(ckpt, cfg, path)
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
    order = ckpt["loader"].get("order")  # (checked by load_state_dict where shuffled)
    if train_loader.shuffle and order is not None and train_loader.order_digest(order["epoch"]) != order["digest"]:
        # at an epoch's first step (inside one, load_state_dict refused it): exact, but not the same order
        notes.append(f"the checkpoint's run drew its shuffled orders with numpy {order.get('numpy')!s}, which "
                     f"shuffles otherwise than this numpy {np.__version__}: from epoch {train_loader.epoch} on, "
                     f"each epoch reads every window once, but in another order than an uninterrupted run's, "
                     f"and the steps from here on are not bit-identical to it")
    if (cfg.log_windows and 0 < ckpt["step"] < cfg.steps  # (at --steps: nothing to log, a note below)
            and not nonempty_file(log_path(Path(cfg.out), 0))):
        elsewhere = os.path.realpath(path.parent) != os.path.realpath(cfg.out)
        before = (f"--out {cfg.out} has no window log of the steps before (--resume's run kept its own in "
                  f"{path.parent}, if any)" if elsewhere else "the run before it kept no window log")
        notes.append(f"--log-windows starts at step {ckpt['step'] + 1}: {before}, so `python -m loader.audit` "
                     f"will find its batches missing")
    if (not cfg.log_windows and ckpt["step"] < cfg.steps  # (--bench resumes nothing)
            and nonempty_file(log_path(Path(cfg.out), 0))):
        notes.append(f"no --log-windows: the run before kept window logs in {cfg.out}, and steps "
                     f"{ckpt['step'] + 1}-{cfg.steps} will not be in them, so `python -m loader.audit` will "
                     f"find their batches missing; pass --log-windows to go on logging")
    if cfg.init_from is not None and cfg.init_from != ckpt["train_config"].get("init_from"):
        notes.append(f"--init-from {cfg.init_from} has no effect on a resumed run: its weights are "
                     f"those of --resume {path}")
    return ckpt


def restore_state(cfg: TrainConfig, ckpt: dict, path: Path, rt: Runtime, raw: GPT,
                  optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                  generator: torch.Generator, notes: list[str]) -> None:
    """The checkpoint's state in the model just built, its optimizer, loss scaler and RNGs: a
    damaged one is still a check that fails, in one line."""
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
        raise UserError(f"--resume {path}: damaged train.py checkpoint ({why[:300]})"
                        + _the_one_before(cfg, path)) from None
