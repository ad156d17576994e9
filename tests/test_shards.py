"""The shard format: header, sizes, names, and every way a shard can be broken."""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np
import pytest

from prep import not_shards, shard_dirs, shards
from prep.shards import HEADER_BYTES, MAGIC, ShardError, ShardWriter, read_header, write_shard


def _llmc_read(path):
    # An independent llm.c-style reader: int32 header, then uint16 body.
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype="<i4")
        body = np.frombuffer(f.read(), dtype="<u2")
    return header, body


def test_write_and_read_back_llmc_style(tmp_path):
    tokens = np.array([50256, 0, 1, 65535, 15496, 995], dtype=np.int64)
    path = tmp_path / "x_train_000000.bin"
    sha = write_shard(path, tokens)
    header, body = _llmc_read(path)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == len(tokens)
    assert not header[3:].any()
    assert body.tolist() == tokens.tolist()
    assert path.stat().st_size == 1024 + 2 * len(tokens)
    assert sha == shards.file_sha256(path)
    assert read_header(path) == len(tokens)
    mm = shards.open_shard(path)
    assert mm.dtype == np.dtype("<u2") and mm.tolist() == tokens.tolist()
    with pytest.raises(ValueError):
        mm[0] = 1  # read-only


def test_streaming_writer_equals_one_shot(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 50257, size=n) for n in (1, 1000, 7, 0, 4096)]
    w = ShardWriter(tmp_path / "a.bin")
    for p in parts:
        w.write(p)
    sha_a = w.close()
    sha_b = write_shard(tmp_path / "b.bin", np.concatenate(parts))
    assert sha_a == sha_b
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_unclosed_writer_leaves_an_invalid_shard(tmp_path):
    w = ShardWriter(tmp_path / "a.bin")
    w.write(np.arange(10))
    w.abort()
    with pytest.raises(ShardError, match="bad magic 0"):
        read_header(tmp_path / "a.bin")


def _raw(path, header_vals, n_body):
    header = np.zeros(256, dtype="<i4")
    header[: len(header_vals)] = header_vals
    path.write_bytes(header.tobytes() + np.zeros(n_body, dtype="<u2").tobytes())
    return path


@pytest.mark.parametrize(
    "header, n_body, message",
    [
        ((1234, 1, 5), 5, "bad magic"),
        ((MAGIC, 7, 5), 5, "unsupported version"),
        ((MAGIC, 1, 0), 0, "at least one"),
        ((MAGIC, 1, -3), 0, "at least one"),
        ((MAGIC, 1, 5), 4, "size"),
        ((MAGIC, 1, 5), 6, "size"),
    ],
)
def test_bad_shards_name_the_file(tmp_path, header, n_body, message):
    path = _raw(tmp_path / "bad_train_000000.bin", header, n_body)
    with pytest.raises(ShardError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)


def test_short_missing_and_directory(tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(ShardError, match="shorter than"):
        read_header(short)
    with pytest.raises(ShardError, match="no such shard"):
        read_header(tmp_path / "missing.bin")
    with pytest.raises(ShardError, match="directory"):
        read_header(tmp_path)


def test_names_and_find(tmp_path):
    assert shards.shard_name("input", "val", 3) == "input_val_000003.bin"
    assert shards.parse_shard_name("/a/b/fineweb_train_000012.bin") == ("fineweb", "train", 12)
    assert shards.parse_shard_name("input_test_000000.bin") is None
    assert shards.parse_shard_name("input_train_12.bin") is None
    with pytest.raises(ValueError):
        shards.shard_name("x", "test", 0)
    # from index 1,000,000 on the name has seven digits, and reads back as written
    for i in (999_999, 1_000_000, 12_345_678):
        assert shards.parse_shard_name(shards.shard_name("d", "train", i)) == ("d", "train", i)
    (tmp_path / "many").mkdir()
    for i in (1_000_000, 999_999):
        write_shard(tmp_path / "many" / shards.shard_name("d", "train", i), np.arange(3))
    # in index order, not the names' (where d_train_1000000.bin comes first)
    assert [p.name for p in shard_dirs.find_shards(tmp_path / "many", "train")] == [
        "d_train_999999.bin", "d_train_1000000.bin"]
    for i in (2, 0, 10):
        write_shard(tmp_path / shards.shard_name("d", "train", i), np.arange(3))
    write_shard(tmp_path / shards.shard_name("d", "val", 0), np.arange(3))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in shard_dirs.find_shards(tmp_path, "train")] == [
        "d_train_000000.bin",
        "d_train_000002.bin",
        "d_train_000010.bin",
    ]
    assert [p.name for p in shard_dirs.find_shards(tmp_path, "val")] == ["d_val_000000.bin"]


def test_header_limits():
    with pytest.raises(ValueError):
        shards.make_header(0)
    with pytest.raises(ValueError):
        shards.make_header(2**31)
    assert shards.make_header(2**31 - 1)[2] == 2**31 - 1
    assert HEADER_BYTES == 1024


