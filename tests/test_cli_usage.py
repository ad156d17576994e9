"""Click's own usage mistakes (bad option value, missing argument, unknown option or command)
follow the project's rule for user mistakes: one line naming what and where, exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from _cli import assert_user_error
from prep.cli import main as prep_main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, words",
    [
        (["tokenize"], ["prep tokenize", "Missing argument"]),
        (["tokenize", "x.txt", "--workers", "0"], ["prep tokenize", "--workers", "0"]),
        (["info"], ["prep info", "Missing argument"]),
        (["info", ".", "--B", "four"], ["prep info", "--B", "four"]),
        (["verify", ".", "--bogus"], ["prep verify", "--bogus"]),
        (["sample", "--bogus"], ["prep sample", "--bogus"]),
        (["frobnicate"], ["prep", "frobnicate"]),
    ],
)
def test_prep_usage_errors_are_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    assert_user_error(CliRunner().invoke(prep_main, args), *words)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_path_is_refused_not_read_as_the_current_directory(tmp_path, monkeypatch):
    """`prep tokenize "$CORPUS"` with the variable unset tokenized every text file in the current
    directory (pathlib's Path('') is '.'); info and verify reported on it. Refused, as sample.py
    and loader.audit refuse ''."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    for args, name in ((["tokenize", ""], "INPUT"), (["tokenize", "notes.txt", ""], "INPUT"),
                       (["info", ""], "DIRECTORY"), (["verify", ""], "DIRECTORY")):
        assert_user_error(CliRunner().invoke(prep_main, args), f"prep {args[0]}", name, "'' is no path")
    # an output's '': refused saying so, where it was the current directory ("--out . is a directory")
    for args in (["tokenize", "notes.txt", "--out", ""], ["sample", "--out", ""]):
        result = CliRunner().invoke(prep_main, args)
        assert_user_error(result, f"prep {args[0]}: Invalid value for '--out': '' is no path (an unset shell "
                                  f"variable?); name one")
        assert result.output.rstrip().endswith("name one")  # not ". for the current directory": refused there
    # a file to copy: '' named the current directory ("--from .: is a directory")
    result = CliRunner().invoke(prep_main, ["sample", "--from", "", "--out", "copy.txt"])
    assert_user_error(result, "prep sample: Invalid value for '--from': '' is no path (an unset shell variable?); "
                              "name one")
    assert result.output.rstrip().endswith("name one")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("command", [
    ["prep", "info"], ["prep", "verify"], ["prep", "tokenize"], ["train.py", "--device", "cpu", "--data"],
    ["sample.py"]])
