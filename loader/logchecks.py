"""The audit's checks of the window logs alone (loader.audit): each rank's batches numbered
0, 1, 2, ... with every rank's log there, and within each epoch no target read twice and,
once the epoch is over, every one of its targets read once."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from loader.windowlog import RankLog, Window

SHOWN = 5  # problems of one kind listed before "... and N more like it"


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


