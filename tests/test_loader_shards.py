"""Which files the loader reads and what it refuses: llm.c / modded-nanogpt shards written by
this test's own header writer, build-nanogpt's .npy shards (np.save), globs, meta.json order
and cross-checks, every bad shard."""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

import numpy as np
import pytest

from _data import INT_DIGITS_LIMIT, without_read_permission, without_search_permission
from loader import LoaderError, TokenLoader, TokenRangeError
from loader.cursor import epoch_permutation
from loader.resolve import resolve_shards
from loader.stream import TokenStream
from prep.shards import ShardError, named_split, shard_name, write_shard


def llmc_shard(path, tokens, magic=20240520, version=1, count=None, extra=b""):
    """A shard as llm.c's write_datafile writes it, independently of prep.shards:
    256 int32 header (magic, version, count), then the uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())
        f.write(extra)


def tokens(n, seed):
    return np.random.default_rng(seed).integers(0, 50257, n, dtype=np.uint16)


def read_all(loader: TokenLoader) -> np.ndarray:
    """The first epoch's inputs plus the last target: the stream's first E*B*T + 1 tokens."""
    ws = [loader.next_window().numpy().copy() for _ in range(loader.steps_per_epoch)]
    return np.concatenate([w[:-1] for w in ws] + [ws[-1][-1:]])


@pytest.fixture
def fineweb(tmp_path):
    """modded-nanogpt style: fineweb_val_000000.bin, fineweb_train_000001.bin, ..., no meta."""
    parts = {i: tokens(300 + 17 * i, i) for i in range(1, 4)}
    for i, body in parts.items():
        llmc_shard(tmp_path / f"fineweb_train_{i:06d}.bin", body)
    llmc_shard(tmp_path / "fineweb_val_000000.bin", tokens(200, 99))
    return tmp_path, np.concatenate([parts[i] for i in (1, 2, 3)])


def test_a_directory_of_llmc_shards_without_meta(fineweb):
    path, ref = fineweb
    with TokenLoader(path, B=1, T=8, prefetch=0) as loader:
        assert loader.num_tokens == len(ref) == 317 + 334 + 351
        assert [p.name for p in loader.shards] == [f"fineweb_train_{i:06d}.bin" for i in (1, 2, 3)]
        np.testing.assert_array_equal(read_all(loader), ref[: loader.steps_per_epoch * 8 + 1])
    with TokenLoader(path, split="val", B=1, T=8) as loader:
        assert loader.num_tokens == 200


def test_build_nanogpt_npy_shards(tmp_path):
    """fineweb.py's layout: np.save of uint16 arrays, val shard 0, train shards from 1."""
    parts = {i: tokens(300 + 17 * i, i) for i in range(1, 4)}
    for i, body in parts.items():
        np.save(tmp_path / f"edufineweb_train_{i:06d}", body)
    np.save(tmp_path / "edufineweb_val_000000", tokens(200, 99))
    ref = np.concatenate([parts[i] for i in (1, 2, 3)])
    with TokenLoader(tmp_path, B=1, T=8, prefetch=0) as loader:
        assert [p.name for p in loader.shards] == [f"edufineweb_train_{i:06d}.npy" for i in (1, 2, 3)]
        assert loader.num_tokens == len(ref)
        np.testing.assert_array_equal(read_all(loader), ref[: loader.steps_per_epoch * 8 + 1])
    with TokenLoader(tmp_path, split="val", B=1, T=8) as loader:
        np.testing.assert_array_equal(loader.next_window().numpy(), tokens(200, 99)[:9])
    # a glob and a single file, as with .bin; a big-endian array reads as its values
    np.save(tmp_path / "big.npy", parts[1].astype(">u2"))
    with TokenLoader(tmp_path / "big.npy", B=1, T=8) as loader:
        np.testing.assert_array_equal(read_all(loader), parts[1][: loader.steps_per_epoch * 8 + 1])
    with TokenLoader(str(tmp_path / "edufineweb_train_00000[12].npy"), B=1, T=8) as loader:
        assert loader.num_tokens == len(parts[1]) + len(parts[2])


@pytest.mark.parametrize("array, message", [
    (np.arange(10, dtype=np.int32), "non-empty 1-D uint16 array; this one holds int32 of shape (10,)"),
    (np.zeros((2, 5), dtype=np.uint16), "this one holds uint16 of shape (2, 5)"),
    (np.zeros(0, dtype=np.uint16), "this one holds uint16 of shape (0,)"),
])
def test_a_npy_that_is_not_a_token_array_is_an_error_naming_it(tmp_path, array, message):
    np.save(tmp_path / "x_train_000000.npy", array)
    with pytest.raises(ShardError, match=r"x_train_000000.npy: a .npy shard holds a .*" + re.escape(message)):
        TokenLoader(tmp_path, B=1, T=2)


@pytest.mark.parametrize("header", [b"{'descr': '<u2', 'fortran_order': False, 'shape': (3,), ", b"[" * 5000])
def test_a_npy_with_a_malformed_header_is_an_error_naming_it(tmp_path, header):
    header = header.ljust(118) + b"\n"
    (tmp_path / "x_train_000000.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                                                + b"\0" * 6)
    with pytest.raises(ShardError, match=r"x_train_000000.npy: not a readable .npy file"):
        TokenLoader(tmp_path, B=1, T=2)


def test_a_truncated_or_padded_npy_and_a_bin_and_npy_of_one_index(tmp_path):
    path = tmp_path / "x_train_000000.npy"
    np.save(path, tokens(100, 1))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"x_train_000000.npy: size \d+ bytes, but its .npy header's 100 tokens"):
        TokenLoader(tmp_path, B=1, T=2)
    np.save(path, tokens(100, 1))
    path.write_bytes(path.read_bytes() + b"junk")  # trailing bytes: not the array np.save wrote
    with pytest.raises(ShardError, match=r"x_train_000000.npy: size \d+ bytes, but its .npy header's 100 tokens "
                                         r"need exactly \d+"):
        TokenLoader(tmp_path, B=1, T=2)
    np.save(path, tokens(100, 1))
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(100, 2))
    with pytest.raises(LoaderError, match="x_train_000000.bin and x_train_000000.npy are the same shard index"):
        TokenLoader(tmp_path, B=1, T=2)


def test_a_directory_holding_two_datasets_without_meta_is_refused(fineweb):
    # in index order their shards would interleave (fineweb_1, other_1, fineweb_2, ...)
    path, _ = fineweb
    llmc_shard(path / "other_train_000001.bin", tokens(300, 7))
    with pytest.raises(LoaderError, match=r"shards of 2 datasets \(fineweb, other\): keep one per directory, "
                                          r"or give train.py a glob such as '.*/fineweb_train\*.bin'"):
        TokenLoader(path, B=1, T=8)
    with TokenLoader(str(path / "fineweb_train_*.bin"), B=1, T=8) as loader:  # as it says
        assert loader.num_tokens == 317 + 334 + 351
    with pytest.raises(LoaderError, match=r"shards of 2 datasets"):  # its val would be fineweb's
        TokenLoader(path, split="val", B=1, T=8)


def test_the_glob_suggested_for_two_datasets_matches_the_first_ones_shards(tmp_path):
    np.save(tmp_path / "edufineweb_train_000001.npy", tokens(300, 1))  # build-nanogpt's, beside llm.c's
    llmc_shard(tmp_path / "fineweb_train_000001.bin", tokens(300, 2))
    with pytest.raises(LoaderError, match=r"shards of 2 datasets \(edufineweb, fineweb\)") as e:
        TokenLoader(tmp_path, B=1, T=8)
    suggested = re.search(r"a glob such as '(.*)'$", str(e.value))[1]
    with TokenLoader(suggested, B=1, T=8, prefetch=0) as loader:  # as it says
        assert [p.name for p in loader.shards] == ["edufineweb_train_000001.npy"]
    # llm.c's unindexed shards, beside a dataset that has only a val shard (sorted first): the
    # glob names the one with train shards, and matches its unindexed name
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    llmc_shard(llmc / "tiny_shakespeare_train.bin", tokens(300, 3))
    llmc_shard(llmc / "tiny_shakespeare_val.bin", tokens(100, 4))
    llmc_shard(llmc / "other_val.bin", tokens(100, 5))
    with pytest.raises(LoaderError, match=r"shards of 2 datasets \(other, tiny_shakespeare\)") as e:
        TokenLoader(llmc, B=1, T=8)
    suggested = re.search(r"a glob such as '(.*)'$", str(e.value))[1]
    with TokenLoader(suggested, B=1, T=8, prefetch=0) as loader:
        assert [p.name for p in loader.shards] == ["tiny_shakespeare_train.bin"]


