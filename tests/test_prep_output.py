"""Writing a dataset directory (prep/output.py, prep/install.py): the val tail held back on disk against a
plain reference of the rule, shard rollover, and the atomic install."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prep import install
from prep.signals import sigterm_raises
from prep.meta import UNFINISHED_NAME, read_meta, write_meta
from prep.install import AtomicDirectory, check_target
from prep.output import OutputError, SplitWriter, TailSplitter
from prep.shards import open_shard
from prep.tokenizer import EOT


class Collect:
    """A sink with SplitWriter's write(), keeping what it got."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def write(self, tokens: np.ndarray) -> None:
        self.parts.append(np.array(tokens))

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.uint16)


def reference_split(stream: np.ndarray, val_fraction: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The rule of prep/tokenize.py's docstring, on the whole stream at once."""
    val_tokens = min(cap, int(val_fraction * stream.size))
    cut = stream.size - val_tokens
    if val_tokens:
        starts = np.flatnonzero(stream[cut:] == EOT)
        if starts.size and starts[0] <= val_tokens // 2:
            cut += int(starts[0])
    return stream[:cut], stream[cut:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from([EOT, 1, 2, 3, 4]), max_size=40), max_size=30),
       st.integers(min_value=0, max_value=60), st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9]),
       st.sampled_from([1, 3, 1 << 20]))
def test_tail_splitter_matches_the_reference(pushes, cap, val_fraction, block):
    stream = np.array([t for p in pushes for t in p], dtype=np.uint16)
    train, val = Collect(), Collect()
    with tempfile.TemporaryDirectory() as tmp:
        spill = Path(tmp) / "tail.spill"
        splitter = TailSplitter(train, cap, spill)
        splitter.BLOCK = block  # small blocks exercise the block loops and ring wrap-around
        for p in pushes:
            splitter.push(np.array(p, dtype=np.uint16))
            assert splitter.total - sum(x.size for x in train.parts) <= cap  # never more held back
        splitter.finish(val_fraction, val)
        assert not spill.exists()
    want_train, want_val = reference_split(stream, val_fraction, cap)
    assert np.array_equal(train.tokens, want_train)
    assert np.array_equal(val.tokens, want_val)


def test_split_writer_rolls_over_shards(tmp_path):
    writer = SplitWriter(tmp_path, "ds", "train", shard_size=10)
    tokens = np.arange(37, dtype=np.uint16)
    tokens[[0, 12, 30]] = EOT
    for part in np.array_split(tokens, 5):
        writer.write(part)
    entries = writer.close()
    assert [e["file"] for e in entries] == [f"ds_train_{i:06d}.bin" for i in range(4)]
    assert [e["tokens"] for e in entries] == [10, 10, 10, 7]
    assert np.array_equal(np.concatenate([open_shard(tmp_path / e["file"]) for e in entries]), tokens)
    assert writer.documents == 3 and writer.tokens == 37


