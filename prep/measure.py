"""Measuring processes on Linux, for the benchmarks: peak RSS of a command and all of its
descendants (the workers), CPU time used by everyone else on the machine, how much parallel
encoding the machine gives right now, and what the machine is. /proc and wait4; no psutil.

Why VmHWM: it is the kernel's per-process peak RSS, so a poller that reads it now and then
still sees the true peak of every process it catches alive (only a worker that lives less
than one poll interval can be missed).
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prep.signals import leave_stops_to_the_parent, signals_deferred


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds this process and its waited-for children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system  # waited-for children included


@contextmanager
def others_cpu() -> Iterator[dict]:
    """Around a measurement: yields a dict that gets wall_s and other_cores (the CPU that other
    processes, and the hypervisor's steal, took meanwhile, in cores) when the block ends.
    Our own children count as ours only once waited for, so wait for them inside the block.
    other_cores is None for a block shorter than MIN_LOAD_SPAN_S: the counters move in clock
    ticks (10 ms), and 2 ms of baseline once read as 4 other cores on a 2-CPU machine."""
    record: dict = {}
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    try:
        yield record
    finally:
        wall = time.perf_counter() - start
        other = max(0.0, busy_cpu_seconds() - busy - (own_cpu_seconds() - own))
        record.update(wall_s=wall, other_cores=other / wall if wall >= MIN_LOAD_SPAN_S else None)


MIN_LOAD_SPAN_S = 0.5  # shorter, a tick or two of error is most of the figure


def best_of(repeat: int, fn, *args) -> dict:
    """The fastest of `repeat` calls of fn (which returns a dict with "seconds"), each with the
    CPU other processes took meanwhile ("other_cores"): a shared machine shows up there."""
    runs = []
    for _ in range(repeat):
        with others_cpu() as load:
            run = fn(*args)
        runs.append(run | {"other_cores": load["other_cores"]})
    return min(runs, key=lambda r: r["seconds"])


def _encode_for(text: str, reps: int, barrier, results) -> None:
    """Encode `text` `reps` times, starting when every process is ready; report the time. A
    Ctrl-C is the parent's to handle (a terminal's goes to the whole group: each of these printed
    its KeyboardInterrupt's traceback); the parent's exit ends these, daemons. SIGTERM (how that
    exit ends them) and SIGHUP end them at once: a fork inherits the benchmark's handlers, which
    raise (stops_raise), and each printed its SignalStop's traceback."""
    leave_stops_to_the_parent()
    from prep.tokenizer import get_encoding

    enc = get_encoding()
    enc.encode_ordinary(text[:1000])
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(reps):
        enc.encode_ordinary(text)
    results.put(time.perf_counter() - t0)


def parallel_capacity(text: str, workers: int, reps: int = 8, rounds: int = 2) -> float:
    """How much faster `workers` processes encode than one, right now: the ceiling for any
    N-worker speedup (about `workers` on idle, dedicated cores). All start at one barrier, so
    none runs alone; capacity = workers * (time of one alone) / (slowest time of all at once),
    each time the best of `rounds`."""
    import multiprocessing

    from prep.workers import start_method_for

    if workers == 1:
        return 1.0
    ctx = multiprocessing.get_context(start_method_for(None))  # started as the encoder pool's workers are
    best = {}
    for count in [1, workers] * rounds:
        barrier, results = ctx.Barrier(count), ctx.Queue()
        procs = [ctx.Process(target=_encode_for, args=(text, reps, barrier, results), daemon=True)
                 for _ in range(count)]
        for proc in procs:
            proc.start()
        slowest = max(results.get() for _ in procs)
        for proc in procs:
            proc.join()
        best[count] = min(best.get(count, slowest), slowest)
    return workers * best[1] / best[workers]


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, by scanning /proc/*/stat (no psutil, no CONFIG_PROC_CHILDREN)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reap(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Wait until `proc` has ended, however often a signal interrupts the wait (a second
    Ctrl-C): left running, it would write on into a directory its caller is removing. Killed
    once `grace_s` have passed."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            if proc.poll() is not None:
                return
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
        except BaseException:  # interrupted: wait on, the caller's exception is raised after
            continue


def peak_rss(argv: list[str], poll_s: float = 0.02, env: dict | None = None) -> dict:
    """Run argv; poll VmHWM of it and all its descendants. Peaks in MiB (see module doc).

    (wait4's ru_maxrss is no cross-check here: the kernel carries the forking parent's peak
    over the exec into it, so it reports the caller's size, not the command's.)
    """
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child never blocks
        peaks: dict[int, int] = {}
        proc = None
        try:
            with signals_deferred():  # raised inside Popen (it waits for the exec), it left the child running
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
            while True:
                frontier, seen = [proc.pid], []
                while frontier:
                    pid = frontier.pop()
                    seen.append(pid)
                    frontier += _children(pid)
                for pid in seen:
                    hwm = _vm_hwm_kib(pid)
                    if hwm is not None:
                        peaks[pid] = max(peaks.get(pid, 0), hwm)
                pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    break
                time.sleep(poll_s)
        except BaseException:  # a signal the caller turned into an exception (a SIGTERM sent to it alone)
            if proc is not None:
                proc.terminate()  # the command's own SIGTERM handling: its temporary files removed
                _reap(proc)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {tail}")
    parent = peaks.get(proc.pid, 0)
    workers = [v for pid, v in peaks.items() if pid != proc.pid]
    return {"parent_mib": parent / 1024, "max_worker_mib": max(workers, default=0) / 1024,
            "sum_mib": (parent + sum(workers)) / 1024, "processes": len(peaks)}


def physical_memory() -> int | None:
    """The machine's memory in bytes, or None where the system does not say: what train.py's
    model and the benchmarks' corpora and shards are checked against before any work."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def machine() -> dict:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = physical_memory()
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gib": None if mem is None else round(mem / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}
