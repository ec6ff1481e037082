"""keep_freed_memory: the opt-in malloc policy for large tensors."""
import ctypes.util

import focalserve


def test_keep_freed_memory_reports_whether_it_applied():
    # This machine's C library is glibc, where mallopt accepts all three settings.
    assert focalserve.keep_freed_memory() is (ctypes.util.find_library("c") is not None)