def test_a_line_break_in_a_path_given_stays_in_the_one_line(tmp_path, command):
    """A file name may hold a line break: printed as it is, it made the error two lines."""
    program = [sys.executable, "-m", "prep"] if command[0] == "prep" else [sys.executable, str(REPO / command[0])]
    result = subprocess.run([*program, *command[1:], "no\nsuch\rfile\x0bhere"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "no\\nsuch\\rfile\\x0bhere" in result.stderr
    assert list(tmp_path.iterdir()) == []


LONG = "y" * 300  # one name over the 255 bytes a file name can have


def _exists_raises(path: str) -> bool:
    """Whether this Python's Path.exists() raises "File name too long" for `path` (3.13 and
    before): where it answers False (3.14), a command says "no such file" instead, one line too."""
    try:
        Path(path).exists()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("command, args", [
    ("prep", ["tokenize", LONG]),
    ("prep", ["tokenize", "t.txt", "--out", f"{LONG}/x"]),
    ("prep", ["info", LONG]),
    ("prep", ["verify", LONG]),
    ("train", ["--data", LONG]),
    ("train", ["--data", f"{LONG}/*_train_*.bin"]),
    ("train", ["--data", "data/t", "--val-data", LONG]),
    ("train", ["--data", "data/t", "--out", LONG]),
    ("train", ["--data", "data/t", "--out", f"./{LONG}"]),  # pathlib's paths drop the ./
    ("train", ["--data", "data/t", "--out", f"made/here/{LONG}/x"]),  # below parents it would make
    ("train", ["--data", "data/t", "--resume", LONG]),
    ("train", ["--data", "data/t", "--init-from", LONG]),
    ("sample", [LONG]),
])
def test_a_path_too_long_for_the_filesystem_is_one_line(tmp_path, monkeypatch, command, args):
    """pathlib's exists() raises "File name too long" (Python 3.13 and before) where it answers
    False for a missing file: every command that took a path ended in that traceback, exit 1."""
    import sample
    import train
    from _data import random_tokens, write_dataset

    monkeypatch.chdir(tmp_path)
    Path("t.txt").write_text("Some text to tokenize.\n")
    write_dataset(tmp_path / "data" / "t", random_tokens(300, 1), random_tokens(200, 2))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    main = {"prep": prep_main, "train": train.main, "sample": sample.main}[command]
    extra = ["--model", "tiny", "--device", "cpu", "--steps", "1", "--quiet"] if command == "train" else []
    line = assert_user_error(CliRunner().invoke(main, [*args, *extra]), LONG)
    if _exists_raises(LONG):  # where pathlib said nothing but its OSError
        assert "over 255" in line and ("path too long" in line or "cannot create it" in line), line
        flag = next((args[i - 1] for i, arg in enumerate(args) if LONG in arg and i), "")
        if flag.startswith("--"):  # the option that gave it is named (it was the path alone)
            assert line.startswith(f"Error: {flag} "), line
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


def test_a_path_of_short_names_too_long_in_all_is_one_line_too(tmp_path, monkeypatch):
    deep = "/".join(["z" * 250] * 20)  # 5,019 bytes: each name fits, the path does not (Linux's 4,096)
    monkeypatch.chdir(tmp_path)
    line = assert_user_error(CliRunner().invoke(prep_main, ["info", deep]), deep)
    if _exists_raises(deep):
        assert "path too long (5019 bytes in all, more than the system takes)" in line, line


def invoke_command(command: str, args: list[str]):
    """`command` (prep, train, audit or bench) run in-process on `args`: click's result, or for
    loader.bench (argparse: its return value is the status) one with its status and standard
    error. train runs the tiny model on the CPU for a step."""
    import loader.audit
    import loader.bench
    import train

    if command == "bench":
        with contextlib.redirect_stderr(io.StringIO()) as err:
            status = loader.bench.main(args)
        return types.SimpleNamespace(exit_code=status, output=err.getvalue())
    main = {"prep": prep_main, "train": train.main, "audit": loader.audit.main}[command]
    extra = ["--model", "tiny", "--device", "cpu", "--steps", "1", "--quiet"] * (command == "train")
    return CliRunner().invoke(main, [*args, *extra])


def window_logged_run(data: str) -> None:
    """A one-step run in ./run on `data` that logs its windows: one for loader.audit to audit."""
    import train

    train.train(train.TrainConfig(model="tiny", B=2, T=16, steps=1, eval_every=0, quiet=True, device="cpu",
                                  data=data, out="run", log_windows=True))


@pytest.mark.parametrize("command, args, flag", [
    ("prep", ["tokenize", "private/t.txt"], ""),
    ("prep", ["tokenize", "t.txt", "--out", "private/tk"], "--out"),
    ("prep", ["info", "private/t"], ""),
    ("prep", ["verify", "private/t"], ""),
    ("prep", ["sample", "--offline", "--out", "private/x.txt"], "--out"),
    ("prep", ["sample", "--from", "private/t.txt", "--out", "x.txt"], "--from"),
    ("train", ["--data", "private/t"], "--data"),
    ("train", ["--data", "data/t", "--val-data", "private/t"], "--val-data"),
    ("train", ["--data", "data/t", "--out", "private/run"], "--out"),
    ("audit", ["private/run"], ""),
    ("audit", ["run", "--data", "private/t"], "--data"),
    ("bench", ["private/t", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"], ""),
])
def test_a_path_below_a_directory_that_may_not_be_searched_is_one_line(tmp_path, monkeypatch, command, args,
                                                                          flag):
    """Below another user's home (mode 700), pathlib's exists() and is_dir() raise EACCES where
    they answer False for a missing file (Python 3.13 and before): --data, --val-data, --out,
    prep's inputs and outputs and loader.audit's run ended in PermissionError's traceback, exit 1
    (sample.py's CKPT and --resume / --init-from said so in one line already)."""
    from _data import random_tokens, without_search_permission, write_dataset

    monkeypatch.chdir(tmp_path)
    for where in (tmp_path, tmp_path / "private"):
        where.mkdir(exist_ok=True)
        (where / "t.txt").write_text("Some text to tokenize.\n")
        write_dataset(where / "data" / "t" if where == tmp_path else where / "t", random_tokens(300, 1),
                      random_tokens(200, 2))
    if command == "audit":  # a run's window logs to audit
        window_logged_run("data/t")
        shutil.copytree("run", "private/run")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    without_search_permission(monkeypatch, tmp_path / "private")
    result = invoke_command(command, args)
    path = next(arg for arg in args if arg.startswith("private/"))
    line = assert_user_error(result, path, f": cannot be looked up (Permission denied: this user may not "
                                           f"search {tmp_path / 'private'}): give it search permission there")
    assert line.startswith(f"Error: {flag} " if flag else "Error: "), line  # the option that gave it, if any
    monkeypatch.undo()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


@pytest.mark.parametrize("command, args", [
    ("train", ["--data", "pr*/t/*.bin"]),
    ("audit", ["run", "--data", "pr*/t/*.bin"]),
    ("bench", ["pr*/t/*.bin", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"]),
    ("bench", ["pr*/*/*.bin", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"]),
])
def test_a_glob_through_a_directory_that_may_not_be_searched_is_one_line(tmp_path, monkeypatch, command,
                                                                          args):
    """glob.glob passes over a directory it cannot look into: a glob whose directories are
    reached through one (or any glob below one on Python 3.14, whose Path.is_dir answers False
    there) said "no shard files match this pattern", not which directory was closed."""
    from _data import random_tokens, without_search_permission, write_dataset

    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "private" / "t", random_tokens(300, 1))
    if command == "audit":  # a run's window logs to audit
        write_dataset(tmp_path / "data", random_tokens(300, 1))
        window_logged_run("data")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    without_search_permission(monkeypatch, tmp_path / "private")
    result = invoke_command(command, args)
    reached = "private/*" if "pr*/*/" in args[0] else "private/t"  # (the path reached through the glob)
    assert_user_error(result, f"Error: {reached}: cannot be looked up (Permission denied: this user may not "
                              f"search {tmp_path / 'private'}): give it search permission there")
    monkeypatch.undo()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


def test_a_glob_below_a_directory_that_may_not_be_searched_is_one_line_with_real_modes(tmp_path):
    """As above with the kernel's answers (setpriv): a glob through the closed directory, and one
    whose own directory is below it."""
    from _data import random_tokens, write_dataset
    from test_sample import _as_a_user_without_overrides

    write_dataset(tmp_path / "private" / "t", random_tokens(300, 1))
    prefix, private = _as_a_user_without_overrides(), tmp_path / "private"
    try:
        private.chmod(0o700 if os.geteuid() else 0)
        for pattern, path in (("pr*/t/*.bin", "private/t"), ("private/t/*.bin", "private/t/*.bin")):
            bench = [sys.executable, "-m", "loader.bench", pattern, "--B", "2", "--T", "8", "--windows", "1",
                     "--repeats", "1"]
            result = subprocess.run([*prefix, *bench], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
            assert (result.returncode, result.stdout, result.stderr) == (
                2, "", f"Error: {path}: cannot be looked up (Permission denied: this user may not search "
                       f"{private}): give it search permission there, or use a path outside {private}\n")
    finally:
        private.chmod(0o755)


@pytest.mark.parametrize("command, args", [
    ("train", ["--data", "sets/*/*_train_*.bin"]),
    ("train", ["--data", "sets/a", "--val-data", "sets/*/*_val_*.bin"]),
    ("audit", ["run", "--data", "sets/*/*_train_*.bin"]),
    ("bench", ["sets/*/*_train_*.bin", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"]),
])
def test_a_glob_that_matches_some_shards_past_a_directory_that_may_not_be_searched_is_one_line(
        tmp_path, monkeypatch, command, args):
    """glob.glob passes over a directory it cannot look into, where other directories gave it
    matches too: sets/b's shards were left out of every epoch without a word (trained on, audited
    and benchmarked without them). The glob is refused, naming the directory."""
    from _data import random_tokens, without_search_permission, write_dataset

    monkeypatch.chdir(tmp_path)
    for name in "ab":
        write_dataset(tmp_path / "sets" / name, random_tokens(300, 1), random_tokens(200, 2))
    if command == "audit":  # a run's window logs to audit (on both sets' shards)
        window_logged_run("sets/*/*_train_*.bin")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    without_search_permission(monkeypatch, tmp_path / "sets" / "b")
    result = invoke_command(command, args)
    split = "val" if "--val-data" in args else "train"
    closed = tmp_path / "sets" / "b"
    assert_user_error(result, f"Error: sets/b/*_{split}_*.bin: cannot be looked up (Permission denied: this "
                              f"user may not search {closed}): give it search permission there")
    monkeypatch.undo()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


BENCH_EACH = """if True:  # loader.bench on each pattern of argv: [status, standard error] for each, as JSON
    import contextlib, io, json, sys
    import loader.bench
    said = []
    for pattern in sys.argv[1:]:
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            status = loader.bench.main([pattern, "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"])
        said.append([status, err.getvalue()])
    print(json.dumps(said))
"""


def bench_each_with_real_modes(cwd: Path, patterns: list[str]) -> list[list]:
    """BENCH_EACH's answers with the kernel's answers to file modes (setpriv, for root), in one
    interpreter (its start takes seconds)."""
    from test_sample import _as_a_user_without_overrides

    result = subprocess.run([*_as_a_user_without_overrides(), sys.executable, "-c", BENCH_EACH, *patterns],
                            cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_glob_that_matches_some_shards_past_a_directory_that_may_not_be_searched_with_real_modes(tmp_path):
    """As above with the kernel's answers: another user's directory (mode 700: nothing in it can
    be looked up), one this user may list but not search (0744: glob.glob lists its shards, whose
    stat then fails), and a link to a directory or a shard in such a directory: each was left out
    of the split without a word."""
    from _data import random_tokens, write_dataset

    for tree in ("t1", "t2", "t4"):
        for name in "ab":
            write_dataset(tmp_path / tree / name, random_tokens(300, 1))
    write_dataset(tmp_path / "closed" / "inner", random_tokens(300, 1))
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "b").symlink_to(tmp_path / "closed" / "inner")
    write_dataset(tmp_path / "t3", random_tokens(300, 1))
    write_dataset(tmp_path / "t5" / "a" / "b", random_tokens(300, 1))  # (t5/x/b: a link, by name after a glob)
    (tmp_path / "t5" / "x").mkdir()
    (tmp_path / "t5" / "x" / "b").symlink_to(tmp_path / "closed" / "inner")
    (tmp_path / "t3" / "t_train_000001.bin").symlink_to(tmp_path / "closed" / "inner" / "t_train_000000.bin")
    # this user's own, of modes 0 and 0444: for the owner, what 700 and 744 are for another user
    # (t4: a glob whose last part names a file, which glob.glob looks up without listing)
    closed = [(tmp_path / "t1" / "b", 0), (tmp_path / "t2" / "b", 0o444), (tmp_path / "closed", 0),
              (tmp_path / "t4" / "b", 0)]
    try:
        for directory, mode in closed:
            directory.chmod(mode)
        said = bench_each_with_real_modes(tmp_path, ["t1/*/*_train_*.bin", "t2/*/*_train_*.bin",
                                                     "links/*/*.bin", "t3/*_train_*.bin",
                                                     "t4/*/t_train_000000.bin", "t5/*/b/*_train_*.bin"])
    finally:
        for directory, _ in closed:
            directory.chmod(0o755)
    lines = [f"{path}: cannot be looked up (Permission denied: this user may not search {tmp_path / where}): "
             f"give it search permission there, or use a path outside {tmp_path / where}"
             for path, where in (("t1/b/*_train_*.bin", "t1/b"), ("t2/b/t_train_000000.bin", "t2/b"))]
    lines += [f"{pattern}: {path}: cannot be looked up (Permission denied: a directory on the way to what it "
              f"links to may not be searched): give it search permission there, or leave it out"
              for pattern, path in (("links/*/*.bin", "links/b"),
                                    ("t3/*_train_*.bin", "t3/t_train_000001.bin"))]
    lines.append(f"t4/b/t_train_000000.bin: cannot be looked up (Permission denied: this user may not search "
                 f"{tmp_path / 't4/b'}): give it search permission there, or use a path outside {tmp_path / 't4/b'}")
    lines.append("t5/*/b/*_train_*.bin: t5/x/b: cannot be looked up (Permission denied: a directory on the way to "
                 "what it links to may not be searched): give it search permission there, or leave it out")
    assert said == [[2, f"Error: {line}\n"] for line in lines]


@pytest.mark.parametrize("command, args", [
    ("train", ["--data", "sets/*/*_train_*.bin"]),
    ("train", ["--data", "sets/a", "--val-data", "sets/*/*_val_*.bin"]),
    ("audit", ["run", "--data", "sets/*/*_train_*.bin"]),
    ("bench", ["sets/*/*_train_*.bin", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"]),
    ("bench", ["sets/b/*_train_*.bin", "--B", "2", "--T", "8", "--windows", "1", "--repeats", "1"]),
])
def test_a_glob_in_a_directory_that_may_not_be_listed_is_one_line(tmp_path, monkeypatch, command, args):
    """A directory this user may search but not list (mode 0311): glob.glob passes over it, so a
    glob that matched shards elsewhere left its shards out without a word, and one below it said
    "no shard files match this pattern", though its shards are there. Each says it cannot be listed."""
    from _data import random_tokens, without_read_permission, write_dataset

    monkeypatch.chdir(tmp_path)
    for name in "ab":
        write_dataset(tmp_path / "sets" / name, random_tokens(300, 1), random_tokens(200, 2))
    if command == "audit":  # a run's window logs to audit (on both sets' shards)
        window_logged_run("sets/*/*_train_*.bin")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    without_read_permission(monkeypatch, tmp_path / "sets" / "b")
    result = invoke_command(command, args)
    pattern = next(arg for arg in args if "*" in arg)
    flag = "--val-data " if "--val-data" in args else "--data " if command == "audit" else ""
    fix = "give this user read permission on it" + (", or a pattern that leaves it out" * ("*/" in pattern))
    assert_user_error(result, f"Error: {flag}{pattern}: sets/b: cannot be listed (Permission denied), so "
                              f"which of its files the pattern matches cannot be known: {fix}")
    monkeypatch.undo()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing made, nothing left


def test_a_glob_in_a_directory_that_may_not_be_listed_is_one_line_with_real_modes(tmp_path):
    """As above with the kernel's answers (mode 0311, this user's own: for the owner what 0711
    is for another user): a glob below it and one that matches shards beside it are refused;
    one that names the directory below it goes on (its names are looked up, not listed)."""
    from _data import random_tokens, write_dataset

    for name in "ab":
        write_dataset(tmp_path / "flat" / name, random_tokens(300, 1))
        write_dataset(tmp_path / "deep" / name / "t", random_tokens(300, 1))
    locked = [tmp_path / "flat" / "b", tmp_path / "deep" / "b"]
    try:
        for directory in locked:
            directory.chmod(0o311)
        said = bench_each_with_real_modes(tmp_path, ["flat/b/*_train_*.bin", "flat/*/*_train_*.bin",
                                                     "deep/*/t/*_train_*.bin"])
    finally:
        for directory in locked:
            directory.chmod(0o755)
    lines = [f"Error: {pattern}: flat/b: cannot be listed (Permission denied), so which of its files the "
             f"pattern matches cannot be known: give this user read permission on it{fix}\n"
             for pattern, fix in (("flat/b/*_train_*.bin", ""),
                                  ("flat/*/*_train_*.bin", ", or a pattern that leaves it out"))]
    assert said == [[2, lines[0]], [2, lines[1]], [0, ""]]


def test_help_is_still_help():
    result = CliRunner().invoke(prep_main, ["tokenize", "--help"])
    assert result.exit_code == 0 and "--shard-size" in result.output


@pytest.mark.parametrize("command", ["sample", "tokenize", "info", "verify"])
def test_prep_help_gives_every_option_a_default(command):
    """Each option that takes a value says in --help what it is when not given (flags say so in
    their text); `prep info --B`/`--T` and `prep sample --from` did not."""
    group_ctx = prep_main.make_context("prep", [command, "--help"], resilient_parsing=True)
    cmd = prep_main.get_command(group_ctx, command)
    ctx = cmd.make_context(command, [], resilient_parsing=True, parent=group_ctx)
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.is_flag and param.name != "help":
            record = param.get_help_record(ctx)
            assert record is not None and "[default:" in record[1], (command, param.name, record)


@pytest.mark.parametrize("module", ["train", "sample", "loader.audit", "prep.bench", "prep.cli"])
def test_help_states_each_default_once(module):
    """`sample.py --help` said `--prompt`'s default twice, differently: "(default: a document's
    start). [default: ""]"."""
    import importlib

    root = importlib.import_module(module).main
    commands = list(root.commands.values()) if isinstance(root, click.Group) else [root]
    for cmd in commands:
        ctx = cmd.make_context(cmd.name or module, [], resilient_parsing=True)
        for param in cmd.params:
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                assert record[1].lower().count("default:") <= 1, (module, cmd.name, param.name, record)


def test_python_dash_m_prep_is_the_prep_command(tmp_path):
    """`python -m prep` (no console script on PATH) runs the same group, usage errors included."""
    ok = subprocess.run([sys.executable, "-m", "prep", "info", "--help"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("Usage: prep info"), ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, "-m", "prep", "info", str(tmp_path / "none")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "none" in bad.stderr, bad.stderr


def test_train_usage_error_through_the_real_entry_point(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--B", "four"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: ") and "--B" in result.stderr and "four" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_usage_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prep.bench", "--mb", "lots"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--mb" in result.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["-m", "prep.cli", "--help"], ["-m", "prep.cli", "sample", "--offline"],
                                     [str(REPO / "train.py"), "--help"]])
def test_a_standard_output_that_cannot_be_written_is_one_line(tmp_path, command):
    """`> /dev/full` (or a full disk): one line on stderr and status 2, not a traceback."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, *command], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "Error: cannot write to standard output (No space left on device)\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["-m", "prep.cli", "info", "gone"], ["-m", "prep.cli", "tokenize", "gone.txt"],
                                     ["-m", "prep.cli", "info", "--bogus"], [str(REPO / "train.py"), "--data", "gone"],
                                     [str(REPO / "sample.py"), "gone.pt"], ["-m", "loader.audit", "gone"]])
def test_a_mistake_is_status_2_where_stderr_cannot_take_its_line(tmp_path, command):
    """`2>/dev/full`: the error line's OSError escaped click's main, and the command ended with
    status 1 (and no word, there being nowhere to write it), where a script checks for 2."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, *command], cwd=tmp_path, stdout=subprocess.PIPE, stderr=full,
                                text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (result.returncode, result.stdout) == (2, "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_prep_tokenize_into_a_full_standard_output_says_the_dataset_is_complete(tmp_path):
    (tmp_path / "in.txt").write_text("words " * 100)
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", "in.txt", "--quiet"], cwd=tmp_path,
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (2, "Error: data/in is complete, but its summary cannot be "
                                                     "written to standard output (No space left on device)\n")
    assert (tmp_path / "data" / "in" / "meta.json").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failing_standard_output_through_tqdm_write_is_one_line_too(tmp_path):
    """A writer given the stream as `fp` (tqdm.write), not as click.echo's `file`."""
    script = tmp_path / "writes.py"
    script.write_text("import click, tqdm\nfrom prep.errors import UserCommand\n"
                      "@click.command(cls=UserCommand)\ndef main():\n"
                      "    for _ in range(2000):\n        tqdm.tqdm.write('x' * 80)\n"
                      "main()\n")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(script)], cwd=REPO, stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (result.returncode, result.stderr) == (2, "Error: cannot write to standard output (No space left on "
                                                     "device)\n")


@pytest.mark.parametrize("command, made", [(["-m", "prep.cli", "sample", "--offline"], "input.txt"),
                                           (["-m", "prep.cli", "tokenize", "in.txt", "--quiet"], "data/in/meta.json")])
def test_a_closed_standard_output_is_no_output(tmp_path, command, made):
    """Started with stdout closed (`>&-`), sys.stdout is None: the work is done, and its
    summary goes nowhere, as click.echo and print do; flushing None was a traceback, status 1."""
    (tmp_path / "in.txt").write_text("words " * 100)
    result = subprocess.run([sys.executable, *command], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(1),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / made).is_file()


@pytest.mark.parametrize("command", [["tokenize", "in.txt"], ["verify", "data/in"]])
def test_a_closed_standard_error_draws_no_bar(tmp_path, command):
    """Started with stderr closed (`2>&-`), sys.stderr is None: tqdm took it for a terminal and
    wrote its bar to it, and the AttributeError ended the command with status 1, no dataset and
    no word (its traceback had nowhere to go)."""
    (tmp_path / "in.txt").write_text("words " * 100)
    if command[0] == "verify":
        subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", "in.txt", "--quiet"], cwd=tmp_path,
                       check=True, capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    result = subprocess.run([sys.executable, "-m", "prep.cli", *command], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(2),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("tokenized 1 document(s)" if command[0] == "tokenize" else "verified 2 shard(s)")
    assert (tmp_path / "data" / "in" / "meta.json").is_file()


def test_a_note_never_lands_in_the_json_on_standard_output(tmp_path):
    """A directory's left-out files are noted on stderr; with stderr closed, print(file=None)
    wrote the note to stdout, in front of --json's one line of JSON."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("words " * 100)
    (corpus / "README.md").write_text("not read")
    result = subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", "corpus", "--json"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, timeout=120,
                            preexec_fn=lambda: os.close(2), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout)["documents"] == 1


def test_a_closed_standard_error_is_no_file_of_ours(tmp_path):
    """Started with stderr closed (`2>&-`, or `>&- 2>&-`), descriptor 2 was free and the next file
    opened took it: train.py's metrics.jsonl became descriptor 2, and a SIGTERM's announcement
    (os.write(2, ...) in StopRequest's handler) went into it, a line that is no JSON."""
    code = ("import signal, sys, train, trainer.stopping\n"
            "f = open(sys.argv[1], 'a')\n"
            "with trainer.stopping.StopRequest(announce=True):\n"
            "    signal.raise_signal(signal.SIGTERM)\n"
            "f.close()\n")
    log = tmp_path / "metrics.jsonl"
    result = subprocess.run([sys.executable, "-c", code, str(log)], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            timeout=120, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    assert log.read_text() == ""


def _wait_for_torch_import(proc: subprocess.Popen) -> None:
    """Until `proc` has loaded torch's C library (its import has begun, and goes on for a second
    or more with torch's Python modules): a fixed sleep sent the signal during the interpreter's
    own start-up on a loaded machine, where a traceback is Python's. Without /proc: 0.3 s."""
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.parent.is_dir():
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 60
    while "libtorch" not in maps.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, "the command ended before importing torch"
        time.sleep(0.005)


@pytest.mark.parametrize("script, signum, status", [
    ("train.py", signal.SIGINT, 130),
    ("train.py", signal.SIGTERM, 130),  # as train.py's every stop by SIGTERM exits
    ("sample.py", signal.SIGTERM, 143),
    ("-m loader.audit", signal.SIGINT, 130),  # the loader package imports torch while -m locates it
    ("-m loader.bench", signal.SIGTERM, 143),
])
def test_a_stop_while_a_script_imports_torch_is_one_line_without_a_traceback(tmp_path, script, signum, status):
    """Importing torch takes a second or more: a Ctrl-C then used to print the import's traceback
    (and then nothing at all: now the one line a stop while starting up has), and a SIGTERM
    ended the process without a word (143, where train.py's README says 130)."""
    command = script.split() if script.startswith("-m ") else [str(REPO / script)]
    proc = subprocess.Popen([sys.executable, *command, "--help"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_torch_import(proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout) == (status, "")
    assert stderr == f"{signum.name}: stopped while starting up (importing its libraries); nothing was written\n"
    assert list(tmp_path.iterdir()) == []


STOP_AT_CLICK = """
import os, runpy, signal, sys

SIGNUM = getattr(signal, sys.argv[1])


class StopAtClick:  # a Ctrl-C or SIGTERM that comes as click (or the module named by $STOP_AT) starts to import
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("STOP_AT", "click"):
            os.kill(os.getpid(), SIGNUM)
        return None

sys.meta_path.insert(0, StopAtClick())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__") if sys.argv[0].endswith(".py") else runpy.run_module(
    sys.argv[0], run_name="__main__")
"""


def test_a_stop_while_a_rank_of_torchrun_imports_says_which_rank_it_is(tmp_path):
    """torchrun runs train.py once a rank and passes each its signals: every rank said the same
    line, none saying whose (rank 1's here: what torchrun sets is all the guard reads)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    result = subprocess.run([sys.executable, "-c", STOP_AT_CLICK, "SIGTERM", str(REPO / "train.py"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert (result.returncode, result.stdout) == (130, ""), result.stderr
    assert result.stderr == "rank 1 of 2: SIGTERM: stopped while starting up (importing its libraries); nothing was " \
                            "written\n"


@pytest.mark.parametrize("command, signum, status", [
    ("prep.cli", signal.SIGINT, 130), ("prep.cli", signal.SIGTERM, 143),
    ("train.py", signal.SIGINT, 130), ("train.py", signal.SIGTERM, 130),
    ("sample.py", signal.SIGINT, 130), ("sample.py", signal.SIGTERM, 143),
    ("loader.audit", signal.SIGINT, 130), ("loader.audit", signal.SIGTERM, 143),
    ("prep.bench", signal.SIGTERM, 143),
    # train.py's runs and prep tokenize's stop on it (prep died of it without a word)
    *([("train.py", signal.SIGHUP, 130), ("prep.cli", signal.SIGHUP, 129)] if hasattr(signal, "SIGHUP") else []),
])
def test_a_stop_while_click_imports_is_the_same_one_line(tmp_path, command, signum, status):
    """click was imported before the guard: a Ctrl-C in those tens of milliseconds printed the
    import's traceback, and a SIGTERM ended the command without a word."""
    target = str(REPO / command) if command.endswith(".py") else command
    result = subprocess.run([sys.executable, "-c", STOP_AT_CLICK, signum.name, target, "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (result.returncode, result.stdout) == (status, ""), result.stderr
    assert result.stderr == f"{signum.name}: stopped while starting up (importing its libraries); nothing was written\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_train_py_imports_the_standard_library_is_the_same_one_line(tmp_path, signum):
    """train.py imported some twenty standard-library modules before its guard: a Ctrl-C in those
    tens of milliseconds (a loaded machine's chaos test hit one 0.24 s into the run) printed the
    import's traceback and died of SIGINT; a SIGTERM ended the run without a word (143)."""
    result = subprocess.run([sys.executable, "-c", STOP_AT_CLICK, signum.name, str(REPO / "train.py"), "--help"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO), "STOP_AT": "dataclasses"})
    assert (result.returncode, result.stdout) == (130, ""), result.stderr
    assert result.stderr == f"{signum.name}: stopped while starting up (importing its libraries); nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def run_python(code: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter in the repository (its own signal handlers, its own exit)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_the_import_guard_exits_143_on_sigterm_with_one_line_and_puts_the_handlers_back():
    """The guard prep's commands import numpy and tiktoken under (prep.cli, prep.bench), where
    SIGTERM was 143 and no word: 143 and the line now; the handlers before it are back after."""
    code = ("import os, signal, time\n"
            "from prep.signals import interrupt_exits_while_importing\n"
            "with interrupt_exits_while_importing(): pass\n"
            "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL\n"
            "with interrupt_exits_while_importing():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "print('not reached')\n")
    proc = run_python(code)
    assert (proc.returncode, proc.stdout) == (143, "")
    assert proc.stderr == "SIGTERM: stopped while starting up (importing its libraries); nothing was written\n"


def test_the_import_guard_keeps_a_handler_set_over_it_inside_its_block():
    """train.py sets its own handlers, then ends the guard: the guard put Python's back over
    them, and a signal between that and setting them again found Python's default."""
    code = ("import signal\n"
            "from prep.signals import interrupt_exits_while_importing\n"
            "def own(signum, frame): pass\n"
            "with interrupt_exits_while_importing():\n"
            "    signal.signal(signal.SIGINT, own)\n"
            "assert signal.getsignal(signal.SIGINT) is own\n"
            "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the guard's own: put back\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_second_signal_inside_the_import_guard_s_exit_says_nothing_more(when):
    """`timeout` passes a Ctrl-C on to the command and to its process group: the copy ran the
    guard's handler again inside the first one's, after its write (before its exit: the line
    twice) or within it (an interrupted write is retried after the handlers run, PEP 475, and a
    handler that exited there said nothing). One line, and the first signal's status."""
    code = ("import os, signal\n"
            "from prep.signals import interrupt_exits_while_importing\n"
            "with interrupt_exits_while_importing():\n"
            "    handler, real_write = signal.getsignal(signal.SIGINT), os.write\n"
            "    def write(fd, data):\n"
            "        os.write = real_write\n"
            f"        written = real_write(fd, data) if {when == 'after'} else 0\n"
            "        handler(signal.SIGTERM, None)  # the second signal, inside the first one's exit\n"
            "        return written or real_write(fd, data)\n"
            "    os.write = write\n"
            "    handler(signal.SIGINT, None)\n"
            "print('not reached')\n")
    proc = run_python(code)
    assert (proc.returncode, proc.stdout) == (130, "")
    assert proc.stderr == "SIGINT: stopped while starting up (importing its libraries); nothing was written\n"


def test_a_ctrl_c_the_command_leaves_alone_is_one_line_and_exit_130():
    """sample.py, prep bench, loader.audit: not "Aborted!" and exit 1 (click's), nor a traceback."""
    import click

    from prep.errors import UserCommand

    @click.command("slow", cls=UserCommand)
    def slow():
        click.echo("working")
        raise KeyboardInterrupt

    result = CliRunner().invoke(slow, [], prog_name="slow")
    assert result.exit_code == 130 and result.stdout == "working\n"
    assert result.stderr == "slow: interrupted\n"


def test_a_line_for_stderr_is_dropped_where_stderr_cannot_take_it(monkeypatch, capsys):
    """sample.py's header and prep.bench's progress go through say(): a full or closed stderr
    (`2>/dev/full`) ended those commands before their result on stdout."""
    import io

    from prep import bench
    from prep.streams import say

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(28, "No space left on device")

    say("a note")
    assert capsys.readouterr().err == "a note\n"
    monkeypatch.setattr(sys, "stderr", Full())
    say("a note")  # no exception
    assert bench.run_bench.__defaults__ == (say,)  # its progress lines


@pytest.mark.parametrize("args", [["info"], ["verify"], ["info", "--json"]])
def test_a_reader_gone_before_the_output_ends_the_command_quietly_with_sigpipes_status(tmp_path, args):
    """`prep verify d | head -0`: click's rule for a closed pipe was exit 1 with no word, which
    is also verify's "problems found". It is now 141, the shell's status for a writer SIGPIPE
    ends, as train.py's and `python -m loader.bench`'s."""
    from _data import random_tokens, write_dataset

    data = write_dataset(tmp_path / "d", random_tokens(300, 1), random_tokens(200, 2))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        proc = subprocess.run([sys.executable, "-m", "prep.cli", *args[:1], str(data), *args[1:]], cwd=REPO,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")



@pytest.mark.parametrize("command", [["tokenize", "--quiet", "in.txt", "--out"], ["info"], ["verify"]])
def test_a_path_whose_name_is_not_utf8_prints_as_its_bytes_under_a_strict_utf8_output(tmp_path, command):
    """A name that is no UTF-8 (b'd\\xff': a file from a Latin-1 system) is held as a lone
    surrogate, and under a UTF-8 locale other than C.UTF-8 (en_US.UTF-8, whose standard output
    Python makes strict: PYTHONIOENCODING gives it here) printing it raised UnicodeEncodeError:
    the summary, `prep info`'s and `prep verify`'s lines ended in a traceback and status 1, the
    work done. It prints as its bytes, as ls prints it."""
    (tmp_path / "in.txt").write_text("words " * 100)
    out = b"d\xffx"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUTF8": "0"}

    def prep(*args, errors: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "prep.cli", *args], cwd=tmp_path, capture_output=True,
                              env={**env, "PYTHONIOENCODING": f"utf-8:{errors}"}, timeout=120)

    if command[0] != "tokenize":
        made = prep("tokenize", "--quiet", "in.txt", "--out", out, errors="surrogateescape")
        assert made.returncode == 0, made.stderr
    result = prep(*command, out, errors="strict")
    said = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in said, said
    assert out in result.stdout
    assert (tmp_path / os.fsdecode(out) / "meta.json").is_file()


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_prep_tokenize_whose_reader_is_gone_ends_quietly_with_sigpipes_status_dataset_made(tmp_path, args):
    """`prep tokenize in.txt --json | jq ...` with jq gone: the summary's EPIPE was taken for a full
    disk, "Error: ... is complete, but its summary cannot be written to standard output (Broken
    pipe)" and status 2, a user's mistake, where `prep info` and `prep verify` end quietly with
    141 as the README says every command does (a writer SIGPIPE ends)."""
    (tmp_path / "in.txt").write_text("words " * 100)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        proc = subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", "in.txt", "--quiet", *args],
                              cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
    assert (tmp_path / "data" / "in" / "meta.json").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["tokenize", "info", "info, a shard missing"])
def test_a_note_or_warning_stderr_cannot_take_is_dropped_and_the_work_done(tmp_path, command):
    """`2>/dev/full` (or a log on a full disk): prep tokenize's note of what a directory leaves
    out, and prep info's warning of a shard meta.json does not list, raised the OSError of their
    write, and the command ended with status 1, no word said, before its work (no dataset, no
    report): a line about the work is dropped where stderr cannot take it (prep.streams.say)."""
    from _data import random_tokens, write_dataset

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("words " * 100)
    (tmp_path / "corpus" / "readme.md").write_text("left out")
    data, env = tmp_path / "data" / "corpus", {**os.environ, "PYTHONPATH": str(REPO)}
    if command.startswith("info"):
        made = subprocess.run([sys.executable, "-m", "prep.cli", "tokenize", "corpus", "--quiet"],
                              cwd=tmp_path, capture_output=True, timeout=120, env=env)
        assert made.returncode == 0, made.stderr
        write_dataset(data, random_tokens(10), name="extra")  # on disk, not listed in meta.json
        if command == "info, a shard missing":  # listed in meta.json, not on disk: another warning
            next(data.glob("*_val_*.bin")).unlink()
    args = ["tokenize", "corpus", "--quiet"] if command == "tokenize" else ["info", str(data)]
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "prep.cli", *args], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=full, text=True, timeout=120, env=env)
    assert result.returncode == 0
    assert (data / "meta.json").is_file()
    assert ("tokenized 1 document(s)" if command == "tokenize" else "from meta.json") in result.stdout


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_progress_bar_stderr_cannot_take_stops_drawing_and_verify_says_its_finding(tmp_path):
    """`prep verify d --progress 2>>log` on a full disk: the bar's first write raised ENOSPC
    (tqdm lets only EIO, a hung-up terminal's, pass) and verify ended with status 1, its status
    for a bad shard, without a word, where every shard was good."""
    from _data import random_tokens, write_dataset

    data = write_dataset(tmp_path / "d", random_tokens(300, 1), random_tokens(200, 2))
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "prep.cli", "verify", str(data), "--progress"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=full, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0
    assert result.stdout.startswith(f"verified 2 shard(s), 500 tokens in {data}: "), result.stdout


def test_a_progress_bar_whose_stream_fails_a_flush_stops_drawing():
    """A buffered stream (a log file on a full disk: its writes taken, its flush failing, as
    the bar's file= in a notebook) stops the bar's drawing at the failed flush too, the work
    going on, where the flush's OSError ended it."""
    from prep.progress import Bar

    class FullDisk(io.StringIO):
        flushes = 0

        def flush(self):
            FullDisk.flushes += 1
            raise OSError(28, "No space left on device")

    stream = FullDisk()
    with Bar(total=3, file=stream, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert bar.n == 3 and FullDisk.flushes == 1 and stream.getvalue()


def test_a_line_said_over_a_progress_bar_clears_the_bar_first(monkeypatch):
    """tqdm finds a bar by its stream (external_write_mode, as the trainer's say_over_bar says a
    note or a sample during a run; tqdm.write): the bar's stream wrapper (_Undrawable) is equal to
    the stream it wraps, so the bar on standard error is cleared before the line, where a wrapper
    equal to itself alone left the line written over the bar."""
    from prep.progress import Bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with Bar(total=3, mininterval=0, disable=False) as bar:
        bar.update(1)
        drawn = len(sys.stderr.getvalue())
        with Bar.external_write_mode():
            assert sys.stderr.getvalue()[drawn:].replace(" ", "") == "\r\r"  # cleared: spaces between two \r
