"""`python -m loader.audit OUT [--data DIR]`: a run's own logs checked for exactness.

`train.py --log-windows` makes every rank log each window it trained on to
`OUT/windows_rank<r>.jsonl`: the loader's step ("batch"), the epoch, the rank and the world
size, the window's offset in the split ("start"), T, and, as the model received them, each
row's first token, the last target and "crc32": `window_crc32` of the whole window's B*T+1
tokens. This reads the logs back and checks:

- every rank's log is there, and each rank's batches are numbered 0, 1, 2, ... with none
  missing or repeated (a resumed run's log is cut back to its checkpoint, so this holds
  across any number of resumes);
- within an epoch no target (positions start+1 .. start+B*T of a window) is read twice, by
  the same rank or another, and every window starts on a multiple of B*T;
- an epoch that is over read every slot: its targets are positions 1 .. E*B*T*W, each exactly
  once, in E steps on every rank. E is the split's (N-1) // (B*T*W): N from --data, or else from
  the run's newest checkpoint (its loader state's token count); with neither, what the first
  epoch took. An epoch is over once every rank has moved past it or taken its E steps (the
  ranks of a run killed within an accumulation step can be apart across an epoch's end); no
  rank takes more than E steps in one, no window of any epoch reads past E*B*T*W, and, where
  E is known, each batch k is logged in epoch k // E;
- a line without crc32 comes before every line with one (a log begun by an older train.py),
  and every rank's log has it from the same batch (a resume restarts them all at one step);
- every line is a record train.py writes: a line that is not (not UTF-8, not JSON, a value of
  another type: a disk's damage, an edit) is a problem naming it, and the rest is checked
  without it; a last line without its newline (a run killed while writing it) is left out with
  a note;
- with a checkpoint that records the run's batch geometry, the ranks' logs end at most one
  optimizer step apart (its micro-batches, plus one for a line a kill cut in two): further
  apart, a log was cut short;
- with --data (the train split's shards, as given to train.py): each window's first tokens,
  last target and crc32 are the shards' at the logged offset, so the offsets are where the
  model's tokens came from (without --data the offsets are taken as logged), and the
  never-read tail, the split's last (N-1) mod (B*T*W) tokens, is named. The crc32 covers
  every token: a window that differs from the shards' in one token, or in two adjacent ones,
  always fails; one that differs in more fails all but about one time in 2**32. A log line
  without crc32 (train.py before it wrote one) is checked by its first tokens and last
  target only, and a note says how many were.

--data must be the data the run trained on, or the epoch size and the never-read tail are
another split's (a dataset whose train split begins with the run's would even pass). OUT's
newest checkpoint records it: its loader state names the train split's shards with their
token counts and meta.json's sha256 (what a resume checks, loader.dataset_difference), and
its train_config the --data given. A --data that differs is refused, naming both; a run
that left no checkpoint (--ckpt-every 0, killed before its first) has no such record, and a
note says --data was taken unchecked. Without --data, a note names the run's. A checkpoint
of another B, T or world size than the logs' is a problem: train.py resumes no such
checkpoint, nor starts afresh beside one, so the logs are another run's.

Exit status: 0 when every check passes, 1 when one fails (a line per problem), 2 for a usage
error (no logs in OUT, a log this version cannot read or with no record at all, a bad --data,
one that is not the run's).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import warnings
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prep.atomic import interrupt_exits_while_importing

# Ctrl-C or SIGTERM while click imports (run as a script; the loader package, torch with it, has
# its own guard): one line, at once
with interrupt_exits_while_importing(__name__ == "__main__"):
    from prep.errors import UserCommand, UserError, paths_print_as_named  # first: see reserve_standard_fds

    import click
    import numpy as np
    import torch

    from loader.errors import LoaderError
    from loader.loader import dataset_difference, saved_shards
    from loader.stream import TokenStream, resolve_shards
    from prep.epoch import steps_per_epoch
    from prep.shards import ShardError

LOG_PATTERN = re.compile(r"windows_rank(0|[1-9][0-9]*)\.jsonl")  # as log_path names them
LOG_GLOB = "windows_rank*.jsonl"  # every rank's log (and names LOG_PATTERN refuses)
CKPT_PATTERN = re.compile(r"ckpt_(\d{6,})\.pt")  # train.py's checkpoints (it imports this and list_checkpoints)
FIELDS = ("batch", "rank", "world", "epoch", "start", "T", "first_tokens", "last_target")
CHECKSUM = "crc32"  # optional: logs of train.py before it wrote one have none
SHOWN = 5  # problems of one kind listed before "... and N more like it"


def window_crc32(window: np.ndarray) -> int:
    """zlib.crc32 of a window's B*T+1 tokens as little-endian uint16 bytes, in stream order:
    x flattened row by row, then the last target (y[-1, -1]). train.py's window_logger takes
    it of what the model received, the audit of the shards' tokens at the logged offset, so
    equal sums say every token the model trained on is the shards' (a CRC catches any change
    of up to 32 consecutive bits, so any one or two adjacent tokens, for certain)."""
    return zlib.crc32(np.ascontiguousarray(window, dtype="<u2").tobytes())


def log_path(out: Path, rank: int) -> Path:
    """Rank `rank`'s window log in a run's --out."""
    return out / f"windows_rank{rank}.jsonl"


def window_record(loader, batch: int, window: np.ndarray) -> dict:
    """The log line (FIELDS and CHECKSUM) of `loader`'s (a TokenLoader's) step `batch`, whose
    B*T+1 tokens the model got were `window`: the audit's input, written by train.py."""
    values = (batch, loader.rank, loader.world, batch // loader.steps_per_epoch, loader.window_start(batch),
              loader.T, window[:-1:loader.T].tolist(), int(window[-1]))
    return {**dict(zip(FIELDS, values, strict=True)), CHECKSUM: window_crc32(window)}


