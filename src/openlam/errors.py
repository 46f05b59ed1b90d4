"""Errors that tell the user which file and field are wrong and what was expected."""

from __future__ import annotations

from pathlib import Path


class OpenLAMError(Exception):
    """Base class: every error openlam raises on purpose."""


class DataError(OpenLAMError):
    """Bad input data. The message always names the file, the field and the expected form."""

    def __init__(self, file: str | Path, field: str, expected: str, got: str | None = None):
        self.file, self.field, self.expected, self.got = str(file), field, expected, got
        msg = f"{self.file}: field '{field}': expected {expected}"
        if got is not None:
            msg += f", got {got}"
        super().__init__(msg)


class ConfigError(OpenLAMError):
    """Bad configuration: names the key and what is allowed."""


class DamagedFile(OpenLAMError):
    """A file openlam wrote (weights, training state, a record) that cannot be read back: truncated,
    corrupt or unreadable. The message names the file."""
