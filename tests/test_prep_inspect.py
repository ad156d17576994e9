"""`prep info` / `prep verify` and `steps_per_epoch`: on hand-written datasets (with and
without meta.json), on every way a shard directory can be broken, and end to end after
`prep tokenize` when that module is present."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import prep.scan
import prep.verify
from prep.epoch import steps_per_epoch
from prep.errors import UserError
from prep.info import dataset_info, info_command
from prep.meta import META_NAME, write_meta
from loader.resolve import resolve_shards
from prep.shards import ShardError, file_sha256, shard_name, write_shard
from prep.tokenizer import EOT
from prep.verify import verify_command, verify_dataset
from trainer.data import find_dataset

from _cli import assert_user_error
from _data import TINY_SHAKESPEARE as TINY, without_read_permission


def make_dataset(directory: Path, splits: dict[str, list[np.ndarray]], name: str = "ds",
                 meta: bool = True) -> Path:
    """Shards via write_shard, plus a meta.json laid out as prep/meta.py documents."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = {}
    for split in ("train", "val"):
        entries = []
        for index, tokens in enumerate(splits.get(split, [])):
            file = shard_name(name, split, index)
            sha = write_shard(directory / file, tokens)
            entries.append({"file": file, "tokens": int(len(tokens)), "sha256": sha})
        documents = sum(int(np.count_nonzero(t == EOT)) for t in splits.get(split, []))  # one EOT each, as prep
        layout[split] = {"tokens": sum(e["tokens"] for e in entries), "documents": documents, "shards": entries}
    if meta:
        total = sum(s["tokens"] for s in layout.values())
        write_meta(directory, {
            "format_version": 1, "tool": "shardgpt", "tool_version": "0.1.0", "tokenizer": "gpt2",
            "vocab_size": 50257, "eot": 50256, "dtype": "uint16", "header_bytes": 1024,
            "name": name, "splits": layout, "sources": [],
            "totals": {"documents": sum(s["documents"] for s in layout.values()), "tokens": total, "bytes": 0},
            "settings": {}})
    return directory


def tokens(n: int, seed: int = 0) -> np.ndarray:
    """One document's `n` tokens as prep writes them: its EOT, then no other."""
    drawn = np.random.default_rng(seed).integers(0, EOT, size=n, dtype=np.int64)
    drawn[0] = EOT
    return drawn


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", {"train": [tokens(5000, 1), tokens(3000, 2)],
                                          "val": [tokens(700, 3)]})


def run(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


# --- steps_per_epoch --------------------------------------------------------------------

def test_steps_per_epoch_tiny_shakespeare_figure():
    assert steps_per_epoch(338_026, 4, 32) == 2_640  # the README's worked example
    assert steps_per_epoch(338_026, 4, 32, world=2) == 1_320


def test_steps_per_epoch_edges():
    assert steps_per_epoch(129, 4, 32) == 1  # B*T + 1: exactly one window
    assert steps_per_epoch(128, 4, 32) == 0  # one token short of the last target
    assert steps_per_epoch(0, 4, 32) == 0 and steps_per_epoch(1, 1, 1) == 0
    for bad in ({"B": 0}, {"T": -1}, {"world": 0}):
        with pytest.raises(ValueError):
            steps_per_epoch(1000, **({"B": 4, "T": 32} | bad))


# no deadline: Hypothesis' default (200 ms of wall clock an example) fails a test of microseconds
# whose process waited that long for a CPU ("Unreliable test timings"), as on a loaded CI machine
@settings(deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 64), st.integers(1, 2048), st.integers(1, 16))
def test_steps_per_epoch_every_window_fits(n, B, T, world):
    E = steps_per_epoch(n, B, T, world)
    step = B * T * world
    assert E * step + 1 <= n or E == 0  # the last window's +1 target exists
    assert (E + 1) * step + 1 > n  # and not one more step would fit


# --- info -------------------------------------------------------------------------------

def test_info_from_meta(dataset):
    info = dataset_info(dataset)
    assert info.source == META_NAME and info.name == "ds"
    assert (info.splits["train"].shards, info.splits["train"].tokens) == (2, 8000)
    assert (info.splits["val"].shards, info.splits["val"].tokens) == (1, 700)
    result = run(info_command, dataset)
    assert result.exit_code == 0, result.output
    assert "8,000 tokens" in result.output and "3 shard(s), 8,700 tokens" in result.output
    assert result.output.strip().splitlines()[-1].startswith(f"{dataset}:")


