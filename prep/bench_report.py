"""The benchmark's human table: `prep tokenize`'s throughput against the single-thread
baseline, then its memory growth, each with its target, and the notes that make a miss no
verdict on the pipeline (a small --mb, a machine that cannot run 2 processes twice as fast).
"""

from __future__ import annotations

SPEEDUP_TARGET = 1.7  # with 2 workers, vs the single-thread baseline
GROWTH_TARGET = 0.10  # peak-RSS growth per extra byte of text
TARGET_MB = 50.0  # the corpus size the targets are stated for (the default --mb)


def cores(other_cores: float | None) -> str:
    """others_cpu's figure, "n/a" for a span too short to say it."""
    return "n/a" if other_cores is None else f"{other_cores:.2f}"


def megabytes(n_bytes: int) -> str:
    """A size in MB to one decimal, or to two significant digits under 1 MB: --mb 0.2's quarter-size
    text (0.05 MB) was said as 0.1 MB, and --mb 0.01's as 0.0."""
    mb = n_bytes / 1e6
    return f"{mb:.1f}" if mb >= 1 else f"{mb:.2g}"


def processes(n: int) -> str:
    """'1 process', '2 processes'."""
    return f"{n} process{'' if n == 1 else 'es'}"


def _rss_cell(peak: dict) -> str:
    """One run's peaks: parent / max worker / sum, '-' for the worker where there was none (the
    parent encoded: a small input, or 1 worker)."""
    worker = f"{peak['max_worker_mib']:.0f}" if peak["processes"] > 1 else "-"
    return f"{peak['parent_mib']:.0f} / {worker} / {peak['sum_mib']:.0f}"


