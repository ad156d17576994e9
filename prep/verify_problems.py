"""The problems `prep verify` finds in a dataset as a whole, beside each shard's own: meta.json's
totals that are not the sums over its splits, a split listed out of its shards' order, and two
shards that are one file."""

from __future__ import annotations

from pathlib import Path

from prep.atomic import file_identity
from prep.dataset_checks import out_of_order


def totals_problems(meta: dict, records: dict[str, dict], where: Path) -> list[str]:
    """Where meta.json's totals (tokens, documents), as prep writes them, are not the sums over
    its splits: a hand-edited or half-merged manifest."""
    totals, problems = meta.get("totals"), []
    if totals is None:  # not every writer gives them
        return problems
    if not isinstance(totals, dict):
        return [f"{where}: totals is {type(totals).__name__}, not an object"]
    for key in ("tokens", "documents"):
        given = totals.get(key)
        # a split meta.json leaves out altogether (no shards, no counts) holds none
        parts = [record.get(key, None if record["shards"] else 0) for record in records.values()]
        if given is None or any(part is None for part in parts):
            continue
        if type(given) is not int or any(type(part) is not int for part in parts):
            problems.append(f"{where}: totals {key} {given!r} and the splits' {parts!r} are not all integers")
        elif given != sum(parts):
            problems.append(f"{where}: totals {key} {given:,} != the sum over its splits ({sum(parts):,})")
    return problems


def order_problems(records: dict[str, dict], where: Path) -> list[str]:
    """verify's lines for out_of_order's pairs."""
    return [f"{where}: lists {split} shards {before} then {after}, {how}: the loader reads a split in the "
            f"order listed, so its token stream is not the one their names number"
            for split, before, after, how in out_of_order(records)]


def link_problems(shards: dict[str, list[Path]]) -> list[str]:
    """Where two of the splits' shards are one file, reached through a symbolic or hard link:
    in one split the loader refuses it (its tokens would be read twice an epoch); across the
    two, the val split would measure tokens the model trained on. Every shard passed, its hash
    too where meta.json lists both names with the file's."""
    problems, seen = [], {}
    for split, paths in shards.items():
        for path in paths:
            try:
                first = seen.setdefault(file_identity(path), (split, path))
            except OSError:  # missing, a broken link: said where the shard is read
                continue
            if first[1] == path:
                continue
            why = (f"the loader refuses it: the {split} split would read its tokens twice an epoch"
                   if first[0] == split else f"the {split} split would hold {first[0]} tokens")
            problems.append(f"{path}: the same file as {first[1]} (a link): {why}")
    return problems
