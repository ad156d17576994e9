"""The Makefile's recipes with paths a user may have (spaces, an empty DEMO_DIR), a venv that
no longer runs or was cut short, and a TORCH_SPEC with a version bound. A stand-in venv (a
`python` script that logs its arguments) keeps them fast: no install runs. `make demo` itself
runs end to end in test_train.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The repository's Makefile run from `cwd` (its relative paths, .venv and the caches, there)."""
    return subprocess.run(["make", "-f", str(REPO / "Makefile"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_clean_removes_only_the_demo_s_files_in_a_demo_dir_with_a_space(tmp_path):
    """DEMO_DIR="d with space" was split by the shell: `rm -rf .../d with space/data/input` removed
    the whole of .../d, a user's files in it included, and ./with and ./space."""
    demo = tmp_path / "d with space"
    for name in ("data/input/meta.json", "out/demo/metrics.jsonl", "input.txt", "data/other/meta.json", "out/run/x"):
        (demo / name).parent.mkdir(parents=True, exist_ok=True)
        (demo / name).write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("keep")
    (tmp_path / "with").mkdir()
    result = make(tmp_path, "clean", f"VENV={tmp_path / 'novenv'}", f"DEMO_DIR={demo}")
    assert result.returncode == 0, result.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["d with space/data/other/meta.json", "d with space/input.txt", "d with space/out/run/x",
                    "d/notes.txt"]
    assert (tmp_path / "with").is_dir()


def stand_in_venv(venv: Path, pip: bool = True, torch: bool = False) -> Path:
    """A venv whose python logs each call's arguments and imports pip (or torch) as told."""
    (venv / "bin").mkdir(parents=True)
    log = venv / "calls.log"
    imports = " ".join(name for name, there in (("pip", pip), ("torch", torch)) if there)
    script = (f"#!/bin/sh\necho \"$*\" >> '{log}'\n"
              f"if [ \"$1\" = -c ]; then for m in {imports or '-'}; do [ \"$2\" = \"import $m\" ] && exit 0; done; "
              f"exit 1; fi\nexit 0\n")
    (venv / "bin" / "python").write_text(script)
    (venv / "bin" / "python").chmod(0o755)
    return log


def test_a_venv_cut_short_gets_pip_and_torch_spec_is_never_a_redirection(tmp_path):
    """A Ctrl-C as `python3 -m venv` ran left a python without pip, and every later `make venv`
    failed on "No module named pip". TORCH_SPEC="torch<2.14" was read by the shell as a
    redirection from a file 2.14 (and ">=2.13" wrote pip's output to a file "=2.13")."""
    (tmp_path / "pyproject.toml").write_text("")
    log = stand_in_venv(tmp_path / "v", pip=False)
    result = make(tmp_path, "venv", f"VENV={tmp_path / 'v'}", "TORCH_SPEC=torch<2.14 --index-url file:///x",
                  "PYTHON=false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text().splitlines() == ["-c import pip", "-m ensurepip --default-pip", "-c import torch",
                                            "-m pip install torch<2.14 --index-url file:///x",
                                            "-m pip install -e .[dev]"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml", "v"]  # no file "2.14", "=2.13"
    assert (tmp_path / "v" / ".installed").is_file()


def installed_moved_venv(root: Path) -> Path:
    """A venv `make venv` finished (its stamp newer than pyproject.toml) whose scripts name a
    python that is no longer there (the clone moved)."""
    (root / "pyproject.toml").write_text("")
    os.utime(root / "pyproject.toml", (0, 0))
    venv = root / "v"
    stand_in_venv(venv, torch=True)
    (venv / "bin" / "prep").write_text(f"#!{root / 'moved' / 'python'}\n")
    (venv / "bin" / "prep").chmod(0o755)
    (venv / ".installed").touch()
    return venv


@pytest.mark.parametrize("target", ["clean", "demo"])
def test_an_empty_demo_dir_is_refused(tmp_path, target):
    """`make clean DEMO_DIR=` ran `rm -rf /data/input /out/demo`; `make demo DEMO_DIR=` ran in $HOME."""
    venv = installed_moved_venv(tmp_path)
    result = make(tmp_path, target, "DEMO_DIR=", f"VENV={venv}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"make {target}: DEMO_DIR is empty: name a directory (default: .)"
    assert venv.is_dir()


@pytest.mark.parametrize("target", ["test", "demo"])
def test_a_venv_that_no_longer_runs_is_named_with_what_to_do(tmp_path, target):
    """A clone moved since `make venv` (its scripts name the old python) failed with
    `.venv/bin/prep: not found`, and `make venv` said there was nothing to be done."""
    venv = installed_moved_venv(tmp_path)
    result = make(tmp_path, target, f"VENV={venv}", f"DEMO_DIR={tmp_path / 'demo'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == (
        f"make {target}: {venv}/bin/prep runs {tmp_path}/moved/python, which is not there (the clone moved, or "
        f"Python was removed?): remove {venv} and run make {target} again")
    assert not (tmp_path / "demo").exists()


def test_a_venv_path_with_a_space_is_refused(tmp_path):
    """make splits a target's name at spaces: VENV="my venv" made targets `my` and
    `venv/.installed`, and every make demo or test reinstalled."""
    result = make(tmp_path, "venv", "VENV=my venv")
    assert result.returncode == 2
    assert 'VENV="my venv": make cannot name a target with a space in it; pick another VENV' in result.stderr
    assert list(tmp_path.iterdir()) == []
