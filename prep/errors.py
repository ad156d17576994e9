"""User mistakes, as one line on stderr and exit status 2 (never a traceback)."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can act on: bad path, bad flag combination, bad data.

    Click prints it as `Error: <message>` and exits with status 2. Anything else that
    escapes a command is a bug and keeps its traceback.
    """

    exit_code = 2
