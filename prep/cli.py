"""The `prep` command: sample corpus, tokenize, info, verify."""

from __future__ import annotations

from prep.atomic import interrupt_exits_while_importing  # first: it imports only the standard library

# Ctrl-C, SIGTERM or SIGHUP while click, numpy and tiktoken import (tens of milliseconds to
# seconds): an exit at once with one line, not an import's traceback (Ctrl-C) or no word at all
# (SIGTERM, SIGHUP: prep tokenize's run stops on each with its line)
with interrupt_exits_while_importing(hangup=True):
    from prep.errors import UserGroup  # first: it gives closed standard descriptors /dev/null

    import click
    from prep.inspect import info_command, verify_command
    from prep.sample import sample_command
    from prep.tokenize import tokenize_command


@click.group("prep", cls=UserGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="shardgpt")
def main() -> None:
    """Turn text into GPT-2 token shards that the loader memory-maps."""


# Each command lives beside the code it drives; this module only assembles them.
for _command in (sample_command, tokenize_command, info_command, verify_command):
    main.add_command(_command)

if __name__ == "__main__":
    main()