@dataclass(frozen=True, slots=True)  # slots: a long run logs millions
class Window:
    """One logged batch: rank `rank`'s loader step `batch`, tokens [start, start + B*T]."""

    rank: int
    batch: int
    epoch: int
    start: int
    first_tokens: tuple[int, ...]
    last_target: int
    crc32: int | None = None  # None: logged before train.py wrote one


@dataclass
class RankLog:
    """One rank's log: its windows in file order, its run's B, T and world size, and notes on
    what was left out."""

    rank: int
    path: Path
    windows: list[Window]
    B: int
    T: int
    world: int
    notes: list[str]
    damaged: list[str] = field(default_factory=list)  # lines left out as no record train.py writes


class _Damaged(ValueError):
    """A log line that is no record train.py writes (not UTF-8, not JSON, a value of another
    type): the log was damaged or edited there. A finding of the audit, not a usage error."""


class _Foreign(_Damaged):
    """A line of another version's log or another rank's, or one another run's geometry: as the
    log's first record, a usage error (the log is not this run's); after records of its own,
    damage like any other (an edit, logs run together)."""


def _int(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _record(line: str, where: str) -> dict:
    """One log line as a dict with every field, each of the type train.py writes."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise _Damaged(f"{where}: not a JSON line") from None
    missing = [name for name in FIELDS if not isinstance(record, dict) or name not in record]
    if missing:
        raise _Foreign(f"{where}: no {', '.join(missing)}: not a --log-windows log of this version "
                       "(run train.py with --log-windows again)")
    tokens = record["first_tokens"]
    if _int(record["rank"], 0) and _int(record["world"], 1) and record["rank"] >= record["world"]:
        raise _Foreign(f"{where}: rank {record['rank']} in a run of {record['world']} rank(s)")
    if not (all(_int(record[name], 0) for name in ("batch", "rank", "epoch", "start", "last_target"))
            and _int(record["T"], 1) and _int(record["world"], 1)
            and isinstance(tokens, list) and tokens and all(_int(t, 0) for t in tokens)
            and (CHECKSUM not in record or (_int(record[CHECKSUM], 0) and record[CHECKSUM] < 2**32))):
        raise _Damaged(f"{where}: a value is not what train.py writes: {line[:120]}")
    return record


def read_log(path: Path, rank: int) -> RankLog:
    """Rank `rank`'s windows from `path`, read line by line (a long run's log is hundreds of MB).
    A last line without its newline (the run was killed, or its disk filled, while writing it)
    is left out with a note; a line that is no record train.py writes (damage, an edit) is left
    out and listed in `damaged`, for the audit to fail on, while the other lines are checked;
    a log of another version, rank or run (as its first record says), or one with no record at
    all, is a UserError."""
    notes, damaged = [], []
    windows: list[Window] = []
    run: tuple[int, int, int] | None = None  # B, T, world
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                if not raw.endswith(b"\n"):
                    notes.append(f"{path.name}: the last line is incomplete (the run was killed, or its disk "
                                 "filled, while writing it); left out")
                    break
                try:
                    record = _record(raw[:-1].decode("utf-8"), where)
                    if record["rank"] != rank:
                        raise _Foreign(f"{where}: rank {record['rank']} in the log of rank {rank}")
                    this = (len(record["first_tokens"]), record["T"], record["world"])
                    if run is not None and this != run:
                        raise _Foreign(f"{where}: B={this[0]} x T={this[1]}, {this[2]} rank(s) after B={run[0]} "
                                       f"x T={run[1]}, {run[2]} rank(s) in the same log")
                except UnicodeDecodeError:
                    damaged.append(f"{where}: not UTF-8 text")
                    continue
                except _Foreign as e:
                    if run is None:  # no record of this log's before it: the log is another's
                        raise UserError(str(e)) from None
                    damaged.append(str(e))
                    continue
                except _Damaged as e:
                    damaged.append(str(e))
                    continue
                run = this
                windows.append(Window(rank, record["batch"], record["epoch"], record["start"],
                                      tuple(record["first_tokens"]), record["last_target"], record.get(CHECKSUM)))
    except OSError as e:
        raise UserError(f"{path}: cannot be read as a --log-windows log ({e.strerror or type(e).__name__})") from None
    if run is None:
        if damaged:
            raise UserError(f"{path}: not a --log-windows log: no line is a record train.py writes ({damaged[0]})")
        killed = " but an incomplete one (the run was killed, or its disk filled, while writing it)" if notes else ""
        raise UserError(f"{path}: no windows logged{killed}")
    return RankLog(rank, path, windows, *run, notes, damaged)


def find_logs(out: str | os.PathLike) -> list[RankLog]:
    """Every rank's log in `out`, by rank; a UserError when there are none or the ranks' runs
    differ (B, T, world size)."""
    out = Path(out)
    if not out.is_dir():
        what = "not a directory" if out.exists() else "no such directory"
        raise UserError(f"{out}: {what} (give train.py's --out)")
    found = sorted((int(m.group(1)), p) for p in out.iterdir() if (m := LOG_PATTERN.fullmatch(p.name)))
    if not found:
        raise UserError(f"{out}: no windows_rank<r>.jsonl: train with --log-windows to write them")
    for _, path in found:
        if not path.is_file():
            raise UserError(f"{path}: not a file")
    logs = [read_log(path, rank) for rank, path in found]
    runs = {(log.B, log.T, log.world) for log in logs}
    if len(runs) > 1:
        shown = ", ".join(f"{b}x{t} on {w} rank(s)" for b, t, w in sorted(runs))
        raise UserError(f"{out}: the ranks' logs are of different runs ({shown})")
    return logs


class Problems:
    """Problems by kind, each kind shown up to SHOWN times, then counted (only the messages
    shown are kept: a long run's audit against the wrong --data finds millions)."""

    def __init__(self) -> None:
        self._kinds: dict[str, list[str]] = defaultdict(list)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, message: str) -> None:
        self._counts[kind] += 1
        if len(self._kinds[kind]) < SHOWN:
            self._kinds[kind].append(message)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def lines(self) -> list[str]:
        out = []
        for kind, messages in self._kinds.items():
            out += messages
            if self._counts[kind] > SHOWN:
                out.append(f"... and {self._counts[kind] - SHOWN} more like it")
        return out


