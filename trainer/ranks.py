"""Ranks under torchrun: agreeing to start together, and stopping when torchrun is gone.

A rank refused at start-up (a bad option, a dataset another node lacks) tells the others through
torchrun's store (agree_to_start), so they stop with it instead of waiting in their first
collective until the group's timeout; a rank whose torchrun was killed stops as on SIGTERM
(watch_launcher). Each rank's error names its rank (name_rank: ranks on other machines may see
other files), and --help prints once a node (help_once_a_node).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch.distributed as dist

from prep.signals import signals_deferred
from prep.errors import UserError
from trainer.launch import LAUNCHER_PID, launched_world, rank_prefix
from trainer.output import whole_line_to_stderr
from trainer.runtime import join_store


class HelpShown(Exception):
    """--help given to a rank under torchrun: it printed the help and does not start, and says
    so in agree_to_start (the other ranks waited for it in their first collective)."""


START_KEY = "train.py/start/"  # agree_to_start's keys in torchrun's store (cleared once read)


LEFT_GRACE_S = 10.0  # rank 0's wait for the others' last call in agree_to_start, once all have read


def _await(until: Callable[[], bool], timeout_s: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Whether `until()` came true before `stop()` did or `timeout_s` passed. Asked again and
    again (backing off to 0.25 s), not blocked in store.wait, in whose C++ no Python signal handler
    runs: a Ctrl-C or torchrun's SIGTERM that came while a rank waited there for a slower one went
    unheard until torchrun killed it 30 s later (and a timed-out wait logs two warnings)."""
    deadline, pause = time.monotonic() + timeout_s, 0.001
    while not until():
        if stop() or time.monotonic() >= deadline:
            return False
        time.sleep(pause)  # (signal handlers run here, at once)
        pause = min(2 * pause, 0.25)
    return True


def _all_set(store: dist.Store, keys: list[str]) -> Callable[[], bool]:
    """An `until` for _await: whether every one of `keys` is in `store` (asking about the first
    still missing: in agree_to_start a key once set stays until rank 0 clears them all)."""
    missing = list(keys)

    def until() -> bool:
        while missing and store.check(missing[:1]):
            del missing[0]
        return not missing

    return until


