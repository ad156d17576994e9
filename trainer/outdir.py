"""--out: checks before a run writes there, its lock, and what an earlier run left in it.

A run takes an flock on --out (two runs into one directory would interleave their checkpoints
and logs), and refuses at start-up what would otherwise fail it later or lose an earlier run's
files: an --out that cannot become a writable directory, the dataset itself given as --out, a
checkpoint's or a log's name (or its temporary's) taken by a directory, and an earlier run's
checkpoints or logs, which a fresh run would empty or mix with its own (earlier_run_remedy says
what to do instead).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
try:
    import fcntl  # POSIX: --out is locked by the run writing there
except ImportError:  # Windows
    fcntl = None

from loader.checkpoints import CKPT_PATTERN, list_checkpoints
from loader.windowlog import LOG_GLOB
from prep.atomic import remove_empty, temp_path
from prep.errors import UserError, path_too_long
from prep.shards import parse_shard_name
from trainer.logs import METRICS_NAME


def check_out_dir(out: Path) -> None:
    """Fail now, before any work, if `out` cannot become a writable directory; create nothing."""
    probe = out
    while not probe.exists():
        if probe.is_symlink():  # dangling: it exists as a link only
            raise UserError(f"--out {out}: {probe} is a broken symbolic link (to {os.readlink(probe)})")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")
    if probe == out and not os.access(out, os.R_OK):  # write-only (a drop box): the lock opens it to read
        raise UserError(f"--out {out}: {out} is not readable (a run lists and locks its --out): give this "
                        f"user read permission on it, or choose another --out")


LOCK_NAME = ".train.lock"  # in --out, only where a directory cannot be flocked (NFS)


def _flock(fd: int, out: Path) -> None:
    """Take the exclusive lock on `fd` without waiting: a UserError when another run holds it,
    OSError when the filesystem cannot lock this kind of file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"--out {out} is in use by another train.py run: wait for it to end, "
                        f"or choose another --out") from None


