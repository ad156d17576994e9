"""The benchmark's corpus, made deterministically: paragraphs of a source text (tiny
Shakespeare's `input.txt`, or the offline pydoc text), shuffled with a fixed seed and grouped
into documents, written as one .txt (a single document) and one .jsonl (many) holding the same
text. `python -m prep.bench` times `prep tokenize` on both.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from prep.errors import UserError
from prep.sample import fallback_text
from prep.sniff import BOM

DOC_BYTES = (256, 8192)  # many-document variant: uniform document size range, like web text


def source_paragraphs(source: Path | None) -> tuple[list[str], str]:
    """Paragraphs (blank-line separated blocks, newlines kept) and a label for the report. A
    leading byte-order mark is dropped, as `prep tokenize` drops it: shuffled in, it would be
    text mid-document."""
    if source is None and Path("input.txt").is_file():
        source = Path("input.txt")
    if source is not None:
        try:
            text, label = Path(source).read_text(encoding="utf-8").removeprefix(BOM), str(source)
        except UnicodeDecodeError as e:
            raise UserError(f"--source {source}: not UTF-8 text (byte {e.start})") from None
    else:
        text, label = fallback_text(), "pydoc_data.topics"
    paragraphs = [p.strip("\n") + "\n\n" for p in text.split("\n\n") if p.strip()]
    if not paragraphs:  # the corpus is drawn from them: it would never grow
        raise UserError(f"--source {source}: no text to draw paragraphs from")
    return paragraphs, label


def make_documents(paragraphs: list[str], num_bytes: int, seed: int) -> list[str]:
    """Shuffled paragraphs grouped into documents of DOC_BYTES sizes, >= num_bytes in all.

    The single-document variant is their concatenation, so both variants hold the same text.
    """
    rng = random.Random(seed)
    docs, doc, doc_bytes, target, total = [], [], 0, rng.randint(*DOC_BYTES), 0
    while total < num_bytes:
        order = paragraphs[:]
        rng.shuffle(order)
        for paragraph in order:
            size = len(paragraph.encode("utf-8"))
            doc.append(paragraph)
            doc_bytes += size
            total += size
            if doc_bytes >= target or total >= num_bytes:
                docs.append("".join(doc))
                doc, doc_bytes, target = [], 0, rng.randint(*DOC_BYTES)
            if total >= num_bytes:
                break
    return docs


def write_variants(docs: list[str], directory: Path, tag: str) -> tuple[Path, Path]:
    """(single.txt, many.jsonl) holding the same text: one document, or one per line."""
    single, many = directory / f"single_{tag}.txt", directory / f"many_{tag}.jsonl"
    with open(single, "w", encoding="utf-8") as f:
        f.writelines(docs)
    with open(many, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return single, many
