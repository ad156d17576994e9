"""Which dataset a run trains on: --data, or the one under ./data, and its val split.

--data is a directory `prep tokenize` wrote (shards plus meta.json), a shard glob or one shard.
Without it, the one dataset under ./data is taken; several or none is refused with a line
listing what was found (and, for a resume, the --data its checkpoint recorded), never a guess.
Shards whose meta.json names another tokenizer are refused (the model is GPT-2's), and shards in
the directory that its meta.json does not list are a note (the loader reads the list alone).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from loader import resolve_shards
from loader.checkpoints import list_checkpoints, load_mapped
from model import GPT2_VOCAB_SIZE
from prep.dataset_dirs import datasets_in
from prep.errors import UserError
from prep.meta import META_NAME, SETTING_FLAGS, check_tokenizer, meta_splits, read_meta, unlisted_shards
from prep.not_shards import split_files_in
from prep.shards import ShardError, read_header
from trainer.config import TrainConfig


def find_dataset(data: str | None, root: Path = Path("data")) -> str:
    """--data as given, or the one dataset under ./data (itself or a sub-directory).

    Several or none is a user error listing what was found (prep.dataset_dirs.datasets_in),
    never a guess.
    """
    if data is not None:
        return data
    hint = "run `prep tokenize input.txt` first, or pass --data"
    if root.exists() and not root.is_dir():
        raise UserError(f"no --data given and {root} is not a directory: {hint}")
    if not root.is_dir():
        raise UserError(f"no --data given and {root}/ does not exist: {hint}")
    try:
        found, subdirs, passed_over = datasets_in(root)
    except ShardError as e:  # data/ itself cannot be listed
        raise UserError(f"no --data given, and {e}: pass --data") from None
    if not found:
        skipped = f" (passed over: {'; '.join(passed_over)})" if passed_over else ""
        unnamed = [d for d in [root, *subdirs] if split_files_in(d)]  # nanoGPT's data/<name>/train.bin, val.bin
        if unnamed:
            also = f" (also {', '.join(map(str, unnamed[1:]))})" if unnamed[1:] else ""
            hint += f"; {unnamed[0]}{also}:{split_files_in(unnamed[0])[1:]}"
        raise UserError(f"no dataset (meta.json or <name>_train[_<index>].bin or .npy shards) under {root}/{skipped}: "
                        f"{hint}")
    if len(found) > 1:
        listed = ", ".join(map(str, found))
        raise UserError(f"{len(found)} datasets under {root}/ ({listed}): choose one with --data")
    return str(found[0])


def resumed_data(cfg: TrainConfig) -> str:
    """For find_dataset's error in a resume without --data (several datasets under ./data): the
    --data that the checkpoint to resume recorded, "" where it recorded none (its run found the
    one dataset there) or cannot be read (its own error comes once --data is given)."""
    if cfg.data is not None or cfg.resume is None or cfg.bench:
        return ""
    try:
        found = list_checkpoints(cfg.out) if cfg.resume == "auto" else [(0, Path(cfg.resume))]
        path = found[-1][1]
        if not path.is_file():  # a FIFO's open would wait for a writer
            return ""
        data = load_mapped(path)["train_config"]["data"]
    except Exception:  # none there, a directory, a damaged file
        return ""
    return f"{path} trained on --data {data}" if isinstance(data, str) else ""


def val_split_tokens(data: str, given: bool = False, split: str = "val") -> int | None:
    """Tokens in the val split of a dataset directory, or None when it has none (a glob or a
    single file names train shards only). `given`: `data` is --val-data, whose files (a glob,
    a file, or a directory's `split`: val_data_split) must exist. The loader decides which
    files make the split."""
    if not given and not Path(data).is_dir():
        return None
    try:
        paths = resolve_shards(data, split, allow_empty=not given)
        return sum(read_header(p) for p in paths) if paths else None
    except ValueError as e:  # LoaderError, ShardError: naming the file
        raise UserError(f"--val-data {e}" if given else str(e)) from None


def val_data_split(val_data: str) -> str:
    """The split of --val-data that is validated on: its val split, or, in a dataset directory
    with train shards and no val split, its train split. A held-out corpus is tokenized whole
    with `--val-fraction 0`, and its tokens then make a train split (there is no fraction 1)."""
    if not Path(val_data).is_dir():
        return "val"
    try:
        if resolve_shards(val_data, "val", allow_empty=True):
            return "val"
    except ValueError:  # a bad meta.json or shard: said when the val split is read
        return "val"
    try:
        return "train" if resolve_shards(val_data, "train", allow_empty=True) else "val"
    except ValueError:  # its train shards' own fault (numbered without padding, a gap): said as they are read
        return "train"


def unread_shards(data: str) -> list[str]:
    """A note where `data` is a directory whose meta.json does not list every shard in it: the
    loader reads the list alone, and a shard copied in by hand was never trained on."""
    directory = Path(data)
    try:
        meta = read_meta(directory) if directory.is_dir() else None
        unread = [] if meta is None else unlisted_shards(directory, meta_splits(meta))
    except ValueError:  # (ShardError too) the loader read both just now: a change since is not this note's
        return []
    if not unread:
        return []
    return [f"{len(unread)} shard file(s) in {data} not listed in its meta.json, so not read: {unread[0]}"
            f"{', ...' if len(unread) > 1 else ''} (the dataset is what meta.json lists; `prep verify {data}` "
            f"checks it)"]


def check_shards_are_gpt2s(shards: list[Path]) -> None:
    """The shards' meta.json (where one beside them is readable) must say GPT-2's tokenizer:
    the model's vocabulary, and what samples are decoded with; and GPT-2's EOT between
    documents, as `prep info` and `prep verify` require it (prep.meta.check_tokenizer). Shards
    without one (llm.c's) are taken to be GPT-2's, and every window is range-checked as it is read."""
    for directory in sorted({p.parent for p in shards}):
        try:
            meta = read_meta(directory)
        except ValueError:  # files taken by a glob: their directory's meta.json is not needed
            continue
        try:
            if meta is not None:
                from prep.tokenizer import EOT  # (here, not at the top: it imports tiktoken)
                check_tokenizer(meta, "gpt2", GPT2_VOCAB_SIZE, EOT)
        except ValueError as e:
            raise UserError(f"{directory / META_NAME}: {e}: train.py trains GPT-2 on GPT-2 tokens") from None


def dataset_settings(data: str) -> dict | None:
    """The prep tokenize settings that decide the shards of a dataset directory `data` (its
    meta.json's, of SETTING_FLAGS), None where it has none (a glob, llm.c's shards); a
    checkpoint keeps them, for retokenize_hint."""
    try:
        meta = read_meta(data) if Path(data).is_dir() else None
    except (ValueError, OSError):  # (the loader read it just now: a change since is not this one's)
        return None
    settings = meta.get("settings") if meta is not None else None
    return {k: settings[k] for k in SETTING_FLAGS if k in settings} if isinstance(settings, dict) else None


def retokenize_hint(then: object, data: str) -> str:
    """How to make `data`, a dataset tokenized again since a checkpoint's run trained on it,
    that run's again: the same text with the prep tokenize options `then` (the checkpoint's
    dataset_settings) where they differ from its own; older checkpoints keep none."""
    fix = f"tokenize that run's text into {data} again"
    now = dataset_settings(data)
    if not isinstance(then, dict):
        return f"{fix} with the prep tokenize options it had (--shard-size, --val-fraction, ...)"
    differ = [k for k in SETTING_FLAGS if k in then and (now or {}).get(k) != then[k]]
    if not differ:
        return f"{fix} (the same text and options give the same shards)"
    def options(settings: dict) -> str:
        return " ".join(f"{SETTING_FLAGS[k]} {shlex.quote(str(settings[k]))}" for k in differ if k in settings)

    here = f" (it was tokenized with {options(now)})" if now and options(now) else ""
    return f"{fix} with that run's options, {options(then)}{here}"