def test_a_glob_reads_the_matching_files_sorted(fineweb):
    path, ref = fineweb
    with TokenLoader(str(path / "fineweb_train_*.bin"), B=2, T=5, prefetch=0) as loader:
        assert [p.name for p in loader.shards] == [f"fineweb_train_{i:06d}.bin" for i in (1, 2, 3)]
        np.testing.assert_array_equal(read_all(loader), ref[: loader.steps_per_epoch * 10 + 1])


def test_a_single_file_and_llmc_tiny_shakespeare_names(tmp_path):
    # llm.c's dev/data/tinyshakespeare.py writes one unindexed shard per split
    body = tokens(500, 1)
    llmc_shard(tmp_path / "tiny_shakespeare_train.bin", body)
    llmc_shard(tmp_path / "tiny_shakespeare_val.bin", tokens(200, 2))
    with TokenLoader(tmp_path / "tiny_shakespeare_train.bin", B=2, T=8) as loader:
        assert loader.num_tokens == 500
    with TokenLoader(str(tmp_path / "*_train.bin"), B=2, T=8, prefetch=0) as loader:
        np.testing.assert_array_equal(loader.next_window().numpy(), body[:17])
    with TokenLoader(tmp_path, B=2, T=8, prefetch=0) as loader:  # the directory, as it is
        assert [p.name for p in loader.shards] == ["tiny_shakespeare_train.bin"]
        np.testing.assert_array_equal(loader.next_window().numpy(), body[:17])
    with TokenLoader(tmp_path, split="val", B=2, T=8) as loader:
        assert loader.num_tokens == 200


def test_an_unindexed_and_an_indexed_shard_of_one_index_are_refused(tmp_path):
    llmc_shard(tmp_path / "x_train.bin", tokens(300, 1))
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(300, 2))
    with pytest.raises(LoaderError, match=r"x_train.bin and x_train_000000.bin are the same shard index"):
        TokenLoader(tmp_path, B=1, T=8)


def test_a_shard_missing_between_two_is_refused_and_a_glob_takes_the_rest(tmp_path):
    """Without meta.json, llm.c's numbering (val 0, train from 1) is fine, but a gap is a shard
    lost in a copy or a download: refused, where the loader read the others as one stream."""
    llmc_shard(tmp_path / "fw_val_000000.bin", tokens(300, 0))
    for index in (1, 2, 4):
        llmc_shard(tmp_path / f"fw_train_{index:06d}.bin", tokens(300, index))
    with pytest.raises(LoaderError) as e:
        TokenLoader(tmp_path, B=1, T=8)
    assert str(e.value) == (f"{tmp_path}: no train shard 000003 between fw_train_000002.bin and fw_train_000004.bin "
                            f"(index 3 is missing): restore it, or name the shards that are there with a glob, "
                            f"such as train.py's --data '{tmp_path}/fw_train*.bin'")
    with TokenLoader(tmp_path / "fw_train*.bin", B=1, T=8) as loader:  # as the error says
        assert loader.num_tokens == 900
    with TokenLoader(tmp_path, split="val", B=1, T=8) as loader:  # the train split's gap is not val's
        assert loader.num_tokens == 300
    llmc_shard(tmp_path / "fw_train_000003.bin", tokens(300, 3))
    with TokenLoader(tmp_path, B=1, T=8) as loader:
        assert [p.name[-10:-4] for p in loader.shards] == ["000001", "000002", "000003", "000004"]
    with TokenLoader(tmp_path, split="val", B=1, T=8) as loader:
        assert loader.num_tokens == 300


def test_a_glob_or_file_naming_the_other_split_is_refused(fineweb):
    path, _ = fineweb
    with pytest.raises(LoaderError, match=r"\*.bin: names 1 shard\(s\) of another split than train "
                                          r"\(fineweb_val_000000.bin\): narrow it to the train shards"):
        TokenLoader(str(path / "*.bin"), B=1, T=8)  # would train on the val shard too
    # only the other split's shards: most likely meant as that split, which each caller can name
    with pytest.raises(LoaderError, match=r"of another split than train \(fineweb_val_000000.bin\): read "
                                          r"them as the val split \(split='val', loader.bench's --split val, "
                                          r"train.py's --val-data\), narrow it to the train shards, or pass "
                                          r"the dataset directory$"):
        TokenLoader(path / "fineweb_val_000000.bin", B=1, T=8)
    with TokenLoader(path / "fineweb_val_000000.bin", split="val", B=1, T=8) as loader:
        assert loader.num_tokens == 200


def test_a_directorys_shards_numbered_without_padding_are_refused_not_left_out(tmp_path):
    """x_train_1.bin beside x_train_000000.bin: the loader read the padded one alone."""
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(100, 1))
    llmc_shard(tmp_path / "x_train_1.bin", tokens(100, 2))
    with pytest.raises(LoaderError, match=r"x_train_1.bin is numbered without padding to 6 digits \(a directory's "
                                          r"shards are <name>_<split>_<index:06d>\): rename it, or name the shards "
                                          r"with a glob, such as train.py's --data '.*/x_train\*.bin'"):
        TokenLoader(tmp_path, B=1, T=8)
    with TokenLoader(tmp_path / "x_train*.bin", B=1, T=8) as loader:  # as the error says
        assert [p.name for p in loader.shards] == ["x_train_000000.bin", "x_train_1.bin"]


def test_the_other_splits_shards_numbered_without_padding_leave_this_split_readable(tmp_path):
    """The error for x_val_1.bin says to pass the val shards as train.py's --val-data glob; the
    train split, read from the same directory, refused it all the same, so that did not help."""
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(100, 1))
    for i in (1, 2):
        llmc_shard(tmp_path / f"x_val_{i}.bin", tokens(50, i + 1))
    with pytest.raises(LoaderError, match=r"x_val_1.bin and 1 more are numbered without padding .* such as "
                                          r"train.py's --val-data '(.*)'$") as e:
        TokenLoader(tmp_path, split="val", B=1, T=8)
    suggested = re.search(r"--val-data '(.*)'$", str(e.value))[1]
    with TokenLoader(tmp_path, B=1, T=8) as train, TokenLoader(suggested, split="val", B=1, T=8) as val:
        assert [p.name for p in train.shards] == ["x_train_000000.bin"]
        assert [p.name for p in val.shards] == ["x_val_1.bin", "x_val_2.bin"]


@pytest.mark.parametrize("split, other", [("train", "val"), ("val", "train")])
def test_a_glob_naming_the_other_splits_shards_numbered_without_padding_is_refused(tmp_path, split, other):
    """A glob orders a set numbered without padding by value (x_train_2 before x_train_10),
    so it takes such names as shards: a val shard among them was trained on, unsaid."""
    for name, n in ((f"x_{split}_1.bin", 50), (f"x_{split}_2.bin", 60), (f"x_{other}_1.bin", 70)):
        llmc_shard(tmp_path / name, tokens(n, n))
    with pytest.raises(LoaderError, match=rf"\*.bin: names 1 shard\(s\) of another split than {split} "
                                          rf"\(x_{other}_1.bin\): narrow it to the {split} shards, pass "
                                          rf"the dataset directory, or read them as the {other} split "
                                          rf"\(split='{other}', loader.bench's --split {other}, "):
        TokenLoader(str(tmp_path / "*.bin"), split=split, B=1, T=8)
    with pytest.raises(LoaderError, match=rf"read them as the {other} split"):
        TokenLoader(str(tmp_path / f"x_{other}_*.bin"), split=split, B=1, T=8)
    with TokenLoader(str(tmp_path / f"x_{other}_*.bin"), split=other, B=1, T=8) as loader:  # as it says
        assert [p.name for p in loader.shards] == [f"x_{other}_1.bin"]
    with TokenLoader(str(tmp_path / f"x_{split}_*.bin"), split=split, B=1, T=8) as loader:
        assert [p.name for p in loader.shards] == [f"x_{split}_1.bin", f"x_{split}_2.bin"]
    for name in ("notes_val.txt", "x_validation_1.bin", "val.bin", "x_train_1.bin.bak"):
        assert named_split(name) is None, name
    assert named_split("x_val_1.npy") == "val" and named_split("d/x_train.bin") == "train"


