"""`meta.json`, the dataset's manifest beside its shards: written by `prep tokenize`, read by
`prep info`/`prep verify` and the loader. Defined once here.

Layout (format version 1)::

    {
      "format_version": 1,
      "tool": "shardgpt", "tool_version": "0.1.0",
      "tokenizer": "gpt2", "vocab_size": 50257, "eot": 50256,
      "dtype": "uint16", "header_bytes": 1024,
      "name": "input",
      "splits": {
        "train": {"tokens": 304224, "documents": 1,
                  "shards": [{"file": "input_train_000000.bin", "tokens": 304224, "sha256": "..."}]},
        "val":   {...}                       # always present; may have no shards
      },
      "sources": [{"path": "/abs/input.txt", "kind": "text", "bytes": 1115394}, ...],
                                             # kind: text, jsonl, stdin or stdin-jsonl (path "-"),
                                             # or directory (with "files": how many it gave)
      "totals": {"documents": 1, "tokens": 338026, "bytes": 1115394, "chars": 1115394},
      "settings": {"shard_size": 100000000, "val_fraction": 0.1, "...": "..."}
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from prep.atomic import atomic_write
from prep.shard_dirs import find_shards
from prep.shards import HEADER_BYTES, SPLITS, TOKEN_DTYPE, parse_shard_name

META_NAME = "meta.json"
# meta.json's "settings" that decide the shards a text gives, each with its prep tokenize option
SETTING_FLAGS = {"shard_size": "--shard-size", "val_fraction": "--val-fraction", "val_max_tokens": "--val-max-tokens",
                 "field": "--field", "errors": "--errors"}
META_FORMAT_VERSION = 1
# In `prep tokenize`'s temporary directory from its creation until the install: a run killed
# meanwhile leaves whole shards there without meta.json, which would read as a dataset of their own
UNFINISHED_NAME = "UNFINISHED"


def is_plain_file_name(name: str) -> bool:
    """Whether a meta.json shard entry names a file in the dataset directory itself (no
    folder, no '..'): a dataset reads nothing outside its directory. No NUL either: no file has
    one in its name, and the OS calls refuse it with a bare ValueError ("embedded null byte")."""
    return os.path.basename(name) == name and name not in ("", ".", "..") and "\0" not in name


def check_listed_names(files_by_split: dict[str, list[str]]) -> None:
    """ValueError if meta.json lists a file twice, or lists under one split a file whose shard
    name says it is the other's: the loader would read it twice, or train on val data."""
    seen: set[str] = set()
    for split, files in files_by_split.items():
        for name in files:
            if name in seen:
                raise ValueError(f"{name} is listed twice")
            seen.add(name)
            parsed = parse_shard_name(name)
            if parsed is not None and parsed[1] != split:
                raise ValueError(f"{split} lists {name}, a {parsed[1]} shard by its name")


def _meta_split(meta: dict, split: str) -> dict:
    """meta.json's record for one split (empty if absent), checked for the fields we rely on.
    A meta.json without 'splits' at all is no dataset's (prep writes it, splits empty or not):
    read as empty, it hid the shards beside it behind "no shards found"."""
    if "splits" not in meta:
        raise ValueError("no 'splits' object")
    splits = meta["splits"]
    record = splits.get(split, {}) if isinstance(splits, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("shards", []), list):
        raise ValueError(f"'splits.{split}' is not an object with a 'shards' list")
    for entry in record.get("shards", []):
        if not isinstance(entry, dict):
            raise ValueError(f"{split} shard entry {entry!r} is not an object with file, tokens and sha256")
        wrong = [f"no {key}" if key not in entry else f"{key} {entry[key]!r} is not {kind}"
                 for key, kind, fits in (("file", "a string", isinstance(entry.get("file"), str)),
                                         ("tokens", "a count", _is_count(entry.get("tokens"))),
                                         ("sha256", "a string", isinstance(entry.get("sha256"), str))) if not fits]
        if wrong:
            raise ValueError(f"{split} shard entry {entry!r}: {'; '.join(wrong)}")
        if not is_plain_file_name(entry["file"]):
            raise ValueError(f"{split} shard file {entry['file']!r} is not a plain file name")
    for key in ("tokens", "documents"):
        if key in record and not _is_count(record[key]):
            raise ValueError(f"'splits.{split}.{key}' is {record[key]!r}, not a count")
    return {"shards": []} | record


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def meta_splits(meta: dict) -> dict[str, dict]:
    """Both splits' records of a parsed meta.json, checked for what readers rely on: each a
    'shards' list of {file, tokens, sha256} entries with plain file names and integer counts,
    no file listed twice or under the other split (check_listed_names). ValueError says what
    is wrong. `prep info`, `prep verify` and the loader read meta.json through this."""
    records = {split: _meta_split(meta, split) for split in SPLITS}
    check_listed_names({split: [e["file"] for e in r["shards"]] for split, r in records.items()})
    return records


def unlisted_shards(directory: str | os.PathLike, records: dict[str, dict]) -> list[str]:
    """The files in `directory` named as shards (of either split) that its meta.json's
    `records` (meta_splits') do not list: the loader reads the list alone, so those are never
    trained on (a shard copied in by hand). ShardError where the directory cannot be listed."""
    listed = {e["file"] for record in records.values() for e in record["shards"]}
    return sorted(p.name for split in SPLITS for p in find_shards(directory, split) if p.name not in listed)


