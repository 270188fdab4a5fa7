"""User-facing errors.

Every failure a user can cause (bad file, bad argument, bad image) raises
:class:`EdgeShituError` with ONE line that names the problem and says what to do. The CLI
prints that line and exits non-zero, without a traceback; anything else is a bug.
"""

from __future__ import annotations


class EdgeShituError(Exception):
    """A problem with the user's input, reported as one actionable line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line: the CLI prints str(err) as is.
        super().__init__(" ".join(str(message).split()))


class CorruptFileError(EdgeShituError):
    """A file exists but its bytes are not what its format promises (truncated, bad CRC, ...)."""


class VersionError(EdgeShituError):
    """A file was written by a newer (or unknown) format version than this reader understands."""