def test_info_without_meta_reads_headers(tmp_path):
    ds = make_dataset(tmp_path / "llmc", {"train": [tokens(100), tokens(50)], "val": [tokens(9)]},
                      name="fineweb", meta=False)
    result = run(info_command, ds, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["source"] == "shard headers" and record["tokens"] == 159 and record["shards"] == 3
    assert record["splits"]["train"]["tokens"] == 150 and record["splits"]["val"]["shards"] == 1


def test_info_steps_per_epoch(tmp_path):
    ds = make_dataset(tmp_path / "d", {"train": [tokens(200_000), tokens(138_026)], "val": [tokens(100)]})
    record = json.loads(run(info_command, ds, "--B", 4, "--T", 32, "--json").output)
    assert record["splits"]["train"]["steps_per_epoch"] == 2_640
    assert record["splits"]["val"]["steps_per_epoch"] == 0
    assert (record["B"], record["T"], record["world"]) == (4, 32, 1)
    text = run(info_command, ds, "--B", 4, "--T", 32).output
    assert "2,640 steps per epoch" in text
    assert "0 steps per epoch: one step needs B*T*world + 1 = 129 tokens" in text
    record = json.loads(run(info_command, ds, "--B", 4, "--T", 32, "--world", 8, "--json").output)
    assert record["splits"]["train"]["steps_per_epoch"] == 330


def test_info_warns_about_missing_listed_shard(dataset):
    (dataset / "ds_val_000000.bin").unlink()
    result = run(info_command, dataset)
    assert result.exit_code == 0 and "missing" in result.stderr and "prep verify" in result.stderr


def test_info_says_a_directory_with_a_listed_shard_s_name_is_one(dataset):
    """A directory where a listed shard should be (a copy gone wrong): info called the shard
    missing; verify and the loader say it is a directory."""
    shard = dataset / "ds_val_000000.bin"
    shard.unlink()
    shard.mkdir()
    result = run(info_command, dataset)
    assert result.exit_code == 0
    assert result.stderr == (f"warning: 1 shard(s) would be refused by the loader, e.g. {shard}: is a "
                             f"directory, not a shard; run `prep verify {dataset}`\n")


@pytest.mark.parametrize("size", [5000, 7026])
def test_info_warns_about_a_shard_cut_short_or_grown(dataset, size):
    """A half-copied dataset, or a shard appended to: info read meta.json's figures and said
    nothing (verify finds it)."""
    assert run(info_command, dataset).stderr == ""
    shard = dataset / "ds_train_000001.bin"
    with open(shard, "r+b") as f:
        f.truncate(size)  # (past the end: zeros appended)
    result = run(info_command, dataset)
    assert result.exit_code == 0
    assert result.stderr == (f"warning: 1 shard(s) are not the size meta.json gives them (cut short or changed), "
                             f"e.g. {shard}: {size:,} bytes, 7,024 expected; run `prep verify {dataset}`\n")


def test_info_warns_about_a_shard_header_changed_where_the_size_is_right(dataset):
    """meta.json's figures and the file sizes agree, but a header does not: info said nothing,
    and train.py then refused the dataset (the loader reads every header at start)."""
    shard, other = dataset / "ds_train_000001.bin", dataset / "ds_val_000000.bin"
    _set_header_slot(shard, 2, 3001)  # 3,000 tokens, and the file's size says so
    _set_header_slot(other, 0, 0)
    result = run(info_command, dataset, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["bad_header"] == [
        ["ds_train_000001.bin", "size 7024 bytes, but the header's 3001 tokens need exactly 7026"],
        ["ds_val_000000.bin", "bad magic 0 (expected 20240520)"]]
    assert result.stderr == (f"warning: 2 shard(s) would be refused by the loader, e.g. {shard}: size 7024 "
                             f"bytes, but the header's 3001 tokens need exactly 7026; run `prep verify {dataset}`\n")
    with pytest.raises(ShardError, match="3001 tokens"):
        resolve_shards(dataset, "train")  # what the loader says of it, at start


def test_info_warns_about_shards_meta_json_does_not_list(dataset):
    """A shard on disk that meta.json leaves out (a hand edit, a copy into the directory) is
    read by no one: info counted meta.json's alone and said nothing (verify finds it)."""
    write_shard(dataset / "ds_train_000002.bin", tokens(10))
    result = run(info_command, dataset, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unlisted"] == ["ds_train_000002.bin"]
    assert json.loads(result.stdout)["splits"]["train"]["shards"] == 2  # meta.json's, which the loader reads
    assert result.stderr == (f"warning: 1 shard file(s) here are not listed in meta.json, so not read, e.g. "
                             f"{dataset / 'ds_train_000002.bin'}; run `prep verify {dataset}`\n")


def test_info_warns_about_a_split_total_that_is_not_the_sum_of_its_shards(dataset):
    """meta.json's splits.train.tokens, edited to 5: info said nothing and exited 0, where verify
    exits 1 and the loader refuses the split ("train total is 5 tokens, but its shards hold 8000")."""
    meta = json.loads((dataset / META_NAME).read_text())
    meta["splits"]["train"]["tokens"] = 5
    (dataset / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="train total is 5 tokens, but its shards hold 8000"):
        resolve_shards(dataset, "train")
    result = run(info_command, dataset, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["wrong_total"] == [["train", 5, 8000]]
    assert json.loads(result.stdout)["splits"]["train"]["tokens"] == 8000  # its shards', as the loader reads
    assert result.stderr == (f"warning: meta.json gives the train split 5 tokens, but its shards hold 8,000: "
                             f"the loader refuses it; run `prep verify {dataset}`\n")
    assert run(info_command, dataset).stdout.splitlines()[0] == (
        "  train  2 shard(s), 8,000 tokens, 2 document(s) start here")


def _with_meta_text(tmp_path, text):
    target = make_dataset(tmp_path / "m", {"train": [tokens(10)]})
    (target / META_NAME).write_text(text(json.loads((target / META_NAME).read_text())))
    return target


def _zero_magic(tmp_path):
    target = make_dataset(tmp_path / "h", {"train": [tokens(10)]}, meta=False)
    _set_header_slot(target / "ds_train_000000.bin", 0, 0)
    return target


INFO_MISTAKES = {  # case: (make the target, extra args, words the one error line must hold)
    "no_dir": (lambda t: t / "nowhere", [], ["nowhere", "no such file or directory"]),
    # a glob is taken as train.py's --data takes it: one matching nothing is refused as there
    "glob_of_nothing": (lambda t: make_dataset(t / "g", {"train": [tokens(10)]}) / "ds_tain_*.bin", [],
                        ["ds_tain_*.bin: no shard files match this pattern"]),
    "glob_of_meta_json": (lambda t: make_dataset(t / "gm", {"train": [tokens(10)]}) / "*", [],
                          [f"{META_NAME}: a dataset's {META_NAME}, not a shard: pass its directory"]),
    "glob_into_unfinished": (lambda t: (make_dataset(t / ".g.tmp-9", {"train": [tokens(10)]})
                                        / "UNFINISHED").touch() or t / ".g.tmp-9" / "*.bin", [],
                             [".g.tmp-9: an unfinished `prep tokenize` output"]),
    "unfinished": (lambda t: (make_dataset(t / ".u.tmp-7", {"train": [tokens(10)]}) / "UNFINISHED").touch() or
                   t / ".u.tmp-7", [], [".u.tmp-7: an unfinished `prep tokenize` output"]),
    "link_into_unfinished": (lambda t: (make_dataset(t / ".u.tmp-8", {"train": [tokens(10)]}) / "UNFINISHED").touch()
                             or (t / "x_train.bin").symlink_to(t / ".u.tmp-8" / "ds_train_000000.bin") or
                             t / "x_train.bin", [], [".u.tmp-8: an unfinished `prep tokenize` output"]),
    # a file is read as one shard; one that is none at all is refused as the loader refuses it
    "file": (lambda t: (t / "f.txt").write_text("x") and t / "f.txt", [], ["f.txt: not a token shard",
                                                                          "tokenize it first with `prep tokenize"]),
    "meta_file": (lambda t: make_dataset(t / "m", {"train": [tokens(10)]}) / META_NAME, [],
                  [f"{META_NAME}: a dataset's {META_NAME}, not a shard: pass its directory"]),
    "device": (lambda t: Path(os.devnull), [], [os.devnull, "not a directory or a regular file"]),
    "empty": (lambda t: (t / "empty").mkdir() or t / "empty", [], ["empty", "no shards found"]),
    "bad_meta": (lambda t: _with_meta_text(t, lambda m: "{not json"), [], [META_NAME, "not valid JSON"]),
    "bad_layout": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"splits": {"train": []}})), [],
                   [META_NAME, "splits.train"]),
    # read as no splits at all, it said "no shards found" beside the shards themselves
    "no_splits": (lambda t: _with_meta_text(t, lambda m: json.dumps({k: v for k, v in m.items() if k != "splits"})),
                  [], [META_NAME, "no 'splits' object"]),
    "other_format_version": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"format_version": 2})), [],
                             [META_NAME, "not a meta.json of format version 1"]),
    "other_shard_format": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"dtype": "uint32",
                                                                                   "header_bytes": 2048})), [],
                           [META_NAME, "describes shards of dtype 'uint32', header_bytes 2048; this version "
                            "reads uint16 tokens after a 1024-byte header"]),
    "dotdot_listed": (lambda t: _with_meta_text(t, lambda m: json.dumps(m).replace('"ds_train_000000.bin"', '".."')),
                      [], [META_NAME, "train shard file '..' is not a plain file name"]),
    "null_vocab": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"vocab_size": None})), [], [META_NAME]),
    "other_vocab": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"vocab_size": 65536})), [],
                    [META_NAME, "vocab_size 65536: not 'gpt2' with 50257"]),
    # GPT-2's vocabulary size, another tokenizer's numbers for other words
    "other_tokenizer": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"tokenizer": "r50k_other"})), [],
                        [META_NAME, "tokenizer 'r50k_other' with vocab_size 50257: not 'gpt2' with 50257"]),
    # prep verify said it; prep info (and train.py) took it: documents split by another token
    "other_eot": (lambda t: _with_meta_text(t, lambda m: json.dumps(m | {"eot": 0})), [],
                  [META_NAME, ": eot is 0, not 50256 (the end-of-text token of 'gpt2')"]),
    "huge_vocab": (lambda t: _with_meta_text(t, lambda m: json.dumps(m).replace('"vocab_size": 50257',
                                                                              '"vocab_size": 1e400')), [],
                   [META_NAME, "not 'gpt2' with 50257"]),
    "documents_not_a_count": (lambda t: _with_meta_text(t, lambda m: json.dumps(
        m | {"splits": m["splits"] | {"train": m["splits"]["train"] | {"documents": "many"}}})), [],
        [META_NAME, "'splits.train.documents' is 'many', not a count"]),
    "tokens_a_bool": (lambda t: _with_meta_text(t, lambda m: json.dumps(
        m | {"splits": m["splits"] | {"train": m["splits"]["train"] | {"shards": [
            m["splits"]["train"]["shards"][0] | {"tokens": True}]}}})), [], [META_NAME, "tokens True is not a count"]),
    # a count is 0 or more: -1 tokens would be a shard read as holding none, or past its end
    "tokens_negative": (lambda t: _with_meta_text(t, lambda m: json.dumps(
        m | {"splits": m["splits"] | {"train": m["splits"]["train"] | {"shards": [
            m["splits"]["train"]["shards"][0] | {"tokens": -1}]}}})), [], [META_NAME, "tokens -1 is not a count"]),
    "val_listed_as_train": (lambda t: _with_meta_text(t, lambda m: json.dumps(m).replace(
        "ds_train_000000.bin", "ds_val_000000.bin")), [], [META_NAME, "train lists ds_val_000000.bin, a val shard"]),
    "listed_twice": (lambda t: _with_meta_text(t, lambda m: json.dumps(
        m | {"splits": m["splits"] | {"train": m["splits"]["train"] | {"shards": 2 * m["splits"]["train"]["shards"]}}})),
        [], [META_NAME, "ds_train_000000.bin is listed twice"]),
    "two_datasets": (lambda t: make_dataset(t / "two", {"val": [tokens(10)]}, name="other", meta=False) and
                     make_dataset(t / "two", {"train": [tokens(10)]}, meta=False), [],
                     ["shards of 2 datasets (ds, other)"]),
    "bad_header": (_zero_magic, [], ["ds_train_000000.bin", "bad magic", "prep verify"]),
    "B_only": (lambda t: make_dataset(t / "b", {"train": [tokens(10)]}), ["--B", "4"], ["--B and --T"]),
    # without --B and --T there are no steps per epoch: --world alone was ignored, with status 0
    "nanogpt": (lambda t: (t / "ng").mkdir() or tokens(100).tofile(t / "ng" / "train.bin") or t / "ng", [],
                ["no shards found", "train.bin looks like raw tokens", "nanoGPT's prepare.py"]),
    "unnamed": (lambda t: (t / "u").mkdir() or write_shard(t / "u" / "train.bin", tokens(10)) and t / "u", [],
                ["no shards found", "train.bin is a shard by its header", "name it u_train.bin"]),
    "world_only": (lambda t: make_dataset(t / "w", {"train": [tokens(10)]}), ["--world", "8"],
                   ["--world", "--B and --T"]),
    # numbered without padding: left out without a word beside padded ones, "no shards found" alone
    "unpadded_beside": (lambda t: make_dataset(t / "p", {"train": [tokens(10)]}, meta=False) and
                        write_shard(t / "p" / "ds_train_1.bin", tokens(10)) and t / "p", [],
                        ["p: ds_train_1.bin is numbered without padding to 6 digits", "rename it",
                         "--data '", "/p/ds_train*.bin'"]),
    "unpadded_only": (lambda t: (t / "q").mkdir() or [write_shard(t / "q" / f"x_val_{i}.bin", tokens(10))
                                                      for i in (2, 10)] and t / "q", [],
                      ["q: x_val_10.bin and 1 more are numbered without padding", "rename them",
                       "--val-data '", "/q/x_val*.bin'"]),
}


