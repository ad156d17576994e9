"""metrics.jsonl and the window logs: append-only JSON lines, cut back to a resumed step.

metrics.jsonl has one line per step (and, first, a step-0 line with the untrained model's
val_loss when validation is on, tokens and epoch 0, and null for the rest): step, tokens
(trained on through that step, all ranks), epoch (passes over the train split so far), loss
(mean over ranks), val_loss (null unless evaluated at that step, and where a stop cut the
evaluation short), lr, grad_norm (before clipping; null for an fp16 step whose gradients
overflowed, which was skipped), dt_ms, tokens_per_s, mfu (null where the device's peak is
unknown) and data_wait_ms (host time blocked in next_batch, under torchrun the longest of the
ranks'; on CUDA, once the host runs ahead of the GPU, that includes waiting for the GPU to finish
copying out of a ring buffer before it is refilled: back-pressure, not data cost). A logging
point's lines are written when the host reads its values back, at the next logging point (on
CUDA the host waits there for the point before, with the steps since queued on the GPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from loader.checkpoints import list_checkpoints
from prep.atomic import atomic_write
from prep.errors import UserError
from trainer.output import echo


METRICS_NAME = "metrics.jsonl"
# a metrics.jsonl line's keys, in order (step 0, the untrained model's val loss, has tokens and
# epoch 0 and None for the rest)
METRICS_FIELDS = ("step", "tokens", "epoch", "loss", "val_loss", "lr", "grad_norm", "dt_ms", "tokens_per_s", "mfu",
                  "data_wait_ms")


def strict_json_row(row: dict) -> dict:
    """A metrics line (or --bench's BENCH line) as strict JSON: NaN and infinities (a diverged step)
    are written as null, where json.dumps writes NaN and Infinity, which strict parsers refuse."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def aside_path(path: Path) -> Path:
    """A name no file has yet for an earlier run's log: <name>.before-<UTC time>[-n]."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.before-{stamp}"), 1
    while aside.exists():  # restarted twice within a second
        aside, n = path.with_name(f"{path.name}.before-{stamp}-{n}"), n + 1
    return aside


def open_log(path: Path, key: str, keep_through: int | None,
             note: Callable[[str], object] = lambda text: echo(f"note: {text}")):
    """A JSONL log (metrics.jsonl: key "step"; --log-windows: "batch") for appending: emptied
    for a fresh run; on resume, only the lines with key <= keep_through, what the checkpoint
    covers, are kept (a torn last line from a killed run is dropped). Lines of no such record
    anywhere else (a hand edit, a disk's damage), and records out of order (a key not above the
    one before it: the keys only grow), are not dropped without a word: the file as it
    was is kept as <name>.before-<UTC time> first, and `note` says so. Streamed, line by line:
    a 10^6-step run's log is hundreds of MB, and every rank with --log-windows rewrites its own.
    A symbolic link is refused: the rename put a plain file in its place without a word (the
    linked log left with the steps past the checkpoint), and rewriting the file it names
    instead could cut another run's log (a branch made with `cp -rs`)."""
    if path.is_symlink():
        raise UserError(f"{path}: a symbolic link (to {os.readlink(path)}), and train.py rewrites this log in place "
                        f"(cut back to the checkpoint on resume): make it a plain file (a copy) or move it away")
    try:
        source = open(path, "rb") if keep_through is not None and path.is_file() else None
    except OSError as e:
        raise _unreadable_log(path, e) from None

    def keep(f) -> None:
        if source is None:
            return
        foreign, last_foreign = 0, False  # lines that are no record of this log's
        previous = -1  # the key of the last record: a log's keys only grow, from 0
        for line in _log_lines(source, path):
            try:  # (NaN and Infinity: json.loads takes them, train.py writes null)
                record = json.loads(line, parse_constant=_no_json_constant)
            except (ValueError, RecursionError):  # JSONDecodeError, > 4,300 digits, nested too deeply
                record = None
            value = record.get(key) if isinstance(record, dict) else None
            last_foreign = not (isinstance(value, int) and not isinstance(value, bool) and value > previous)
            foreign += last_foreign
            if not last_foreign:
                previous = value
                if value <= keep_through:
                    f.write((line + "\n").encode("utf-8"))
        try:
            source.seek(-1, os.SEEK_END)
            torn = last_foreign and source.read(1) != b"\n"  # a killed run's last line, cut short
        except OSError:  # an empty file
            torn = False
        if foreign > torn:
            aside = aside_path(path)
            source.seek(0)
            atomic_write(aside, lambda g: shutil.copyfileobj(source, g))
            note(f"{path}: {foreign - torn:,} line(s) hold no {key!r} record of a train.py log, or one out of "
                 f"order (edited or damaged); kept through the checkpoint are the others, the file as it was is "
                 f"{aside.name}")

    try:
        created = not path.exists()
        with source or contextlib.nullcontext():
            atomic_write(path, keep)
        return AppendLog(path, open(path, "ab", buffering=0), created)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror or e}){_checkpoints_kept(path.parent)}") from None


