"""`python -m prep.bench`: how fast `prep tokenize` is, against plain tiktoken, in one run.

On a corpus generated deterministically (paragraphs of tiny Shakespeare or of the offline
pydoc text, shuffled with a fixed seed), it measures:

- baseline: single-thread `encode_ordinary` over the whole text (in ~1 MB chunks), MB/s;
- the real pipeline, `prep.tokenize.tokenize_corpus`, with 1 and with N workers, on a
  SINGLE-document variant (one .txt) and a MANY-document one (JSONL, a few KB per document):
  MB/s, speedup over the baseline, and whether 1 and N workers wrote identical shards;
- the machine's parallel capacity, in the same run: N processes encoding at once vs one (the
  ceiling for any N-worker speedup), and the CPU others used meanwhile (a shared machine);
- peak RSS of `python -m prep.cli tokenize` at two corpus sizes, one 4x the other
  (prep.measure: per-process VmHWM of the command and its workers). We report the parent's
  peak, the largest worker's, and the sum of all (an upper bound on what was resident at
  once; pages shared after fork count in every process, and cancel in the difference).
  Growth = (sum_4x - sum_1x) / (extra text bytes): streaming keeps it near 0.

MB means 10**6 bytes of UTF-8 text. Targets (printed, never asserted): N-worker speedup
>= 1.7x the baseline with 2 workers; memory growth < 10% of the extra text. The corpus is
made by prep.bench_corpus, the table by prep.bench_report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prep.signals import SignalStop, interrupt_exits_while_importing, stops_raise

# Ctrl-C or SIGTERM while click, numpy and tiktoken import (run as a script): one line, at once
with interrupt_exits_while_importing(__name__ == "__main__"):
    import click

    from prep.bench_corpus import make_documents, source_paragraphs, write_variants
    from prep.bench_report import TARGET_MB, format_report, megabytes, processes
    from prep.errors import UserCommand, UserError, out_of_room
    from prep.meta import read_meta
    from prep.output import OutputError
    from prep.measure import best_of, machine, others_cpu, parallel_capacity, peak_rss, physical_memory
    from prep.streams import say
    from prep.tokenize import default_workers, tokenize_corpus
    from prep.tokenizer import get_encoding
    from tqdm import tqdm


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run; `mb` is the large corpus, the RSS comparison also uses `mb / 4`."""

    mb: float = TARGET_MB
    workers: int = field(default_factory=default_workers)  # the CPUs this process may use
    seed: int = 0
    source: Path | None = None  # text to draw paragraphs from; default: ./input.txt or pydoc
    chunk_chars: int | None = None  # passed to tokenize (its unit of work); None: its default
    val_fraction: float | None = None  # passed to tokenize; None: its default
    repeat: int = 1  # timings: best of this many

    def __post_init__(self):
        if not self.mb > 0:
            raise ValueError(f"mb must be > 0, got {self.mb}")
        if min(self.workers, self.repeat, 1 if self.chunk_chars is None else self.chunk_chars) < 1:
            raise ValueError(f"workers, repeat, chunk_chars must be >= 1: {self.workers}, {self.repeat}, "
                             f"{self.chunk_chars}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        # not is_file(): `--source <(...)` (a pipe) and /dev/null read as any file does, and click
        # lets them through; refused here, they were a traceback
        if self.source is not None and (not Path(self.source).exists() or Path(self.source).is_dir()):
            raise ValueError(f"source {self.source}: no such file")

    def options(self) -> dict:
        """The tokenize settings this run overrides, as keyword arguments."""
        return {k: v for k, v in (("chunk_chars", self.chunk_chars), ("val_fraction", self.val_fraction))
                if v is not None}



def baseline_run(text: str, chunk_chars: int = 1 << 20) -> dict:
    """Single-thread encode_ordinary over `text` in newline-aligned chunks: seconds, tokens."""
    enc = get_encoding()  # loaded before the clock starts
    start, num_tokens, t0 = 0, 0, time.perf_counter()
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end < 0 else end + 1
        num_tokens += len(enc.encode_ordinary(text[start:end]))
        start = end
    return {"seconds": time.perf_counter() - t0, "tokens": num_tokens}


def pipeline_run(path: Path, out: Path, workers: int, options: dict) -> dict:
    """Time `tokenize_corpus` (what `prep tokenize` calls), its default settings otherwise."""
    t0 = time.perf_counter()
    result = tokenize_corpus([str(path)], out, name="bench", workers=workers, progress=False,
                             overwrite=True, **options)
    seconds = time.perf_counter() - t0
    meta = read_meta(out)
    shas = [s["sha256"] for split in ("train", "val") for s in meta["splits"][split]["shards"]]
    return {"seconds": seconds, "tokens": sum(result.tokens.values()), "workers_used": result.workers,
            "documents": result.documents, "shas": shas}


def _prep_env() -> dict:
    """The environment for `python -m prep.cli`: this very `prep` importable, installed or not."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return os.environ | {"PYTHONPATH": root + (os.pathsep + path if path else "")}


def tokenize_argv(path: Path, out: Path, workers: int, options: dict) -> list[str]:
    """The `prep tokenize` command line the RSS measurement runs in a fresh process."""
    flags = {"chunk_chars": "--chunk-size", "val_fraction": "--val-fraction"}
    return [sys.executable, "-m", "prep.cli", "tokenize", str(path), "--out", str(out), "--workers",
            str(workers), "--overwrite", "--quiet", *(x for k, v in options.items() for x in (flags[k], str(v)))]


def run_bench(cfg: BenchConfig, log=say) -> dict:
    """The whole benchmark in a temporary directory (removed at the end); returns the figures."""
    paragraphs, label = source_paragraphs(cfg.source)
    large, options = int(cfg.mb * 1e6), cfg.options()
    result = {"config": asdict(cfg) | {"source": label}, "machine": machine(), "pipeline": [], "rss": []}
    with tempfile.TemporaryDirectory(prefix="prep-bench-") as tmp, others_cpu() as whole_run:
        tmp = Path(tmp)
        corpora = {}  # size -> (single path, many path, text bytes, documents)
        for size_name, size in (("small", large // 4), ("large", large)):
            docs = make_documents(paragraphs, size, cfg.seed)
            corpora[size_name] = (*write_variants(docs, tmp, size_name),
                                  sum(len(d.encode("utf-8")) for d in docs), len(docs))
        single, many, text_bytes, num_docs = corpora["large"]
        result["text_bytes"], result["documents"] = text_bytes, num_docs
        log(f"corpus: {megabytes(text_bytes)} MB of {label} paragraphs; many-doc variant: {num_docs:,} docs")

        text = single.read_text(encoding="utf-8")
        with others_cpu() as load:
            capacity = parallel_capacity(text[: 1 << 20], cfg.workers)
        result["capacity"] = {"speedup": capacity, "other_cores": load["other_cores"]}
        log(f"parallel capacity, {processes(cfg.workers)}: {capacity:.2f}x one")
        base = result["baseline"] = best_of(cfg.repeat, baseline_run, text)
        del text
        base_mb_s = base["mb_per_s"] = text_bytes / 1e6 / base["seconds"]
        log(f"baseline encode_ordinary: {base['seconds']:.2f} s, {base_mb_s:.2f} MB/s")

        for variant, path in (("single", single), ("many", many)):
            shas = {}
            for workers in sorted({1, cfg.workers}):
                out = tmp / f"out_{variant}_{workers}"
                run = best_of(cfg.repeat, pipeline_run, path, out, workers, options)
                shutil.rmtree(out)
                shas[workers] = run.pop("shas")
                mb_s = text_bytes / 1e6 / run["seconds"]
                result["pipeline"].append(run | {"variant": variant, "workers": workers, "mb_per_s": mb_s,
                                                 "vs_baseline": mb_s / base_mb_s,
                                                 "identical_to_1_worker": shas[workers] == shas[1]})
                log(f"pipeline {variant}, {workers} worker(s): {run['seconds']:.2f} s, {mb_s:.2f} MB/s")

        for variant, column in (("single", 0), ("many", 1)):
            peaks = {}
            for size_name in ("small", "large"):
                out = tmp / f"rss_{variant}_{size_name}"
                peaks[size_name] = peak_rss(tokenize_argv(corpora[size_name][column], out, cfg.workers, options),
                                            env=_prep_env())
                shutil.rmtree(out, ignore_errors=True)
                log(f"peak RSS {variant}, {size_name}: {peaks[size_name]['sum_mib']:.1f} MiB (sum)")
            extra = corpora["large"][2] - corpora["small"][2]
            small, big = peaks["small"], peaks["large"]
            comparable = extra > 0 and small["processes"] == big["processes"]  # (a small input: no workers)
            growth = lambda key: (big[key] - small[key]) * 2**20 / extra if comparable else None  # noqa: E731
            result["rss"].append({  # growth None: one paragraph of --mb or more is both corpora, or the
                # two ran in different numbers of processes
                "variant": variant, "workers": cfg.workers, "small_text_bytes": corpora["small"][2],
                "large_text_bytes": corpora["large"][2], "small": small, "large": big,
                "growth_sum": growth("sum_mib"), "growth_parent": growth("parent_mib")})
    result["other_load"] = whole_run
    return result



MEMORY_PER_TEXT_BYTE = 12  # an estimate (one run: 93 MB peak at --mb 4, docs/BENCHMARKS.md): text, documents, ids
DISK_PER_TEXT_BYTE = 4  # the corpora (one file and many, at mb and mb / 4) and one output at a time


def check_room(mb: float, tmp: str | None = None) -> None:
    """A user error where --mb is more than this machine's memory or its temporary directory's
    free space can hold (a MemoryError traceback, or the OOM killer, after minutes)."""
    text = mb * 1e6
    tmp = tmp or tempfile.gettempdir()
    memory = physical_memory()
    size = lambda n: tqdm.format_sizeof(n, "B", 1000)  # noqa: E731 (1.20kB, 4.00GB)
    if memory is not None and text * MEMORY_PER_TEXT_BYTE > memory:
        raise UserError(f"--mb {mb:g}: needs about {size(text * MEMORY_PER_TEXT_BYTE)} of memory, more than this "
                        f"machine's {size(memory)} (the corpus is held in memory)")
    free = shutil.disk_usage(tmp).free
    if text * DISK_PER_TEXT_BYTE > free:
        raise UserError(f"--mb {mb:g}: needs about {size(text * DISK_PER_TEXT_BYTE)} in {tmp} (its temporary "
                        f"directory; TMPDIR sets it), which has {size(free)} free")


@click.command(cls=UserCommand, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--mb", type=click.FloatRange(min=0.01, max=1e6), default=TARGET_MB,
              help="Size of the large corpus in MB (10**6 bytes of text); RSS also runs at a quarter.")
@click.option("--workers", type=click.IntRange(min=1), default=default_workers(),
              help="Worker processes for the N-worker runs (1 worker is always measured too).")
@click.option("--seed", type=int, default=0, help="Seed for the corpus shuffle.")
@click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Text to draw paragraphs from [default: ./input.txt if present, else pydoc topics].")
@click.option("--repeat", type=click.IntRange(min=1), default=1, help="Report the best of this many timings.")
@click.option("--chunk-size", "chunk_chars", type=click.IntRange(min=1), default=None,
              help="Passed to prep tokenize's --chunk-size [default: its own].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Passed to prep tokenize's --val-fraction [default: its own].")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print one JSON line instead of the table.")
def main(mb: float, workers: int, seed: int, source: Path | None, repeat: int, chunk_chars: int | None,
         val_fraction: float | None, as_json: bool) -> None:
    """Benchmark `prep tokenize` against single-thread tiktoken, and its memory growth."""
    for flag, value in (("--mb", mb), ("--val-fraction", val_fraction)):
        if value is not None and math.isnan(value):  # click's FloatRange lets nan through
            raise UserError(f"{flag} must be a number, got nan")
    cpus = default_workers()
    if workers > cpus:  # a speedup over one process is bounded by the CPUs; and processes by the thousand
        raise UserError(f"--workers {workers}: more than the {cpus} CPU(s) this process may use, the most a speedup "
                        f"over one process can use")
    check_room(mb)
    config = BenchConfig(mb, workers, seed, source, chunk_chars, val_fraction, repeat)
    try:  # SIGTERM or SIGHUP: the temporary corpora (2.5 times --mb) removed, as at a Ctrl-C
        with stops_raise():
            result = run_bench(config)
    except SignalStop as e:
        say(f"{click.get_current_context().command_path}: stopped by {signal.Signals(e.signum).name}; "
            f"its temporary files are removed")  # (dropped where stderr cannot take it: the status says it)
        sys.exit(128 + e.signum)
    except (OSError, OutputError, RuntimeError) as e:  # a temporary directory that filled up after all
        if not out_of_room(e):  # (check_room estimates); anything else keeps its traceback
            raise
        raise click.ClickException(f"{str(e)[-300:]}: the benchmark's temporary files did not fit in "
                                   f"{tempfile.gettempdir()} (TMPDIR sets it); nothing is left there") from None
    click.echo(json.dumps(result, default=str) if as_json else format_report(result))


if __name__ == "__main__":
    main()