@pytest.mark.parametrize("case", sorted(INFO_MISTAKES))
def test_info_user_mistakes(tmp_path, case):
    make, args, words = INFO_MISTAKES[case]
    target = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run(info_command, target, *args), *words)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_llmc_llama3_shards_are_named_and_info_does_not_send_to_verify(tmp_path):
    """llm.c's Llama 3 shards (magic 20240801, version 7, uint32 tokens): `prep info` said "bad
    magic 20240801 (expected 20240520) (run `prep verify ...`)", and verify said the bad magic
    again; both now name the files, and info sends nowhere verify has nothing to add."""
    directory = tmp_path / "tinyshakespeare"
    directory.mkdir()
    for split in ("train", "val"):
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240801, 7, 100
        (directory / f"tiny_shakespeare_{split}.bin").write_bytes(
            header.tobytes() + np.arange(128000, 128100, dtype="<u4").tobytes())
    what = "llm.c's Llama 3 token shard (uint32 tokens), not GPT-2's: this reads GPT-2's uint16 shards (magic 20240520)"
    line = assert_user_error(run(info_command, directory), "tiny_shakespeare_", what, "-m gpt-2")
    assert "prep verify" not in line and "bad magic" not in line
    result = run(verify_command, directory)
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.startswith("BAD ")] == [
        f"BAD {directory / f'tiny_shakespeare_{split}.bin'}: {what}; run llm.c's data script with -m gpt-2 (its "
        f"default), or `prep tokenize` the text" for split in ("train", "val")]


# --- verify -----------------------------------------------------------------------------

def test_verify_good_dataset(dataset):
    result = run(verify_command, dataset)
    assert result.exit_code == 0, result.output
    assert "verified 3 shard(s), 8,700 tokens" in result.output and "sha256" in result.output
    assert "BAD" not in result.output


def test_verify_reports_what_the_loader_refuses(tmp_path):
    ds = make_dataset(tmp_path / "dup", {"train": [tokens(100)]}, meta=False)
    write_shard(ds / "ds_train.bin", tokens(50))  # llm.c's unindexed name: index 0 again
    result = run(verify_command, ds)
    assert result.exit_code == 1
    assert "BAD " + str(ds) + ": ds_train.bin and ds_train_000000.bin are the same shard index" in result.output


def test_verify_says_a_shard_numbered_without_padding_that_it_used_to_leave_out(tmp_path):
    ds = make_dataset(tmp_path / "unpadded", {"train": [tokens(100)]}, meta=False)
    write_shard(ds / "ds_train_1.bin", tokens(50))
    result = run(verify_command, ds)
    assert result.exit_code == 1, result.output  # it said "verified 1 shard(s) ... all OK"
    assert f"BAD {ds}: ds_train_1.bin is numbered without padding to 6 digits" in result.output


