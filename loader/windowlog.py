"""The window logs of `train.py --log-windows`: what a line holds, written and read back.

Every rank writes `OUT/windows_rank<r>.jsonl`, a JSON line per loader step it trained on
(`window_record`): the step ("batch"), rank, world size, epoch, the window's offset in the
split ("start"), T, each row's first token, the last target and "crc32" (`window_crc32`) of
the window's B*T+1 tokens as the model received them. `read_log` and `find_logs` read them
back for the audit (loader.audit), leaving out, with a note or as damage, what no train.py
wrote.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prep.errors import UserError

LOG_PATTERN = re.compile(r"windows_rank(0|[1-9][0-9]*)\.jsonl")  # as log_path names them
LOG_GLOB = "windows_rank*.jsonl"  # every rank's log (and names LOG_PATTERN refuses)
FIELDS = ("batch", "rank", "world", "epoch", "start", "T", "first_tokens", "last_target")
CHECKSUM = "crc32"  # optional: logs of train.py before it wrote one have none


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


def is_count(value: object, least: int) -> bool:
    """An int (not a bool) of at least `least`: what train.py writes for a count or an index."""
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
    if is_count(record["rank"], 0) and is_count(record["world"], 1) and record["rank"] >= record["world"]:
        raise _Foreign(f"{where}: rank {record['rank']} in a run of {record['world']} rank(s)")
    if not (all(is_count(record[name], 0) for name in ("batch", "rank", "epoch", "start", "last_target"))
            and is_count(record["T"], 1) and is_count(record["world"], 1)
            and isinstance(tokens, list) and tokens and all(is_count(t, 0) for t in tokens)
            and (CHECKSUM not in record or (is_count(record[CHECKSUM], 0) and record[CHECKSUM] < 2**32))):
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
