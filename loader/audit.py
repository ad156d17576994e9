"""`python -m loader.audit OUT [--data PATH]`: a run's own logs checked for exactness.

`train.py --log-windows` makes every rank log each window it trained on to
`OUT/windows_rank<r>.jsonl`: the loader's step ("batch"), the epoch, the window's offset in
the split ("start"), T, and, as the model received them, each row's first token and the last
target. This reads the logs back and checks the cursor's promises from the outside, without
using its arithmetic:

- each rank's batches are numbered 0, 1, 2, ... with none missing or repeated (a resumed
  run's log is cut back to its checkpoint, so this holds across any number of resumes), and
  every rank's log is there;
- within an epoch no target (positions start+1 .. start+B*T of a window) is read twice, by
  the same rank or another;
- an epoch that is over (a later one is in the logs) read every slot: its targets are
  positions 1 .. E*B*T*W, each exactly once, in E steps on every rank;
- with --data (the train split's shards, as given to train.py): every logged token is the
  shards' token at that position, complete epochs have the E = (N-1) // (B*T*W) steps the
  split allows, and the tokens never read (the split's last (N-1) mod (B*T*W)) are named.

Exit status: 0 when every check passes, 1 when one fails (a line per problem), 2 for a usage
error (no logs in OUT, a log this version cannot read, a bad --data).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from loader.errors import LoaderError
from loader.stream import TokenStream, resolve_shards
from prep.errors import UserCommand, UserError
from prep.shards import ShardError

LOG_PATTERN = re.compile(r"windows_rank(\d+)\.jsonl")
FIELDS = ("batch", "rank", "epoch", "start", "T", "first_tokens", "last_target")
SHOWN = 5  # problems of one kind listed before "... and N more"


@dataclass(frozen=True)
class Window:
    """One logged batch: rank `rank`'s loader step `batch`, tokens [start, start + B*T]."""

    rank: int
    batch: int
    epoch: int
    start: int
    first_tokens: tuple[int, ...]
    last_target: int


@dataclass
class RankLog:
    """One rank's log: its windows in file order, B and T, and notes on what was left out."""

    rank: int
    path: Path
    windows: list[Window]
    B: int
    T: int
    notes: list[str]


def _int(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def read_log(path: Path, rank: int) -> RankLog:
    """Rank `rank`'s windows from `path`. A last line without its newline (the run was killed
    while writing it) is left out with a note; any other bad line is a UserError."""
    lines = path.read_text().split("\n")
    notes = []
    if lines[-1]:
        notes.append(f"{path.name}: the last line is incomplete (the run was killed while writing it); left out")
    lines.pop()
    windows: list[Window] = []
    shape: tuple[int, int] | None = None
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{where}: not a JSON line") from None
        missing = [name for name in FIELDS if not isinstance(record, dict) or name not in record]
        if missing:
            raise UserError(f"{where}: no {', '.join(missing)}: not a --log-windows log of this version "
                            "(run train.py with --log-windows again)")
        tokens = record["first_tokens"]
        if not (all(_int(record[name], 0) for name in ("batch", "epoch", "start", "last_target"))
                and _int(record["T"], 1) and isinstance(tokens, list) and tokens and all(_int(t, 0) for t in tokens)):
            raise UserError(f"{where}: a value is not what train.py writes: {line[:120]}")
        if record["rank"] != rank:
            raise UserError(f"{where}: rank {record['rank']!r} in the log of rank {rank}")
        if shape is None:
            shape = (len(tokens), record["T"])
        elif (len(tokens), record["T"]) != shape:
            raise UserError(f"{where}: B={len(tokens)} x T={record['T']} after B={shape[0]} x T={shape[1]} "
                            "in the same log")
        windows.append(Window(rank, record["batch"], record["epoch"], record["start"], tuple(tokens),
                              record["last_target"]))
    if shape is None:
        raise UserError(f"{path}: no windows logged")
    return RankLog(rank, path, windows, *shape, notes)


def find_logs(out: Path) -> list[RankLog]:
    """Every rank's log in `out`, by rank; a UserError when there are none, or B or T differ."""
    if not out.is_dir():
        raise UserError(f"{out}: no such directory (give train.py's --out)")
    found = sorted((int(m.group(1)), p) for p in out.iterdir() if (m := LOG_PATTERN.fullmatch(p.name)))
    if not found:
        raise UserError(f"{out}: no windows_rank<r>.jsonl: train with --log-windows to write them")
    logs = [read_log(path, rank) for rank, path in found]
    shapes = {(log.B, log.T) for log in logs}
    if len(shapes) > 1:
        raise UserError(f"{out}: the ranks' logs disagree on B x T ({', '.join(f'{b}x{t}' for b, t in sorted(shapes))})")
    return logs


class Problems:
    """Problems by kind, each kind shown up to SHOWN times, then counted."""

    def __init__(self) -> None:
        self._kinds: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, message: str) -> None:
        self._kinds[kind].append(message)

    def __len__(self) -> int:
        return sum(len(v) for v in self._kinds.values())

    def lines(self) -> list[str]:
        out = []
        for messages in self._kinds.values():
            out += messages[:SHOWN]
            if len(messages) > SHOWN:
                out.append(f"... and {len(messages) - SHOWN} more like it")
        return out


