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

import os
from pathlib import Path

from prep.signals import interrupt_exits_while_importing

# Ctrl-C or SIGTERM while click imports (run as a script; the loader package, torch with it, has
# its own guard): one line, at once
with interrupt_exits_while_importing(__name__ == "__main__"):
    from prep.errors import UserCommand, UserError  # first: see prep.streams.reserve_standard_fds
    from prep.streams import paths_print_as_named

    import click
    import numpy as np

    from loader.errors import LoaderError
    from loader.logchecks import Report, check_epochs, check_numbering
    from loader.resolve import resolve_shards
    from loader.runrecord import NotThisRun, Trained, check_logged_through, check_ranks_apart, read_trained
    from loader.state import dataset_difference
    from loader.stream import TokenStream
    from loader.windowlog import RankLog, find_logs, window_crc32
    from prep.epoch import steps_per_epoch
    from prep.shards import ShardError


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
        elif stream is None and not isinstance(trained, NotThisRun):  # no record of the run's data to name
            report.notes.append("no --data: the windows were not checked against the shards; give the run's "
                                "--data to check every token of each")
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
