"""`python -m loader.bench [DIR]`: the loader against its floor and two baselines, one run.

On the same shards and the same (B, T), steady state (warm page cache, after a warm-up),
median over repeats of the time per window of B*T+1 tokens:

- raw copy: np.copyto of B*T+1 uint16 from a memmap into a preallocated buffer (the floor);
- TokenLoader.next_window and .next_batch("cpu"), with and without the prefetch thread;
- nanoGPT's get_batch: B random offsets, per-row astype(int64), torch.stack, as nanoGPT's
  train.py writes it (a fresh np.memmap per call, its fix for issue #287), and with the map
  opened once; pin_memory() per batch where CUDA exists;
- build-nanogpt's DataLoaderLite: the whole shard loaded up front as int64, then views.

With --cold, shuffled windows on a cold page cache as well (the shards' pages dropped before
each method; Linux): the loader as it reads them (readahead off, each window's pages asked
for), the same loader with the kernel's readahead left on, and os.pread of the same windows
(the floor); median time per window and the bytes read from disk per byte delivered. Pass a
DIR larger than readahead's reach (GBs) for the figures a big dataset sees.

Without DIR it writes a synthetic set of random tokens (--tokens, --shards) in a temp dir,
all of it train shards. An option given that changes nothing (--tokens or --shards with a DIR,
--split val without one) is a note on stderr. A bad DIR is one line on stderr and exit status 2.

This module is the command (its options, the table, errors and stops); the baselines are in
loader.bench_baselines, the timing in loader.bench_measure, the synthetic set in
loader.bench_synthetic.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import tempfile

from loader.bench_measure import COLD_METHODS, run, run_cold
from loader.bench_synthetic import check_synthetic, synthesize
from loader.errors import LoaderError
from prep.signals import SignalStop, stops_raise
from prep.errors import out_of_room, unsearchable_error
from prep.shards import SPLITS, ShardError
from prep.streams import READER_GONE_STATUS, flush_stdout, paths_print_as_named, point_at_devnull, say


def report(r: dict) -> str:
    """The figures as a table, then the ratios, for a human."""
    lines = [
        f"{r['path']}: {r['shards']} shards, N={r['num_tokens']:,} tokens, B={r['B']} "
        f"T={r['T']}, {r['windows']} windows x {r['repeats']} repeats (median), warm page cache",
        f"{'method':<50} {'us/window':>10} {'Mtok/s':>9}",
    ]
    for name, m in r["methods"].items():
        lines.append(f"{name:<50} {m['us_per_window']:>10.1f} {m['tokens_per_s'] / 1e6:>9.1f}")
    lite = r["dataloaderlite_load"]
    lines.append(
        f"DataLoaderLite shard load: {lite['seconds']:.2f} s for {lite['tokens']:,} tokens "
        f"({lite['resident_bytes'] / 2**20:.0f} MiB int64 resident; "
        f"{lite['us_per_window_amortized']:.1f} us/window amortized)"
    )
    lines.append(f"time inside each call with {r['work_us_between_calls']:.0f} us of other work "
                 "between calls (a training loop's view):")
    for name, us in r["inside_us"].items():
        lines.append(f"  {name:<48} {us:>10.1f}")
    for name, value in r["ratios"].items():
        lines.append(f"ratio {name}: {value:.2f}x")
    if "cold_shuffled" in r:
        cold = r["cold_shuffled"]
        lines.append(f"shuffled windows on a cold page cache (median of {cold[COLD_METHODS[0]]['windows']}, "
                     f"at most an epoch's):")
        if cold[COLD_METHODS[0]]["disk_bytes_per_byte"] == 0:
            lines.append("  (nothing was read from disk: the shards are on a tmpfs, or their pages could not be "
                         "dropped; these are not cold figures)")
        floor = cold[COLD_METHODS[0]]["ms_per_window"]
        for name, m in r["cold_shuffled"].items():
            times = _times_the_floor(m["ms_per_window"], floor)
            lines.append(f"  {name:<48} {m['ms_per_window']:>8.3f} ms ({times}), "
                         f"{m['disk_bytes_per_byte']:,.1f} bytes read from disk per byte")
    return "\n".join(lines)


def _times_the_floor(ms: float, floor: float) -> str:
    """`ms` as a multiple of the floor's `floor`, to two significant digits under 1: at one decimal
    a method far under the floor (a shard within readahead's reach, its windows warm after the first)
    was '0.0x the floor', as though it took no time; a floor of 0 ms (too short for the clock) has
    no multiple, where it was a division by zero."""
    if floor <= 0:
        return "the floor too short to time"
    ratio = ms / floor
    return f"{ratio:6.1f}x the floor" if ratio >= 1 else f"{ratio:6.2g}x the floor"



def _measure(args: argparse.Namespace, sizes: tuple) -> dict:
    """run() on --path, or on a synthetic set written for it (and removed after it)."""
    def measure(path: str, split: str) -> dict:
        result = run(path, split, *sizes)
        if args.cold:
            result["cold_shuffled"] = run_cold(path, split, args.B, args.T, args.windows)
        return result

    if getattr(args, "path", None) is not None:
        return measure(args.path, args.split)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        synthesize(tmp, args.tokens, args.shards)
        result = measure(tmp, "train")
    result["path"] = f"synthetic ({args.tokens:,} random tokens, {args.shards} shards)"
    return result


class _Given(argparse.Action):
    """An option stored as argparse's own store does, its name kept in `given` as well: a note on an
    option that changes nothing is for one the command line names, never for a default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = namespace.given | {self.dest}


def option_notes(args: argparse.Namespace) -> list[str]:
    """The options given that change nothing in this run, worded as train.py's notes
    (trainer.notes.no_effect): the synthetic set's sizes with a path, and a --split other than the
    synthetic set's train without one."""
    if getattr(args, "path", None) is not None:
        sizes = [f"--{name}" for name in ("tokens", "shards") if name in args.given]
        one = len(sizes) == 1
        return [f"{' and '.join(sizes)} {'has' if one else 'have'} no effect with a dataset path: "
                f"{'it sizes' if one else 'they size'} the synthetic set, written only without one"
                ] if sizes else []
    if "split" in args.given and args.split != "train":
        return [f"--split {args.split} has no effect without a dataset path: the synthetic set is train "
                "shards only"]
    return []


class _Parser(argparse.ArgumentParser):
    """argparse with a user mistake as one line, like every other command here (argparse, not
    click, for this command line; click is imported all the same, with prep.streams' helpers for
    standard output)."""

    def error(self, message: str):
        self.exit(2, f"Error: {self.prog}: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m loader.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("path", nargs="?", default=argparse.SUPPRESS,  # no "(default: None)" in -h
                        help="dataset dir or shard glob (default: a synthetic set)")
    parser.set_defaults(given=frozenset())  # (the options _Given saw)
    parser.add_argument("--split", default="train", action=_Given, help="split to read from a directory")
    parser.add_argument("--B", type=int, default=16, help="sequences per batch")
    parser.add_argument("--T", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--windows", type=int, default=1000, help="windows timed per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median kept)")
    parser.add_argument("--tokens", type=int, default=64_000_000, action=_Given, help="synthetic tokens")
    parser.add_argument("--shards", type=int, default=2, action=_Given, help="synthetic shards")
    parser.add_argument("--work-us", type=float, default=1000.0,
                        help="simulated train step between calls for the time-inside figures")
    parser.add_argument("--cold", action="store_true",
                        help="also time shuffled windows on a cold page cache (Linux)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.cold and not (hasattr(os, "posix_fadvise") and os.path.exists("/proc/self/io")):
        parser.error("--cold needs Linux (posix_fadvise to drop the page cache, /proc/self/io to count its reads)")
    for name in ("B", "T", "windows", "repeats", "tokens", "shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if getattr(args, "path", None) is None:  # the synthetic set: what cannot be written, said before any work
        check_synthetic(parser, args.tokens, args.shards, args.B * args.T + 1)
    if args.split not in SPLITS:  # the loader's own message would not name --split
        parser.error(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if not 0 <= args.work_us <= 1e9:  # nan fails this too
        parser.error(f"--work-us must be a number of microseconds >= 0, got {args.work_us}")
    for note in option_notes(args):  # before the work: Ctrl-C is cheap
        say(f"note: {note}")  # stderr closed or full: nowhere (not into stdout's JSON), the work goes on
    sizes = (args.B, args.T, args.windows, args.repeats, args.work_us)
    try:
        with stops_raise():  # a synthetic set of --tokens is GBs: removed on SIGTERM and SIGHUP too
            result = _measure(args, sizes)
    except (LoaderError, ShardError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the synthetic set filled the disk after all (check_synthetic estimates)
        closed = unsearchable_error(e)  # (pathlib's is_dir raises EACCES below another user's 700 directory)
        if closed is not None:
            print(f"Error: {closed.format_message()}", file=sys.stderr)
            return 2
        if not out_of_room(e):
            raise
        print(f"Error: {parser.prog}: {e.strerror}: the synthetic set did not fit in {tempfile.gettempdir()} "
              f"(TMPDIR sets it); nothing is left there", file=sys.stderr)
        return 1  # the machine's, not a mistake: as prep.bench
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the synthetic set is gone (the with above), nothing printed
        signum = e.signum if isinstance(e, SignalStop) else None
        print(f"{parser.prog}: {f'stopped by {signal.Signals(signum).name}' if signum else 'interrupted'}",
              file=sys.stderr)
        return 128 + signum if signum else 130
    try:
        print(json.dumps(result, indent=2) if args.json else report(result))
        flush_stdout()  # (none where it started closed, `>&-`)
    except OSError as e:  # `> /dev/full`, or a pipe closed early (`| head -1`)
        sys.stdout = open(os.devnull, "w")  # else the interpreter's last flush fails again
        if e.errno == errno.EPIPE:  # the reader has what it wanted: quietly, as prep's commands do
            point_at_devnull(1)
            return READER_GONE_STATUS
        print(f"Error: {parser.prog}: cannot write to standard output ({e.strerror})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    paths_print_as_named()
    sys.exit(main())
