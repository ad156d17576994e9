"""The token loader: a split's shards, memory-mapped as one stream, served as pinned uint16
windows by a prefetch thread and widened to int64 (x, y) on the device.

    from loader import TokenLoader
    with TokenLoader("data/input", split="train", B=4, T=32) as loader:
        x, y = loader.next_batch("cuda")   # int64 (B, T) each

`python -m loader.bench` measures it against nanoGPT's and build-nanogpt's loaders.
"""

import sys

from prep.signals import interrupt_exits_while_importing

# `python -m loader.audit` or `loader.bench`: this package, and torch with it, is imported while
# Python still locates the command (sys.argv[0] is "-m" then), before the command's own code:
# a Ctrl-C or SIGTERM in those seconds exits at once with one line, not an import's traceback
with interrupt_exits_while_importing(getattr(sys, "argv", [])[:1] == ["-m"]):  # (embedded: no argv)
    from loader.cursor import Cursor, epoch_permutation
    from loader.errors import DatasetMismatch, LoaderError, TokenRangeError
    from loader.loader import TokenLoader
    from loader.resolve import resolve_shards
    from loader.stream import TokenStream

__all__ = ["Cursor", "DatasetMismatch", "LoaderError", "TokenLoader", "TokenRangeError", "TokenStream",
           "epoch_permutation", "resolve_shards"]
