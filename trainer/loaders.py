"""A run's loaders: its train split's (open_loader), and its validation data's, when it has
any (open_val_loader), whose first windows every evaluation reads are read once at the start
(read_val_batches) so a damaged val shard stops the run before step 1."""

from __future__ import annotations

import contextlib
from pathlib import Path

from loader import TokenLoader, TokenRangeError
from prep.atomic import file_identity
from prep.epoch import steps_per_epoch
from prep.errors import UserError
from trainer.config import TrainConfig
from trainer.data import check_shards_are_gpt2s, val_data_split, val_split_tokens
from trainer.resume import val_data_change
from trainer.runtime import Runtime


def open_loader(data: str, split: str, cfg: TrainConfig, rt: Runtime, shuffle: bool,
                 vocab_size: int) -> TokenLoader:
    """`split` of `data` as this rank reads it; a UserError naming what is wrong with it."""
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


def open_val_loader(cfg: TrainConfig, data: str, rt: Runtime, notes: list[str], vocab_size: int,
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
    loader = open_loader(source, split, cfg, rt, False, vocab_size)
    train_files = {file_identity(p) for p in train_shards}  # (a hard link too: one file, two names)
    both = [p for p in loader.shards if file_identity(p) in train_files]
    if both:  # a val loss on the training data would say nothing
        loader.close()
        named = f"--val-data {cfg.val_data}" if cfg.val_data else f"{data}'s val split"
        raise UserError(f"{named}: {both[0]} is a train shard of this run too (the same file)")
    return loader


def read_val_batches(cfg: TrainConfig, val_loader: TokenLoader | None, ckpt: dict | None,
                 stack: contextlib.ExitStack, notes: list[str]) -> int:
    """The windows each evaluation reads (0 without validation), read once now; a note where a
    resume validates on other data than its checkpoint's run."""
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
    return val_batches