@dataclass
class Report:
    """The audit's findings: summary lines, notes and problems."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: Problems = field(default_factory=Problems)


def check_numbering(logs: list[RankLog], problems: Problems) -> bool:
    """Each rank's batches 0, 1, 2, ... in order, epochs from 0, never going back nor skipping
    one; returns whether every rank's log is there (a problem if not)."""
    world = logs[0].world
    present = {log.rank for log in logs}  # each below world (_record refuses another rank)
    absent = world - len(present)
    if absent:
        first = list(itertools.islice((r for r in range(world) if r not in present), SHOWN))
        problems.add("ranks", f"no log of rank(s) {', '.join(map(str, first))}{', ...' if absent > len(first) else ''} "
                     f"({absent:,} of {world:,} missing): their windows cannot be checked")
    firsts: dict[int, int | None] = {}  # each rank's first batch with a crc32
    for log in logs:
        for expected, w in enumerate(log.windows):
            if w.batch != expected:
                gap = f"batch {expected}" if w.batch == expected + 1 else f"batches {expected}-{w.batch - 1}"
                later = any(v.batch == expected for v in log.windows[expected + 1:])  # lines swapped, say
                what = ("repeated or out of order" if w.batch < expected else
                        f"out of order: batch {expected} comes later" if later else f"{gap} missing")
                problems.add("numbering", f"rank {log.rank}: batch {w.batch} where {expected} was due ({what})")
                break
        if log.windows and log.windows[0].batch == 0 and log.windows[0].epoch != 0:
            problems.add("numbering", f"rank {log.rank}: batch 0 in epoch {log.windows[0].epoch}, where a run "
                         "starts in epoch 0")
        for a, b in zip(log.windows, log.windows[1:]):
            if b.epoch < a.epoch:
                problems.add("numbering", f"rank {log.rank}: batch {b.batch} in epoch {b.epoch} after epoch {a.epoch}")
                break
            if b.epoch > a.epoch + 1 and b.batch == a.batch + 1:  # an epoch is a step at least: none is skipped
                # (across batches missing from the log, a whole epoch may have been trained unlogged: said above)
                skipped = f"epoch {a.epoch + 1}" if b.epoch == a.epoch + 2 else f"epochs {a.epoch + 1}-{b.epoch - 1}"
                problems.add("numbering", f"rank {log.rank}: batch {b.batch} in epoch {b.epoch} after epoch "
                             f"{a.epoch} ({skipped} skipped)")
                break
        # a train.py that writes crc32 writes it on every line (a log begun by an older one, and
        # resumed by a newer one, has it from some batch on)
        summed = next((w for w in log.windows if w.crc32 is not None), None)
        firsts[log.rank] = summed and summed.batch
        unsummed = summed and next((w for w in log.windows if w.batch > summed.batch and w.crc32 is None), None)
        if unsummed:
            problems.add("numbering", f"rank {log.rank}: batch {unsummed.batch} has no crc32, where batch "
                         f"{summed.batch} before it has one: its tokens cannot be checked whole")
    # every rank runs the same train.py: where one began writing crc32 (a resume), all did
    first = min((b for b in firsts.values() if b is not None), default=None)
    for log in logs:
        if first is not None and log.windows and log.windows[-1].batch >= first and firsts[log.rank] != first:
            own = "none" if firsts[log.rank] is None else f"from batch {firsts[log.rank]}"
            problems.add("numbering", f"rank {log.rank}: crc32 {own}, where another rank's log has it from batch "
                         f"{first}: its tokens cannot be checked whole")
    return not absent


