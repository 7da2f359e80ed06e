"""The one exception the data layer raises for bad input.

Every reader and preprocessing step turns malformed files (missing, unreadable, wrong column count,
non-numeric ids or timestamps, nothing left after filtering) into a :class:`DataError` whose message
starts with ``file:line:`` so the user can open the offending line directly. No raw ``UnicodeDecodeError``,
``IndexError`` or ``KeyError`` escapes from parsing.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. ``str(err)`` reads ``"path:line: message"`` (``"path: message"`` without a line).

    Attributes ``path``, ``line`` (1-based, or ``None``) and ``reason`` keep the parts for callers that
    want to format them differently (the CLI prints the message as is).
    """

    def __init__(self, path: str | Path | None, line: int | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        where = self.path if self.path is not None else "<data>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # rebuild from the three parts (copy, and errors raised in worker processes)
        return (type(self), (self.path, self.line, self.reason))