def agree_to_start(store: dist.Store, rank: int, world: int, failure: Exception | None,
                   facts: dict[str, int | float | str]) -> str:
    """Under torchrun: go on only if every rank passed its checks and all see the same run.
    Returns this launch's name (rank 0's, new each launch: for start_runtime).

    Ranks on different machines can see different files: a dataset or checkpoint missing or
    damaged on one node, another dataset, an --out that is not shared. A rank that stopped
    alone would leave the others waiting in their first collective; ranks resuming from
    different steps, or reading different data, would train on a mix nobody asked for.
    `facts` (the step and checkpoint this rank resumes from, its train and val split sizes, its kind of
    device, the options that say when the ranks meet in a collective, and those that make one
    run of them: batch, model, evaluation, schedule) must be equal on every rank. Every rank
    raises, each with its own reason.

    The ranks meet in torchrun's `store` (join_store), before any process group: a rank with no
    usable device (--device cuda on a node without one, a local rank beyond its node's GPUs) or
    given --help (HelpShown) has none to meet the others in, and they waited in theirs until its
    timeout (30 minutes); nor can ranks on devices of different kinds (NCCL and gloo) meet in one.
    A rank's facts are a JSON row: integers of any size, floats exactly, strings.
    """
    kind = None if failure is None else "help" if isinstance(failure, HelpShown) else "failed"
    keys = [f"{START_KEY}{r}" for r in range(world)]
    named = f"{START_KEY}launch"
    timeout = store.timeout
    if rank == 0:  # before its row: a rank that has read every row finds it there
        store.set(named, os.urandom(8).hex())
    store.set(keys[rank], json.dumps([kind, *facts.values()]))
    if not _await(_all_set(store, keys), timeout.total_seconds()):
        late = [str(r) for r, key in enumerate(keys) if not store.check([key])]
        raise UserError(f"rank {rank} of {world}: rank{'s' if len(late) > 1 else ''} {', '.join(late)} did not come "
                        f"to start within {timeout} (the store's timeout): each rank waits there for every "
                        f"other to pass its start-up checks")
    rows = [json.loads(store.get(key)) for key in keys]
    launch = store.get(named).decode()
    # No rank leaves before every rank has read the rows: torchrun ends the others once one has
    # left (a SIGTERM in place of their own line). Then rank 0 clears the keys: torchrun's store
    # outlives the ranks, and a restart (--max-restarts, on the same store) would read this
    # launch's rows as its own. Rank 0 leaves last: its process may hold the store (env://
    # without torchrun's), which must outlive every rank's last call.
    reads = [f"{START_KEY}read/{r}" for r in range(1, world)]
    lefts = [f"{START_KEY}left/{r}" for r in range(1, world)]
    if rank != 0:
        store.set(reads[rank - 1], "")
        if not _await(lambda: not store.check(reads[rank - 1:rank]), timeout.total_seconds()):  # rank 0 cleared it
            raise UserError(f"rank {rank} of {world}: rank 0 did not say within {timeout} (the store's timeout) "
                            f"that every rank had read the others' start-up checks")
        store.set(lefts[rank - 1], "")  # this rank's last call
    else:
        # torchrun's SIGTERM as the others stop: after the keys are cleared (where a signal came
        # first, the others are stopping too, and may never say they have read)
        with signals_deferred() as received:
            signalled = lambda: bool(received)  # noqa: E731
            all_read = _await(_all_set(store, reads), timeout.total_seconds(), signalled)
            if all_read:
                for key in [*keys, named, *reads]:
                    store.delete_key(key)
                if _await(_all_set(store, lefts), LEFT_GRACE_S, signalled):
                    for key in lefts:
                        store.delete_key(key)
        if not all_read:  # (where no signal came: one it delivered has raised by now)
            raise UserError(f"rank 0 of {world}: not every rank had read the others' start-up checks within "
                            f"{timeout} (the store's timeout): a rank stopped as it read them")
    if failure is not None:
        raise failure
    kinds = {row[0] for row in rows}
    if "failed" in kinds:
        raise UserError(f"rank {rank} of {world}: stopped because another rank failed its start-up "
                        f"checks (that rank's error says why)")
    if "help" in kinds:
        raise UserError(f"rank {rank} of {world}: stopped because another rank was given --help (it printed the "
                        f"help instead of starting)")
    shown = lambda value: f"{value:g}" if isinstance(value, float) else str(value)  # noqa: E731
    differ = {}
    for column, (name, mine) in enumerate(facts.items(), start=1):
        values = [row[column] for row in rows]
        if any(value != mine for value in values):
            differ[name] = f"{name}: {shown(min(values))} to {shown(max(values))}, {shown(mine)} on rank {rank}"
    # digests (dataset_digest, checkpoint_digest, order_digest): equal or not, in no order; each
    # said only where the facts it refines (the count, the step, the data and order) are the same
    order = (f"the same data, --B, --T, --shuffle and --seed, another shuffled order (numpy {np.__version__} on "
             f"rank {rank}: numpy's shuffle may differ between its versions)")
    digests = {"train shards": (("train tokens",), "the same token count, other files (names, or meta.json's "
                                                   "sha256)"),
               "val shards": (("val tokens",), "the same token count, other files (names, or meta.json's sha256)"),
               "resume checkpoint": (("resume step",), "other files of one step (other contents)"),
               "train order": (("train tokens", "train shards", "resume step", "--B", "--T", "--total-batch-size",
                                "--shuffle", "--seed"), order)}
    for name, (refined, what) in digests.items():
        if name in differ:
            differ[name] = f"{name}: {what}, {facts[name]:016x} on rank {rank}"
            if any(fact in differ for fact in refined):  # said already
                del differ[name]
    differ = list(differ.values())
    if differ:
        raise UserError(
            f"the ranks see different runs ({'; '.join(differ)}): every node needs the same dataset and "
            f"options and, to resume, the same checkpoint (put --out on a filesystem all nodes share, or "
            f"copy the checkpoint to the same path on each)"
        )
    return launch


DIST_ERRORS = dist.DistError  # torch's errors of a collective or of torchrun's store