def test_the_shards_are_read_only_memory_maps(fineweb):
    with TokenLoader(fineweb[0], B=1, T=8) as loader:
        maps = loader._stream._maps
        assert all(isinstance(m.base, np.memmap) and not m.flags.writeable for m in maps)


def write_with_meta(directory, sizes, order=None):
    arrays = [tokens(n, i) for i, n in enumerate(sizes)]
    entries = []
    for i, body in enumerate(arrays):
        sha256 = write_shard(directory / shard_name("m", "train", i), body)
        entries.append({"file": shard_name("m", "train", i), "tokens": len(body), "sha256": sha256})
    order = order or list(range(len(sizes)))
    splits = {
        "train": {"tokens": sum(sizes), "shards": [entries[i] for i in order]},
        "val": {"tokens": 0, "shards": []},
    }
    meta = {"format_version": 1, "splits": splits}
    (directory / "meta.json").write_text(json.dumps(meta))
    return arrays, meta


def test_meta_json_order_is_the_stream_order(tmp_path):
    arrays, _ = write_with_meta(tmp_path, [300, 400], order=[1, 0])
    with TokenLoader(tmp_path, B=1, T=10, prefetch=0) as loader:
        assert [p.name for p in loader.shards] == [shard_name("m", "train", i) for i in (1, 0)]
        ref = np.concatenate([arrays[1], arrays[0]])
        np.testing.assert_array_equal(read_all(loader), ref[: loader.steps_per_epoch * 10 + 1])


def shard_entry(i):
    return lambda meta: meta["splits"]["train"]["shards"][i]


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (
            lambda m: shard_entry(1)(m).update(tokens=401),
            LoaderError,
            r"m_train_000001.bin: header says 400 tokens, meta.json says 401",
        ),
        (
            lambda m: m["splits"]["train"].update(tokens=1),
            LoaderError,
            r"meta.json: train total is 1 tokens, but its shards hold 700",
        ),
        (lambda m: shard_entry(0)(m).update(file="gone.bin"), ShardError, r"gone.bin: no such"),
        (
            lambda m: shard_entry(0)(m).pop("tokens"),
            LoaderError,
            r"meta.json: train shard entry .*: no tokens$",
        ),
        (  # a count too big for any int: OverflowError in int(), a traceback, before
            lambda m: shard_entry(0)(m).update(tokens=1e400),
            LoaderError,
            r"meta.json: train shard entry .*: tokens inf is not a count$",
        ),
        (lambda m: m["splits"].pop("train"), LoaderError, r"meta.json: lists no train shards"),
        (lambda m: m.pop("splits"), LoaderError, r"meta.json: no 'splits' object"),
        (  # it would be read twice
            lambda m: m["splits"]["train"]["shards"].append(dict(shard_entry(0)(m))),
            LoaderError,
            r"meta.json: m_train_000000.bin is listed twice",
        ),
        (  # a dataset reads nothing outside its directory
            lambda m: shard_entry(0)(m).update(file="../m_train_000000.bin"),
            LoaderError,
            r"meta.json: train shard file '../m_train_000000.bin' is not a plain file name",
        ),
        (  # no file has a NUL in its name: os.stat's bare "embedded null byte", before
            lambda m: shard_entry(0)(m).update(file="m_train_000000.bin\0"),
            LoaderError,
            r"meta.json: train shard file 'm_train_000000.bin\\x00' is not a plain file name",
        ),
    ],
)
def test_meta_json_is_cross_checked(tmp_path, edit, error, message):
    _, meta = write_with_meta(tmp_path, [300, 400])
    edit(meta)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(error, match=message):
        TokenLoader(tmp_path, B=1, T=10)


@pytest.mark.parametrize("text, why", [
    ("{not json", "Expecting property name"),
    ('{"format_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    pytest.param('{"format_version": 1, "x": ' + "9" * 5000 + "}", "digits",  # beyond Python's int-parsing limit
                 marks=INT_DIGITS_LIMIT),
])
def test_a_meta_json_that_is_not_json(tmp_path, text, why):
    write_with_meta(tmp_path, [300])
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: not valid JSON \(.*{why}"):
        TokenLoader(tmp_path, B=1, T=10)


@pytest.mark.parametrize("version", [True, 1.0, "1", 2, None])
def test_a_meta_json_of_another_format_version_is_refused(tmp_path, version):
    """format_version is the integer 1: JSON's true and 1.0 compare equal to it in Python and
    were read as version 1 (a hand-edited or foreign file)."""
    _, meta = write_with_meta(tmp_path, [300])
    (tmp_path / "meta.json").write_text(json.dumps(meta | {"format_version": version}))
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: not a meta.json of format "
                                          r"version 1$"):
        TokenLoader(tmp_path, B=1, T=10)
    meta["format_version"] = 1
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    TokenLoader(tmp_path, B=1, T=10).close()


def test_a_meta_json_that_is_a_broken_link_or_a_directory_is_a_loader_error(tmp_path):
    """A dangling meta.json link (a dataset moved without its metadata) was taken for no
    meta.json, and the directory was read by shard names without a word; a directory too."""
    write_with_meta(tmp_path, [300])
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").symlink_to(tmp_path / "elsewhere" / "meta.json")
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: a broken symbolic link \(to "
                                          rf"{re.escape(str(tmp_path))}/elsewhere/meta.json\)$"):
        TokenLoader(tmp_path, B=1, T=10)
    (tmp_path / "meta.json").unlink()
    (tmp_path / "meta.json").mkdir()
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: not a file$"):
        TokenLoader(tmp_path, B=1, T=10)


def test_a_meta_json_that_cannot_be_read_is_a_loader_error(tmp_path, monkeypatch):
    """No read permission on meta.json (or an I/O error): one line naming it, not a PermissionError
    traceback (chmod does not stop root, so the read is made to fail)."""
    write_with_meta(tmp_path, [300])
    read_text = type(tmp_path).read_text

    def refuse(self, *args, **kwargs):
        if self.name == "meta.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "read_text", refuse)
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: cannot be read \(Permission denied\)$"):
        TokenLoader(tmp_path, B=1, T=10)


def test_a_dataset_directory_without_search_permission_is_a_loader_error(tmp_path, monkeypatch):
    """chmod 000 (or another user's 700): even meta.json's stat fails, in Path.is_file, which
    lets EACCES through. One line naming it, not a PermissionError traceback."""
    write_with_meta(tmp_path, [300])
    without_search_permission(monkeypatch, tmp_path)
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}/meta.json: cannot be read \(Permission denied\)$"):
        TokenLoader(tmp_path, B=1, T=10)


def test_a_glob_takes_no_account_of_a_hidden_directory_its_wildcard_does_not_match(tmp_path, monkeypatch):
    """'*' matches no name that starts with '.' (glob.glob's rule), so a directory such as
    sets/.cache, another user's (mode 700), is none of 'sets/*/x_train_*.bin's: the glob takes
    sets/a's shards, where it is not refused for a directory it never looks into. A hidden one
    its part names ('sets/.*/...') is looked into, and refused."""
    (tmp_path / "sets" / ".cache" / "d").mkdir(parents=True)
    (tmp_path / "sets" / "a").mkdir()
    llmc_shard(tmp_path / "sets" / "a" / "x_train_000000.bin", tokens(300, 0))
    without_search_permission(monkeypatch, tmp_path / "sets" / ".cache")
    monkeypatch.chdir(tmp_path)
    assert resolve_shards("sets/*/x_train_*.bin", "train") == [Path("sets/a/x_train_000000.bin")]
    with pytest.raises(PermissionError):
        resolve_shards("sets/.*/x_train_*.bin", "train")