def test_a_directory_of_many_shards_is_checked_for_repeated_indices_in_linear_time(monkeypatch):
    """dataset_shards counted each shard's index in the whole list (quadratic): a directory
    without meta.json of 30,000 shards took 6 s before the loader mapped a single one. Counted
    in comparisons of shard indices, not timed (a shared machine's timings are noise)."""
    from pathlib import Path

    compared = 0

    class Index(int):  # a shard index that counts the comparisons made of it
        __hash__ = int.__hash__

        def __eq__(self, other):
            nonlocal compared
            compared += 1
            return int.__eq__(self, other)

        def __ne__(self, other):
            nonlocal compared
            compared += 1
            return int.__ne__(self, other)

    parse = shard_dirs.parse_shard_name
    monkeypatch.setattr(shard_dirs, "parse_shard_name",
                        lambda name: None if parse(name) is None else (*parse(name)[:2], Index(parse(name)[2])))
    monkeypatch.setattr(shard_dirs, "_refuse_unpadded", lambda *args: None)  # "d" is listed by find_shards alone

    def comparisons(listed: list) -> int:
        nonlocal compared
        monkeypatch.setattr(shard_dirs, "find_shards", lambda directory, split: listed if split == "train" else [])
        compared = 0
        shard_dirs.dataset_shards("d")
        return compared

    # one comparison a shard now (the gap check's); counting each index in the list made count**2
    for count in (2_000, 20_000):
        listed = [Path(f"d/x_train_{i:06d}.bin") for i in range(count)]
        assert 0 < comparisons(listed) <= 4 * count
    again = [*listed, Path("d/x_train_000007.bin")]
    with pytest.raises(ShardError, match="x_train_000007.bin and x_train_000007.bin are the same shard index"):
        comparisons(again)
    assert compared <= 4 * len(again)


def _llmc_file(path, magic, version, body):
    """A file as llm.c's scripts write it: 256 int32 (magic, version, count), then `body`."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(body)
    path.write_bytes(header.tobytes() + body.tobytes())
    return path


def test_llmc_llama3_shards_are_named_for_what_they_are(tmp_path):
    """llm.c's Llama 3 shards (its data scripts' -m llama-3: magic 20240801, version 7, uint32
    tokens) were a bare "bad magic 20240801" and, under another name, "raw tokens" whose fix
    (prepend our header) would have read each uint32 as two GPT-2 tokens."""
    tokens = np.arange(128000, 128300, dtype="<u4")
    for name in ("tiny_shakespeare_train.bin", "llama.bin"):
        path = _llmc_file(tmp_path / name, 20240801, 7, tokens)
        with pytest.raises(shards.ForeignFile) as info:
            read_header(path)
        assert str(info.value) == (
            f"{path}: llm.c's Llama 3 token shard (uint32 tokens), not GPT-2's: this reads GPT-2's uint16 shards "
            f"(magic 20240520); run llm.c's data script with -m gpt-2 (its default), or `prep tokenize` the text")
        assert not_shards.not_a_shard(path) is None and not not_shards.looks_like_raw_tokens(path)


def test_a_writer_takes_exactly_max_tokens_and_not_one_more(tmp_path, monkeypatch):
    """The count lives in an int32 slot: a shard holds up to 2**31 - 1 tokens, that many
    included, over however many writes (shown with the limit made small: writing 4 GiB is no test)."""
    monkeypatch.setattr(shards, "MAX_TOKENS", 5)
    path = tmp_path / "x_train_000000.bin"
    w = ShardWriter(path)
    w.write(np.arange(3))
    w.write(np.arange(2))  # exactly the limit
    with pytest.raises(ValueError, match="at most 5 tokens"):
        w.write(np.arange(1))
    w.close()
    assert read_header(path) == 5 and shards.open_shard(path).tolist() == [0, 1, 2, 0, 1]


def test_close_syncs_the_whole_shard_to_disk_before_it_returns(tmp_path, monkeypatch):
    """close() flushes and fsyncs the shard, header patched: meta.json lists it (and the
    install renames the directory in) only once its bytes are on disk, not in page cache."""
    path = tmp_path / "x_train_000000.bin"
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
            synced.append(path.read_bytes())  # what the disk is asked to keep, at that moment
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    w = ShardWriter(path)
    w.write(np.arange(7))
    w.close()
    assert synced and synced[-1] == path.read_bytes()
    assert read_header(path) == 7


def test_file_sha256_covers_every_chunk(tmp_path):
    """The sha256 in meta.json is of the whole file, however many reads it takes (4 MiB each
    by default: a 100M-token shard is 48 of them)."""
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, np.arange(1000) % 50257)
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    assert shards.file_sha256(path) == whole
    for chunk_bytes in (1, 7, 1024, 1025):
        assert shards.file_sha256(path, chunk_bytes=chunk_bytes) == whole


def test_a_2d_array_is_written_as_its_tokens_in_order(tmp_path):
    """"Any integer array": the count in the header is the array's number of tokens, not its
    number of rows (a (B, T) batch written back would else be refused as the wrong size)."""
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, np.arange(12).reshape(3, 4))
    assert read_header(path) == 12
    assert shards.open_shard(path).tolist() == list(range(12))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_a_refused_write_shard_closes_its_file(tmp_path, monkeypatch):
    """write_shard gives the file up when a write fails: no descriptor left open for as long as
    the error is kept (a caller reporting it later, a test's excinfo), and no valid header."""
    monkeypatch.setattr(shards, "MAX_TOKENS", 2)
    path = tmp_path / "x_train_000000.bin"
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="at most 2 tokens") as info:
        write_shard(path, np.arange(3))
    assert len(os.listdir("/proc/self/fd")) == before, info.value
    with pytest.raises(ShardError, match="bad magic 0"):
        read_header(path)


