"""``python -m cilearn.sweep.child PARENT_PID ARGS...``: ``cilearn ARGS`` that dies with its parent.

A sweep starts every run through this module.  On Linux it asks the kernel to SIGKILL it when the
process that started it (the sweep, or a Ray worker) dies, so that a sweep killed with SIGKILL leaves no
run behind holding a run folder's lock; the run resumes from its last checkpoint when the sweep does.
Elsewhere it is plain ``cilearn``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from ..cli import main as cilearn

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(128 + signal.SIGKILL)


def main() -> int:
    die_with_parent(int(sys.argv[1]))

    return cilearn(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
