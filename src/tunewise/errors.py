"""One exception root for expected failures.

The CLI turns a `TunewiseError` into one `error:` line on stderr and exit code 1; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TunewiseError(Exception):
    """A failure the user can fix: says what went wrong, where, and what to do next."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(TunewiseError):
    """Every problem found in a config file, reported at once."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to a mistyped one, or None when nothing is close.

    >>> nearest("learning_rte", ["learning_rate", "epochs"])
    'learning_rate'
    >>> nearest("zzz", ["epochs"]) is None
    True
    """
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None
