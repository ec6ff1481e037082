// Same-host clients' POSIX shared-memory regions (docs/shared-memory.md; Triton's system
// shared memory): a client registers a region of an object it made with shm_open, then sends
// tensors as (region, offset, bytes) references and asks for results to be written there; the
// server maps each region once and reads and writes in place. A region lives as long as its
// RegisterSharedMemory call; calls using it keep it mapped until they finish, even past its
// unregistration.
//
// A client may shrink the object under the mapping (ftruncate), which makes the server's next
// access fault (SIGBUS). The server survives it: a handler maps zeros over the faulting page of
// a registered mapping and marks the region broken, and every call that used the region fails
// with FAILED_PRECONDITION instead of answering with what it read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "focal/v1/focal_loss.pb.h"

namespace focal::server {

/// Regions mapped at once (registered, or unregistered and still in use): each is a mapping and
/// a slot of the fault handler's table.
inline constexpr int kMaxSharedMemoryRegions = 64;
/// Longest region name.
inline constexpr size_t kMaxSharedMemoryNameLength = 128;
/// Bytes mapped at once, all regions together: sparse objects cost a client nothing, but the
/// server's address space is finite (47 bits).
inline constexpr uint64_t kMaxSharedMemoryBytes = uint64_t{1} << 40;

/// One mapped region; unmapped when the last holder lets go.
class SharedMemoryRegion {
 public:
  SharedMemoryRegion(const SharedMemoryRegion&) = delete;
  SharedMemoryRegion& operator=(const SharedMemoryRegion&) = delete;
  ~SharedMemoryRegion();

  const v1::SharedMemoryRegion& info() const { return info_; }
  /// The object mapped (device and inode): two keys may name one object.
  std::pair<uint64_t, uint64_t> object() const { return object_; }
  uint8_t* data() const { return data_; }  ///< byte 0 of the region (the object's `offset`)
  uint64_t byte_size() const { return info_.byte_size(); }
  /// Whether the object shrank under the mapping: from the first access past its new end the
  /// whole mapping reads zeros, and writes to it are lost.
  bool broken() const;

 private:
  friend class SharedMemoryRegistry;
  SharedMemoryRegion() = default;

  v1::SharedMemoryRegion info_;
  std::pair<uint64_t, uint64_t> object_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  uint8_t* data_ = nullptr;
  int slot_ = -1;  ///< in the fault handler's table
};

/// A reference resolved: the bytes and the region that keeps them mapped.
struct SharedMemorySpan {
  std::shared_ptr<SharedMemoryRegion> region;
  uint8_t* data = nullptr;
  uint64_t byte_size = 0;
};

class SharedMemoryRegistry {
 public:
  /// Installs the fault handler (once per process).
  SharedMemoryRegistry();

  /// Maps `request`'s region: INVALID_ARGUMENT for a bad name or key, an object that is not a
  /// regular shared-memory object, or a range outside it; NOT_FOUND when the object does not
  /// exist (or PERMISSION_DENIED); ALREADY_EXISTS for a name in use; RESOURCE_EXHAUSTED past
  /// kMaxSharedMemoryRegions. `on_unregister` runs (without the registry's lock) when
  /// UnregisterSharedMemory removes it.
  absl::StatusOr<std::shared_ptr<SharedMemoryRegion>> Register(const v1::RegisterSharedMemoryRequest& request,
                                                               std::function<void()> on_unregister);
  /// Removes `name` (NOT_FOUND if it is not registered) and runs its on_unregister.
  absl::Status Unregister(absl::string_view name);
  /// Removes `name` if `region` is still what it names (a lease that ends).
  void UnregisterIf(absl::string_view name, const SharedMemoryRegion* region);
  /// The registered regions, by name.
  std::vector<v1::SharedMemoryRegion> List() const;

  /// The bytes `ref` names, for the request field `field`: INVALID_ARGUMENT naming it for an
  /// unknown region or a range outside the region; FAILED_PRECONDITION for a broken one.
  absl::StatusOr<SharedMemorySpan> Resolve(const v1::SharedMemoryRef& ref, absl::string_view field) const;

 private:
  struct Entry {
    std::shared_ptr<SharedMemoryRegion> region;
    std::function<void()> on_unregister;
  };
  mutable std::mutex mu_;
  std::map<std::string, Entry, std::less<>> regions_;
};

}  // namespace focal::server