def check_epochs(logs: list[RankLog], report: Report, data_steps: int | None, all_ranks: bool = True,
                 source: str = "the data") -> None:
    """No target twice within an epoch, windows on step boundaries and within the epoch's
    slots; an epoch that is over reads exactly positions 1..E*B*T*W in E steps per rank
    (unless some rank's log is missing: then what it read is unknown, `all_ranks` False).
    `data_steps`: E as `source` (the data, or the run's checkpoint) says it, which also puts
    each batch in its epoch (batch // E); or None (then the earlier epochs' steps say it)."""
    B, T, world = logs[0].B, logs[0].T, logs[0].world
    step = B * T
    by_epoch: dict[int, list[Window]] = defaultdict(list)
    steps: dict[int, dict[int, int]] = defaultdict(lambda: dict.fromkeys((log.rank for log in logs), 0))
    for log in logs:
        for w in log.windows:
            by_epoch[w.epoch].append(w)
            steps[w.epoch][w.rank] += 1
    last = max(by_epoch)
    E = data_steps
    if E is None and last > min(by_epoch):  # an earlier epoch is over: it says E
        E, source = max(steps[min(by_epoch)].values()), f"epoch {min(by_epoch)}"
    if data_steps:  # the loader's step k is in epoch k // E: a window logged in another
        for log in logs:
            wrong = next((w for w in log.windows if w.epoch != w.batch // E), None)
            if wrong:
                report.problems.add("epoch", f"rank {log.rank}: batch {wrong.batch} logged in epoch {wrong.epoch}, "
                                    f"where an epoch of {E:,} steps ({source} says) puts it in epoch "
                                    f"{wrong.batch // E}")
    # an epoch is over for a rank that has moved past it, or has its E steps (within one
    # accumulation step the ranks do not wait for each other: a run killed there has one rank
    # in the next epoch while another is still in this one)
    last_of = {log.rank: max((w.epoch for w in log.windows), default=-1) for log in logs}
    for epoch in sorted(by_epoch):
        per_rank = steps[epoch]  # windows of this epoch on each rank
        over = epoch < last - 1 or all(last_of[r] > epoch or (E is not None and n >= E) for r, n in per_rank.items())
        # equal-length ranges sorted by start: any overlap shows between neighbours
        windows = sorted(by_epoch[epoch], key=lambda w: (w.start, w.rank, w.batch))
        clean = True
        for a, b in zip(windows, windows[1:]):
            if b.start < a.start + step:  # a's targets a.start+1 .. a.start+step reach into b's
                clean = False
                report.problems.add("twice", f"epoch {epoch}: targets {b.start + 1:,}-{a.start + step:,} read twice: "
                                    f"by rank {a.rank} batch {a.batch} and rank {b.rank} batch {b.batch}")
        for w in windows:
            if w.start % step:
                clean = False
                report.problems.add("boundary", f"epoch {epoch}: rank {w.rank} batch {w.batch} starts at {w.start:,}, "
                                    f"not a multiple of B*T = {step:,}")
            if E is not None and w.start + step > E * world * step:
                clean = False
                report.problems.add("past", f"epoch {epoch}: rank {w.rank} batch {w.batch} reads targets up to "
                                    f"{w.start + step:,}, past the {E * world * step:,} an epoch's {E:,} steps "
                                    f"x {world} rank(s) cover")
        if not over or not all_ranks:
            beyond = [f"rank {r}: {n:,}" for r, n in per_rank.items() if E is not None and n > E]
            if beyond:
                clean = False
                report.problems.add("steps", f"epoch {epoch}: more steps than an epoch has ({', '.join(beyond)}; "
                                    f"{E:,} per rank, {source} says)")
            ranks = ", ".join(f"rank {r}: {n:,}" for r, n in per_rank.items())
            of = f" of {E:,} per rank" if E is not None else ""
            report.lines.append(f"epoch {epoch}: {len(windows):,} window(s) so far ({ranks}{of})"
                                + ("; no target read twice" if clean else ""))
            continue
        taken = max(per_rank.values())
        if min(per_rank.values()) != taken:
            clean = False
            report.problems.add("uneven", f"epoch {epoch}: the ranks took different numbers of steps ("
                                f"{', '.join(f'rank {r}: {n:,}' for r, n in per_rank.items())})")
        if E is not None and taken != E:
            clean = False
            report.problems.add("steps", f"epoch {epoch}: {taken:,} steps where an epoch has {E:,} ({source} says)")
        for lo, hi in _gaps(_covered(windows, step), 1, min(taken, E or taken) * world * step):
            clean = False
            report.problems.add("gap", f"epoch {epoch}: targets {lo:,}-{hi:,} never read")
        if clean:
            report.lines.append(f"epoch {epoch}: complete, {taken:,} steps x {world} rank(s): targets "
                                f"1-{taken * world * step:,} each read exactly once")


def _covered(windows: list[Window], step: int) -> list[tuple[int, int]]:
    """The union of the windows' target ranges [start+1, start+step] as sorted disjoint runs."""
    runs: list[tuple[int, int]] = []
    for w in windows:
        lo, hi = w.start + 1, w.start + step
        if runs and lo <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(runs[-1][1], hi))
        else:
            runs.append((lo, hi))
    return runs


def _gaps(runs: list[tuple[int, int]], first: int, last: int):
    """Positions in [first, last] that no run covers, as (lo, hi) ranges."""
    at = first
    for lo, hi in runs:
        if lo > at and at <= last:
            yield at, min(lo - 1, last)
        at = max(at, hi + 1)
    if at <= last:
        yield at, last


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


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of train.py's complete checkpoints in `out`, oldest first (temporary files
    never match); train.py's --resume auto takes the last."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [(int(m[1]), p) for p in out.iterdir() if (m := CKPT_PATTERN.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


