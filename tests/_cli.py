"""The one check for a CLI user mistake, shared by every command's tests."""

from __future__ import annotations


def assert_user_error(result, *words: str) -> str:
    """Exit status 2, exactly one line `Error: ...` holding each of `words` (what and where),
    and no traceback. `result` is a click.testing.Result. Returns the line."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
