"""PhaseMeter: the peak resident memory of each phase is that phase's, nested phases counted apart."""

import mmap

import pytest

from cilearn.engine.meter import PhaseMeter, current_rss_mib

MIB = 2 ** 20


def _touch(mib: int) -> mmap.mmap:
    """``mib`` MiB of fresh, written (so resident) pages, returned to the kernel when dropped.  An anonymous
    mapping, not a numpy array: the allocator could serve an array from freed heap pages that are already
    resident, and the resident size would then grow by less than ``mib``."""
    block = mmap.mmap(-1, mib * MIB)
    pages = mib * MIB // mmap.PAGESIZE
    block[::mmap.PAGESIZE] = b"\1" * pages
    return block


def test_each_phase_reports_its_own_peak_and_an_inner_phase_is_not_the_outer_ones():
    meter = PhaseMeter()
    if not meter.exact:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    base = current_rss_mib()
    with meter.phase("outer"):
        small = _touch(20)
        with meter.phase("inner"):
            big = _touch(150)
            del big
        del small
    with meter.phase("after"):
        pass
    peaks = meter.peaks_mib
    assert peaks["inner"] >= base + 140
    assert base + 15 <= peaks["outer"] < base + 100  # the inner phase's 150 MiB are not the outer phase's
    assert peaks["after"] < base + 100
    assert meter.overall_mib >= peaks["inner"]  # the overall peak survives the resets
    summary = meter.summary()
    assert summary["per_phase_exact"] and set(summary["peak_rss_mib"]) == {"outer", "inner", "after"}


def test_a_phase_keeps_its_largest_occurrence():
    meter = PhaseMeter()
    if not meter.exact:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    base = current_rss_mib()
    with meter.phase("eval"):
        big = _touch(120)
        del big
    with meter.phase("eval"):
        pass
    assert meter.peaks_mib["eval"] >= base + 110