def format_report(result: dict) -> str:
    """The human table: throughput vs the baseline, then memory growth, each with its target.
    The name columns are as wide as their longest name ("2 worker(s) (1 used)": a small input)."""
    cfg, base, capacity = result["config"], result["baseline"], result["capacity"]
    runs = []
    for run in result["pipeline"]:
        # a small input: fewer workers
        used = f" ({run['workers_used']} used)" if run["workers_used"] != run["workers"] else ""
        runs.append((f"prep tokenize {run['variant']}-doc, {run['workers']} worker(s){used}", run))
    width = max([38, *(len(name) for name, _ in runs)])
    lines = [f"prep tokenize benchmark: {megabytes(result['text_bytes'])} MB of text ({cfg['source']} "
             f"paragraphs shuffled, seed {cfg['seed']}); many-doc variant {result['documents']:,} docs; "
             f"{result['machine']['cpus']} CPUs; best of {cfg['repeat']}",
             f"parallel capacity: {processes(cfg['workers'])} encode{'s' if cfg['workers'] == 1 else ''} "
             f"{capacity['speedup']:.2f}x as fast as one "
             f"(others used {cores(capacity['other_cores'])} cores meanwhile); others used "
             f"{cores(result['other_load']['other_cores'])} cores over the whole run",
             f"{'run':{width}s} {'seconds':>8s} {'MB/s':>7s} {'vs base':>8s} {'others':>7s}  tokens",
             f"{'baseline encode_ordinary, 1 thread':{width}s} {base['seconds']:8.2f} "
             f"{base['mb_per_s']:7.2f} {1:7.2f}x {cores(base['other_cores']):>7s}  {base['tokens']:,}"]
    for name, run in runs:
        note = "" if run["identical_to_1_worker"] else "  SHARDS DIFFER FROM 1 WORKER"
        if run["workers_used"] == 2:
            note += f"  (target >= {SPEEDUP_TARGET}x)"
        lines.append(f"{name:{width}s} {run['seconds']:8.2f} {run['mb_per_s']:7.2f} "
                     f"{run['vs_baseline']:7.2f}x {cores(run['other_cores']):>7s}  {run['tokens']:,}{note}")
    rows = []
    for rss in result["rss"]:
        # one process each time: no worker started, the parent encoded (its peak is the encoding's)
        alone = rss["small"]["processes"] == rss["large"]["processes"] == 1
        used = f" ({'1 used: ' if rss['workers'] > 1 else ''}the parent encoded)" if alone else ""
        name = (f"{rss['variant']}-doc, {rss['workers']} worker(s){used}, "
                f"{megabytes(rss['small_text_bytes'])} -> {megabytes(rss['large_text_bytes'])} MB")
        rows.append((name, [_rss_cell(rss["small"]), _rss_cell(rss["large"])], rss))
    width = max([44, *(len(name) for name, _, _ in rows)])
    cell = max([16, *(len(c) for _, cells, _ in rows for c in cells)])
    lines.append(f"{'peak RSS, MiB (parent / max worker / sum)':{width}s} {'1x text':>{cell}s} "
                 f"{'4x text':>{cell}s}  growth")
    for name, cells, rss in rows:
        start = f"{name:{width}s} {cells[0]:>{cell}s} {cells[1]:>{cell}s}  "
        small, large = rss["small"]["processes"], rss["large"]["processes"]
        if small != large:  # a small input is tokenized in-process
            lines.append(f"{start}n/a: the 1x text ran in {small} process(es), the 4x text in {large} (a "
                         f"small input gets fewer workers): give a larger --mb")
        elif rss["growth_sum"] is None:
            lines.append(f"{start}n/a: the two corpora are the same text (a paragraph of the source is --mb "
                         f"long or more: give a larger --mb or another --source)")
        else:
            lines.append(f"{start}{rss['growth_sum']:6.1%} of the extra text (parent alone "
                         f"{rss['growth_parent']:.1%}; target < {GROWTH_TARGET:.0%})")
    # what makes a miss no verdict on the pipeline
    small, mb = result["text_bytes"] < 0.99 * TARGET_MB * 1e6, megabytes(result["text_bytes"])
    if small:
        lines.append(f"note: the targets are stated for {TARGET_MB:g} MB (the default --mb): at {mb} MB "
                     f"fixed costs (workers starting, files written) weigh more, and the RSS growth is a "
                     f"few MiB over a little text")
    # The target is for 2 workers, against the baseline. 2 workers are at most `capacity` times
    # 1 worker, which is itself faster than the baseline (encode_to_numpy: no list of ids) on
    # enough text: a miss is the machine's where `capacity` is under the target, else the input's
    # at a small --mb (1 worker slower than the baseline there: workers starting, files written)
    one = max((run["vs_baseline"] for run in result["pipeline"] if run["workers"] == 1), default=1.0)
    speedup, ceiling = capacity["speedup"], capacity["speedup"] * one
    if cfg["workers"] == 2 and ceiling < SPEEDUP_TARGET:
        if speedup < SPEEDUP_TARGET:
            lines.append(f"note: this machine ran 2 processes only {speedup:.2f}x as fast as one (busy, or "
                         f"one core): 2 workers can be about that much faster than 1 ({one:.2f}x the "
                         f"baseline here), {ceiling:.2f}x the baseline at most, so the speedup target "
                         f"cannot be met here")
        else:
            two_worker_runs = [run for run in result["pipeline"] if run["workers"] == 2]
            fewer = (" (and a small input gets fewer workers: the 2-worker runs used 1)"
                     if all(run["workers_used"] < 2 for run in two_worker_runs) else "")
            why = (f"at {mb} MB, too little text for the workers to pay off{fewer}: give a larger --mb "
                   f"(the default, {TARGET_MB:g})" if small else
                   "a run's own cost (1 worker vs the baseline) limits it, not the machine")
            lines.append(f"note: this machine ran 2 processes {speedup:.2f}x as fast as one, but 1 worker "
                         f"encoded only {one:.2f}x as fast as the baseline, so 2 workers can be "
                         f"{ceiling:.2f}x the baseline at most and the speedup target cannot be met: {why}")
    return "\n".join(lines)