def test_atomic_directory_success_failure_and_stale_cleanup(tmp_path):
    target = tmp_path / "a" / "b" / "ds"
    stale = tmp_path / "a" / "b" / ".ds.tmp-999999999"  # no such process
    with pytest.raises(RuntimeError):
        with AtomicDirectory(target, overwrite=False) as tmp:
            (tmp / "x.bin").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # the parents it made are gone too
    stale.mkdir(parents=True)
    with AtomicDirectory(target, overwrite=False) as tmp:
        assert tmp.name == f".ds.tmp-{os.getpid()}"
        (tmp / "meta.json").write_text("{}")
    assert (target / "meta.json").read_text() == "{}" and not stale.exists()
    check_target(target, overwrite=True)
    with AtomicDirectory(target, overwrite=True) as tmp:
        (tmp / "meta.json").write_text('{"new": 1}')
    assert (target / "meta.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["ds"]


def test_the_temporary_is_marked_unfinished_until_the_install(tmp_path):
    """A SIGKILL leaves whole shards in the temporary directory, without meta.json: read as a
    directory of llm.c shards, they passed `prep verify` and the loader as a dataset of their own."""
    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        write_meta(tmp, {"format_version": 1, "splits": {}})  # even with its meta.json written
        assert (tmp / UNFINISHED_NAME).read_text(encoding="utf-8") == install.UNFINISHED_TEXT
        with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp))}: an unfinished `prep tokenize` output"):
            read_meta(tmp)
    assert sorted(p.name for p in target.iterdir()) == ["meta.json"] and read_meta(target) is not None


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("first", [KeyboardInterrupt, SystemExit, RuntimeError])
def test_a_signal_during_the_removal_of_the_temporary_waits_for_it(tmp_path, monkeypatch, first, second):
    """A second Ctrl-C (or SIGTERM) while a stopped run removed its thousands of shards cut the
    removal short: the temporary was left, half deleted, under 'nothing was written'. It now
    waits for the removal; after a stop it is dropped (the first one's status stands), after an
    error it is delivered then."""
    target = tmp_path / "ds"
    real_rmtree = shutil.rmtree

    def rmtree_with_a_signal(path, *args, **kwargs):
        if Path(path).name.startswith(".ds.tmp-"):
            os.unlink(min(Path(path).iterdir()))  # part of the way through
            signal.raise_signal(second)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(install.shutil, "rmtree", rmtree_with_a_signal)
    with sigterm_raises(SystemExit), pytest.raises(BaseException) as raised:
        with AtomicDirectory(target, overwrite=False) as tmp:
            for index in range(5):
                (tmp / f"ds_train_{index:06d}.bin").write_bytes(b"shard")
            raise first("the first")
    assert list(tmp_path.iterdir()) == []
    delivered = KeyboardInterrupt if second == signal.SIGINT else SystemExit
    assert type(raised.value) is (first if first is not RuntimeError else delivered)
    assert (str(raised.value) == "the first") is (first is not RuntimeError)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_temporary_of_a_killed_run_not_yet_reaped_is_stale_and_a_live_ones_is_kept(tmp_path):
    """A run killed while its parent (a shell, a harness) has not yet waited for it stays a
    zombie for a while: its temporary directory was kept as another live run's until then."""
    target = tmp_path / "ds"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.waitid(os.P_PID, dead.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        zombie, running = tmp_path / f".ds.tmp-{dead.pid}", tmp_path / f".ds.tmp-{live.pid}"
        zombie.mkdir()
        running.mkdir()
        with AtomicDirectory(target, overwrite=False) as tmp:
            (tmp / "meta.json").write_text("{}")
        assert not zombie.exists() and running.is_dir()
    finally:
        live.kill()
        live.wait()
        dead.wait()


def test_an_error_of_the_callers_on_install_is_its_own_and_the_new_dataset_stays(tmp_path):
    """on_install runs once the new dataset is in place: its OSError is raised as it is, not
    reported as an install that failed ("cannot move the new dataset into place")."""
    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        (tmp / "meta.json").write_text("old")

    def on_install(path: Path) -> None:
        raise PermissionError(errno.EACCES, "the caller's own log", str(tmp_path / "log"))

    with pytest.raises(PermissionError, match="the caller's own log"):
        with AtomicDirectory(target, overwrite=True, on_install=on_install) as tmp:
            (tmp / "meta.json").write_text("new")
    assert (target / "meta.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the old one removed, no temporary


def test_an_old_dataset_left_aside_by_a_crash_is_kept_while_it_is_the_only_copy(tmp_path):
    """Killed between --overwrite's two renames, a run leaves the old dataset only as
    .<name>.old-<pid>: the next run must not delete it as stale while the target is absent."""
    target = tmp_path / "ds"
    aside = tmp_path / ".ds.old-999999999"  # no such process
    aside.mkdir()
    (aside / "meta.json").write_text("the only copy")
    with AtomicDirectory(target, overwrite=False) as tmp:
        assert aside.is_dir()
        (tmp / "meta.json").write_text("new")
    assert (target / "meta.json").read_text() == "new"
    assert (aside / "meta.json").read_text() == "the only copy"
    with AtomicDirectory(target, overwrite=True) as tmp:  # the target exists now: stale, removed
        (tmp / "meta.json").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


KILLED_MID_INSTALL = """
import os, signal, sys
from pathlib import Path
from prep.install import AtomicDirectory
target = Path(sys.argv[1])
real_rename = os.rename
def rename_then_die(src, dst):  # SIGKILL right after the install's first rename
    real_rename(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
with AtomicDirectory(target, overwrite=True) as tmp:
    (tmp / "meta.json").write_text("new")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")
def test_killed_at_the_install_the_target_holds_the_old_or_the_new_dataset(tmp_path):
    """--overwrite moved the old dataset aside, then the new one in: SIGKILLed between the two
    renames, the target held nothing (the old dataset only as .<name>.old-<pid>). Where the
    OS can swap the two directories in one step (Linux), no moment leaves it empty."""
    import subprocess
    import sys

    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        (tmp / "meta.json").write_text("old")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_INSTALL, str(target)], env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    held = (target / "meta.json").read_text() if target.is_dir() else None
    if sys.platform.startswith("linux"):  # renameat2's RENAME_EXCHANGE
        assert held == "new"
    else:
        assert held in ("old", "new") or any(p.name.startswith(".ds.old-") for p in tmp_path.iterdir())


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL, errno.EPERM])
def test_an_overwrite_falls_back_on_two_renames_where_the_swap_is_refused(tmp_path, monkeypatch, err):
    """renameat2 refused: an old kernel (ENOSYS), a filesystem without RENAME_EXCHANGE (EINVAL),
    a container's seccomp profile that blocks the call (EPERM): the two renames, not a failure."""
    import ctypes

    class NoSwap:
        @staticmethod
        def renameat2(*args):
            ctypes.set_errno(err)
            return -1

    monkeypatch.setattr(install.sys, "platform", "linux")
    monkeypatch.setattr(install.ctypes, "CDLL", lambda *a, **k: NoSwap)
    target = tmp_path / "ds"
    for text in ("old", "new"):
        with AtomicDirectory(target, overwrite=True) as tmp:
            (tmp / "meta.json").write_text(text)
    assert (target / "meta.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_ctrl_c_during_the_install_waits_until_the_new_dataset_is_in_place(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(install, "_exchange", lambda a, b: False)  # the two renames, as where no swap is had
    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        (tmp / "meta.json").write_text("old")
    real_rename, renames = os.rename, []

    def rename_and_interrupt(src, dst):  # Ctrl-C right after the old dataset is moved aside
        real_rename(src, dst)
        renames.append(dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # time enough for the interrupt to arrive, were it not held

    monkeypatch.setattr(os, "rename", rename_and_interrupt)
    with pytest.raises(KeyboardInterrupt) as stopped:  # delivered, but after the install
        with AtomicDirectory(target, overwrite=True) as tmp:
            (tmp / "meta.json").write_text("new")
    assert stopped.value.installed == target  # what `prep tokenize` reports: the work is not lost
    assert len(renames) == 2 and (target / "meta.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_ctrl_c_just_before_the_install_leaves_the_old_dataset_and_no_temporary(tmp_path, monkeypatch):
    # after the last check, before signals_deferred holds Ctrl-C: it was raised with `installed`
    # set (prep tokenize said the new dataset was in place) and the new one left as .ds.tmp-<pid>
    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        (tmp / "meta.json").write_text("old")

    real_deferral, calls = install.signals_deferred, []

    @contextlib.contextmanager
    def interrupted_before_deferring(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:  # the install's: the Ctrl-C comes first (the cleanup's is the real one)
            raise KeyboardInterrupt
        with real_deferral(*args, **kwargs) as received:
            yield received

    monkeypatch.setattr(install, "signals_deferred", interrupted_before_deferring)
    with pytest.raises(KeyboardInterrupt) as stopped:
        with AtomicDirectory(target, overwrite=True) as tmp:
            (tmp / "meta.json").write_text("new")
    assert getattr(stopped.value, "installed", None) is None
    assert (target / "meta.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_ctrl_c_just_after_the_temporary_is_made_removes_it(tmp_path, monkeypatch):
    target = tmp_path / "new" / "ds"
    real_mkdir = Path.mkdir

    def mkdir_then_interrupt(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self.name.startswith(".ds.tmp-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with AtomicDirectory(target, overwrite=False):
            pass
    assert list(tmp_path.iterdir()) == []  # neither the temporary nor the parent made for it


def test_an_install_that_fails_after_a_ctrl_c_reports_its_error_and_keeps_the_old_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "_exchange", lambda a, b: False)  # the two renames, as where no swap is had
    target = tmp_path / "ds"
    with AtomicDirectory(target, overwrite=False) as tmp:
        (tmp / "meta.json").write_text("old")
    real_rename, renames = os.rename, []

    def interrupt_then_fail(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the new dataset into place
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)

    monkeypatch.setattr(os, "rename", interrupt_then_fail)
    with pytest.raises(OutputError, match="cannot move the new dataset into place"):  # not KeyboardInterrupt
        with AtomicDirectory(target, overwrite=True) as tmp:
            (tmp / "meta.json").write_text("new")
    assert (target / "meta.json").read_text() == "old"  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_target_that_appears_during_the_run_is_not_replaced(tmp_path):
    target = tmp_path / "ds"
    with pytest.raises(OutputError, match=r"ds: already exists \(pass --overwrite to replace it\); "
                                          r"it changed while this run was writing"):
        with AtomicDirectory(target, overwrite=False) as tmp:
            (tmp / "meta.json").write_text("ours")
            target.mkdir()  # another run, into the same place
            (target / "meta.json").write_text("theirs")
    assert (target / "meta.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # our temporary is gone


def test_a_dangling_symlink_is_refused_before_any_work(tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match=r"out: a broken symbolic link \(to .*nowhere\)$"):
        check_target(tmp_path / "out", overwrite=False)


def test_check_target(tmp_path):
    check_target(tmp_path / "absent", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", overwrite=False)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "ds_train_000000.bin").write_bytes(b"")
    with pytest.raises(OutputError, match="already exists"):
        check_target(tmp_path / "ds", overwrite=False)
    check_target(tmp_path / "ds", overwrite=True)
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    for overwrite in (True, False):  # said first: --overwrite would not help
        with pytest.raises(OutputError, match="not a dataset directory .*, with or without --overwrite"):
            check_target(tmp_path / "ds", overwrite=overwrite)


def test_the_working_directory_and_those_above_it_are_refused(tmp_path, monkeypatch):
    """Installing over the directory the user is in (or one above it) renamed it away: the
    shell was left in a deleted directory. Refused for an empty directory, a dataset with
    --overwrite, and through a symbolic link."""
    here = tmp_path / "ds" / "sub"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    (tmp_path / "link").symlink_to(here)
    for target, relation in [(Path("."), "is"), (here, "is"), (tmp_path / "link", "is"),
                             (Path(".."), "contains"), (tmp_path, "contains")]:
        for overwrite in (True, False):
            with pytest.raises(OutputError, match=rf"^{re.escape(str(target))}: {relation} the directory "
                                                  rf"you are in, .*give a subdirectory instead"):
                check_target(target, overwrite=overwrite)
    (here / "sub_train_000000.bin").write_bytes(b"")  # a dataset, and --overwrite: still refused
    with pytest.raises(OutputError, match="is the directory you are in"):
        check_target(Path("."), overwrite=True)
    check_target(Path("data"), overwrite=False)  # a subdirectory of it is fine
    # the suggestion is never the working directory itself: in .../data, `--out ..` gets ../dataset
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(data)
    with pytest.raises(OutputError, match=r"\(e\.g\. --out \.\./dataset\)$"):
        check_target(Path(".."), overwrite=False)
    with pytest.raises(OutputError, match=r"\(e\.g\. --out data\)$"):  # ./data is below it: fine
        check_target(Path("."), overwrite=False)
    monkeypatch.chdir(here)
    (here / "data").mkdir()
    check_target(Path("data"), overwrite=False)


def test_a_folder_named_like_a_shard_is_not_part_of_a_dataset(tmp_path):
    """--overwrite replaces a dataset, files only: a folder inside it, whatever its name, is
    someone's, and would have been deleted with the old dataset."""
    target = tmp_path / "ds"
    (target / "ds_train_000005.bin").mkdir(parents=True)
    (target / "ds_train_000005.bin" / "notes.txt").write_text("mine")
    (target / "ds_train_000000.bin").write_bytes(b"")
    with pytest.raises(OutputError, match=r"not a dataset directory \(it holds 'ds_train_000005.bin'\)"):
        check_target(target, overwrite=True)


def test_write_meta_replaces_meta_json_whole_and_never_rewrites_it_in_place(tmp_path):
    """meta.json is written beside and renamed over the old one: a reader that opened the old
    one (the loader, `prep info`) reads it whole, never a truncated or mixed file, and no
    temporary is left."""
    write_meta(tmp_path, {"format_version": 1, "name": "old", "splits": {}})
    with open(tmp_path / "meta.json", "rb") as reader:  # opened before the rewrite
        write_meta(tmp_path, {"format_version": 1, "name": "new", "splits": {}})
        assert json.loads(reader.read())["name"] == "old"
    assert read_meta(tmp_path)["name"] == "new"
    assert sorted(os.listdir(tmp_path)) == ["meta.json"]