def test_a_directory_that_cannot_be_listed_is_a_loader_error(tmp_path, monkeypatch):
    """A dataset directory without meta.json and without read permission: one line naming it,
    not a PermissionError traceback (os.listdir is made to fail: chmod does not stop root)."""
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(300, 0))
    without_read_permission(monkeypatch, tmp_path)
    with pytest.raises(LoaderError, match=rf"^{re.escape(str(tmp_path))}: cannot be listed \(Permission denied\)$"):
        TokenLoader(tmp_path, B=1, T=10)


def test_a_glob_orders_shards_by_index_past_six_digits(tmp_path):
    """Index 1,000,000 on, a shard's name has seven digits; sorted by name, the glob read
    d_train_1000000.bin before d_train_999999.bin: the split's tokens out of order."""
    from loader import resolve_shards

    for index in (999_998, 1_000_000, 999_999, 1_000_001):
        write_shard(tmp_path / shard_name("d", "train", index), np.full(3, index % 50_000))
    write_shard(tmp_path / "d_train.bin", np.zeros(3, dtype=np.uint16))  # llm.c's unindexed name: index 0, first
    assert [p.name for p in resolve_shards(str(tmp_path / "d_train*.bin"), "train")] == [
        "d_train.bin", "d_train_999998.bin", "d_train_999999.bin", "d_train_1000000.bin", "d_train_1000001.bin"]


def test_a_glob_orders_names_numbered_without_padding_by_value(tmp_path):
    """x_train_1.bin, x_train_2.bin, x_train_10.bin (no shard names: a directory of them is
    refused, pointing at a glob): the glob read 10 before 2."""
    from loader import resolve_shards

    for index in (10, 1, 2, 9):
        write_shard(tmp_path / f"x_train_{index}.bin", np.full(3, index))
    assert [p.name for p in resolve_shards(str(tmp_path / "x_train_*.bin"), "train")] == [
        "x_train_1.bin", "x_train_2.bin", "x_train_9.bin", "x_train_10.bin"]


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_shard_reached_twice_through_a_link_is_refused(tmp_path, link):
    """Each token once an epoch: a shard linked in under a second shard name (a directory
    without meta.json) or matched twice by a glob was read twice in each epoch."""
    write_shard(tmp_path / "d_train_000000.bin", tokens(300, 0))
    write_shard(tmp_path / "d_train_000001.bin", tokens(300, 1))
    second = tmp_path / "d_train_000002.bin"
    if link == "symbolic":
        second.symlink_to("d_train_000000.bin")
    else:
        try:
            os.link(tmp_path / "d_train_000000.bin", second)
        except OSError as e:  # a filesystem without hard links
            pytest.skip(f"no hard link here: {e}")
    for given, said in ((tmp_path, f"{tmp_path}: {second} and {tmp_path}/d_train_000000.bin"),
                        (str(tmp_path / "*.bin"), f"{tmp_path}/*.bin: {second} and {tmp_path}/d_train_000000.bin")):
        with pytest.raises(LoaderError, match=rf"^{re.escape(said)} are one file \(a link\): the train split would "
                                              rf"read its tokens twice an epoch; remove the link$"):
            TokenLoader(given, B=1, T=10)


def test_missing_paths_and_empty_globs_and_splits(tmp_path, fineweb):
    with pytest.raises(LoaderError, match=r"nowhere: no such file or directory"):
        TokenLoader(tmp_path / "nowhere")
    # there, but neither a file nor a directory: it said "no such file or directory" too
    with pytest.raises(LoaderError, match=r"^/dev/null: not a regular file \(a character device\), not a shard$"):
        TokenLoader("/dev/null")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(LoaderError, match=r"fifo: not a regular file \(a FIFO\), not a shard$"):
        TokenLoader(tmp_path / "fifo")
    (tmp_path / "broken").symlink_to("gone")
    with pytest.raises(LoaderError, match=r"broken: a broken symbolic link \(to gone\)$"):
        TokenLoader(tmp_path / "broken")
    with pytest.raises(LoaderError, match=r"nothing_\*.bin: no shard files match"):
        TokenLoader(str(tmp_path / "nothing_*.bin"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no tokens")  # a glob of its .bin files would match nothing: none offered
    with pytest.raises(LoaderError, match=r"empty: no val shards \(files named <name>_val\[_<index:06d>\].bin, or "
                                          r"\.npy\); it holds no \.bin or \.npy file at all: pass the directory "
                                          r"`prep tokenize` wrote \(data/<name>\)$"):
        TokenLoader(empty, split="val")
    (empty / "tokens.bin").write_bytes(b"")  # a file of other name: the glob that takes it
    with pytest.raises(LoaderError, match=rf"empty: no val shards .*; for other names pass a glob such as "
                                          rf"'{re.escape(str(empty))}/\*\.bin'$"):
        TokenLoader(empty, split="val")
    (empty / "tokens.bin").unlink()
    (empty / "tokens.npy").write_bytes(b"")  # build-nanogpt's kind, named otherwise: a glob of .npy files
    with pytest.raises(LoaderError, match=rf"empty: no val shards .*; for other names pass a glob such as "
                                          rf"'{re.escape(str(empty))}/\*\.npy'$"):
        TokenLoader(empty, split="val")
    (empty / "tokens.npy").unlink()
    (empty / "notes.txt").unlink()
    write_with_meta(empty, [300])
    with pytest.raises(LoaderError, match=r"meta.json: lists no val shards"):
        TokenLoader(empty, split="val", B=1, T=1)


@pytest.mark.parametrize("names, suggested", [
    (["tokens_a.bin", "tokens_b.bin"], "*.bin"),  # no name says a split: all of them
    (["fineweb-train-00.bin", "fineweb-train-01.bin", "fineweb-val-00.bin"], "*train*.bin"),  # names that say it
    (["tokens.bin", "x_val_000000.bin"], "tokens.bin"),  # *.bin would take the val shard: the file itself
    # *train*.bin would take the val shard, its name holding the split's too: the file itself
    (["pretrain_tokens.bin", "pretrain_val_000000.bin"], "pretrain_tokens.bin"),
    (["tokens.bin", "tokens.npy"], "*.bin"),  # .bin before .npy, as the directory's own shards are found
    # the val shard is a .npy: *.bin takes no val shard, and both train files (not a.bin alone)
    (["a.bin", "b.bin", "x_val_000000.npy"], "*.bin"),
])
def test_the_glob_suggested_for_other_names_takes_the_shards_there(tmp_path, names, suggested):
    directory = tmp_path / "run [1]"  # a name that is a glob pattern itself: escaped in the one suggested
    directory.mkdir()
    for seed, name in enumerate(names):
        llmc_shard(directory / name, tokens(300, seed))
    with pytest.raises(LoaderError, match=r"no train shards .*; for other names pass a glob such as '(.*)'$") as e:
        TokenLoader(directory, B=1, T=8)
    given = re.search(r"a glob such as '(.*)'$", str(e.value))[1]
    assert given == f"{tmp_path}/run [[]1]/{suggested}"
    with TokenLoader(given, B=1, T=8, prefetch=0) as loader:  # as it says
        assert loader.num_tokens > 0 and all(named_split(p.name) != "val" for p in loader.shards)


def test_no_glob_is_suggested_where_every_shard_is_the_other_splits(tmp_path):
    llmc_shard(tmp_path / "x_val_000000.bin", tokens(300, 1))
    with pytest.raises(LoaderError, match=r"no train shards \(files named <name>_train\[_<index:06d>\]\.bin, "
                                          r"or \.npy\)$"):
        TokenLoader(tmp_path, B=1, T=8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"magic": 20240521}, r"bad magic 20240521"),
        ({"version": 2}, r"unsupported version 2"),
        ({"count": 0}, r"header says 0 tokens"),
        ({"count": -4}, r"header says -4 tokens"),
        ({"count": 301}, r"size 1624 bytes, but the header's 301 tokens need exactly 1626"),
        ({"extra": b"\0\0"}, r"size 1626 bytes, but the header's 300 tokens need exactly 1624"),
    ],
)
def test_every_bad_shard_is_an_error_naming_the_file(tmp_path, kwargs, message):
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(300, 0))
    llmc_shard(tmp_path / "x_train_000001.bin", tokens(300, 1), **kwargs)
    with pytest.raises(ShardError, match=r"x_train_000001.bin: " + message):
        TokenLoader(tmp_path, B=1, T=8)
    assert issubclass(ShardError, ValueError) and issubclass(LoaderError, ValueError)


