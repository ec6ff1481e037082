// What one client may ask of the server: every size a request carries is checked against these
// before anything is allocated for it. The defaults live here and nowhere else; the flags, the
// codec, the service and GetServerInfo read them from here.
#pragma once

#include <cstddef>
#include <cstdint>

namespace focal::server {

struct RequestLimits {
  int64_t max_elements = int64_t{1} << 28;  ///< logits elements per request (--max-elements)
  /// Classes (dim 1 of the logits) per request, for every variant and every RPC: Evaluate keeps
  /// per-class sums sized by it even for an empty batch (--max-classes).
  int64_t max_classes = int64_t{1} << 20;
  /// Bytes of computed answers that streams may hold for clients that have not read them yet,
  /// all streams together; over it, streams stop reading new batches until clients catch up
  /// (--max-buffered-bytes).
  int64_t max_buffered_bytes = int64_t{512} << 20;
};

/// Dimensions of any tensor: enough for every layout the variants take, small enough that an
/// error message repeating a shape stays short.
constexpr int kMaxRank = 16;
/// Longest error message a call answers with, in bytes: well under gRPC's default 8 KiB
/// metadata limit, so the client sees the error and not "metadata size exceeds limit".
constexpr size_t kMaxErrorMessageBytes = 1024;
/// Longest request_id repeated in logs and error messages (after escaping).
constexpr size_t kMaxLoggedRequestIdBytes = 128;

}  // namespace focal::server
