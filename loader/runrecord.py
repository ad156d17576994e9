"""What a run's newest checkpoint records of the run (loader.audit): the data it trained on,
its batch geometry and how far its loader had read, and the checks of the logs against it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loader.checkpoints import list_checkpoints, load_mapped, zip_damage
from loader.errors import LoaderError
from loader.logchecks import Problems
from loader.state import saved_shards
from loader.windowlog import RankLog, is_count
from prep.epoch import steps_per_epoch


@dataclass
class Trained:
    """What a run's checkpoint records of the data it trained on: the loader state (the
    train split's shard names, token counts and sha256) and train.py's --data."""

    path: Path  # the checkpoint
    state: dict  # its loader state
    data: str | None  # --data as given to train.py; None: it took the one dataset under ./data
    accum: int | None = None  # loader steps (micro-batches) per optimizer step; None: not recorded

    def named(self) -> str:
        """The run's data, as the checkpoint names it."""
        if self.data is not None:
            return f"--data {self.data}"
        shards = self.state["shards"]
        return (f"the dataset train.py found under ./data ({len(shards)} shard(s) from {shards[0][0]}, "
                f"{self.state['num_tokens']:,} tokens)" if shards else "the dataset train.py found under ./data")


class NotThisRun(str):
    """Why the logs cannot be the run whose checkpoint is in their directory (read_trained)."""


def read_trained(out: Path, logs: list[RankLog]) -> Trained | str:
    """The record of the data `out`'s run trained on, from its newest checkpoint (every
    checkpoint of a run has the same data: a resume onto other data is refused); where there
    is none, why not; where it is of another run than the logs' (NotThisRun), why."""
    found = list_checkpoints(out)
    if not found:
        return "no checkpoint (ckpt_*.pt) in the run's directory records the data it trained on"
    path = found[-1][1]
    # what torch.load reads here (the pickle: the loader state, the configs) against its
    # CRC-32s, as --resume checks the whole file: a flipped byte in the loader's step passed a
    # log cut short, or failed a whole one; the tensors (GBs for gpt2) are mapped, never read
    damage = zip_damage(path, lambda name: "/data/" not in name)
    if damage is not None:
        return f"{path}: a damaged checkpoint ({damage})"
    try:
        ckpt = load_mapped(path)
    except PermissionError as e:  # another user's file (a job run as someone else): whole, not damaged
        return f"{path}: cannot be read ({e.strerror or e}; give this user read permission on it)"
    except Exception as e:  # truncated zip, garbage pickle, ...: torch raises many kinds
        return f"{path}: not a readable checkpoint (torch.load raised {type(e).__name__})"
    state = ckpt.get("loader") if isinstance(ckpt, dict) else None
    config = ckpt.get("train_config") if isinstance(ckpt, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if not (isinstance(state, dict) and "shards" in state):
        return f"{path}: no train.py loader state in it"
    try:  # what train.py writes: one shard or more, whose token counts make num_tokens
        shards = saved_shards(state["shards"])  # a LoaderError if the shard list is malformed
        total, counted = state.get("num_tokens"), sum(n for _, n, _ in shards)
        if not shards or not is_count(total, 1) or counted != total:
            raise LoaderError(f"{len(shards)} shard(s) of {counted:,} tokens, and num_tokens {total!r}")
    except LoaderError as e:
        return f"{path}: a damaged train.py loader state ({str(e)[:200]})"
    step = state.get("step")
    if not is_count(step, 0):  # --resume refuses it, and the logs' end was checked against nothing
        return f"{path}: a damaged train.py loader state (its step {step!r}, not a count of windows)"
    if data is not None and not isinstance(data, str):
        return f"{path}: a damaged train_config (its data is a {type(data).__name__}, not the --data given)"
    run, ours = tuple(state.get(k) for k in ("B", "T", "world")), (logs[0].B, logs[0].T, logs[0].world)
    if not all(is_count(value, 1) for value in run):
        return f"{path}: a damaged train.py loader state (B, T, world {run})"
    if steps_per_epoch(state["num_tokens"], *run) == 0:
        return f"{path}: a damaged train.py loader state ({state['num_tokens']:,} tokens, not one step of {run})"
    if run != ours:  # train.py refuses a resume of another B, T or world size, and a fresh run into
        # an --out with another run's files: logs beside it are another run's (copied there?)
        return NotThisRun(f"{path} is of a run of B={run[0]} x T={run[1]}, {run[2]} rank(s), not the logs' "
                          f"B={ours[0]} x T={ours[1]}, {ours[2]} rank(s): the logs are not this run's")
    geometry = ckpt.get("run")  # train.py's record of the batch: its total_batch_size, B*T*world * accumulation
    total = geometry.get("total_batch_size") if isinstance(geometry, dict) else None
    step_tokens = math.prod(run)
    accum = total // step_tokens if is_count(total, 1) and total % step_tokens == 0 else None
    return Trained(path, state, data, accum)


def check_logged_through(logs: list[RankLog], trained: Trained, problems: Problems) -> None:
    """Every window the checkpoint's loader had read is in each rank's log: a log cut short, or
    a resume without --log-windows, trained windows no log shows, and the audit could not
    vouch for them (the logs start at batch 0, check_numbering; a log longer than the
    checkpoint is a run killed after it, whose later windows --resume trains again)."""
    step = trained.state.get("step")
    if not is_count(step, 1):
        return
    for log in logs:
        # after the log's last batch: gaps before it, or a log that does not start at 0, are
        # check_numbering's (counting the windows logged named the wrong batches there)
        last = max((w.batch for w in log.windows), default=-1)
        if last + 1 < step:
            ends = f"its log ends at batch {last:,}" if log.windows else "its log holds no window"
            problems.add("numbering", f"rank {log.rank}: {ends}, but the loader of {trained.path.name} had read "
                         f"{step:,} window(s): {_batches(last + 1, step - 1)} trained and not logged "
                         f"(a log cut short, or a resume without --log-windows)")


def check_ranks_apart(logs: list[RankLog], trained: Trained, problems: Problems) -> None:
    """The ranks' logs end at most one optimizer step apart: within one the ranks do not wait
    for each other (its micro-batches, `trained.accum`), at its end they do (the gradients'
    all-reduce). One more for a line a kill cut in two. Further apart, a log was cut short."""
    ends = {log.rank: log.windows[-1].batch for log in logs if log.windows}
    if trained.accum is None or len(ends) < 2:
        return
    ahead, behind = max(ends, key=ends.get), min(ends, key=ends.get)
    if ends[ahead] - ends[behind] > trained.accum + 1:
        problems.add("numbering", f"the ranks' logs end {ends[ahead] - ends[behind]:,} batches apart (rank {ahead}: "
                     f"batch {ends[ahead]:,}, rank {behind}: batch {ends[behind]:,}), where the ranks run at most "
                     f"one optimizer step ({trained.accum:,} batch(es)) apart: a log cut short?")


def _batches(first: int, last: int) -> str:
    """'batch 3 was' or 'batches 3-5 were'."""
    return f"batch {first:,} was" if first == last else f"batches {first:,}-{last:,} were"