@pytest.mark.parametrize("name, content, message", [
    ("input.txt", b"First Citizen:\nBefore we proceed any further, hear me speak.\n",
     "input.txt: not a token shard (bad magic 1936877894, expected 20240520): tokenize it first with "
     "`prep tokenize {path}` and pass the dataset directory it writes"),
    ("my notes.txt", b"hi\n", "my notes.txt: not a token shard (3 byte(s), too few to hold the magic 20240520): "
     "tokenize it first with `prep tokenize '{path}'` and pass the dataset directory it writes"),
    ("meta.json", b'{"format_version": 1}', "meta.json: a dataset's meta.json, not a shard: pass its directory, {dir}"),
    # nothing to tokenize either (prep tokenize refuses an empty input): no such advice
    ("empty.txt", b"", "empty.txt: an empty file, not a token shard (a shard is a 1024-byte header, then its tokens)"),
    # four bytes hold a magic, a wrong one; a magic is read as read_header reads it (an int32)
    ("four.txt", b"abcd", "four.txt: not a token shard (bad magic 1684234849, expected 20240520): tokenize it first "
     "with `prep tokenize {path}` and pass the dataset directory it writes"),
    ("ja.txt", "\u65e5\u672c\u8a9e\n".encode(), "ja.txt: not a token shard (bad magic -425355290, expected 20240520): "
     "tokenize it first with `prep tokenize {path}` and pass the dataset directory it writes"),
])
def test_a_single_file_that_is_no_shard_says_what_to_pass_instead(tmp_path, name, content, message):
    """Not read_header's bare "bad magic": a text file or meta.json given where shards go
    wants another step, not a fixed shard."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LoaderError) as e:
        TokenLoader(path, B=1, T=1)
    assert str(e.value) == f"{tmp_path}/" + message.format(path=path, dir=tmp_path)


def raw_tokens_refusals(directory: Path) -> list[str]:
    """What the loader says of nanoGPT's headerless train.bin in `directory`, given as the file,
    as a glob and as its directory (each refused, with the error type that form raises)."""
    messages = []
    for given, error in [(directory / "train.bin", LoaderError), (str(directory / "*train*.bin"), ShardError),
                         (directory, LoaderError)]:
        with pytest.raises(error) as e:
            TokenLoader(given, B=1, T=8)
        messages.append(str(e.value))
    return messages


def test_nanogpt_headerless_train_bin_is_refused_saying_what_it_is(tmp_path):
    """nanoGPT's prepare.py writes raw uint16 tokens, no header, as train.bin / val.bin: as a
    file, a glob or their directory, the error says so (not "tokenize it": it holds no text)."""
    tokens(3000, 0).tofile(tmp_path / "train.bin")
    tokens(500, 1).tofile(tmp_path / "val.bin")
    for message in raw_tokens_refusals(tmp_path):
        assert "headerless uint16 tokens (nanoGPT's prepare.py" in message, message
        assert "prepend the 1024-byte header (int32 20240520, 1, the token count" in message
        assert "prep tokenize " + str(tmp_path) not in message and "*train*.bin'" not in message
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240520, 1, 3000
    (tmp_path / "x_train.bin").write_bytes(header.tobytes() + (tmp_path / "train.bin").read_bytes())
    with TokenLoader(tmp_path / "x_train.bin", B=1, T=8, prefetch=0) as loader:  # as it says
        np.testing.assert_array_equal(loader.next_window().numpy(), tokens(3000, 0)[:9])


def test_nanogpt_train_bin_hint_names_the_files_so_that_following_it_loads_both_splits(tmp_path):
    """The hint said only to prepend the header: train.bin and val.bin are then shards, but not
    by name, and data/shakespeare still held 'no shards'. It names them after their folder."""
    directory = tmp_path / "shakespeare"
    directory.mkdir()
    tokens(3000, 0).tofile(directory / "train.bin")
    tokens(500, 1).tofile(directory / "val.bin")
    for message in raw_tokens_refusals(directory):
        assert message.endswith("prepend the 1024-byte header (int32 20240520, 1, the token count, then zeros) "
                                "and name them shakespeare_train.bin and shakespeare_val.bin"), message
    for split, n, seed in (("train", 3000, 0), ("val", 500, 1)):  # as it says
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240520, 1, n
        body = (directory / f"{split}.bin").read_bytes()
        (directory / f"shakespeare_{split}.bin").write_bytes(header.tobytes() + body)
        with TokenLoader(directory, split=split, B=1, T=8, prefetch=0) as loader:
            np.testing.assert_array_equal(loader.next_window().numpy(), tokens(n, seed)[:9])


def test_headered_train_bin_without_a_dataset_name_is_named_so_that_following_it_loads(tmp_path):
    """train.bin and val.bin with our header (the raw hint's first half followed, a converter's
    output) were "no train shards ... pass a glob": the hint now names them after their folder."""
    directory = tmp_path / "shakespeare"
    directory.mkdir()
    write_shard(directory / "train.bin", tokens(3000, 0))
    write_shard(directory / "val.bin", tokens(500, 1))
    with pytest.raises(LoaderError) as e:
        TokenLoader(directory, B=1, T=8)
    assert str(e.value) == (f"{directory}: no train shards (files named <name>_train[_<index:06d>].bin, or .npy); "
                            "train.bin and val.bin are shards by their headers, but a shard's name starts with a "
                            "dataset name: name them shakespeare_train.bin and shakespeare_val.bin")
    (directory / "val.bin").unlink()
    with pytest.raises(LoaderError, match="train.bin is a shard by its header, .* name it shakespeare_train.bin$"):
        TokenLoader(directory, B=1, T=8)
    (directory / "train.bin").rename(directory / "shakespeare_train.bin")  # as it says
    with TokenLoader(directory, B=1, T=8, prefetch=0) as loader:
        np.testing.assert_array_equal(loader.next_window().numpy(), tokens(3000, 0)[:9])


def test_llmc_llama3_shards_are_named_as_a_file_a_glob_or_their_directory(tmp_path):
    """llm.c's Llama 3 shards (uint32 tokens after its header, magic 20240801) were "bad magic
    20240801" in their directory and, under another name, "raw tokens" to prepend our header to."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240801, 7, 300
    llama = header.tobytes() + np.arange(128000, 128300, dtype="<u4").tobytes()
    (tmp_path / "ts").mkdir()
    for path in (tmp_path / "ts" / "tiny_shakespeare_train.bin", tmp_path / "llama.bin"):
        path.write_bytes(llama)
    for given, shard in [(tmp_path / "ts", tmp_path / "ts" / "tiny_shakespeare_train.bin"),
                         (str(tmp_path / "ts" / "*train*.bin"), tmp_path / "ts" / "tiny_shakespeare_train.bin"),
                         (tmp_path / "llama.bin", tmp_path / "llama.bin")]:
        with pytest.raises(ShardError) as e:
            TokenLoader(given, B=1, T=8)
        assert str(e.value).startswith(f"{shard}: llm.c's Llama 3 token shard (uint32 tokens), not GPT-2's: this "
                                       f"reads GPT-2's uint16 shards (magic 20240520); run llm.c's data script "
                                       f"with -m gpt-2"), str(e.value)


