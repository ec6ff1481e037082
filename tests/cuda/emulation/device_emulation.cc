#include "tests/cuda/emulation/device_emulation.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

// Every CUDA thread of a block is a fiber (ucontext) on the launching OS thread, resumed in turn
// by a round-robin scheduler: a thread runs until it reaches a barrier (a __syncthreads, or one
// of the two warp-wide barriers of a shuffle), then yields; the last thread to arrive opens the
// barrier. Fibers cost a context switch instead of a futex wake-up per thread and barrier, which
// makes a block of 512 emulated threads cheap enough for the tests.
namespace focal::cuda::emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

/// A barrier for `count` fibers: arriving bumps `arrived`; the last one opens the next
/// generation. Waiters yield until the generation they arrived in has passed.
struct Barrier {
  int count = 0;
  int arrived = 0;
  uint64_t generation = 0;
};

struct Warp {
  Barrier barrier;
  uint32_t slots[32] = {};
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  int thread = 0;
  bool done = false;
  const char* waiting_at = nullptr;  ///< the barrier it is parked at, for the divergence report
};

struct Block {
  Barrier barrier;
  std::vector<Warp> warps;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  bool progressed = false;  ///< some fiber moved since the scheduler's last full pass
};

thread_local Block* block = nullptr;

void Yield() {
  Fiber* self = block->current;
  swapcontext(&self->context, &block->scheduler);
}

void Wait(Barrier& b, const char* what) {
  Fiber* self = block->current;
  const uint64_t generation = b.generation;
  if (++b.arrived == b.count) {
    b.arrived = 0;
    ++b.generation;
    block->progressed = true;
    return;
  }
  self->waiting_at = what;
  while (b.generation == generation) Yield();
  self->waiting_at = nullptr;
}

void FiberMain() {
  Fiber* self = block->current;
  (*block->body)();
  self->done = true;
  block->progressed = true;
  // Returning ends the fiber: uc_link resumes the scheduler.
}

}  // namespace

void SyncBlock() { Wait(block->barrier, "__syncthreads"); }

uint32_t ShuffleXor(uint32_t value, int lane_mask, int width) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  Warp& warp = block->warps[threadIdx.x / 32];
  Wait(warp.barrier, "__shfl_xor_sync");  // every lane has read the previous exchange
  warp.slots[lane] = value;
  Wait(warp.barrier, "__shfl_xor_sync");  // every lane has written this one
  int source = lane ^ lane_mask;
  if (source / width != lane / width) source = lane;  // outside the lane's segment: its own value
  return warp.slots[source];
}

void LaunchGrid(int blocks, int threads, const std::function<void()>& body) {
  if (threads % 32 != 0) {
    std::fprintf(stderr, "device emulation: %d threads per block; the kernels use whole warps\n", threads);
    std::abort();
  }
  Block* const outer = block;  // launches do not nest, but keep the caller's state intact
  for (int b = 0; b < blocks; ++b) {
    Block state;
    state.barrier.count = threads;
    state.warps.resize(static_cast<size_t>(threads / 32));
    for (Warp& w : state.warps) w.barrier.count = 32;
    state.fibers.resize(static_cast<size_t>(threads));
    state.body = &body;
    block = &state;
    for (int t = 0; t < threads; ++t) {
      Fiber& f = state.fibers[static_cast<size_t>(t)];
      f.thread = t;
      f.stack.reset(new char[kStackBytes]);
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &state.scheduler;
      makecontext(&f.context, FiberMain, 0);
    }
    blockIdx.x = static_cast<unsigned>(b);
    blockDim.x = static_cast<unsigned>(threads);
    gridDim.x = static_cast<unsigned>(blocks);
    for (;;) {
      bool all_done = true;
      state.progressed = false;
      for (Fiber& f : state.fibers) {
        if (f.done) continue;
        all_done = false;
        state.current = &f;
        threadIdx.x = static_cast<unsigned>(f.thread);
        swapcontext(&state.scheduler, &f.context);
      }
      if (all_done) break;
      if (!state.progressed) {
        // A full pass in which no barrier opened and no thread finished: some threads wait at a
        // barrier the others never reach (or have passed by returning).
        for (const Fiber& f : state.fibers) {
          if (f.waiting_at) {
            std::fprintf(stderr,
                         "device emulation: block %d thread %d waits at %s that the rest of its block/warp never "
                         "reaches: a barrier or shuffle in divergent code\n",
                         b, f.thread, f.waiting_at);
            std::abort();
          }
        }
      }
    }
  }
  block = outer;
}

}  // namespace focal::cuda::emulation
