"""atomic_write: the new file whole, or the old one untouched and no temporary left;
signals_deferred: the handlers as they were afterwards, however it ends."""

from __future__ import annotations

import _signal
import os
import signal
import stat

import pytest

from prep.atomic import atomic_write, temp_path
from prep.signals import signals_deferred


def test_replaces_the_file_whole(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new contents"))
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_a_failure_while_filling_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert not temp_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_temp_path_is_hidden_beside_the_target(tmp_path):
    assert temp_path(tmp_path / "ckpt_000010.pt") == tmp_path / ".ckpt_000010.pt.tmp"


def test_a_signal_while_the_deferral_is_set_up_puts_the_handlers_back(monkeypatch):
    # SIGINT's deferral is in place, SIGTERM's not yet: a SIGTERM handler that raises (prep
    # tokenize's) left SIGINT's deferred for good, every later Ctrl-C appended to a lost list
    before = signal.getsignal(signal.SIGINT)
    real_signal = _signal.signal  # what signals_deferred calls (signal.signal wraps it)

    def sigterm_arrives(signum, handler):
        if signum == signal.SIGTERM and handler is not before:
            raise SystemExit(143)
        return real_signal(signum, handler)

    monkeypatch.setattr(_signal, "signal", sigterm_arrives)
    with pytest.raises(SystemExit):
        with signals_deferred():
            pass
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_handlers_are_read_and_set_without_signal_s_enum_conversion(monkeypatch):
    # train.py defers signals at each logging point (every step by default): signal.signal and
    # signal.getsignal convert each handler to a Handlers member, which a Python function
    # fails with an exception caught inside, 2 us a call and eight calls here: 20 us a step
    def handler(number, frame):
        pass

    previous = signal.signal(signal.SIGINT, handler)
    try:
        conversions = []
        real = signal._int_to_enum
        monkeypatch.setattr(signal, "_int_to_enum", lambda *a: conversions.append(a) or real(*a))
        with signals_deferred() as received:
            assert signal.getsignal(signal.SIGINT) is not handler  # deferred meanwhile
            conversions.clear()
        assert conversions == [] and received == []
        monkeypatch.undo()
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("kind", ["default", "ignore", "python"])
def test_ignored_and_may_handle_as_signal_getsignal_says(kind):
    from prep.signals import ignored, may_handle

    handler = {"default": signal.SIG_DFL, "ignore": signal.SIG_IGN, "python": lambda n, f: None}[kind]
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        assert ignored(signal.SIGTERM) is (kind == "ignore")
        assert may_handle(signal.SIGTERM) is (kind != "ignore")
        with signals_deferred():
            pass
        assert signal.getsignal(signal.SIGTERM) == handler  # put back as it was
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_held_signals_are_delivered_in_order_each_with_the_time_it_came():
    """A handler running as signals_deferred delivers a held signal learns when it really came
    (deferred_arrival): train.py tells a second Ctrl-C press from one press sent twice by the
    time between them, and the held ones are delivered microseconds apart."""
    import time

    from prep.signals import deferred_arrival

    seen = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append((number, deferred_arrival())))
    try:
        assert deferred_arrival() is None
        with signals_deferred() as received:
            first = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            last = time.monotonic()
            assert received == [signal.SIGINT, signal.SIGINT] and seen == []  # held, not handled
        assert [number for number, _ in seen] == [signal.SIGINT, signal.SIGINT]
        (_, one), (_, two) = seen
        assert first <= one < two <= last and two - one >= 0.19
        assert deferred_arrival() is None  # only while a held one is delivered
        signal.raise_signal(signal.SIGINT)  # (its handler runs before this returns)
        assert seen[-1] == (signal.SIGINT, None)  # one handled as it comes
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_signals_are_dropped_where_they_are_not_to_be_delivered():
    """prep tokenize's removal of its temporary directory after a stop: a second Ctrl-C waits
    for it, and is then dropped (the stop is under way), not raised at the first one's report."""
    seen = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append(number))
    try:
        with signals_deferred(deliver=False) as received:
            signal.raise_signal(signal.SIGINT)
            assert received == [signal.SIGINT]
        assert seen == []
        signal.raise_signal(signal.SIGINT)  # the handler is back
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_held_signals_keep_their_times_through_nested_deferrals_and_a_clear():
    """train.py's in-step checkpoint write defers signals inside a block that defers them too:
    the inner block delivers its held signals to the outer one's handler, which took that
    moment for theirs, so two presses 0.2 s apart were delivered as one sent twice. And a
    caller that clears the list (drops what came so far) leaves later signals their own times."""
    import time

    from prep.signals import deferred_arrival

    seen = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: seen.append(deferred_arrival()))
    try:
        with signals_deferred():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the outer block goes on: the times must not be its end's
        assert len(seen) == 2 and 0.19 <= seen[1] - seen[0] < 0.35, seen
        seen.clear()
        with signals_deferred() as received:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            received.clear()  # dropped (CheckpointWriter.wait on a failed write)
            time.sleep(0.2)
            later = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
        assert len(seen) == 1 and seen[0] >= later, (seen, later)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_file_is_synced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """A power cut once atomic_write has returned leaves the new file whole: its bytes are
    fsynced before the rename publishes them, and the directory after it, so that the rename
    itself is kept."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(path, lambda f: f.write(b"new contents"))
    new, directory = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("file", new), ("rename", new), ("dir", directory)]
    assert path.read_bytes() == b"new contents"


def test_a_ctrl_c_while_filling_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """A KeyboardInterrupt (no Exception) cuts the write as a failure does: the old file as it
    was, and no hidden temporary left beside it."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == b"old"
    assert not temp_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]

