"""Errors about the user's input: one line naming the file, the field, expected and found."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2.

    >>> str(InputError("particles.star", "rlnDefocusU", "a column", "none"))
    'particles.star: field rlnDefocusU: expected a column, found none'
    """

    def __init__(self, source: str, field: str | None, expected: str, found: str):
        self.source, self.field, self.expected, self.found = source, field, expected, found
        where = f"{source}: field {field}" if field else source
        super().__init__(f"{where}: expected {expected}, found {found}")