@pytest.mark.parametrize("eot", ["x", 0, True, None, 50256.0])
def test_verify_says_an_eot_that_is_not_gpt2s(dataset, eot):
    """meta.json's eot, GPT-2's 50256 as prep writes it, was read by nothing: "all OK" for any."""
    meta = json.loads((dataset / META_NAME).read_text())
    (dataset / META_NAME).write_text(json.dumps(meta | {"eot": eot}))
    result = run(verify_command, dataset)
    assert result.exit_code == 1
    assert f"BAD {dataset / META_NAME}: eot is {eot!r}, not 50256 (the end-of-text token of 'gpt2')" in \
        result.output


def test_verify_checks_the_range_against_gpt2_whatever_meta_json_says(dataset):
    meta = json.loads((dataset / META_NAME).read_text())
    (dataset / META_NAME).write_text(json.dumps(meta | {"vocab_size": 65536}))
    result = run(verify_command, dataset)
    assert result.exit_code == 1 and "not 'gpt2' with 50257" in result.output


def test_verify_says_a_meta_json_without_splits_is_unusable(dataset):
    """Read as a dataset of no shards, it listed every shard "present but not listed", under a
    summary that said their sha256 had been checked against meta.json."""
    meta = json.loads((dataset / META_NAME).read_text())
    (dataset / META_NAME).write_text(json.dumps({k: v for k, v in meta.items() if k != "splits"}))
    result = run(verify_command, dataset)
    assert result.exit_code == 1
    assert f"BAD {dataset / META_NAME}: no 'splits' object" in result.output
    assert "meta.json unusable, so hashes were not checked" in result.output and "not listed" not in result.output


def test_verify_without_meta_checks_headers_and_range(tmp_path):
    ds = make_dataset(tmp_path / "llmc", {"train": [tokens(100)], "val": [tokens(10)]}, meta=False)
    result = run(verify_command, ds)
    assert result.exit_code == 0, result.output
    assert "no meta.json found, so hashes were not checked" in result.output
    (ds / "ds_val_000000.bin").write_bytes((ds / "ds_val_000000.bin").read_bytes()[:-2] + b"\xff\xff")
    result = run(verify_command, ds)
    assert result.exit_code == 1 and "token 65535 at index 9 is not below the vocabulary size" in result.output


def _flip_body_byte(p: Path):
    data = bytearray(p.read_bytes())
    body = np.frombuffer(bytes(data[1024:]), dtype="<u2")
    i = int(np.argmax(body < 50000))  # a token that stays in range with its low bit flipped
    data[1024 + 2 * i] ^= 0x01
    p.write_bytes(bytes(data))


def _set_header_slot(p: Path, slot: int, value: int):
    with open(p, "r+b") as f:
        f.seek(4 * slot)
        f.write(np.array([value], dtype="<i4").tobytes())


BREAKERS = {
    "flipped_byte": (lambda p: _flip_body_byte(p), "does not match meta.json"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-3]), "need exactly"),
    "bad_magic": (lambda p: _set_header_slot(p, 0, 1234), "bad magic 1234"),
    "bad_version": (lambda p: _set_header_slot(p, 1, 7), "unsupported version 7"),
    "missing": (lambda p: p.unlink(), "listed in meta.json but missing"),
    "link_loop": (lambda p: p.unlink() or p.symlink_to(p.name), "cannot be read (Too many levels of symbolic links)"),
    "fifo": (lambda p: p.unlink() or os.mkfifo(p), "not a regular file (a FIFO), not a shard"),  # hung, before
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_verify_names_each_broken_shard(dataset, case):
    breaker, message = BREAKERS[case]
    victim = dataset / "ds_train_000001.bin"
    breaker(victim)
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 1 and str(victim) in bad[0] and message in bad[0], result.output
    assert result.output.strip().splitlines()[-1].startswith("verify FAILED: 1 problem(s)")
    assert "Traceback" not in result.output


def test_verify_token_out_of_range_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(prep.scan, "SCAN_TOKENS", 64)  # many chunks; sha must still match
    body = tokens(1000)
    body[777] = 50257  # one past the vocabulary; meta's sha is of this very file
    ds = make_dataset(tmp_path / "d", {"train": [body]})
    report = verify_dataset(ds)
    assert report.meta_found and report.shards_checked == 1 and report.tokens_checked == 1000
    assert len(report.problems) == 1
    assert "token 50257 at index 777 is not below the vocabulary size 50257" in report.problems[0]
    assert "sha256" not in report.problems[0]  # the hash, chunked, agrees with write_shard's


def test_verify_unlisted_shard_and_count_mismatch(dataset):
    write_shard(dataset / "ds_train_000002.bin", tokens(10))
    meta = json.loads((dataset / META_NAME).read_text())
    meta["splits"]["val"]["shards"][0]["tokens"] = 701
    meta["splits"]["val"]["tokens"] = 701
    meta["totals"]["tokens"] = 8_701  # consistent with the splits: the shard's count is the problem
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 1
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 2, result.output
    assert any("ds_train_000002.bin: present but not listed in meta.json" in line for line in bad)
    assert any("ds_val_000000.bin: 700 tokens, but meta.json says 701" in line for line in bad)


def list_train_shards(directory: Path, entries: list[dict]) -> None:
    """meta.json of `directory` listing `entries` as its train split (one document each, as
    tokens() makes them), its counts and totals made to agree."""
    meta = json.loads((directory / META_NAME).read_text())
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    train.update(shards=entries, tokens=sum(e["tokens"] for e in entries), documents=len(entries))
    meta["totals"].update(tokens=train["tokens"] + val["tokens"], documents=train["documents"] + val["documents"])
    (directory / META_NAME).write_text(json.dumps(meta))


def shard_entry(directory: Path, file: str, n: int, seed: int) -> dict:
    return {"file": file, "tokens": n, "sha256": write_shard(directory / file, tokens(n, seed))}


def test_verify_a_split_listed_out_of_its_shards_index_order(dataset):
    """The loader reads a split in meta.json's order: a hand-edited order is another token
    stream, which verify passed, every shard being whole and as listed."""
    listed = json.loads((dataset / META_NAME).read_text())["splits"]["train"]["shards"]
    listed.append(shard_entry(dataset, "ds_train_000002.bin", 10, 4))
    list_train_shards(dataset, listed)
    assert verify_dataset(dataset).problems == []  # in order
    list_train_shards(dataset, [listed[0], listed[2], listed[1]])
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {dataset / META_NAME}: lists train shards ds_train_000002.bin then ds_train_000001.bin, "
                   f"out of index order: the loader reads a split in the order listed, so its token stream is not "
                   f"the one their names number"], result.output


