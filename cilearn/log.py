"""cilearn's console output through the standard :mod:`logging` module, in one format.

Every module logs to its own logger (``log = get_logger(__name__)``, a child of ``cilearn``); the CLI calls
:func:`setup_logging` with the verbosity of ``--quiet`` / ``--verbose``.  Lines look like this:

| level | line | stream |
| --- | --- | --- |
| INFO (progress) | `[icarl] task 2/5 (classes 2-3): ...` | stdout |
| WARNING | `warning: <message>` | stderr |
| ERROR | `error: <message>` | stderr |
| DEBUG (`--verbose`) | `debug [cilearn.data.registry]: <message>` | stderr |

``--quiet`` keeps warnings and errors only (progress bars too are hidden); ``--verbose`` adds debug lines.

As a library (:class:`cilearn.Experiment`): a program that configured no logging at all — no handler on the
root logger nor on ``cilearn``, no level set on ``cilearn`` — gets the CLI's console lines when
``Experiment.run``/``resume`` starts (:func:`library_default_logging`), so a script or a notebook shows the
same progress as ``cilearn run``.  A program with its own logging configuration (``logging.basicConfig``, a
framework's handlers) keeps it: cilearn's records go to its handlers, at the levels it chose.  To silence
progress, call ``setup_logging(QUIET)`` (or set the ``cilearn`` logger's level) before running.
"""

from __future__ import annotations

import logging
import sys

from .distributed import is_main

ROOT = "cilearn"
QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


def count(number: int, noun: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs``: a number with its noun in the right form."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def get_logger(name: str) -> logging.Logger:
    """The logger of a module: ``get_logger(__name__)``; names outside the package are put under ``cilearn.``."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class ConsoleFormatter(logging.Formatter):
    """``message`` for INFO, ``warning: message`` / ``error: message`` above, ``debug [logger]: message`` below."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        if record.levelno < logging.INFO:
            return f"debug [{record.name}]: {message}"
        return message


class ConsoleHandler(logging.Handler):
    """INFO lines to stdout, everything else to stderr.  The streams are looked up at every line (not kept from
    set-up), so output redirected or captured later (pytest, a notebook) still receives it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stdout if record.levelno == logging.INFO else sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(verbosity: int = NORMAL) -> logging.Logger:
    """Send cilearn's log lines to the console in :class:`ConsoleFormatter`'s format.

    ``verbosity``: -1 (quiet: warnings and errors), 0 (progress too), 1 (debug too).  Calling it again only
    changes the level: there is always exactly one console handler."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(_LEVELS[max(QUIET, min(VERBOSE, verbosity))])
    if not is_main():  # a torchrun job speaks through rank 0 only
        logger.setLevel(logging.CRITICAL + 1)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(ConsoleFormatter())
        logger.addHandler(handler)
    logger.propagate = False  # the console handler prints each line once, whatever the root logger does
    return logger


def library_default_logging() -> None:
    """The Python API's default: the console lines of :func:`setup_logging` when the program configured no
    logging at all (see the module docstring); otherwise nothing changes."""
    logger = logging.getLogger(ROOT)
    if logger.handlers or logger.level != logging.NOTSET or logging.getLogger().handlers:
        return
    setup_logging(NORMAL)


def progress_disabled(logger: logging.Logger | None = None) -> bool | None:
    """The value for tqdm's ``disable=``: True when progress lines are off (``--quiet``), else None (tqdm shows
    a bar only on a terminal)."""
    logger = logger or logging.getLogger(ROOT)
    if logging.getLogger(ROOT).level == logging.NOTSET:  # setup_logging never ran (a library user): tqdm decides
        return None
    return None if logger.isEnabledFor(logging.INFO) else True
