"""Errors a user can act on.

Every problem with the user's input or storage is a `StreamdiffError`; the CLI prints its message as
one line on stderr and exits 2. Anything else escaping is a bug in streamdiff and keeps its traceback.
"""

from __future__ import annotations


class StreamdiffError(Exception):
    """Bad input or unreadable storage: reported as one line, exit code 2."""


class NotFoundError(StreamdiffError):
    """The path, bucket or object does not exist."""


class NotACheckpointError(StreamdiffError):
    """The path exists but is not an Orbax checkpoint we can read."""


class UnfinishedCheckpointError(StreamdiffError):
    """The checkpoint (or the chosen step) is an unfinished save."""


class CorruptCheckpointError(StreamdiffError):
    """Metadata that should be there is missing or unparsable."""


class UsageError(StreamdiffError):
    """The options do not fit the checkpoints (e.g. several items and no --item)."""