def test_info_warns_about_a_split_listed_out_of_its_shards_index_order(dataset):
    """info said nothing of a meta.json whose order is not its shards' (verify's problem above),
    though the loader trains on that order: info reads meta.json alone, and warns of what it
    sees there."""
    listed = json.loads((dataset / META_NAME).read_text())["splits"]["train"]["shards"]
    list_train_shards(dataset, listed[::-1])
    result = run(info_command, dataset, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["out_of_order"] == [
        ["train", "ds_train_000001.bin", "ds_train_000000.bin", "out of index order"]]
    assert result.stderr == ("warning: meta.json lists train shards ds_train_000001.bin then "
                             "ds_train_000000.bin, out of index order: the loader reads them in the order "
                             f"listed; run `prep verify {dataset}`\n")
    list_train_shards(dataset, listed)
    assert run(info_command, dataset).stderr == ""


def test_verify_takes_two_names_shards_one_after_the_other_but_not_one_index_twice(dataset):
    """A meta.json may list one corpus's shards after another's (each in its own order); llm.c's
    unindexed x_train.bin is the same index 0 as x_train_000000.bin."""
    listed = json.loads((dataset / META_NAME).read_text())["splits"]["train"]["shards"]
    listed += [shard_entry(dataset, "ab_train_000000.bin", 10, 4), shard_entry(dataset, "ab_train_000001.bin", 9, 5)]
    list_train_shards(dataset, listed)
    assert verify_dataset(dataset).problems == []
    for entry in listed[1:]:
        (dataset / entry["file"]).unlink()
    list_train_shards(dataset, [listed[0], shard_entry(dataset, "ds_train.bin", 12, 6)])
    assert verify_dataset(dataset).problems == [
        f"{dataset / META_NAME}: lists train shards ds_train_000000.bin then ds_train.bin, the same index: the "
        f"loader reads a split in the order listed, so its token stream is not the one their names number"]


@pytest.mark.parametrize("meta", [True, False])
def test_verify_two_shards_that_are_one_file_through_a_link(tmp_path, meta):
    """The loader refuses a split whose shards are one file twice (a symbolic or hard link),
    which verify passed: every shard whole, its hash too where meta.json lists both names so.
    A val shard that is a train shard is said too: validation would measure trained tokens."""
    ds = make_dataset(tmp_path / "ds", {"train": [tokens(500, 1), tokens(500, 1)], "val": [tokens(500, 1)]},
                      meta=meta)
    assert verify_dataset(ds).problems == []
    first, second, val = ds / "ds_train_000000.bin", ds / "ds_train_000001.bin", ds / "ds_val_000000.bin"
    second.unlink()
    os.symlink(first.name, second)
    with pytest.raises(Exception, match="one file"):
        resolve_shards(ds, "train")
    result = run(verify_command, ds)
    assert result.exit_code == 1, result.output
    assert [line for line in result.output.splitlines() if line.startswith("BAD ")] == [
        f"BAD {second}: the same file as {first} (a link): the loader refuses it: the train split would read "
        "its tokens twice an epoch"]
    second.unlink()
    os.link(val, second)  # a hard link to the val shard: the split is whole again, but val is train's
    val.unlink()
    os.link(first, val)
    assert verify_dataset(ds).problems == [
        f"{val}: the same file as {first} (a link): the val split would hold train tokens"]


def test_verify_a_split_total_that_is_not_the_sum_of_its_shards(dataset):
    meta = json.loads((dataset / META_NAME).read_text())
    meta["splits"]["train"]["tokens"] = 8_001  # its shards hold 5,000 + 3,000
    meta["totals"]["tokens"] = 8_701  # the splits' sum: only the split's own figure is wrong
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {dataset / META_NAME}: train tokens 8,001 != the sum over its shards (8,000)"], result.output


def test_verify_progress_ends_at_its_total_on_good_and_on_damaged_shards(dataset, monkeypatch):
    """The bar counted the bodies' bytes against the files' sizes (headers too): it stopped at
    99.x% on good data, and a shard refused at its header left most of it uncounted (3%)."""
    ends = []

    class Recorded(prep.verify.Bar):
        def __exit__(self, *exc):
            ends.append((self.n, self.total))
            return super().__exit__(*exc)

    monkeypatch.setattr(prep.verify, "Bar", Recorded)
    assert verify_dataset(dataset, progress=True).problems == []
    _set_header_slot(dataset / "ds_train_000000.bin", 0, 0)  # refused at its header
    assert len(verify_dataset(dataset, progress=True).problems) == 1
    size = sum(p.stat().st_size for p in dataset.glob("*.bin"))
    assert ends == [(size, size), (size, size)]


def test_verify_a_split_left_out_of_meta_json_against_its_totals(dataset):
    """A whole split taken out of meta.json (its shard then unlisted) left totals.tokens the sum
    of both splits, and verify said nothing of it: the split left out was skipped in the sum."""
    meta = json.loads((dataset / META_NAME).read_text())
    meta["splits"].pop("val")
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert f"BAD {dataset / META_NAME}: totals tokens 8,700 != the sum over its splits (8,000)" in bad, result.output


@pytest.mark.parametrize("totals, words", [
    ({"tokens": 8_699, "documents": 3}, "totals tokens 8,699 != the sum over its splits (8,700)"),
    ({"tokens": 8_700, "documents": 4}, "totals documents 4 != the sum over its splits (3)"),
    ({"tokens": "8700", "documents": 3}, "totals tokens '8700' and the splits' [8000, 700] are not all integers"),
    ([8_700], "totals is list, not an object"),
])
def test_verify_totals_that_are_not_the_sum_of_the_splits(dataset, totals, words):
    """A hand-edited or half-merged manifest whose totals are not its splits' went unnoticed
    (the totals are what a reader of meta.json takes for the dataset's size)."""
    meta = json.loads((dataset / META_NAME).read_text())
    assert meta["totals"]["tokens"] == 8_700 and meta["totals"]["documents"] == 3
    meta["totals"] = totals
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {dataset / META_NAME}: {words}"], result.output


def test_verify_counts_each_splits_documents_in_its_shards(dataset):
    """A split's document count is its EOT tokens (one before each document): verify compared
    the totals with the splits' counts but never the counts with the shards, so a count
    edited in both places passed as "all OK"."""
    meta = json.loads((dataset / META_NAME).read_text())
    assert meta["splits"]["train"]["documents"] == 2  # one EOT at the start of each of its 2 shards
    meta["splits"]["train"]["documents"] = 5
    meta["totals"]["documents"] = 6  # the splits' sum: only the count against the shards is wrong
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 1, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {dataset / META_NAME}: train documents 5 != the 2 EOT tokens in its shards "
                   f"(one before each document)"], result.output


def test_verify_counts_no_documents_by_gpt2s_eot_where_meta_json_names_another(dataset):
    """The eot is the problem said; documents counted by GPT-2's EOT would be a second one, about
    a count made by another token."""
    meta = json.loads((dataset / META_NAME).read_text())
    meta["eot"], meta["splits"]["train"]["documents"], meta["totals"]["documents"] = 0, 5, 6
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {dataset / META_NAME}: eot is 0, not 50256 (the end-of-text token of 'gpt2')"], \
        result.output


def test_verify_counts_no_documents_of_a_split_with_a_shard_it_could_not_read(dataset):
    """The shard is the problem said; an EOT count without it would be a second, wrong one."""
    (dataset / shard_name("ds", "train", 1)).unlink()
    result = run(verify_command, dataset)
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 1 and "ds_train_000001.bin: listed in meta.json but missing" in bad[0], result.output


def test_verify_takes_a_meta_json_without_totals(dataset):
    """Not every writer of a meta.json gives totals: nothing to compare, nothing wrong."""
    meta = json.loads((dataset / META_NAME).read_text())
    del meta["totals"]
    (dataset / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, dataset)
    assert result.exit_code == 0 and "all OK" in result.output, result.output


