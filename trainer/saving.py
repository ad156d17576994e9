"""Writing a run's checkpoint: its contents assembled (write_checkpoint), written atomically
(save_checkpoint), or copied to host memory (host_copy) for a thread of its own to write while
the next steps train (CheckpointWriter, --async-ckpt). What a checkpoint holds, and reading it
back, is trainer/checkpoint.py's."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loader.checkpoints import list_checkpoints
from prep.atomic import atomic_write
from prep.signals import HANGUP, signals_deferred
from prep.errors import NO_ROOM, UserError
from trainer.checkpoint import CKPT_FORMAT, ckpt_path, rng_state
from trainer.output import echo, say_over_bar
from trainer.resume import precision
from trainer.runtime import is_out_of_memory

if TYPE_CHECKING:
    from trainer.session import Session


def gather_rng_states(s: Session) -> list[dict] | None:
    """Every rank's RNG states, gathered (a collective: every rank calls it at each checkpoint):
    under DDP each rank draws its own dropout masks, and a resume restores each rank's own."""
    if not s.rt.ddp:
        return None
    return s.rt.all_gather_object(rng_state(s.rt, s.generator))


def write_checkpoint(s: Session, step: int, rng_ranks: list[dict] | None, writer: CheckpointWriter | None) -> bool:
    """Checkpoint `step` (rank 0): written here, or by `writer` from a copy of the state taken
    now (the steps after it change the weights and moments in place). Returns whether `writer`
    writes it."""
    out = Path(s.cfg.out)
    path = ckpt_path(out, step)
    payload = {
        "format": CKPT_FORMAT,
        "step": step,
        "model": s.raw.state_dict(),  # the plain module: no _orig_mod. / module. prefixes
        "optimizer": s.parts.optimizer.state_dict(),
        "loader": s.train_loader.state_dict(),
        "model_config": dataclasses.asdict(s.model_config),
        "train_config": dataclasses.asdict(s.cfg),
        "run": s.run,
        "data_settings": s.data_settings,  # what re-tokenizing the dataset for a resume must give (retokenize_hint)
        "rng": rng_state(s.rt, s.generator),
        "precision": precision(s.rt),  # what a resume elsewhere notes it changes
        "compiled": s.rt.compile,  # compile as resolved: its default is off on CUDA where it cannot compile
        # fp16: the loss scale and its count of clean steps (a sync: .item() of each)
        "loss_scale": None if s.parts.scaler is None else s.parts.scaler.state_dict(),
        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
    }
    keep = s.cfg.keep_ckpts

    def write() -> None:
        save_checkpoint(path, payload)
        if keep:
            for _, old in list_checkpoints(out)[: -keep]:
                try:
                    old.unlink(missing_ok=True)
                except OSError as e:  # immutable, another user's, a read-only remount: the new one is whole
                    raise UserError(f"{old}: cannot remove it for --keep-ckpts {keep} ({e.strerror or e}); "
                                    f"{path} is written, --resume auto continues from it") from None

    if writer is not None:
        writer.wait()  # the write before this one, and its copy freed: one copy held at a time
        try:
            payload, copied = host_copy(payload)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            say_over_bar(f"note: step {step}'s checkpoint is written in the step: its copy for a background "
                         f"write did not fit in host memory ({type(e).__name__})")
        else:
            def write_copy() -> None:
                try:
                    write()
                finally:
                    free_storage(copied)

            writer.write(write_copy)
            return True
    with signals_deferred():  # a second Ctrl-C waits for the file and for --keep-ckpts' pruning too
        write()
    return False


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`:
    readers (and --resume auto) see the old file or the new one, never half of one.

    A write that fails (a full disk, an I/O error) is a one-line error naming the OSError;
    the checkpoints already there are untouched."""
    try:
        with signals_deferred():  # a second Ctrl-C waits for the file: torch would garble it
            atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:
        # torch's zip writer raises "unexpected pos N vs M" for any write that failed, while
        # handling the OSError that write raised: that one says why
        cause = e.__context__ if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError) else e
        why = " ".join(f"{type(cause).__name__}: {cause}".split())[:200]
        full = "; the disk is full" if getattr(cause, "errno", None) in NO_ROOM else ""
        kept = "the earlier checkpoints are kept" if list_checkpoints(path.parent) else "no earlier one is there"
        raise UserError(f"{path}: cannot write the checkpoint ({why}){full}; {kept}") from None


def host_copy(obj: object) -> tuple[object, list[torch.Tensor]]:
    """A copy of a checkpoint's contents that the steps after it cannot change: every tensor
    copied to host memory, the rest deep-copied; dicts keep their type and a state dict's
    _metadata. What a background write (CheckpointWriter) saves; with the tensors it made,
    for free_storage. A tensor that views the same
    memory as one copied before (the tied lm_head.weight and transformer.wte.weight) is copied
    once and shared, so the file stores it once, as torch.save of the live state does.

    A GPU's tensors are copied into pageable memory, each copy a sync (a checkpoint's, not the
    steady state's): pinned copies would be faster to make, but torch's caching host allocator
    rounds each one up to a power of two and keeps it for the rest of the run (2.5 GB pinned
    for gpt2's 1.5 GB), where free_storage gives pageable memory back after each write."""
    copies: dict[tuple, torch.Tensor] = {}  # (device, address, dtype, shape, strides): its copy

    def to_host(value: object) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            view = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if view not in copies:
                copies[view] = value.clone() if value.device.type == "cpu" else value.to("cpu")
            return copies[view]
        if isinstance(value, dict):
            copied = type(value)((k, to_host(v)) for k, v in value.items())
            if hasattr(value, "_metadata"):  # a module's state_dict: its modules' versions
                copied._metadata = copy.deepcopy(value._metadata)
            return copied
        if isinstance(value, (list, tuple)):
            return type(value)(to_host(v) for v in value)
        return copy.deepcopy(value)

    copied = to_host(obj)
    return copied, list(copies.values())


def free_storage(tensors: Iterable[torch.Tensor]) -> None:
    """Give host_copy's tensors' memory back now that their file is written: torch.save's
    pickler keeps its storages in a reference cycle, which held each copy (1.5 GB for gpt2)
    until Python's cyclic garbage collector ran, and a run's memory grew by copies."""
    for tensor in tensors:
        with contextlib.suppress(RuntimeError):  # a storage that cannot be resized is freed by its last reference
            tensor.untyped_storage().resize_(0)
        tensor.set_()  # no elements left: nothing reads the freed memory through it (a traceback's repr would crash)


class CheckpointWriter:
    """Writes checkpoints on a thread of its own while training goes on (--async-ckpt): the
    step waits only for its state's copy to host memory (host_copy), not for the 1.5 GB of
    gpt2's checkpoint to reach the disk. One write at a time.

    A write's error (a full disk) is raised in the training loop at its next poll() or wait(),
    as a synchronous write raises it. wait() defers Ctrl-C and SIGTERM to the file's end, as a
    write in the step does (signals_deferred): a run stopped at once, or ended by an error,
    waits there for the write under way. A SIGKILL leaves the temporary file that the next run
    in --out removes. The wait is on an Event, not Thread.join: a join that a KeyboardInterrupt
    cuts short marks the thread stopped while it still runs (CPython 3.11), and the
    interpreter's exit would then not wait for it."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    def write(self, work: Callable[[], None]) -> None:
        """Run `work` (the file's write and --keep-ckpts' pruning) once the previous one is done."""
        self.wait()
        done = self._done = threading.Event()

        def run() -> None:
            try:
                work()
            except BaseException as e:  # noqa: BLE001 (raised in the training loop, by wait())
                self._error = e
            finally:
                done.set()

        with signals_deferred():  # no KeyboardInterrupt between the two: a thread never started is never done
            thread = threading.Thread(target=run, name="checkpoint-writer")
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread" (a limit on threads, no memory for a stack)
                work()  # written here, as in the step: its error raised here
                return
            self._thread = thread

    def poll(self) -> None:
        """wait() where the write has finished: its error raised now, not at the next checkpoint."""
        if self._thread is not None and self._done.is_set():
            self.wait()

    def wait(self, signals: bool = True) -> None:
        """Until the write under way is done; then raise its error, once. The Ctrl-C, SIGTERM and
        SIGHUP held back meanwhile are delivered once the file is whole (a second Ctrl-C: stop at
        once), unless the write failed (its error is the one to report, as for a write in the
        step) or `signals` is False (dropped: a run ending by an error, which they must not
        turn into a stop)."""
        if self._thread is None:
            return
        # SIGHUP too: the training loop's StopRequest takes it as a Ctrl-C
        with signals_deferred((signal.SIGINT, signal.SIGTERM, *HANGUP)) as held:
            self._done.wait()
            self._thread.join()  # (its last instructions: done is set in its finally)
            self._thread = None
            error, self._error = self._error, None
            if not signals:
                held.clear()
            if error is not None:
                raise error


def wait_quietly(writer: CheckpointWriter, stopped: bool) -> None:
    """writer.wait() on the way out of a run that failed: the file is finished, and the run's
    own error is the one reported (signals meanwhile are dropped; a Ctrl-C before wait() held
    them back waits all the same). A write that failed is dropped too, but for a run `stopped`
    at once (a second Ctrl-C, whose lines name the newest checkpoint on disk): a note on
    standard error then says why the one under way is not there."""
    while True:
        try:
            writer.wait(signals=False)
            return
        except KeyboardInterrupt:
            continue
        except Exception as e:  # noqa: BLE001 (the run's own error is under way)
            if stopped:
                echo(f"note: {e}", err=True)
            return

