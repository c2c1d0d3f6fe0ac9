"""User-facing errors.

Anything raised as a :class:`CilearnError` is a problem with the user's input (config, data file,
checkpoint, command line).  The CLI prints its message on one line and exits with code 2, without a
traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the choice closest to ``word`` (case-insensitive), or ``""`` when none is
    close: the one suggestion format of every 'unknown ...' message (config keys, values, datasets, models,
    methods, commands)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean '{by_lower[close[0]]}'?" if close else ""


def unknown_choice(kind: str, value: object, choices: Iterable[str], where: str = "",
                   error: type[CilearnError] = ConfigError) -> CilearnError:
    """``where: unknown KIND 'value'. Did you mean 'x'? Choose one of: a, b, c.`` as an error to raise."""
    choices = sorted(str(c) for c in choices)
    place = f"{where}: " if where else ""
    return error(f"{place}unknown {kind} '{value}'.{did_you_mean(value, choices)} Choose one of: {', '.join(choices)}.")