def peer_gone(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process went away (gloo says the
    connection closed; NCCL's errors are DistBackendError), not because of this rank."""
    return isinstance(error, DIST_ERRORS) or any(
        words in str(error) for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


ORPHAN_GRACE_S = 300  # a rank whose torchrun is gone: seconds to stop cleanly before SIGKILL
# ... and one still starting up: it has nothing to checkpoint, and may be blocked in C++, where
# no Python signal handler runs, reaching torchrun's store (its connect retries until the
# store's timeout, 30 minutes)
STARTING_GRACE_S = 10


def _is_torchrun(pid: int) -> bool:
    """Whether process `pid` is torchrun: `torchrun ...`, `python .../torchrun ...` or
    `python -m torch.distributed.run ...` (Linux /proc; elsewhere: assumed so). Not `tini --
    torchrun`: that is an init whose child is torchrun."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    names = [os.path.basename(arg) for arg in argv[:2]]
    return b"torchrun" in names or argv[1:3] == [b"-m", b"torch.distributed.run"]


def _launcher_gone(parent: int) -> bool:
    """Whether the torchrun that started this rank is gone: this rank has another parent now,
    or had PID 1 from the start (watch_launcher has checked that PID 1 is not torchrun: it was
    gone before this rank got as far as recording it)."""
    return parent == 1 or os.getppid() != parent


def watch_launcher(starting: Callable[[], bool] = lambda: True) -> None:
    """Under torchrun: a rank whose torchrun is gone (SIGKILLed, OOM-killed) stops as if
    torchrun had passed it a SIGTERM (the ranks agree on a step and checkpoint it; a rank
    still starting up just ends), and is killed if it has not ended ORPHAN_GRACE_S later, or
    STARTING_GRACE_S later while `starting()`. Otherwise orphaned ranks would train on
    unsupervised, or wait for a rendezvous store that died with torchrun, holding the --out
    lock. Plain `python train.py` is left alone: its parent (a shell closed under nohup, say)
    has no say over the run."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = LAUNCHER_PID
    if parent == 1 and _is_torchrun(1):  # torchrun as a container's init: it is the container
        return

    def say(line: str) -> None:
        with contextlib.suppress(OSError):  # (stderr a pipe whose reader went with torchrun): stop all the same
            whole_line_to_stderr(f"{rank_prefix()}{line}")

    def watch() -> None:
        while not _launcher_gone(parent):
            time.sleep(1.0)
        say(f"torchrun (pid {parent}) is gone: stopping as on SIGTERM")
        os.kill(os.getpid(), signal.SIGTERM)
        gone = time.monotonic()
        while time.monotonic() - gone < ORPHAN_GRACE_S:
            time.sleep(0.5)
            if starting() and time.monotonic() - gone >= STARTING_GRACE_S:
                say(f"still starting up {STARTING_GRACE_S} s later (blocked in a call no signal ends, such as "
                    f"a connect to the other ranks): killed; nothing trained, no checkpoint written")
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="torchrun-watch", daemon=True).start()


def name_rank(e: UserError) -> None:
    """Under torchrun, `e` says which rank it is (ranks on other machines may see other files)."""
    if not e.message.startswith("rank "):
        e.message = rank_prefix() + e.message


def stop_with_the_others(refused: Exception) -> None:
    """Under torchrun, a rank whose options are refused before it has a run (or that printed
    --help: HelpShown) still meets the other ranks in agree_to_start, which raises `refused`
    here and stops them too: a node given another command line would otherwise leave the
    others waiting for it in their first collective."""
    world = launched_world()
    if world == 1:
        return
    watch_launcher()
    try:
        store = join_store(world)
    except UserError:  # no torchrun to reach them through (WORLD_SIZE set, but no RANK or MASTER_ADDR)
        return
    # (facts: only compared where none failed). A store error there (torchrun SIGKILLed as the
    # ranks met) leaves this rank's own refusal to say, as its caller does next.
    with contextlib.suppress(DIST_ERRORS):
        agree_to_start(store, int(os.environ["RANK"]), world, refused, {})


def help_once_a_node(show: Callable) -> Callable:
    """The --help option's callback, printing on a node's first rank alone (LOCAL_RANK 0):
    `torchrun --nproc_per_node=8 train.py --help` printed it eight times. The others exit as
    it does, without a word."""
    def callback(ctx: click.Context, param: click.Parameter, value: bool):
        if value and not ctx.resilient_parsing and launched_world() > 1 and os.environ.get("LOCAL_RANK", "0") != "0":
            ctx.exit()
        return show(ctx, param, value)

    callback.one_per_node = True
    return callback