def test_llmc_model_debug_state_and_tokenizer_files_are_named_where_shards_go(tmp_path):
    """llm.c's gpt2_124M.bin (fp32 and bf16), debug state and tokenizer file, given as --data:
    the model files and the debug state were "raw tokens" (even sizes) to prepend our header
    to, the tokenizer file text to `prep tokenize`."""
    for name, magic, version, body, kind in [
            ("gpt2_124M.bin", 20240326, 3, np.zeros(64, "<f4"), "llm.c's GPT-2 model file (fp32)"),
            ("gpt2_124M_bf16.bin", 20240326, 5, np.zeros(64, "<u2"), "llm.c's GPT-2 model file (bf16)"),
            ("gpt2_124M_debug_state.bin", 20240327, 2, np.zeros(64, "<i4"),
             "llm.c's debug state (a test's batch, logits and gradients)"),
            ("gpt2_tokenizer.bin", 20240328, 2, np.frombuffer(b"\x01a\x02bc", "u1"), "llm.c's tokenizer file")]:
        header = np.zeros(256, dtype="<i4")
        header[:2] = magic, version
        (tmp_path / name).write_bytes(header.tobytes() + body.tobytes())
        with pytest.raises(ShardError) as e:
            TokenLoader(tmp_path / name, B=1, T=8)
        assert str(e.value) == (f"{tmp_path / name}: {kind}, not a token shard: pass the shards instead (llm.c's "
                                f"data scripts write them under dev/data/)")