ZIP_DOS_DIRECTORY = 0x10  # a zip record's external attributes: MS-DOS's directory bit


def zip_damage(path: Path, records: Callable[[str], bool] = lambda name: True) -> str | None:
    """Why the zip archive torch.save wrote to `path` fails zipfile's checks of its records
    (bytes that do not match the CRC-32 stored beside them, a local header that does not match
    the directory), or None; `records`: which records' bytes to read, by name (train.py: all;
    the audit: all but the tensors'). torch.load checks none of this: a bit flipped in a tensor loads
    silently, and a run trains or samples on; so does one in a record's local header, whose
    name length says where its bytes start (torch.load then reads a tensor shifted). (Reading
    the file costs 0.28 s per 1.5 GB, a gpt2 checkpoint, from the page cache, where torch.load
    then finds it.) A file that is no zip archive, or not a whole one, is left for torch.load to
    refuse, and so is a record zipfile cannot read (compressed in a way it does not know,
    encrypted), which torch.save never writes."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # truncated, garbage, torch's legacy format, unreadable: torch.load says
        return None
    with archive:
        for record in archive.infolist():
            if not records(record.filename):
                continue
            if record.external_attr & ZIP_DOS_DIRECTORY:  # zipfile reads on; torch.load's reader takes it
                # for a directory and hands back a tensor of whatever its memory held
                return f"{record.filename!r}: marked a directory in the archive's central directory"
            try:
                with archive.open(record) as f:
                    while f.read(1 << 20):
                        pass
            except zipfile.BadZipFile as e:  # "Bad CRC-32 for file '...'", "Bad magic number ..."
                return str(e)
            except (NotImplementedError, RuntimeError):  # compression zipfile lacks, encryption: torch.load says
                return None
            except Exception as e:  # the header's name, a length flipped longer, is no UTF-8 (UnicodeDecodeError)
                return f"{record.filename!r}: its local header does not read back ({type(e).__name__})"
    return None


class NotThisRun(str):
    """Why the logs cannot be the run whose checkpoint is in their directory (read_trained)."""


def load_mapped(path: Path) -> object:
    """torch.load(weights_only=True) of a checkpoint on the CPU, its tensors (the weights and
    optimizer: GBs for gpt2) mapped, never read; its warnings ("pickle protocol 4") silenced, as
    the caller's note says it all. A name in no UTF-8 (b'r\xff'), which torch's mmap refuses
    (UnicodeEncodeError), and a file in torch.save's format from before torch 1.6 (no zip: an
    old pytorch_model.bin), which it cannot map, are read whole instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except UnicodeEncodeError:
            pass
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)


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
        if not shards or not _int(total, 1) or counted != total:
            raise LoaderError(f"{len(shards)} shard(s) of {counted:,} tokens, and num_tokens {total!r}")
    except LoaderError as e:
        return f"{path}: a damaged train.py loader state ({str(e)[:200]})"
    step = state.get("step")
    if not _int(step, 0):  # --resume refuses it, and the logs' end was checked against nothing
        return f"{path}: a damaged train.py loader state (its step {step!r}, not a count of windows)"
    if data is not None and not isinstance(data, str):
        return f"{path}: a damaged train_config (its data is a {type(data).__name__}, not the --data given)"
    run, ours = tuple(state.get(k) for k in ("B", "T", "world")), (logs[0].B, logs[0].T, logs[0].world)
    if not all(_int(value, 1) for value in run):
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
    accum = total // step_tokens if _int(total, 1) and total % step_tokens == 0 else None
    return Trained(path, state, data, accum)


