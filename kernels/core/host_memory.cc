#include "focal/host_memory.h"

#include <cstdlib>  // defines __GLIBC__ where glibc is the C library

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace focal {

bool KeepFreedMemoryInProcess() {
#if defined(__GLIBC__)
  // One arena: a buffer freed by one thread (gRPC's, after sending) is reused by another (a
  // worker's next gradient) instead of every thread's arena faulting in its own copy. The
  // allocations on the hot path are few and large, so the shared arena's lock costs nothing.
  return mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, -1) == 1 &&
         mallopt(M_TOP_PAD, 64 << 20) == 1 && mallopt(M_ARENA_MAX, 1) == 1;
#else
  return false;
#endif
}

}  // namespace focal