def make_out_dir(out: Path) -> list[Path]:
    """Create `out`, parents and all: those it made (missing before), or a UserError naming it
    where that fails (a full disk, a name too long below a parent it made), the parents it
    made removed again."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(missing)
        raise UserError(f"--out {out}: cannot create it ({path_too_long(e) or e.strerror or e})") from None
    return missing


@contextlib.contextmanager
def hold_out_dir(out: Path, notes: list[str]):
    """Hold `out` for this run (rank 0's): a second train.py writing there at the same time
    would empty the first one's metrics and interleave checkpoints. An flock, which the kernel
    releases however the run ends, SIGKILL included: on the directory itself, so no file
    appears; where that fails (Linux NFS emulates flock with fcntl locks, whose exclusive
    kind needs a file open for writing) on LOCK_NAME, removed at the end. Where no lock works,
    or without fcntl (Windows), the run goes on without one (`notes` says so for the former).

    Creates `out` when missing, and removes it at the end if the run wrote nothing there (a
    user mistake found after this leaves no trace), but only once it holds the lock: a run
    refused here leaves the directory to the run that holds it.
    """
    missing = make_out_dir(out)
    fds: list[int] = []
    lock_file = None
    try:
        if fcntl is not None:
            fds.append(os.open(out, os.O_RDONLY))
            try:
                _flock(fds[0], out)
            except OSError:
                lock_file = out / LOCK_NAME
                fds.append(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644))
                try:
                    _flock(fds[1], out)
                except OSError as e:
                    notes.append(f"--out {out} cannot be locked here ({e.strerror or e}): start no second "
                                 f"run into it while this one runs")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    try:
        yield
    finally:
        if lock_file is not None:  # removed while held, so no other run holds this one
            lock_file.unlink(missing_ok=True)
        remove_empty(missing)  # only if the run wrote nothing there
        for fd in fds:
            os.close(fd)  # releases the lock


def trained_steps_logged(metrics: Path) -> bool:
    """Whether the metrics.jsonl at `metrics` logs any training: a line other than the step-0
    evaluation's (anything unreadable counts, to be safe: a file it cannot read too). False for a
    missing or empty file."""
    if not metrics.is_file():
        return False
    try:
        with open(metrics, encoding="utf-8", errors="replace") as f:  # a run's is decided by line 1 or 2
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # JSONDecodeError, > 4,300 digits, nested too deeply
                    return True
                if not (isinstance(record, dict) and record.get("step") == 0 and record.get("loss") is None):
                    return True
    except OSError:  # another user's, EIO
        return True
    return False


def stale_temporary(out: Path, name: str, why: str) -> UserError:
    """The error for a checkpoint's temporary in `out`, left by a killed run, that the run's
    start cannot remove."""
    return UserError(f"--out {out}: cannot remove {name}, where a killed run leaves a checkpoint half-written "
                     f"({why}): move it away")


def inside_dataset(out: Path, data: str) -> bool:
    """Whether `out` is below `data` where that is a dataset directory (not a glob or a shard)."""
    try:
        there = Path(data).resolve()
        return Path(data).is_dir() and out.resolve() != there and out.resolve().is_relative_to(there)
    except OSError:  # (a path that cannot be looked up: its own error comes where it is used)
        return False


def check_out_contents(out: Path, resume_path: Path | None, init_from: str | None = None,
                       logs_set_aside: bool = False, log_windows: bool = False, data: str | None = None) -> None:
    """What is already in `out` must belong to this run: a fresh run refuses an earlier run's
    checkpoints or metrics (it would empty the metrics, and --resume auto would mix the
    runs), and a resume from a checkpoint elsewhere refuses another run's files (--keep-ckpts
    would delete its checkpoints, and the metrics would interleave). `logs_set_aside`: the
    earlier run's logs will be renamed before this run writes (set_aside_logs); `log_windows`:
    this run writes window logs (--log-windows). A first start in `out` refuses it inside the
    dataset directory `data` as in one: the run's files in it, prep tokenize --overwrite would
    refuse to write the dataset there again ("not a dataset directory")."""
    # a first start there (a fresh run, or a resume from a checkpoint elsewhere into a new
    # --out): a run whose checkpoint is there already goes on
    first = resume_path is None or resume_path.absolute().parent.resolve() != out.resolve()
    if first and data is not None and inside_dataset(out, data):
        raise UserError(f"--out {out} is inside the dataset directory {data} (--data): give the run a directory "
                        f"of its own, outside it")
    metrics = out / METRICS_NAME
    if metrics.exists() and not metrics.is_file():
        raise UserError(f"--out {out}: {metrics} is not a file")
    logs = sorted(out.glob(LOG_GLOB))  # --log-windows logs (none where out is missing)
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        # a dataset told by its shards alone: a meta.json of the user's own (an experiment's notes) is none
        dataset = [name for name in names if parse_shard_name(name) and (out / name).is_file()] if first else []
        if dataset:  # --out and --data mixed up: checkpoints beside the shards, which prep tokenize then
            # refuses to replace ("not a dataset directory")
            raise UserError(f"--out {out} is a dataset directory (it holds {dataset[0]}): give the run a "
                            f"directory of its own")
        # --resume auto would skip these, and the run fail when it comes to write there
        odd = [name for name in names if CKPT_PATTERN.fullmatch(name) and not (out / name).is_file()]
        if odd:
            raise UserError(f"--out {out}: {out / odd[0]} is not a file; checkpoints are written under that name")
        # a window log's name taken: only --log-windows writes there (without it a directory
        # there is left alone: set_aside_logs and the resume's notes take files only)
        odd = [p for p in logs if not p.is_file()] if log_windows else []
        if odd:
            raise not_a_log_file(out, odd[0])
        # said before anything is renamed (set_aside_logs): the run's start removes these
        odd = [p for p in out.glob(temp_path(out / "ckpt_*.pt").name) if p.is_dir() and not p.is_symlink()]
        if odd:
            raise stale_temporary(out, odd[0].name, os.strerror(errno.EISDIR))
        # the logs' too: open_log writes each whole there first, once the run has started (the
        # logs of a run without a checkpoint renamed already), and its error named the log; a
        # window log's only with --log-windows (without it nothing writes one)
        windows = sorted(out.glob(temp_path(out / LOG_GLOB).name)) if log_windows else []
        temps = [temp_path(metrics), *windows]
        odd = [p for p in temps if p.is_dir() and not p.is_symlink()]
        if odd:
            raise temporary_is_a_directory(out, odd[0])
    checkpoints = list_checkpoints(out)
    theirs = [p.name for _, p in checkpoints[-1:]]
    # a run stopped in its step-0 evaluation trained nothing: starting it again loses nothing
    if not logs_set_aside:
        theirs += [METRICS_NAME] if trained_steps_logged(metrics) else []
        # --log-windows logs of an earlier run: a fresh run's would empty them, and one without
        # --log-windows leave them beside its own checkpoints, for loader.audit to take as its own
        theirs += [p.name for p in logs if nonempty_file(p)]
    if not theirs or (resume_path is not None and not resume_path.is_file()):
        return  # (a --resume that is no checkpoint file gets its own error when it is loaded)
    if resume_path is None:
        raise UserError(f"--out {out} holds an earlier run's {' and '.join(theirs)}: "
                        f"{earlier_run_remedy(out, theirs, bool(checkpoints), init_from)}, or choose another --out")
    # the directory the checkpoint is in (a checkpoint there may be a link to elsewhere)
    if resume_path.absolute().parent.resolve() != out.resolve():
        raise UserError(
            f"--out {out} holds another run's {' and '.join(theirs)}; resuming --resume {resume_path} "
            f"there would mix the two: choose an empty --out, or resume from a checkpoint in {out}"
        )


def not_a_log_file(out: Path, log: Path) -> UserError:
    """A --log-windows log's name in `out` taken by something other than a file."""
    return UserError(f"--out {out}: {log} is not a file; --log-windows writes under that name")


