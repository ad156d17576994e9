"""The `prep` command: sample corpus, tokenize, info, verify."""

from __future__ import annotations

import os
import signal
import threading

import click

from prep.errors import UserGroup


@click.group("prep", cls=UserGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="shardgpt")
def main() -> None:
    """Turn text into GPT-2 token shards that the loader memory-maps."""


def _register() -> None:
    # Each command lives beside the code it drives; this module only assembles them.
    from prep.inspect import info_command, verify_command
    from prep.sample import sample_command
    from prep.tokenize import tokenize_command

    for command in (sample_command, tokenize_command, info_command, verify_command):
        main.add_command(command)


def _register_quietly() -> None:
    """_register(), during which a Ctrl-C (numpy and tiktoken take a moment to import) exits
    130 at once instead of printing a traceback of the import."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        _register()  # signals belong to the main thread; None: a handler Python cannot restore
        return
    before = signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    try:
        _register()
    finally:
        signal.signal(signal.SIGINT, before)


_register_quietly()

if __name__ == "__main__":
    main()
