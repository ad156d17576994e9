"""The `prep` command: sample corpus, tokenize, info, verify."""

from __future__ import annotations

import click

from prep.atomic import interrupt_exits_while_importing
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


with interrupt_exits_while_importing():  # numpy and tiktoken take a moment to import
    _register()

if __name__ == "__main__":
    main()