@pytest.mark.parametrize("tokens, bad, index", [
    (np.array([5, 70000, 6], dtype=np.int64), 70000, 1),   # another tokenizer's id: numpy's cast made it 4464
    (np.array([5, 6, -1], dtype=np.int32), -1, 2),          # -1 became 65535
    (np.array([[1, 2], [3, 65536]], dtype=np.uint32), 65536, 3),  # a (B, T) batch: the index in write order
])
def test_a_token_id_that_does_not_fit_uint16_is_refused_not_wrapped(tmp_path, tokens, bad, index):
    """A token id outside 0..65535 (another tokenizer's, a bug upstream) is an error naming it,
    not a silent wrap to another valid-looking GPT-2 id that `prep verify`'s range check can no
    longer see; nothing of the write reaches the file."""
    path = tmp_path / "x_train_000000.bin"
    w = ShardWriter(path)
    w.write(np.array([7, 8]))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: token {bad} \(index {index} of this write\) "
                                         r"does not fit uint16 \(0 to 65535\)$"):
        w.write(tokens)
    w.close()
    assert shards.open_shard(path).tolist() == [7, 8]


def test_tokens_that_are_no_integers_are_refused(tmp_path):
    """Floats (0.5 written as 0) and booleans are no token ids: a TypeError naming the dtype."""
    w = ShardWriter(tmp_path / "x_train_000000.bin")
    for tokens in (np.array([0.5, 1.0]), np.array([True, False])):
        with pytest.raises(TypeError, match=f"tokens are integers, not {tokens.dtype}"):
            w.write(tokens)
    w.abort()


def test_the_whole_uint16_range_and_any_integer_dtype_are_written_as_they_are(tmp_path):
    """0 and 65535, in any integer dtype or byte order, are written as themselves."""
    path = tmp_path / "x_train_000000.bin"
    w = ShardWriter(path)
    for dtype in (np.int8, np.uint8, np.int16, ">u2", "<u2", np.int32, np.uint32, np.int64, np.uint64):
        w.write(np.array([0, min(65535, np.iinfo(dtype).max)], dtype=dtype))
    w.close()
    assert shards.open_shard(path).tolist()[-2:] == [0, 65535] and read_header(path) == 18



def test_open_shard_maps_the_very_file_it_validated(tmp_path, monkeypatch):
    """One open per shard: the header checked and the tokens mapped are one file, so a shard
    replaced between the two (a dataset re-tokenized beside a starting run) is never mapped
    under the other file's header. np.memmap given the path opened it a second time."""
    import builtins

    path = tmp_path / "d_train_000000.bin"
    write_shard(path, np.arange(7, dtype=np.uint16))
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    tokens = shards.open_shard(path)
    assert opened.count(os.fspath(path)) == 1 and tokens.tolist() == list(range(7))


def test_a_shard_that_cannot_be_mapped_is_a_shard_error_naming_it(tmp_path, monkeypatch):
    """mmap failing (ENOMEM: the address space is full) is one line naming the file, while
    running out of open files stays an OSError, for the loader to name the limit."""
    import errno

    path = tmp_path / "d_train_000000.bin"
    write_shard(path, np.arange(7, dtype=np.uint16))
    for number in (errno.ENOMEM, errno.EMFILE):
        def refuse(*args, number=number, **kwargs):
            raise OSError(number, os.strerror(number))

        monkeypatch.setattr(shards.np, "memmap", refuse)
        if number == errno.EMFILE:
            with pytest.raises(OSError) as raised:
                shards.open_shard(path)
            assert raised.value.errno == errno.EMFILE and not isinstance(raised.value, ShardError)
        else:
            with pytest.raises(ShardError, match=rf"^{re.escape(str(path))}: cannot be memory-mapped \("):
                shards.open_shard(path)
        assert shards.read_header(path) == 7  # the count alone maps nothing
