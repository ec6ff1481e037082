// Teams of threads that share one row of a row variant: a thread alone (the strided [N, C, S]
// layout, one position per thread), a few lanes of a warp (small C) or a whole block (large C).
// A row function is written once against the team interface: rank(), size() and Reduce(), which
// returns the same bits to every member. Reductions run as fixed butterfly trees of shuffles, so
// a row's result does not depend on timing: no atomics, bit-identical on every run.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cuda/device_api.h"

namespace focal::cuda {

/// `v` from the lane `offset` away (xor) within groups of `width` lanes, any trivially copyable
/// type of whole 32-bit words.
template <class V>
__device__ __forceinline__ V ShuffleXor(const V& v, int offset, int width) {
  static_assert(sizeof(V) % 4 == 0, "shuffled types are whole 32-bit words");
  constexpr int kWords = sizeof(V) / 4;
  uint32_t words[kWords];
  memcpy(words, &v, sizeof(V));
#pragma unroll
  for (int k = 0; k < kWords; ++k) words[k] = __shfl_xor_sync(0xffffffffu, words[k], offset, width);
  V out;
  memcpy(&out, words, sizeof(V));
  return out;
}

/// Butterfly reduction over groups of `width` lanes (a power of two). Every lane of a group ends
/// with op applied over the group; `op` must be commutative (a + b and b + a are the same bits in
/// IEEE arithmetic), so both partners of each exchange compute the same value.
template <class V, class Op>
__device__ __forceinline__ V ButterflyReduce(V v, int width, const Op& op) {
  for (int offset = width / 2; offset > 0; offset /= 2) v = op(v, ShuffleXor(v, offset, width));
  return v;
}

/// One thread per row.
struct ThreadTeam {
  __device__ __forceinline__ int rank() const { return 0; }
  __device__ __forceinline__ int size() const { return 1; }
  template <class V, class Op>
  __device__ __forceinline__ V Reduce(V v, const Op&) const { return v; }
};

/// `width` consecutive lanes of a warp per row (width a power of two up to 32). Every lane of the
/// warp must call Reduce together (the shuffles name the full warp), so rows past the end are
/// run as inactive copies rather than skipped.
struct WarpTeam {
  int width;
  int lane_in_row;
  __device__ __forceinline__ int rank() const { return lane_in_row; }
  __device__ __forceinline__ int size() const { return width; }
  template <class V, class Op>
  __device__ __forceinline__ V Reduce(V v, const Op& op) const { return ButterflyReduce(v, width, op); }
};

/// Shared memory a BlockTeam reduces through: one 32-byte slot per warp.
struct BlockTeamScratch {
  alignas(16) unsigned char slots[32][32];
};

/// A whole block of kThreads per row. Reduce: a butterfly within each warp, one value per warp
/// through shared memory, then every warp reduces those kWarps values by a butterfly of width
/// kWarps (lane l reads slot l mod kWarps), so all threads hold the result without a broadcast.
template <int kThreads>
struct BlockTeam {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps");
  static constexpr int kWarps = kThreads / 32;
  static_assert((kWarps & (kWarps - 1)) == 0, "a power of two of warps");
  BlockTeamScratch* scratch;
  __device__ __forceinline__ int rank() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ int size() const { return kThreads; }
  template <class V, class Op>
  __device__ __forceinline__ V Reduce(V v, const Op& op) const {
    static_assert(sizeof(V) <= 32, "a slot holds 32 bytes");
    v = ButterflyReduce(v, 32, op);
    const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
    if (lane == 0) memcpy(scratch->slots[warp], &v, sizeof(V));
    __syncthreads();
    memcpy(&v, scratch->slots[lane % kWarps], sizeof(V));
    if (kWarps > 1) v = ButterflyReduce(v, kWarps, op);
    __syncthreads();  // the slots are free for the next Reduce
    return v;
  }
};

/// A few values summed together, as one shuffled struct.
template <class T, int kN>
struct Sums {
  T v[kN];
};

struct AddSums {
  template <class T, int kN>
  __device__ __forceinline__ Sums<T, kN> operator()(const Sums<T, kN>& a, const Sums<T, kN>& b) const {
    Sums<T, kN> r;
#pragma unroll
    for (int k = 0; k < kN; ++k) r.v[k] = a.v[k] + b.v[k];
    return r;
  }
};

}  // namespace focal::cuda