def check_logged_through(logs: list[RankLog], trained: Trained, problems: Problems) -> None:
    """Every window the checkpoint's loader had read is in each rank's log: a log cut short, or
    a resume without --log-windows, trained windows no log shows, and the audit could not
    vouch for them (the logs start at batch 0, check_numbering; a log longer than the
    checkpoint is a run killed after it, whose later windows --resume trains again)."""
    step = trained.state.get("step")
    if not _int(step, 1):
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


def check_run_data(data: str, stream: TokenStream, trained: Trained) -> str:
    """--data must be the dataset the run trained on (a UserError naming both if not): the
    checkpoint's shard names and token counts, and sha256 where both know it. Returns the
    line saying it is."""
    differ = dataset_difference(trained.state, stream.identity, stream.num_tokens, here="--data has")
    if differ:
        raise UserError(f"--data {data} is not the dataset the run trained on ({trained.named()}): "
                        f"{trained.path}'s loader state: {differ}")
    saved = trained.state["shards"]
    then, now = all(len(s) > 2 and s[2] for s in saved), all(d for *_, d in stream.identity)
    digests = (", and meta.json's sha256" if then and now else
               "; no sha256 to compare: no meta.json lists the shards, then or now" if not (then or now) else
               "; no sha256 to compare: no meta.json listed the run's shards" if not then else
               "; no sha256 to compare: no meta.json lists --data's shards")
    return (f"--data {data}: the dataset the run trained on, as {trained.path.name} records it ({len(saved)} "
            f"shard(s): their names and token counts{digests})")


