// Process-wide policy for large host buffers.
#pragma once

namespace focal {

/// Makes glibc keep freed memory in the process (no mmap for large blocks, no trimming, one
/// arena for all threads), so the next request's gradient buffer reuses pages already mapped
/// instead of faulting in fresh zeroed ones: on virtual machines a fresh 160 MB buffer costs more than the loss itself. The
/// same effect as a caching allocator (PyTorch's CUDA one, jemalloc's retained memory); the
/// price is that the process keeps its peak heap. Returns false where mallopt is unavailable.
bool KeepFreedMemoryInProcess();

}  // namespace focal
