"""`prep sample`: verified download (from a local HTTP server), the announced offline
fallback, `--from`, and never clobbering a user's file. Tests never touch the real network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import prep.atomic
import prep.sample

from prep.sample import (
    FALLBACK_SOURCE,
    TINY_SHAKESPEARE_BYTES,
    TINY_SHAKESPEARE_SHA256,
    URL_ENV,
    fallback_text,
    sample_command,
)

from _cli import assert_user_error
from _data import TINY_SHAKESPEARE as TINY
REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: connection refused, at once
needs_tiny = pytest.mark.skipif(not TINY.is_file(), reason="tiny Shakespeare test data is absent")


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch):
    monkeypatch.setenv(URL_ENV, UNREACHABLE)


@pytest.fixture
def serve(tmp_path):
    """Serve a directory over HTTP on localhost; yields a function file name -> URL."""
    root = tmp_path / "www"
    root.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep stderr for the command under test
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield root, lambda name: f"http://127.0.0.1:{server.server_port}/{name}"
    server.shutdown()
    server.server_close()


def run(*args, env=None):
    return CliRunner().invoke(sample_command, [str(a) for a in args], env=env)


def test_fallback_text_is_the_sorted_pydoc_topics():
    from pydoc_data.topics import topics

    text = fallback_text()
    assert text.startswith(topics[min(topics)]) and text.endswith(topics[max(topics)])
    assert len(text.encode("utf-8")) > 100_000  # enough for a demo epoch


def test_unreachable_url_announces_and_writes_the_fallback(tmp_path):
    out = tmp_path / "input.txt"
    result = run("--out", out)
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and "download" in warning[0] and "failed" in warning[0]
    assert UNREACHABLE in warning[0] and "pydoc_data.topics" in warning[0]
    expected = fallback_text().encode("utf-8")
    assert out.read_bytes() == expected
    assert f"wrote {out}: {len(expected):,} bytes" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]  # no temp file left


def test_unreachable_url_over_an_existing_file_warns_only_of_what_happens(tmp_path):
    out = tmp_path / "input.txt"
    out.write_bytes(fallback_text().encode("utf-8"))  # an earlier offline run's
    result = run("--out", out)
    assert result.exit_code == 0 and "nothing to do" in result.stdout
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: download of tiny Shakespeare from {UNREACHABLE}")
    assert warning[0].endswith(f"; {out} already holds {FALLBACK_SOURCE}")  # not "writing"
    out.write_text("my own corpus")
    result = run("--out", out)
    assert_user_error(result, f"{out} already exists with other content; pass --overwrite to replace it")
    assert "warning" not in result.stderr and out.read_text() == "my own corpus"


def test_offline_and_from_together_are_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("my corpus")
    result = run("--out", tmp_path / "input.txt", "--offline", "--from", tmp_path / "mine.txt")
    assert_user_error(result, "--offline and --from: choose one")
    assert not (tmp_path / "input.txt").exists()


def test_offline_writes_the_fallback_without_trying(tmp_path):
    out = tmp_path / "input.txt"
    result = run("--out", out, "--offline")
    assert result.exit_code == 0 and result.stderr == ""
    assert out.read_bytes() == fallback_text().encode("utf-8")
    again = run("--out", out, "--offline")
    assert again.exit_code == 0 and "nothing to do" in again.stdout


@needs_tiny
def test_from_tiny_shakespeare_is_byte_identical_and_idempotent(tmp_path):
    out = tmp_path / "input.txt"
    result = run("--from", TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == TINY.read_bytes()
    assert "sha256 verified" in result.stdout and f"{TINY_SHAKESPEARE_BYTES:,} bytes" in result.stdout
    mtime = out.stat().st_mtime_ns
    for args in (["--from", TINY], []):  # already there: nothing fetched, nothing written
        again = run("--out", out, *args)
        assert again.exit_code == 0 and "nothing to do" in again.stdout and again.stderr == ""
        assert out.stat().st_mtime_ns == mtime


def test_from_other_file_is_copied_as_is(tmp_path):
    src = tmp_path / "mine.txt"
    src.write_text("my own corpus\n")
    out = tmp_path / "input.txt"
    result = run("--from", src, "--out", out)
    assert result.exit_code == 0 and out.read_text() == "my own corpus\n"
    assert "not tiny Shakespeare" in result.stdout


@needs_tiny
def test_verified_download(tmp_path, serve):
    root, url = serve
    (root / "input.txt").write_bytes(TINY.read_bytes())
    out = tmp_path / "input.txt"
    result = run("--out", out, env={URL_ENV: url("input.txt")})
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == TINY_SHAKESPEARE_SHA256
    assert "sha256 verified" in result.stdout and url("input.txt") in result.stdout


def test_download_of_the_wrong_file_falls_back(tmp_path, serve):
    root, url = serve
    (root / "input.txt").write_text("not Shakespeare at all")
    out = tmp_path / "input.txt"
    result = run("--out", out, env={URL_ENV: url("input.txt")})
    assert result.exit_code == 0
    assert "not tiny Shakespeare" in result.stderr and "failed" in result.stderr
    assert out.read_bytes() == fallback_text().encode("utf-8")


@needs_tiny
def test_fallback_is_upgraded_once_the_download_works(tmp_path, serve):
    root, url = serve
    (root / "input.txt").write_bytes(TINY.read_bytes())
    out = tmp_path / "input.txt"
    assert run("--out", out, "--offline").exit_code == 0
    result = run("--out", out, env={URL_ENV: url("input.txt")})  # no --overwrite needed
    assert result.exit_code == 0 and out.read_bytes() == TINY.read_bytes()


def test_other_existing_content_needs_overwrite(tmp_path):
    out = tmp_path / "input.txt"
    out.write_text("precious user data")
    result = run("--out", out, "--offline")
    assert_user_error(result, str(out), "--overwrite")
    assert out.read_text() == "precious user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]
    result = run("--out", out, "--offline", "--overwrite")
    assert result.exit_code == 0 and out.read_bytes() == fallback_text().encode("utf-8")


def test_a_symbolic_link_as_out_is_written_through_and_kept(tmp_path):
    """--out a link: os.replace put the file in the link's place, a dangling link or one to
    itself without --overwrite. A dangling one is refused (as prep tokenize's --out is); a live
    one is written through, with the target's rules (other content needs --overwrite), and stays
    a link."""
    for target in ("nowhere", "loop"):
        link = tmp_path / target
        link.symlink_to(target)
        assert_user_error(run("--out", link, "--offline"), f"--out {link}", ": a broken symbolic link (to ")
        assert link.is_symlink() and os.readlink(link) == target
    mine = tmp_path / "mine.txt"
    mine.write_text("precious user data")
    link = tmp_path / "input.txt"
    link.symlink_to("mine.txt")
    assert_user_error(run("--out", link, "--offline"), str(mine), "--overwrite")
    assert mine.read_text() == "precious user data"
    result = run("--out", link, "--offline", "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and mine.read_bytes() == fallback_text().encode("utf-8")


def test_unwritable_directory_is_a_user_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prep.atomic.os, "fsync", refuse)  # as root, chmod would not stop us
    result = run("--offline", "--out", tmp_path / "o.txt")
    assert_user_error(result, "o.txt: cannot write there (Permission denied)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["missing_from", "out_dir_missing", "out_is_dir", "out_is_a_fifo",
                                  "from_is_dir", "from_is_a_fifo", "out_ends_in_a_slash",
                                  "out_a_file_and_a_slash", "out_ends_in_a_slash_and_a_dot"])
def test_user_mistakes(tmp_path, case):
    """`--out new/` wrote a file named `new` (pathlib drops the slash), and `--out mine.txt/
    --overwrite` replaced mine.txt: a path ending in a separator names a directory."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # as a device (/dev/null) would be: --overwrite must not turn it into a file
    (tmp_path / "mine.txt").write_text("precious user data")
    args, words = {
        "missing_from": (["--from", tmp_path / "nope.txt", "--out", tmp_path / "o.txt"], ["nope.txt", "--from"]),
        "out_dir_missing": (["--offline", "--out", tmp_path / "no" / "o.txt"], ["--out", "does not exist"]),
        "out_is_dir": (["--offline", "--out", tmp_path], ["--out", "is a directory"]),
        "out_is_a_fifo": (["--offline", "--out", fifo, "--overwrite"], [f"--out {fifo} is not a regular file"]),
        "from_is_dir": (["--from", tmp_path, "--out", tmp_path / "o.txt"], [f"--from {tmp_path}: is a directory"]),
        "from_is_a_fifo": (["--from", fifo, "--out", tmp_path / "o.txt"], [f"--from {fifo}: not a regular file"]),
        "out_ends_in_a_slash": (["--offline", "--out", f"{tmp_path / 'new'}{os.sep}"],
                                [f"--out {tmp_path / 'new'}{os.sep}: a directory's name",
                                 f"e.g. {tmp_path / 'new' / 'input.txt'}"]),
        "out_a_file_and_a_slash": (["--offline", "--overwrite", "--out", f"{tmp_path / 'mine.txt'}{os.sep}"],
                                   [f"--out {tmp_path / 'mine.txt'}{os.sep}: a directory's name"]),
        # `new/.` too: pathlib drops the `/.` as it drops the slash
        "out_ends_in_a_slash_and_a_dot": (
            ["--offline", "--out", f"{tmp_path / 'new'}{os.sep}."],
            [f"--out {tmp_path / 'new'}{os.sep}.: a directory's name (it ends in '.')",
             f"e.g. {tmp_path / 'new' / 'input.txt'}"]),
    }[case]
    before = sorted(tmp_path.rglob("*"))
    result = run(*args)
    assert_user_error(result, *words)
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / "mine.txt").read_text() == "precious user data"


def test_registered_in_the_prep_cli(tmp_path):
    cli = pytest.importorskip("prep.cli", exc_type=ImportError)
    result = CliRunner().invoke(cli.main, ["sample", "--offline", "--out", str(tmp_path / "in.txt")])
    assert result.exit_code == 0 and (tmp_path / "in.txt").is_file()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_warning_stderr_cannot_take_is_dropped_and_the_fallback_written(tmp_path):
    """`2>/dev/full` (or a log on a full disk): the warning that the download failed raised the
    OSError of its write, and prep sample ended with status 1, no word said, no corpus written:
    the warning is dropped where stderr cannot take it (prep.streams.say), the fallback written."""
    out = tmp_path / "input.txt"
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "prep.cli", "sample", "--out", str(out)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=full, text=True, timeout=120,
                                env={**os.environ, URL_ENV: UNREACHABLE, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    assert out.read_bytes() == fallback_text().encode("utf-8")
    assert result.stdout.startswith(f"wrote {out}: ")