def check_tokenizer(meta: dict, name: str, vocab_size: int, eot: int) -> None:
    """ValueError unless meta.json's tokenizer is `name` with `vocab_size` tokens, and its
    documents' separator (eot) is `eot` (fields absent: taken to be so): shards of another
    tokenizer are other numbers for other words, and documents split by another token are not
    the documents train.py, prep info and prep verify count. `prep info`, `prep verify` and
    train.py read it here alike."""
    vocab = meta.get("vocab_size", vocab_size)
    if isinstance(vocab, bool) or vocab != vocab_size or meta.get("tokenizer", name) != name:
        raise ValueError(f"tokenizer {meta.get('tokenizer')!r} with vocab_size {vocab!r}: not "
                         f"{name!r} with {vocab_size}")
    given = meta.get("eot", eot)
    if type(given) is not int or given != eot:  # not True, not 50256.0
        raise ValueError(f"eot is {given!r}, not {eot} (the end-of-text token of {name!r})")


def portable_name(name: str) -> str:
    """A file name as meta.json spells it: its bytes read as UTF-8, whatever this process's
    file-system encoding. Under LC_ALL=C (without UTF-8 mode) 'dé' is 'd\\udcc3\\udca9' here, and
    meta.json written so named no file under a UTF-8 locale, nor one written there under C."""
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a name no file here can have: written as given
        return name


def _local_name(name: str) -> str:
    """A meta.json file name as this process names that file (the inverse of portable_name)."""
    try:
        return os.fsdecode(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte: names no file anyway
        return name


def _with_file_names(meta: dict, spell: Callable[[str], str]) -> dict:
    """`meta` with each shard entry's file name spelled by `spell`; whatever is not shaped as
    expected is left as it is, for meta_splits to refuse."""
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        return meta
    return meta | {"splits": {split: _with_entry_names(record, spell) for split, record in splits.items()}}


def _with_entry_names(record: object, spell: Callable[[str], str]) -> object:
    if not isinstance(record, dict) or not isinstance(record.get("shards"), list):
        return record
    return record | {"shards": [entry | {"file": spell(entry["file"])}
                                if isinstance(entry, dict) and isinstance(entry.get("file"), str) else entry
                                for entry in record["shards"]]}


def read_meta(directory: str | os.PathLike) -> dict | None:
    """The parsed meta.json of a dataset directory, or None when there is none.

    Raises ValueError (naming the file) when it exists but cannot be read, or is not valid
    JSON of our format.
    Its shard file names are as this process names those files (meta.json spells them in
    UTF-8, see portable_name), so a dataset reads under any locale.
    """
    path = Path(directory) / META_NAME
    try:
        check_finished(directory)
        is_file = path.is_file()
    except OSError as e:  # a directory without search permission (chmod 000, another user's 700)
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not is_file:
        if path.is_symlink() and not path.exists():  # else the directory is read by shard names without a word
            raise ValueError(f"{path}: a broken symbolic link (to {os.readlink(path)})")
        if path.exists():
            raise ValueError(f"{path}: not a file")
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4,300 digits
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:  # no read permission, an I/O error: every caller's one-line error, not a traceback
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if type(version) is not int or version != META_FORMAT_VERSION:  # true and 1.0 equal 1, and are not it
        raise ValueError(f"{path}: not a meta.json of format version {META_FORMAT_VERSION}")
    # the shard format it describes, where it says (a hand-edited or foreign file): ours only
    ours = {"dtype": TOKEN_DTYPE.name, "header_bytes": HEADER_BYTES}
    differ = [f"{key} {meta[key]!r}" for key, value in ours.items() if key in meta and meta[key] != value]
    if differ:
        raise ValueError(f"{path}: describes shards of {', '.join(differ)}; this version reads "
                         f"{TOKEN_DTYPE.name} tokens after a {HEADER_BYTES}-byte header")
    return _with_file_names(meta, _local_name)


def check_finished(directory: str | os.PathLike) -> None:
    """ValueError where `directory` is a `prep tokenize` output not yet installed (it holds
    UNFINISHED_NAME): the run writing it is still at work, or was killed, and its shards are
    only the first of the dataset's. read_meta refuses such a directory; a shard file or a glob
    read from one is checked here by the loader and `prep verify`."""
    if os.path.lexists(os.path.join(directory, UNFINISHED_NAME)):
        raise ValueError(f"{directory}: an unfinished `prep tokenize` output (it holds {UNFINISHED_NAME}: the run "
                         f"writing it is still at work, or was stopped), not a dataset; run prep tokenize again "
                         f"(it removes what a stopped run left)")


def shard_directories(path: Path) -> list[Path]:
    """The directory holding the file `path`, and, for a symbolic link, the one holding the file
    it leads to: where check_finished looks for a shard given alone (a link into a killed
    `prep tokenize`'s directory is its first shards all the same)."""
    return [path.parent, Path(os.path.realpath(path)).parent] if path.is_symlink() else [path.parent]


def write_meta(directory: str | os.PathLike, meta: dict) -> Path:
    """Write meta.json (complete file first, then rename, so a reader never sees half of it)."""
    path = Path(directory) / META_NAME
    meta = _with_file_names(meta, portable_name)
    if isinstance(meta.get("name"), str):  # the shards' prefix, spelled as their names are
        meta = meta | {"name": portable_name(meta["name"])}
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