def test_verify_reads_a_listed_file_whatever_its_name(tmp_path):
    """meta.json may list a file not named like a shard: verify checks it like any other."""
    ds = make_dataset(tmp_path / "ds", {"train": [tokens(100)]})
    meta = json.loads((ds / META_NAME).read_text())
    (ds / "ds_train_000000.bin").rename(ds / "part-a.bin")
    meta["splits"]["train"]["shards"][0]["file"] = "part-a.bin"
    (ds / META_NAME).write_text(json.dumps(meta))
    result = run(verify_command, ds)
    assert result.exit_code == 0, result.output
    assert "verified 1 shard(s), 100 tokens" in result.output and "all OK" in result.output


@pytest.mark.parametrize("make, said", [
    (os.mkdir, "is a directory, not a shard"),
    (os.mkfifo, "not a regular file (a FIFO), not a shard"),
    (lambda path: os.symlink("nowhere", path), "a broken symbolic link (to nowhere)")])
def test_verify_says_what_a_listed_file_of_another_name_is_where_it_is_no_file(tmp_path, make, said):
    """A listed file named otherwise than a shard that is there but no regular file was
    "listed in meta.json but missing", where info and the loader say what it is."""
    ds = make_dataset(tmp_path / "ds", {"train": [tokens(10)]})
    (ds / "ds_train_000000.bin").rename(ds / "extra.bin")
    meta = json.loads((ds / META_NAME).read_text())
    meta["splits"]["train"]["shards"][0]["file"] = "extra.bin"
    (ds / META_NAME).write_text(json.dumps(meta))
    assert verify_dataset(ds).problems == []
    (ds / "extra.bin").unlink()
    make(ds / "extra.bin")
    assert verify_dataset(ds).problems == [f"{ds / 'extra.bin'}: {said}"]


def list_an_npy_shard(dataset: Path) -> tuple[Path, dict]:
    """The fixture's second train shard replaced by a .npy one of 3,000 tokens (build-nanogpt's),
    listed in meta.json with its file's sha256; that shard and meta.json's contents."""
    npy = dataset / "ds_train_000001.npy"
    np.save(npy, tokens(3000, 2).astype(np.uint16))
    (dataset / "ds_train_000001.bin").unlink()
    meta = json.loads((dataset / META_NAME).read_text())
    meta["splits"]["train"]["shards"][1].update(file=npy.name, sha256=file_sha256(npy))
    (dataset / META_NAME).write_text(json.dumps(meta))
    return npy, meta


def test_verify_hashes_a_listed_npy_shard_whole(dataset):
    """A .npy shard (build-nanogpt's) listed in meta.json with its file's sha256, which the loader
    reads so: verify hashed its first 1,024 bytes as a .bin header, not its own header, and
    called it damaged."""
    npy, meta = list_an_npy_shard(dataset)
    resolve_shards(dataset, "train")
    assert verify_dataset(dataset).problems == []
    assert verify_dataset(npy).problems == [] and verify_dataset(npy).meta_found
    meta["splits"]["train"]["shards"][1]["sha256"] = "0" * 64
    (dataset / META_NAME).write_text(json.dumps(meta))
    assert [line.split(": ")[1] for line in verify_dataset(dataset).problems] == [
        f"sha256 {file_sha256(npy)[:16]}... does not match meta.json's 0000000000000000..."]


def test_info_takes_a_listed_npy_shard_at_its_own_size(dataset):
    """A .npy shard listed in meta.json, which the loader reads: info gave it a .bin shard's
    size and warned that it was cut short or changed; one that is cut short, it still says."""
    npy, meta = list_an_npy_shard(dataset)
    result = run(info_command, dataset)
    assert result.exit_code == 0 and result.stderr == "", result.output
    meta["splits"]["train"]["shards"][1]["tokens"] = 3001
    (dataset / META_NAME).write_text(json.dumps(meta))
    assert dataset_info(dataset).wrong_size == [(npy.name, 6128, 6130)]
    with open(npy, "r+b") as f:
        f.truncate(6000)
    assert dataset_info(dataset).bad_header == [
        (npy.name, "size 6000 bytes, but its .npy header's 3000 tokens need exactly 6128")]


def test_verify_an_unreadable_meta_json_and_no_shards_is_a_failure_naming_it(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / META_NAME).write_text("{oops")
    result = run(verify_command, tmp_path / "ds")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 1 and f"{tmp_path / 'ds' / META_NAME}: not valid JSON" in bad[0], result.output
    assert "verify FAILED: 1 problem(s)" in result.output


def test_verify_several_bad_shards_each_on_its_own_line(dataset):
    for name in ("ds_train_000000.bin", "ds_val_000000.bin"):
        _set_header_slot(dataset / name, 0, 0)
    result = run(verify_command, dataset)
    assert result.exit_code == 1
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 2 and "ds_train_000000.bin" in bad[0] and "ds_val_000000.bin" in bad[1]
    assert "verify FAILED: 2 problem(s)" in result.output


@pytest.mark.parametrize("bad_meta", ["{not json", '{"format_version": 1, "splits": []}',
                                      '{"format_version": 1, "splits": {"train": {"shards": [{"file": 3}]}}}',
                                      '{"format_version": 1, "splits": {"train": {"shards": '
                                      '[{"file": "../x.bin", "tokens": 1, "sha256": "0"}]}}}'])
def test_verify_unreadable_meta_still_checks_shards(dataset, bad_meta):
    (dataset / META_NAME).write_text(bad_meta)
    _set_header_slot(dataset / "ds_val_000000.bin", 1, 2)
    result = run(verify_command, dataset)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 2 and META_NAME in bad[0] and "unsupported version 2" in bad[1]
    assert "meta.json unusable, so hashes were not checked" in result.output
    assert "2 shard(s) readable" in result.output


def test_verify_names_a_broken_meta_json_link_and_still_checks_shards(dataset):
    (dataset / META_NAME).unlink()
    (dataset / META_NAME).symlink_to(dataset / "gone.json")
    result = run(verify_command, dataset)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"BAD {dataset / META_NAME}: a broken symbolic link (to {dataset / 'gone.json'})" in result.output
    assert "(meta.json unusable, so hashes were not checked)" in result.output


