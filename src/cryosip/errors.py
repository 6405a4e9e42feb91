"""Errors about the user's input: one line naming the file, the field, expected and found.

Three boundary checks shared by every command live here too: :func:`from_validation` turns
the first problem of a pydantic ``ValidationError`` (a config file, a model spec, flags)
into an :class:`InputError`, and :func:`check_output_folder` refuses to write into a
non-empty folder unless told to, and :func:`read_yaml` reads a config file's mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

__all__ = ["InputError", "check_output_folder", "from_validation", "read_yaml"]


class InputError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2.

    >>> str(InputError("particles.star", "rlnDefocusU", "a column", "none"))
    'particles.star: field rlnDefocusU: expected a column, found none'
    """

    def __init__(self, source: str, field: str | None, expected: str, found: str):
        self.source, self.field, self.expected, self.found = source, field, expected, found
        where = f"{source}: field {field}" if field else source
        super().__init__(f"{where}: expected {expected}, found {found}")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_validation(err, source: str, *, prefix: str = "", flags: bool = False,
                    names: Mapping[str, str] | None = None) -> InputError:
    """The first problem of a pydantic ``ValidationError`` ``err`` as one :class:`InputError`.

    The field is the error's location joined by dots after ``prefix`` (``"model."``), or,
    with ``flags=True``, the command-line flag ``--`` + the first key with ``-`` for ``_``;
    ``names`` maps a key to the name to show instead (``{"pixel_size_angstrom":
    "--pixel-size"}``). An unknown key reads "expected a known key"; a missing one "expected
    this required key".

    >>> from pydantic import BaseModel, ConfigDict, Field, ValidationError
    >>> class C(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     n_steps: int = Field(1, ge=1)
    >>> try:
    ...     C(n_steps=0)
    ... except ValidationError as e:
    ...     print(from_validation(e, "command line", flags=True))
    command line: field --n-steps: expected greater than or equal to 1, found 0
    >>> try:
    ...     C(colour=1)
    ... except ValidationError as e:
    ...     print(from_validation(e, "run.yaml"))
    run.yaml: field colour: expected a known key, found 'colour'
    """
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
    if flags:
        key = "--" + loc[0].replace("_", "-") if loc else ""
    if names and loc and loc[0] in names:
        key = names[loc[0]]
    field = (prefix + key) if key else (prefix.rstrip(".") or None)
    kind = first["type"]
    if kind == "extra_forbidden":
        return InputError(source, field, "a known key", repr(loc[-1] if loc else ""))
    if kind == "missing":
        return InputError(source, field, "this required key", "no such key")
    msg = first["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    return InputError(source, field, msg, _short(first.get("input")))


def check_output_folder(path: str | os.PathLike, *, force: bool = False,
                        resume: bool = False) -> Path:
    """``path`` as a folder cryosip may write into: new, empty, or ``force``/``resume`` given.

    Nothing is created or deleted here (callers create it once their inputs passed their
    checks).

    >>> import tempfile
    >>> check_output_folder(tempfile.mkdtemp()).is_dir()
    True
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(str(path), None, "a run folder", "a file")
    if path.is_dir() and any(path.iterdir()) and not (force or resume):
        n = len(list(path.iterdir()))
        raise InputError(str(path), None, "an empty or new folder",
                         f"{n} existing entries; pass --force to overwrite them")
    return path


def read_yaml(path: str | os.PathLike) -> dict:
    """The mapping in a YAML file (:class:`InputError` if missing, unreadable or not one).

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = f.write_text("- a list")
    >>> try:
    ...     read_yaml(f)
    ... except InputError as e:
    ...     print(e.expected, "/", e.found)
    a YAML mapping of keys / list
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), None, "an existing YAML file", "no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(str(path), None, "valid YAML", str(err).replace("\n", " ")) from None
    except UnicodeDecodeError:
        raise InputError(str(path), None, "a YAML text file (UTF-8)", "binary data") from None
    if not isinstance(raw, dict):
        raise InputError(str(path), None, "a YAML mapping of keys", type(raw).__name__)
    return raw
