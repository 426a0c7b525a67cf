"""User-facing errors: each carries a one-line message that the CLI prints without a traceback."""

from __future__ import annotations


class AlignkitError(Exception):
    """An error caused by the user's input or environment; its message says how to fix it."""


class DataError(AlignkitError):
    """Invalid data. `problems` holds one `path:line: field: why` line per problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid data"
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        super().__init__(first + more)