def open_data(data: str) -> TokenStream:
    """The train split of --data as train.py reads it; a UserError naming it if it cannot be."""
    if not data:  # as train.py refuses it: not the current directory
        raise UserError("--data must name a dataset directory, a shard glob or a shard, got ''")
    try:
        return TokenStream(resolve_shards(data, "train"))
    except (LoaderError, ShardError) as e:  # most name `data` first already: then it is named once
        said = str(e)
        named = said if said.startswith((f"{data}: ", f"{Path(data)}: ")) else f"{data}: {said}"  # (dir/: dir)
        raise UserError(f"--data {named}") from None


def check_tokens(logs: list[RankLog], data: str, stream: TokenStream, report: Report) -> None:
    """Every window's first tokens, last target and crc32 (where logged) against the shards at
    the logged offset; the windows without a crc32 and the never-read tail named."""
    B, T, world, N = logs[0].B, logs[0].T, logs[0].world, stream.num_tokens
    differ = 0
    window = np.empty(B * T + 1, dtype=np.uint16) if B * T + 1 <= N else None
    for log in logs:
        for w in log.windows:
            if window is None or w.start + B * T + 1 > N:
                differ += 1
                report.problems.add("data", f"rank {log.rank} batch {w.batch}: a window of {B * T + 1:,} tokens at "
                                    f"{w.start:,} runs past the split's {N:,} tokens: is --data the run's data?")
                continue
            stream.read_into(w.start, window)
            if list(window[:-1:T]) != list(w.first_tokens) or int(window[-1]) != w.last_target:
                differ += 1
                path, at = stream.locate(w.start)
                report.problems.add("data", f"rank {log.rank} batch {w.batch}: the tokens logged differ from "
                                    f"the shards' at {w.start:,} ({path}, token {at:,}): is --data the run's data?")
            elif w.crc32 is not None and window_crc32(window) != w.crc32:
                differ += 1
                path, at = stream.locate(w.start)
                report.problems.add("data", f"rank {log.rank} batch {w.batch}: the window's crc32 differs from "
                                    f"the shards' {B * T + 1:,} tokens at {w.start:,} ({path}, token {at:,}): "
                                    "the model trained on other tokens than the shards hold there")
    total = sum(len(log.windows) for log in logs)
    unsummed = sum(w.crc32 is None for log in logs for w in log.windows)
    every = f" (all {B * T + 1:,} tokens of each, by crc32)" if not unsummed else ""
    report.lines.append(f"--data {data}: {N:,} tokens; " + (
        f"{differ:,} of the {total:,} logged window(s) differ from the shards" if differ
        else f"the {total:,} logged window(s) match the shards' tokens{every}"))
    if unsummed:
        report.notes.append(f"{unsummed:,} of the {total:,} window(s) have no crc32 (logged by a train.py before "
                            "it wrote one): only their first tokens and last target were checked against the shards")
    read = steps_per_epoch(N, B, T, world) * B * T * world  # positions 0 .. read, in every epoch
    unread = "nothing" if read == N - 1 else f"the last {N - 1 - read:,} token(s), positions {read + 1:,}-{N - 1:,}"
    report.lines.append(f"never read in any epoch: {unread} (less than one step of {B}x{T} x {world} rank(s))")