def temporary_is_a_directory(out: Path, temporary: Path) -> UserError:
    """A log's temporary (open_log's atomic_write) in `out` that is a directory."""
    log = temporary.name[1:].removesuffix(".tmp")  # (temp_path's .<name>.tmp)
    return UserError(f"--out {out}: {temporary.name} is a directory, where train.py writes {log} "
                     f"before it renames it into place: move it away")


def check_own_log(out: Path, log: Path) -> None:
    """A rank other than 0, with --log-windows: its own log `log` in `out`, as rank 0 checks
    every rank's (check_out_contents). In an --out of this rank's own (a node that does not
    share rank 0's) nobody else sees it, and it was opened only after the first step, the
    other ranks' logs of that step left behind."""
    if log.exists() and not log.is_file():
        raise not_a_log_file(out, log)
    temporary = temp_path(log)
    if temporary.is_dir() and not temporary.is_symlink():
        raise temporary_is_a_directory(out, temporary)


def earlier_run_remedy(out: Path, names: list[str], checkpoints: bool, init_from: str | None) -> str:
    """What a fresh run refused by an earlier run's files `names` in `out` says to do: continue
    it where it left a checkpoint; else move them away, or (not a fine-tune) start again with
    --resume auto, which keeps them under new names (set_aside_logs)."""
    if checkpoints and init_from is None:
        return "continue it with --resume auto"
    remedy = f"move {' and '.join(str(out / name) for name in names)} away"
    if init_from is None:
        kept = f"it as {names[0]}" if len(names) == 1 else "them as <name>"
        remedy += f", start again with --resume auto (it keeps {kept}.before-<time>)"
    return remedy


def nonempty_file(path: Path) -> bool:
    """Whether `path` is a file with something in it: a log of an earlier run's steps (an empty one
    holds no step to lose, nor one for loader.audit to find)."""
    return path.is_file() and path.stat().st_size > 0