@dataclass
class Report:
    """The audit's findings: summary lines, notes and problems."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: Problems = field(default_factory=Problems)


def check_numbering(logs: list[RankLog], problems: Problems) -> None:
    """Ranks 0..W-1 all present; each rank's batches 0, 1, 2, ... in order, epochs never
    going back."""
    ranks = [log.rank for log in logs]
    absent = sorted(set(range(max(ranks) + 1)) - set(ranks))
    if absent:
        problems.add("ranks", f"no log of rank(s) {', '.join(map(str, absent))}: their windows cannot be checked")
    for log in logs:
        for expected, w in enumerate(log.windows):
            if w.batch != expected:
                gap = f"batch {expected}" if w.batch == expected + 1 else f"batches {expected}-{w.batch - 1}"
                what = "repeated or out of order" if w.batch < expected else f"{gap} missing"
                problems.add("numbering", f"rank {log.rank}: batch {w.batch} where {expected} was due ({what})")
                break
        for a, b in zip(log.windows, log.windows[1:]):
            if b.epoch < a.epoch:
                problems.add("numbering", f"rank {log.rank}: batch {b.batch} in epoch {b.epoch} after epoch {a.epoch}")
                break


def check_epochs(logs: list[RankLog], report: Report) -> dict[int, int]:
    """No target twice within an epoch; a complete epoch reads exactly positions 1..E*B*T*W
    in E steps per rank. Returns {complete epoch: E}."""
    B, T, world = logs[0].B, logs[0].T, max(log.rank for log in logs) + 1
    step = B * T
    by_epoch: dict[int, list[Window]] = defaultdict(list)
    steps: dict[int, dict[int, int]] = defaultdict(lambda: dict.fromkeys((log.rank for log in logs), 0))
    for log in logs:
        for w in log.windows:
            by_epoch[w.epoch].append(w)
            steps[w.epoch][w.rank] += 1
    last = max(by_epoch)
    complete = {}
    for epoch in sorted(by_epoch):
        # equal-length ranges sorted by start: any overlap shows between neighbours
        windows = sorted(by_epoch[epoch], key=lambda w: (w.start, w.rank, w.batch))
        twice = 0
        for a, b in zip(windows, windows[1:]):
            if b.start < a.start + step:  # a's targets a.start+1 .. a.start+step reach into b's
                twice += 1
                report.problems.add("twice", f"epoch {epoch}: targets {b.start + 1:,}-{a.start + step:,} read twice: "
                                    f"by rank {a.rank} batch {a.batch} and rank {b.rank} batch {b.batch}")
        per_rank = steps[epoch]  # windows of this epoch on each rank
        if epoch == last:
            ranks = ", ".join(f"rank {r}: {n:,}" for r, n in per_rank.items())
            report.lines.append(f"epoch {epoch}: {len(windows):,} window(s) so far ({ranks})"
                                + ("" if twice else "; no target read twice"))
            continue
        E = max(per_rank.values())
        if min(per_rank.values()) != E:
            report.problems.add("uneven", f"epoch {epoch}: the ranks took different numbers of steps ("
                                f"{', '.join(f'rank {r}: {n:,}' for r, n in per_rank.items())})")
        ends = E * world * step
        covered = _covered(windows, step)
        gaps = [(lo, hi) for lo, hi in _gaps(covered, 1, ends)]
        for lo, hi in gaps:
            report.problems.add("gap", f"epoch {epoch}: targets {lo:,}-{hi:,} never read")
        if covered and covered[-1][1] > ends:
            report.problems.add("gap", f"epoch {epoch}: targets up to {covered[-1][1]:,} read, past the "
                                f"{ends:,} that {E:,} steps x {world} rank(s) x {step:,} cover")
        if not gaps and not twice and min(per_rank.values()) == E:
            report.lines.append(f"epoch {epoch}: complete, {E:,} steps x {world} rank(s): targets 1-{ends:,} "
                                "each read exactly once")
        complete[epoch] = E
    return complete


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


def check_data(logs: list[RankLog], data: str, complete: dict[int, int], report: Report) -> None:
    """Every logged token against the shards; complete epochs against E = (N-1) // (B*T*W)."""
    B, T, world = logs[0].B, logs[0].T, max(log.rank for log in logs) + 1
    try:
        stream = TokenStream(resolve_shards(data, "train"))
    except (LoaderError, ShardError) as e:
        raise UserError(f"--data {data}: {e}") from None
    try:
        N = stream.num_tokens
        window = np.empty(B * T + 1, dtype=np.uint16)
        differ = 0
        for log in logs:
            for w in log.windows:
                if w.start + B * T + 1 > N:
                    differ += 1
                    report.problems.add("data", f"rank {log.rank} batch {w.batch}: window at {w.start:,} runs past "
                                        f"the split's {N:,} tokens: is --data the run's data?")
                    continue
                stream.read_into(w.start, window)
                if list(window[:-1:T]) != list(w.first_tokens) or int(window[-1]) != w.last_target:
                    differ += 1
                    path, at = stream.locate(w.start)
                    report.problems.add("data", f"rank {log.rank} batch {w.batch}: the tokens logged differ from "
                                        f"the shards' at {w.start:,} ({path}, token {at:,}): is --data the run's data?")
        E = (N - 1) // (B * T * world)
        for epoch, steps in complete.items():
            if steps != E:
                report.problems.add("steps", f"epoch {epoch}: {steps:,} steps, but the split's {N:,} tokens make "
                                    f"{E:,} steps of {B}x{T} x {world} rank(s)")
        total = sum(len(log.windows) for log in logs)
        report.lines.append(f"--data {data}: {N:,} tokens; " + (
            f"{differ:,} of the {total:,} logged window(s) differ from the shards" if differ
            else f"the {total:,} logged window(s) match the shards' tokens"))
        read = E * B * T * world  # positions 0 .. read are read in every complete epoch
        unread = "nothing" if read == N - 1 else f"the last {N - 1 - read:,} token(s), positions {read + 1:,}-{N - 1:,}"
        report.lines.append(f"never read in any epoch: {unread} (less than one step of {B}x{T} x {world} rank(s))")
    finally:
        stream.close()


def audit(out: Path, data: str | None = None) -> Report:
    """Check `out`'s --log-windows logs (and, with `data`, against the train split)."""
    logs = find_logs(out)
    report = Report()
    B, T = logs[0].B, logs[0].T
    world = max(log.rank for log in logs) + 1
    total = sum(len(log.windows) for log in logs)
    report.lines.append(f"{out}: {world} rank(s), {total:,} window(s) of B={B} x T={T} logged")
    for log in logs:
        report.notes += log.notes
    check_numbering(logs, report.problems)
    complete = check_epochs(logs, report)
    if data is not None:
        check_data(logs, data, complete, report)
    return report


@click.command("audit", cls=UserCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--data", default=None, show_default="none: the logs alone",
              help="The run's --data (train split): check every logged token against it.")
def main(out: Path, data: str | None) -> None:
    """Check that a `train.py --log-windows` run read no token twice in an epoch, and every
    slot of each complete epoch; exit status 1 if not."""
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
    main()