def test_a_checkpoint_weights_or_compressed_text_given_as_shards_says_what_it_is(tmp_path):
    """Each was told to `prep tokenize` it: a checkpoint (which prep tokenize then called zip-compressed,
    offering to unzip a pickle into it) or a gzip file (which prep tokenize refuses as it is)."""
    import gzip
    import struct

    import torch

    torch.save({"model": torch.zeros(3)}, tmp_path / "ckpt_000010.pt")
    torch.save({"wte": torch.zeros(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    header = json.dumps({"wte": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    (tmp_path / "input.txt.gz").write_bytes(gzip.compress(b"some text\n"))
    (tmp_path / "my: notes.gz").write_bytes(gzip.compress(b"some text\n"))  # ": " in its name
    for count in range(1, 12):  # a .bin of an even size: called raw tokens, where it is none
        torch.save({f"w{i}": torch.zeros(4) for i in range(count)}, tmp_path / "pytorch_model.bin")
        if (tmp_path / "pytorch_model.bin").stat().st_size % 2 == 0:
            break
    assert (tmp_path / "pytorch_model.bin").stat().st_size % 2 == 0
    torch_file = "a torch.save file (a checkpoint, or model weights)"
    for name, said in [
            ("ckpt_000010.pt", torch_file), ("pytorch_model.bin", torch_file),
            ("legacy.pt", "a Python pickle (as an older torch.save writes checkpoints and weights)"),
            ("model.safetensors", "a safetensors file (model weights, as Hugging Face's model.safetensors)")]:
        with pytest.raises(LoaderError) as e:
            TokenLoader(tmp_path / name, B=1, T=8)
        assert str(e.value) == (f"{tmp_path / name}: {said}, not a token shard: a checkpoint goes to train.py's "
                                f"--resume or --init-from, or to sample.py; shards are what `prep tokenize` writes")
    with pytest.raises(LoaderError) as e:
        TokenLoader(tmp_path / "input.txt.gz", B=1, T=8)
    gz = tmp_path / "input.txt.gz"
    assert re.fullmatch(rf"{re.escape(str(gz))}: not a token shard \(bad magic \d+, expected 20240520\); to tokenize "
                        rf"it: gzip-compressed; decompress it first, or stream it .*: zcat {re.escape(str(gz))} \| "
                        rf"prep tokenize -", str(e.value)), str(e.value)
    with pytest.raises(LoaderError) as e:
        TokenLoader(tmp_path / "my: notes.gz", B=1, T=8)
    assert "; to tokenize it: gzip-compressed; decompress it first" in str(e.value), str(e.value)
    (tmp_path / "notes.zip").write_bytes(b"PK\x03\x04" + bytes(40))  # a zip that is no torch file: as before
    with pytest.raises(LoaderError, match="; to tokenize it: zip-compressed"):
        TokenLoader(tmp_path / "notes.zip", B=1, T=8)


def test_a_file_named_as_a_shard_keeps_the_header_error_and_an_empty_path_is_refused(tmp_path):
    """A shard whose writer was killed (magic still 0) is damaged, not text: its own error."""
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(300, 0), magic=0)
    with pytest.raises(ShardError, match=r"x_train_000000.bin: bad magic 0 \(expected 20240520\)$"):
        TokenLoader(tmp_path / "x_train_000000.bin", B=1, T=8)
    with pytest.raises(LoaderError, match=r"^an empty path names no shards$"):
        TokenLoader("", B=1, T=8)


def test_a_file_shorter_than_the_header(tmp_path):
    (tmp_path / "x_train_000000.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ShardError, match=r"x_train_000000.bin: 100 bytes, shorter than the"):
        TokenLoader(tmp_path, B=1, T=8)


def test_a_split_without_shards_is_empty_only_when_allowed(tmp_path, fineweb):
    from loader import resolve_shards

    (tmp_path / "meta").mkdir()
    write_with_meta(tmp_path / "meta", [300])  # meta.json lists train shards only
    no_val = tmp_path / "plain"
    no_val.mkdir()
    llmc_shard(no_val / shard_name("x", "train", 0), tokens(50, 9))
    for directory in (tmp_path / "meta", no_val):
        assert resolve_shards(directory, "val", allow_empty=True) == []
        with pytest.raises(LoaderError, match="no val shards"):
            resolve_shards(directory, "val")
    # allow_empty changes nothing where the split exists, nor for globs that match nothing
    fineweb_dir, _ = fineweb
    assert resolve_shards(fineweb_dir, "val", allow_empty=True) == resolve_shards(fineweb_dir, "val")
    with pytest.raises(LoaderError, match="no shard files match"):
        resolve_shards(str(tmp_path / "*.nothing"), "val", allow_empty=True)


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("bad, fine", [(5, 3), (0, 2)], ids=["index-5", "index-0"])
def test_a_token_outside_the_vocabulary_is_an_error_naming_shard_and_index(tmp_path, prefetch, bad, fine):
    """300 + 400 tokens; the bad one at index `bad` of the second shard (stream position 300 +
    bad), in window `fine` (0-based) of 101 tokens: index 0 is that window's last target, and
    named the first shard's index 300 where locate() looked left of a boundary."""
    first, second = tokens(300, 1) % 50257, tokens(400, 2) % 50257
    second[bad] = 65535
    llmc_shard(tmp_path / "x_train_000000.bin", first)
    llmc_shard(tmp_path / "x_train_000001.bin", second)
    with TokenLoader(tmp_path, B=1, T=100, prefetch=prefetch, vocab_size=50257) as loader:
        for _ in range(fine):  # up to [100 * fine - 100, 100 * fine + 1): fine
            loader.next_window()
        with pytest.raises(TokenRangeError, match=rf"x_train_000001.bin: token 65535 at index {bad} is not below "
                                                  r"the vocabulary size 50257"):
            loader.next_window()  # reaches into the second shard
    with TokenLoader(tmp_path, B=1, T=100, prefetch=prefetch) as loader:  # no vocab_size: no check
        assert [int(loader.next_window().numpy().max()) for _ in range(fine + 1)][fine] == 65535


def test_a_stream_position_is_located_in_its_shard_at_every_boundary_and_reads_past_the_end_are_refused(tmp_path):
    """locate() names the shard and index of the loader's out-of-vocabulary error and the audit's
    "data differ" lines, whose windows often start at a shard's first token: there it must name
    that shard at index 0, not the one before it one past its end."""
    counts = (300, 1, 400)
    paths = [tmp_path / shard_name("x", "train", i) for i in range(len(counts))]
    for path, n in zip(paths, counts):
        llmc_shard(path, tokens(n, n))
    stream = TokenStream(paths)
    located = [stream.locate(position) for position in range(sum(counts))]
    assert located == [(path, i) for path, n in zip(paths, counts) for i in range(n)]
    out = np.empty(11, dtype=np.uint16)
    stream.read_into(sum(counts) - 11, out)  # the last 11 tokens: fine
    np.testing.assert_array_equal(out, tokens(400, 400)[-11:])
    for start in (sum(counts) - 10, -1):
        with pytest.raises(IndexError, match=rf"window \[{start}, {start + 11}\) is outside the stream's 701 tokens"):
            stream.read_into(start, out)
    stream.close()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_first_id_past_the_vocabulary_is_refused_even_as_an_epochs_last_target(tmp_path, prefetch):
    """50257 (one past GPT-2's last id, a row the padded embedding has) is refused as 65535 is;
    and the +1 target at the end of the last window of an epoch, never an input, is checked too."""
    body = tokens(1000, 3) % 50257
    body[768] = 50257  # 1000 tokens at B=1 x T=128 x W=2: E = 3, the last window (rank 1's) ends at 768
    llmc_shard(tmp_path / "x_train_000000.bin", body)
    with TokenLoader(tmp_path, B=1, T=128, world=2, rank=1, prefetch=prefetch, vocab_size=50257) as loader:
        assert loader.steps_per_epoch == 3 and loader.window_start(2) == 640
        loader.next_window()
        loader.next_window()
        with pytest.raises(TokenRangeError, match=r"token 50257 at index 768 is not below the vocabulary size 50257"):
            loader.next_window()  # [640, 769): 768 is its last target, never an input


def test_a_broken_link_a_folder_a_link_loop_or_a_fifo_with_a_shards_name_is_an_error_not_skipped(tmp_path):
    llmc_shard(tmp_path / "x_train_000000.bin", tokens(100, 1))
    (tmp_path / "x_train_000001.bin").symlink_to("gone.bin")
    with pytest.raises(ShardError, match=r"x_train_000001.bin: a broken symbolic link \(to gone.bin\)"):
        TokenLoader(tmp_path, B=1, T=2)
    (tmp_path / "x_train_000001.bin").unlink()
    (tmp_path / "x_train_000001.bin").mkdir()
    with pytest.raises(ShardError, match=r"x_train_000001.bin: is a directory, not a shard"):
        TokenLoader(tmp_path, B=1, T=2)
    (tmp_path / "x_train_000001.bin").rmdir()
    (tmp_path / "x_train_000001.bin").symlink_to("x_train_000001.bin")  # a loop: os.stat's ELOOP, a traceback before
    with pytest.raises(ShardError, match=r"x_train_000001.bin: cannot be read \(Too many levels of symbolic links\)"):
        TokenLoader(tmp_path, B=1, T=2)
    (tmp_path / "x_train_000001.bin").unlink()
    os.mkfifo(tmp_path / "x_train_000001.bin")  # opening it waited for a writer forever, before
    with pytest.raises(ShardError, match=r"x_train_000001.bin: not a regular file \(a FIFO\), not a shard"):
        TokenLoader(tmp_path, B=1, T=2)


def test_a_split_of_more_than_2_to_the_32_tokens_is_read_at_its_true_offsets(tmp_path):
    """FineWeb-10B scale: three sparse shards of 2**31 - 1 tokens each (6.4e9 in all, 12 GB
    on paper, a few KB on disk). Offsets past 2**31 and 2**32, windows that cross a shard
    boundary, shuffled slots and an epoch's last window all land where the cursor says."""
    n = 2**31 - 1
    marks = {}  # stream position -> token; every other token of the sparse files reads as 0
    for i in range(3):
        path = tmp_path / shard_name("big", "train", i)
        llmc_shard(path, [], count=n)  # the header alone
        with open(path, "r+b") as f:
            f.truncate(1024 + 2 * n)
            if i == 0 and path.stat().st_blocks * 512 > 2**20:
                path.unlink()
                pytest.skip("this file system writes sparse files out in full")
            for offset, values in ((0, [100 + i, 200 + i, 300 + i]), (n - 3, [400 + i, 500 + i, 600 + i])):
                f.seek(1024 + 2 * offset)
                f.write(np.array(values, dtype="<u2").tobytes())
                marks.update({i * n + offset + j: v for j, v in enumerate(values)})

    def expected(start: int, length: int) -> np.ndarray:
        out = np.zeros(length, dtype=np.uint16)
        for position, token in marks.items():
            if start <= position < start + length:
                out[position - start] = token
        return out

    B, T, W = 4, 32, 8
    for shuffle in (False, True):
        loaders = [TokenLoader(tmp_path, B=B, T=T, rank=r, world=W, shuffle=shuffle, seed=5, prefetch=0)
                   for r in range(W)]
        E = loaders[0].steps_per_epoch
        assert loaders[0].num_tokens == 3 * n and E == (3 * n - 1) // (B * T * W)
        # the windows holding the end of shard 1 and the start of shard 2 (at 2**32 - 2: the
        # window across it has token 2**32 as its last target)
        boundary_slot, _ = divmod(2 * n - 3, B * T * W)
        steps = [0, E - 1, E, 2 * E - 1]  # the first and last steps of epochs 0 and 1
        if shuffle:
            steps += [int(np.flatnonzero(epoch_permutation(5, 1, E) == boundary_slot)[0]) + E]
        else:
            steps += [boundary_slot]
        for step in steps:
            slot = int(epoch_permutation(5, step // E, E)[step % E]) if shuffle else step % E
            for rank, loader in enumerate(loaders):
                loader.load_state_dict({**loader.state_dict(), "step": step, "epoch": step // E})
                start = loader.window_start(step)
                assert start == (slot * W + rank) * B * T
                window = loader.next_window().numpy()
                np.testing.assert_array_equal(window, expected(start, B * T + 1), err_msg=f"{step=} {rank=}")
                assert start % (B * T) == 0 and start + B * T + 1 <= 3 * n
        crossing = [loader.window_start(steps[-1]) for loader in loaders]
        assert any(s < 2 * n <= s + B * T for s in crossing)  # one window does cross it
        for loader in loaders:
            loader.close()


def _stream_in_child(data, soft, hard):
    """Map `data`'s train shards in a child whose open-file limit is (soft, hard): what it
    printed (num_tokens and the soft limit after) and its return code."""
    code = ("import resource, sys\n"
            "from loader import LoaderError\n"
            "from loader.resolve import resolve_shards\n"
            "from loader.stream import TokenStream\n"
            "try:\n"
            f"    s = TokenStream(resolve_shards({str(data)!r}, 'train'))\n"
            "except LoaderError as e:\n"
            "    sys.exit(f'LoaderError: {e}')\n"
            "print(s.num_tokens, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


@pytest.mark.skipif(resource is None, reason="RLIMIT_NOFILE is a POSIX limit")
def test_more_shards_than_the_soft_open_file_limit(tmp_path):
    """Each mapped shard keeps a file open; 300 shards under a soft limit of 128 (a common
    soft limit is 1024, and llm.c's FineWeb-100B has 1,000+ shards): the soft limit is raised
    towards the hard one and all map. With the hard limit that low too, one LoaderError names
    the shard, the limit and what to do, instead of an OSError half-way through."""
    for i in range(300):
        llmc_shard(tmp_path / f"d_train_{i:06d}.bin", np.full(10, i, dtype=np.uint16))
    done = _stream_in_child(tmp_path, 128, 4096)
    assert done.returncode == 0, done.stderr
    count, soft = map(int, done.stdout.split())
    assert count == 3000 and 300 < soft <= 4096
    failed = _stream_in_child(tmp_path, 128, 128)
    assert failed.returncode == 1 and failed.stdout == ""
    message = failed.stderr.strip()
    assert "\n" not in message and message.startswith(f"LoaderError: {tmp_path}/d_train_")
    assert "of 300: this process's open-file limit is reached" in message
    assert "`ulimit -n` is 128, the hard limit 128" in message and "ulimit -n 812" in message


class _AdviceLog:
    """A shard's mmap that records the advice given to it (mmap.madvise cannot be patched)."""

    def __init__(self, mapped, log: list, shard: int):
        self._mapped, self._log, self._shard = mapped, log, shard

    def madvise(self, option, start=0, length=None):
        self._log.append((self._shard, option, start, length))
        return self._mapped.madvise(option, start, *(() if length is None else (length,)))


@pytest.mark.skipif(not hasattr(mmap, "MADV_WILLNEED"), reason="no madvise here")
@pytest.mark.parametrize("suffix", [".bin", ".npy"])
def test_shuffled_windows_turn_readahead_off_and_ask_for_their_own_pages(tmp_path, suffix):
    """On a cold page cache the kernel's readahead around each fault read 52 to 12,409 times
    a shuffled window's bytes from disk (a helper's FineWeb-sized run): a shuffled loader now
    advises random access, and asks for each window's own pages, piece by piece across
    shards; loading a state of the other order advises again. The tokens are the same."""
    sizes = (3000, 2500)
    if suffix == ".bin":
        for i, n in enumerate(sizes):
            write_shard(tmp_path / shard_name("d", "train", i), tokens(n, i))
        first = 1024  # the header
    else:
        for i, n in enumerate(sizes):
            np.save(tmp_path / f"d_train_{i:06d}.npy", tokens(n, i))
        first = 128  # numpy's header of a 1-D uint16 array
    reference = np.concatenate([tokens(n, i) for i, n in enumerate(sizes)])
    log: list = []
    with TokenLoader(tmp_path, B=4, T=200, shuffle=True, seed=3, prefetch=0) as loader:
        stream = loader._stream
        assert stream._random  # told by the loader at its start; again here, to the recording maps
        stream._mmaps = [(_AdviceLog(m, log, i), f) for i, (m, f) in enumerate(stream._mmaps)]
        stream.access(random=True)
        assert log == [(0, mmap.MADV_RANDOM, 0, None), (1, mmap.MADV_RANDOM, 0, None)]
        for step in range(loader.steps_per_epoch):
            log.clear()
            start = loader.window_start(step)
            window = loader.next_window().numpy()
            np.testing.assert_array_equal(window, reference[start:start + 801])
            pieces = [(0, start, min(start + 801, 3000))] if start + 801 <= 3000 else (
                [(0, start, 3000), (1, 0, start + 801 - 3000)] if start < 3000 else [(1, start - 3000, start - 2199)])
            expected = []
            for shard, a, b in pieces:
                begin = (first + 2 * a) // mmap.PAGESIZE * mmap.PAGESIZE
                expected.append((shard, mmap.MADV_WILLNEED, begin, first + 2 * b - begin))
            assert log == expected, (step, start)
        log.clear()
        loader.load_state_dict({**loader.state_dict(), "shuffle": False, "step": 0, "epoch": 0})
        assert log == [(0, mmap.MADV_NORMAL, 0, None), (1, mmap.MADV_NORMAL, 0, None)]
        np.testing.assert_array_equal(loader.next_window().numpy(), reference[:801])
        assert len(log) == 2  # in order: no more advice


@pytest.mark.skipif(not hasattr(mmap, "MADV_WILLNEED"), reason="no madvise here")
def test_a_long_window_asks_for_its_pages_in_pieces_the_kernel_reads_whole(tmp_path):
    """Linux reads at most max(read_ahead_kb, max_sectors_kb) of one MADV_WILLNEED (128 KB on
    many disks): a 64x4096 window asked for at once came in a quarter, and the rest faulted in
    a page at a time (readahead off): 4-7x the floor on such a disk. Pieces of 128 KiB."""
    path = tmp_path / shard_name("d", "train", 0)
    write_shard(path, tokens(200_000, 0))
    stream = TokenStream([path])
    log: list = []
    stream._mmaps = [(_AdviceLog(m, log, i), f) for i, (m, f) in enumerate(stream._mmaps)]
    stream.access(random=True)
    out = np.empty(100_000, dtype=np.uint16)
    log.clear()
    stream.read_into(1000, out)
    np.testing.assert_array_equal(out, tokens(200_000, 0)[1000:101_000])
    end = 1024 + 2 * 101_000  # the header, then the window's last byte
    assert log == [(0, mmap.MADV_WILLNEED, 0, 131_072), (0, mmap.MADV_WILLNEED, 131_072, end - 131_072)]
    stream.close()


def test_a_glob_a_file_or_a_link_into_an_unfinished_prep_tokenize_output_is_refused(tmp_path):
    """A killed `prep tokenize` leaves `.<name>.tmp-<pid>` holding UNFINISHED and its first
    shards only: read by a glob, a file or a link to one, an epoch was those shards alone."""
    unfinished = tmp_path / ".d.tmp-4242"
    unfinished.mkdir()
    for i in range(2):
        llmc_shard(unfinished / shard_name("d", "train", i), tokens(300, i))
    (tmp_path / "link_train_000000.bin").symlink_to(unfinished / shard_name("d", "train", 0))
    assert len(resolve_shards(str(unfinished / "d_train_*.bin"), "train")) == 2  # finished: taken
    (unfinished / "UNFINISHED").write_text("")
    for given in (unfinished / "d_train_*.bin", unfinished / shard_name("d", "train", 0),
                  tmp_path / "link_train_000000.bin", tmp_path / "*_train_*.bin"):
        with pytest.raises(LoaderError, match=rf"^{re.escape(str(unfinished))}: an unfinished `prep"):
            TokenLoader(str(given), B=2, T=50)


def test_a_window_with_several_tokens_outside_the_vocabulary_names_the_first(tmp_path):
    """The error names where the damage starts, not the largest id in the window."""
    body = tokens(300, 1) % 50257
    body[10], body[20] = 50300, 65535
    llmc_shard(tmp_path / "x_train_000000.bin", body)
    with TokenLoader(tmp_path, B=1, T=100, prefetch=0, vocab_size=50257) as loader:
        with pytest.raises(TokenRangeError, match=r"x_train_000000.bin: token 50300 at index 10 is not "):
            loader.next_window()


def test_close_unmaps_the_shards_and_closes_their_files_at_once(tmp_path):
    """Each mapped shard keeps a file open (its mmap's own descriptor): close() lets go of them
    while the loader object lives on (a run keeps its val loader about), not at its collection."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts open files in /proc/self/fd")
    for i in range(5):
        llmc_shard(tmp_path / shard_name("x", "train", i), tokens(300, i))
    before = len(os.listdir("/proc/self/fd"))
    loader = TokenLoader(tmp_path, B=2, T=50, prefetch=2)
    loader.next_window()
    assert len(os.listdir("/proc/self/fd")) >= before + 5
    loader.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.skipif(resource is None or not os.path.isdir("/proc/self/fd"), reason="RLIMIT_NOFILE, /proc")
def test_the_open_file_limit_error_keeps_no_shard_open_while_it_lives(tmp_path):
    """The LoaderError is raised where the maps were made, so its traceback keeps that frame:
    the shards mapped before the limit stayed open for as long as the error lived (a notebook
    keeps the last one), and nothing else could open a file meanwhile."""
    for i in range(300):
        llmc_shard(tmp_path / f"d_train_{i:06d}.bin", np.full(10, i, dtype=np.uint16))
    code = ("import os, sys\n"
            "import loader\n"
            "from loader import LoaderError\n"
            "from loader.resolve import resolve_shards\n"
            "from loader.stream import TokenStream\n"
            f"paths = resolve_shards({str(tmp_path)!r}, 'train')\n"
            "before = len(os.listdir('/proc/self/fd'))\n"
            "try:\n"
            "    TokenStream(paths)\n"
            "except LoaderError as e:\n"
            "    error = e\n"
            "opened = len(os.listdir('/proc/self/fd')) - before\n"
            "print(loader.__file__, opened, 'open-file limit' in str(error))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
    assert done.returncode == 0, done.stderr
    where, opened, said = done.stdout.split()
    assert where == str(Path(__file__).parent.parent / "loader" / "__init__.py")  # this checkout's
    assert (opened, said) == ("0", "True")