def test_info_and_verify_of_one_shard_file(dataset, tmp_path):
    """One shard, as train.py --data FILE takes it: info from its header (the split its name
    says, else train), verify of its header, size and token range, and of its sha256 and count
    where its directory's meta.json lists it. They said "not a directory"."""
    shard = dataset / "ds_val_000000.bin"
    result = run(info_command, shard, "--B", "4", "--T", "32")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "  val    1 shard(s), 700 tokens, 5 steps per epoch",
        f"{shard}: 1 shard(s), 700 tokens, from its header; steps per epoch at B=4, T=32, world=1 (128 tokens "
        "per step)"]
    unnamed = tmp_path / "input.bin"
    write_shard(unnamed, tokens(300))
    assert "  train  1 shard(s), 300 tokens" in run(info_command, unnamed).output
    listed = run(verify_command, shard)
    assert listed.exit_code == 0 and listed.output == (
        f"verified 1 shard(s), 700 tokens in {shard}: header, size, token range, sha256 and token count vs "
        f"{dataset / META_NAME}: all OK\n")
    alone = run(verify_command, unnamed)
    assert alone.exit_code == 0 and alone.output == (
        f"verified 1 shard(s), 300 tokens in {unnamed}: header, size, token range (no {META_NAME} beside it lists "
        "it, so its hash was not checked): all OK\n")
    meta = dataset / META_NAME
    listing = meta.read_text()
    meta.write_text("{bad")  # a meta.json that cannot be read: not "none lists it"
    unusable = run(verify_command, shard)
    assert unusable.exit_code == 0 and unusable.output == (
        f"verified 1 shard(s), 700 tokens in {shard}: header, size, token range ({meta} unusable, so its hash was "
        f"not checked: `prep verify {dataset}` says why): all OK\n")
    meta.write_text(listing)
    with open(shard, "r+b") as f:  # one token changed, in range: the sha256 alone tells
        f.seek(1024 + 2 * 100)
        f.write(np.uint16(7).tobytes())
    changed = run(verify_command, shard)
    assert changed.exit_code == 1 and changed.output.startswith(f"BAD {shard}: sha256 "), changed.output
    with open(unnamed, "r+b") as f:
        f.seek(1024 + 2 * 5)
        f.write(np.uint16(60000).tobytes())
    out_of_range = run(verify_command, unnamed)
    assert out_of_range.exit_code == 1 and out_of_range.output.startswith(
        f"BAD {unnamed}: token 60000 at index 5 is not below the vocabulary size 50257"), out_of_range.output


def test_verify_of_a_directory_that_cannot_be_listed_is_one_line(dataset, monkeypatch):
    """No read permission on the directory: a user error naming it, as prep info and the loader
    say it, not find_shards' ShardError traceback (os.listdir is made to fail: chmod does not stop root)."""
    without_read_permission(monkeypatch, dataset)
    assert_user_error(run(verify_command, dataset), str(dataset), "cannot be listed (Permission denied)")


@pytest.mark.parametrize("layout", ["unpadded", "gap"])
def test_info_and_verify_take_the_glob_a_refused_directory_is_told_to_use(tmp_path, layout):
    """A directory of shards numbered without padding, or with one missing, is refused with "name the
    shards with a glob, such as train.py's --data '<dir>/x_train*.bin'"; prep info and verify refused that
    glob in turn ("no such file or directory (a pattern of shards is for train.py's --data ...)"), advice
    that went round in a circle. They take it now, the files train.py takes, each alone."""
    directory = tmp_path / layout
    directory.mkdir()
    names = [f"x_train_{i}.bin" for i in (0, 1, 2, 10)] if layout == "unpadded" else [
        shard_name("x", "train", i) for i in (0, 2)]
    for i, name in enumerate(names):
        write_shard(directory / name, tokens(100 + i, i))
    total = sum(100 + i for i in range(len(names)))
    refused = run(verify_command, directory)
    assert refused.exit_code == 1, refused.output
    pattern = re.search(r"--data '([^']+)'", refused.output)[1]
    assert pattern == f"{directory}/x_train*.bin"
    assert_user_error(run(info_command, directory), "--data '" + pattern)
    info = run(info_command, pattern, "--B", "4", "--T", "8")
    assert info.exit_code == 0, info.output
    assert info.output.splitlines() == [
        f"  train  {len(names)} shard(s), {total:,} tokens, {(total - 1) // 32} steps per epoch",
        f"{pattern}: {len(names)} shard(s), {total:,} tokens, from their headers; steps per epoch at B=4, "
        f"T=8, world=1 (32 tokens per step)"]
    verified = run(verify_command, pattern)
    assert verified.exit_code == 0 and verified.output == (
        f"verified {len(names)} shard(s), {total:,} tokens in {pattern}: header, size, token range (no "
        f"usable {META_NAME} beside them lists them, so their hashes were not checked): all OK\n")
    assert resolve_shards(pattern, "train") == [directory / name for name in names]  # train.py's, in order


def test_verify_of_a_glob_checks_each_file_and_its_listing(dataset, tmp_path):
    """A glob's files, as one shard file is checked: each one's header, size and token range, its
    sha256 and count where the meta.json beside it lists it; and two of them that are one file."""
    elsewhere = tmp_path / "loose"
    elsewhere.mkdir()
    write_shard(elsewhere / "x_val_3.bin", tokens(40, 4))
    pattern = f"{tmp_path}/*/*_val_*.bin"
    info = run(info_command, pattern)
    assert info.exit_code == 0 and info.output.splitlines() == [
        "  val    2 shard(s), 740 tokens", f"{pattern}: 2 shard(s), 740 tokens, from their headers"]
    both = run(verify_command, pattern)
    assert both.exit_code == 0 and both.output == (
        f"verified 2 shard(s), 740 tokens in {pattern}: header, size, token range, sha256 and token count vs "
        f"the {META_NAME} beside them (no usable {META_NAME} beside the other 1 lists them, so their hashes "
        "were not checked): all OK\n")
    listed = run(verify_command, f"{dataset}/*.bin")
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"verified 3 shard(s), 8,700 tokens in {dataset}/*.bin: header, size, "
                                    f"token range, sha256 and token count vs the {META_NAME} beside them: "
                                    "all OK")
    with open(dataset / "ds_val_000000.bin", "r+b") as f:  # in range: the sha256 alone tells
        f.seek(1024 + 2 * 10)
        f.write(np.uint16(7).tobytes())
    os.symlink(elsewhere / "x_val_3.bin", elsewhere / "x_val_4.bin")
    broken = run(verify_command, pattern)
    assert broken.exit_code == 1, broken.output
    assert [line for line in broken.output.splitlines() if line.startswith("BAD ")] == [
        f"BAD {elsewhere / 'x_val_4.bin'}: the same file as {elsewhere / 'x_val_3.bin'} (a link): the loader "
        "refuses it: the val split would read its tokens twice an epoch",
        f"BAD {dataset / 'ds_val_000000.bin'}: sha256 " + broken.output.split(": sha256 ")[1].split("\n")[0]]


@pytest.mark.parametrize("command", [info_command, verify_command], ids=["info", "verify"])
def test_info_and_verify_of_a_folder_of_datasets_name_them(tmp_path, command):
    """`prep info data` where data/ holds data/a and data/b said only "no shards found"; train.py
    without --data names them and asks for one (trainer.data.find_dataset), and so do these now,
    from the same listing (hidden folders, a killed prep tokenize's, are none)."""
    data = tmp_path / "data"
    make_dataset(data / "b", {"train": [tokens(10)]})
    make_dataset(data / "a", {"train": [tokens(10)]}, meta=False)  # shards alone make one too
    make_dataset(data / ".a.tmp-7", {"train": [tokens(10)]})
    (data / "notes").mkdir()
    name = command.name
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run(command, data), f"Error: {data}: no shards of its own, but 2 datasets in it "
                                          f"({data / 'a'}, {data / 'b'}): choose one, such as `prep {name} "
                                          f"{data / 'a'}`")
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(UserError, match=r"^2 datasets under .*data/ \(.*/data/a, .*/data/b\): choose one"):
        find_dataset(None, data)
    for d in ("b", "d", "e", "f", "g"):
        make_dataset(data / d, {"train": [tokens(10)]})
    assert_user_error(run(command, data), f"but 6 datasets in it ({data / 'a'}, {data / 'b'}, {data / 'd'}, "
                                          f"{data / 'e'} and 2 more): choose one")
    for d in ("b", "d", "e", "f", "g"):
        for f in (data / d).iterdir():
            f.unlink()
    assert_user_error(run(command, data), f"Error: {data}: no shards of its own, but a dataset in it "
                                          f"({data / 'a'}): pass it: `prep {name} {data / 'a'}`")
    assert run(command, data / "a").exit_code == 0