def audit(out: str | os.PathLike, data: str | os.PathLike | None = None) -> Report:
    """Check `out`'s --log-windows logs (and, with `data`, against the train split)."""
    out, data = Path(out), None if data is None else os.fspath(data)
    logs = find_logs(out)
    report = Report()
    B, T, world = logs[0].B, logs[0].T, logs[0].world
    total = sum(len(log.windows) for log in logs)
    report.lines.append(f"{out}: {world} rank(s), {total:,} window(s) of B={B} x T={T} logged")
    for log in logs:
        report.notes += log.notes
        for line in log.damaged:
            report.problems.add("damage", f"{line} (the log was damaged or edited there); left out")
    stream = open_data(data) if data is not None else None
    try:
        trained = read_trained(out, logs)
        same = None
        if isinstance(trained, NotThisRun):
            report.problems.add("run", trained)
        elif isinstance(trained, str):  # (`trained` says why not)
            unchecked = "" if data is None else f"--data {data} is taken to be the run's data, unchecked, and "
            report.notes.append(f"{trained}: {unchecked}a log cut short (windows trained after its last one) "
                                f"cannot be told from a whole one")
        elif stream is not None:
            same = check_run_data(data, stream, trained)
        if stream is None and isinstance(trained, Trained):
            report.notes.append(f"no --data: the windows were not checked against the shards; the run trained on "
                                f"{trained.named()} ({trained.path.name} says)")
        all_ranks = check_numbering(logs, report.problems)
        if isinstance(trained, Trained):
            check_logged_through(logs, trained, report.problems)
            check_ranks_apart(logs, trained, report.problems)
        E, source = None, "the data"
        if stream is not None:
            E = steps_per_epoch(stream.num_tokens, B, T, world)
            if E == 0:
                raise UserError(f"--data {data}: {stream.num_tokens:,} tokens, fewer than one step of B={B} x T={T} "
                                f"x {world} rank(s) reads ({B * T * world + 1:,}): not the run's data")
        elif isinstance(trained, Trained):  # its split's token count, for these logs' B, T and world
            E, source = steps_per_epoch(trained.state["num_tokens"], B, T, world), trained.path.name
        check_epochs(logs, report, E, all_ranks, source)
        if stream is not None:
            check_tokens(logs, data, stream, report)
        if same is not None:  # last: the lines before it are the logs' and the tokens'
            report.lines.append(same)
    finally:
        if stream is not None:
            stream.close()
    return report


@click.command("audit", cls=UserCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("out", type=click.Path())
@click.option("--data", default=None, show_default="none: the logs alone",
              help="The run's --data (train split): check every token of each logged window against it. Refused "
                   "unless it is the dataset OUT's newest checkpoint records.")
def main(out: str, data: str | None) -> None:
    """Check that a `train.py --log-windows` run read no token twice in an epoch, and every
    slot of each complete epoch; exit status 1 if not."""
    if not out:  # Path("") is the current directory
        raise UserError("OUT must name a train.py --out directory, got ''")
    report = audit(out, data)
    for line in report.lines:
        click.echo(line)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems.lines():
        click.echo(f"problem: {problem}")
    if report.problems:
        click.echo(f"audit failed: {len(report.problems):,} problem(s)")
        raise SystemExit(1)
    click.echo("audit passed")


if __name__ == "__main__":
    paths_print_as_named()
    main()
