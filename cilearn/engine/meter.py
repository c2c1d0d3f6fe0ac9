"""Peak resident memory per phase of a run (data load, train, eval, end of task, checkpoint).

On Linux the kernel keeps the process's peak resident set size (``VmHWM`` in ``/proc/self/status``) and
lets a process reset it to the current size (writing ``5`` to ``/proc/self/clear_refs``), so each phase's
peak is exact: reset when the phase starts, read when it ends.  A phase inside another (the per-epoch
evaluation inside training) is counted as itself, not as the outer phase.  Elsewhere (macOS, Windows,
a kernel refusing the reset) the per-phase figures are None and only the process's overall peak is known.

Resetting the kernel's counter also lowers what ``getrusage`` reports afterwards, so the overall peak
is kept here (:attr:`PhaseMeter.overall_mib`) rather than read from ``getrusage``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

try:
    import resource  # POSIX only; Windows reads no peak (see _peak_kib)
except ImportError:  # pragma: no cover - Windows
    resource = None

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def _peak_kib() -> int | None:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PhaseMeter:
    """``with meter.phase("train"): ...`` records the peak RSS (MiB) of every phase, the largest over
    its occurrences, in :attr:`peaks_mib`."""

    def __init__(self) -> None:
        self.peaks_mib: dict[str, float | None] = {}
        self.exact = _reset_peak()  # per-phase figures need the reset; start from here
        self._overall_kib = _peak_kib() or 0
        self._stack: list[list] = []  # [name, peak so far in KiB] of the open phases, innermost last

    @property
    def overall_mib(self) -> float:
        """The process's peak RSS since the meter was made (or since it started, where no reset works)."""
        return max(self._overall_kib, _peak_kib() or 0) / 1024

    def _read_and_reset(self) -> int:
        peak = _peak_kib() or 0
        self._overall_kib = max(self._overall_kib, peak)
        if self.exact:
            _reset_peak()
        return peak

    @contextmanager
    def phase(self, name: str):
        if self._stack:  # the outer phase's peak until now; what follows belongs to the inner one
            self._stack[-1][1] = max(self._stack[-1][1], self._read_and_reset())
        else:
            self._read_and_reset()
        self._stack.append([name, 0])
        try:
            yield
        finally:
            _, peak = self._stack.pop()
            peak = max(peak, self._read_and_reset())
            if self.exact:
                before = self.peaks_mib.get(name) or 0.0
                self.peaks_mib[name] = max(before, peak / 1024)
            else:
                self.peaks_mib[name] = None

    def summary(self) -> dict:
        return {"peak_rss_mib": {k: None if v is None else round(v, 1) for k, v in self.peaks_mib.items()},
                "overall_peak_rss_mib": round(self.overall_mib, 1), "per_phase_exact": self.exact}