@pytest.mark.parametrize("case", ["no_dir", "no_shards", "text", "meta"])
def test_verify_user_mistakes(tmp_path, case):
    target = tmp_path / "nowhere"
    words = ["nowhere", "no such file or directory"]
    if case == "text":  # the text itself, not its tokens: a user's mistake (2), not a bad shard (1)
        target = tmp_path / "input.txt"
        target.write_text("First Citizen:\n" * 100)
        words = ["input.txt: not a token shard", "tokenize it first with `prep tokenize"]
    elif case == "meta":
        target = make_dataset(tmp_path / "m", {"train": [tokens(10)]}) / META_NAME
        words = [f"{META_NAME}: a dataset's {META_NAME}, not a shard: pass its directory, {tmp_path / 'm'}"]
    elif case == "no_shards":
        target = tmp_path / "empty"
        target.mkdir()
        (target / "notes.txt").write_text("not a shard")
        words = ["empty", "no shards found"]
    before = sorted(tmp_path.rglob("*"))
    assert_user_error(run(verify_command, target), *words)
    assert sorted(tmp_path.rglob("*")) == before


# --- end to end, after `prep tokenize` --------------------------------------------------

@pytest.mark.skipif(not TINY.is_file(), reason="tiny Shakespeare test data is absent")
def test_sample_tokenize_info_verify(tmp_path):
    pytest.importorskip("prep.tokenize")
    from prep.cli import main

    runner = CliRunner()
    text, out = tmp_path / "input.txt", tmp_path / "data" / "input"
    assert runner.invoke(main, ["sample", "--from", str(TINY), "--out", str(text)]).exit_code == 0
    result = runner.invoke(main, ["tokenize", str(text), "--out", str(out), "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads(runner.invoke(main, ["info", str(out), "--B", "4", "--T", "32", "--json"]).output)
    assert record["splits"]["train"]["tokens"] == 338_026  # 338,025 tokens + the leading EOT
    assert record["splits"]["train"]["steps_per_epoch"] == 2_640  # the README's figure
    assert record["splits"]["val"]["shards"] == 0 and record["source"] == META_NAME
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 0 and "all OK" in result.output and "sha256" in result.output, result.output
    shard = next(out.glob("*_train_000000.bin"))
    _flip_body_byte(shard)
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 1 and f"BAD {shard}" in result.output and "sha256" in result.output


def test_info_says_where_documents_start(tmp_path):
    """One document with a val split: the val split is its end, no document of its own."""
    from prep.tokenize import tokenize_corpus

    (tmp_path / "one.txt").write_text("A sentence of a single long document. " * 200)
    tokenize_corpus(tmp_path / "one.txt", tmp_path / "ds", val_fraction=0.1, workers=1, progress=False)
    lines = run(info_command, tmp_path / "ds").output.splitlines()
    assert lines[0].startswith("  train  1 shard(s), ") and lines[0].endswith(", 1 document(s) start here")
    assert lines[1].startswith("  val    1 shard(s), ")
    assert lines[1].endswith(", no document starts here (the end of one begun before it)")


def test_tokenized_jsonl_with_val_split_and_small_shards(tmp_path):
    tokenize = pytest.importorskip("prep.tokenize")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i} says hello to the world. " * (i % 7 + 1)}) + "\n"
                              for i in range(300)))
    out = tmp_path / "ds"
    result = tokenize.tokenize_corpus([str(corpus)], out, shard_size=1000, val_fraction=0.1, workers=2,
                                      progress=False)
    info = dataset_info(out, B=2, T=8)
    assert info.splits["train"].tokens == result.tokens["train"] and info.splits["val"].tokens == result.tokens["val"]
    assert info.splits["train"].shards == len(result.shards["train"]) > 1
    assert info.splits["train"].documents + info.splits["val"].documents == 300
    assert info.splits["val"].steps_per_epoch == steps_per_epoch(result.tokens["val"], 2, 8)
    report = verify_dataset(out)
    assert report.ok and report.meta_found and report.shards_checked == info.shards
    assert report.tokens_checked == sum(result.tokens.values())


def test_an_unparsable_meta_json_is_named_once(tmp_path):
    make_dataset(tmp_path / "ds", {"train": [np.arange(10)]})
    (tmp_path / "ds" / META_NAME).write_text("{oops")
    line = assert_user_error(CliRunner().invoke(info_command, [str(tmp_path / "ds")]), "not valid JSON")
    assert line.count(META_NAME) == 1
    result = CliRunner().invoke(verify_command, [str(tmp_path / "ds")])
    assert result.exit_code == 1 and result.output.count(f"{META_NAME}: not valid JSON") == 1
    assert f"{META_NAME}: {tmp_path}" not in result.output


ASCII_NAMES = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}  # 'dé' is 'd\\udcc3\\udca9' in such a process
UTF8_NAMES = {"PYTHONUTF8": "1"}


@pytest.mark.parametrize("made_under, read_under", [(UTF8_NAMES, ASCII_NAMES), (ASCII_NAMES, UTF8_NAMES)])
def test_a_dataset_with_a_non_ascii_name_reads_under_another_locale(tmp_path, made_under, read_under):
    """meta.json spelled shard names as the writing process decoded them, so a dataset made
    under one locale listed, for a process under the other, files that were missing beside
    files it did not list: `prep verify` failed a good dataset, and the loader stopped at
    "'ascii' codec can't encode character '\\xe9'"."""
    repo = Path(__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"} | {"PYTHONPATH": str(repo)}

    def run(env: dict, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=base | env, capture_output=True,
                              text=True, errors="replace", timeout=120)

    probe = run(ASCII_NAMES, "-c", "import sys; print(sys.getfilesystemencoding())")
    if probe.stdout.strip() != "ascii":
        pytest.skip("file names are UTF-8 under every locale here (macOS)")
    (tmp_path / "in.txt").write_text("words " * 100)
    out = b"d\xc3\xa9"  # bytes: taken as they are, whatever this process's encoding
    assert run(made_under, "-m", "prep.cli", "tokenize", "in.txt", "--out", out, "--quiet").returncode == 0
    assert (tmp_path / os.fsdecode(out) / META_NAME).is_file()
    verified = run(read_under, "-m", "prep.cli", "verify", out)
    assert verified.returncode == 0 and "verified 2 shard(s)" in verified.stdout, verified.stdout + verified.stderr
    loaded = run(read_under, "-c", "import sys; from loader import resolve_shards; "
                                   "print(len(resolve_shards(sys.argv[1], 'train')))", out)
    assert (loaded.returncode, loaded.stdout) == (0, "1\n"), loaded.stderr