def _checkpoints_kept(out: Path) -> str:
    """What a log's failed write adds where --out holds checkpoints: they are kept."""
    try:
        return "; the checkpoints already written are kept" if list_checkpoints(out) else ""
    except OSError:  # (the directory itself cannot be listed: nothing to say of them)
        return ""


def _no_json_constant(name: str) -> None:
    """json.loads's parse_constant that takes no NaN, Infinity or -Infinity: no JSON, and no
    line train.py writes (a non-finite value is null in its logs)."""
    raise ValueError(f"{name} is not JSON")


def _unreadable_log(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot read it to keep its lines through the checkpoint ({e.strerror or e})")


def _log_lines(source, path: Path):
    """The lines of the log open as `source` (binary), as str.splitlines() of its whole text
    gives them, read one at a time; a UserError for a read error or bytes that are not UTF-8
    (train.py writes ASCII only: damaged, or another program's), naming the byte."""
    at = 0
    while True:
        try:
            raw = source.readline()
        except OSError as e:
            raise _unreadable_log(path, e) from None
        if not raw:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {at + e.start:,}), so no log train.py wrote: move it "
                            f"away to resume") from None
        at += len(raw)
        yield from text.splitlines()


class AppendLog:
    """An open JSONL log whose failures (a full disk, a read-only filesystem, an I/O error) are
    one-line user errors naming it. Each line goes to the file (opened "ab", unbuffered) as it
    is written, and a write that fails is cut back out: a full disk takes the part of a line that
    fits, and a line cut short at byte 4,096 was left behind (a resume set the log aside as
    damaged). After a failure it takes no more lines: the training loop's error exit writes the
    steps still in flight, the failed one's again.

    A log this run `created` and wrote no line to (a stop during the step-0 evaluation) is
    removed on close: an --out the run made and wrote nothing in is then removed too
    (hold_out_dir), and a fresh run into it is no different from the first."""

    def __init__(self, path: Path, f, created: bool = False) -> None:
        self.path, self._f, self._failed, self._created = path, f, False, created
        self._end = f.seek(0, os.SEEK_END)  # where the last whole line ends

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, e: OSError) -> UserError:
        self._failed = True
        return UserError(f"{self.path}: cannot append to it ({e.strerror or e}){_checkpoints_kept(self.path.parent)}")

    def write(self, text: str) -> None:
        if self._failed:
            raise UserError(f"{self.path}: not written to after an earlier write failed")
        line = text.encode("utf-8")
        data = memoryview(line)
        try:
            while data:  # (a raw file's write may take a part: the rest is written again)
                data = data[self._f.write(data):]
        except OSError as e:
            with contextlib.suppress(OSError):  # (a shorter file needs no room; a read-only one took nothing)
                self._f.truncate(self._end)
            raise self._error(e) from None
        self._end += len(line)

    def sync(self) -> None:
        """Put the lines written so far on disk (flush, fsync): done before each checkpoint, whose
        file atomic_write fsyncs. A machine's crash (a power cut, a kernel panic) kept ckpt_k and
        lost the lines before k still in the page cache, which the resume from it does not write
        again: steps missing from metrics.jsonl, windows that loader.audit finds unlogged."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise self._error(e) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            if not self._failed:
                raise self._error(e) from None
        if self._created and not self._failed:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_size == 0:
                    os.unlink(self.path)
