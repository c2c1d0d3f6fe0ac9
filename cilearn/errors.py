"""User-facing errors.

Anything raised as a :class:`CilearnError` is a problem with the user's input (config, data file,
checkpoint, command line).  The CLI prints its message on one line and exits with code 2, without a
traceback; everything else is a bug and keeps its traceback.
"""


class CilearnError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(CilearnError):
    """An invalid configuration or command-line value."""


class DataError(CilearnError):
    """A missing, corrupt or malformed dataset file."""


class CheckpointError(CilearnError):
    """A checkpoint or run directory that cannot be used."""


class TrainingDiverged(CilearnError):
    """The loss became NaN or infinite."""
