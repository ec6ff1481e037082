#include "server/shared_memory.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace focal::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// ------------------------------------------------------------------------------------------
// The fault handler's table: one slot per mapped region, read lock-free from the handler.

/// A sequence lock guards begin and end: odd while they change. The handler skips a slot that
/// changes while it looks (it cannot be the faulting access's: that access's call holds its
/// region, whose slot is then stable).
struct FaultSlot {
  std::atomic<uint64_t> sequence{0};
  std::atomic<uintptr_t> begin{0}, end{0};  ///< the mapping's bytes; 0, 0 when free
  std::atomic<bool> broken{false};
  std::atomic<bool> taken{false};
};
std::array<FaultSlot, kMaxSharedMemoryRegions> g_slots;
struct sigaction g_previous_sigbus;

/// A SIGBUS inside a region's mapping is its object shrunk under it: map zeros over the page, so
/// that the access completes, and mark the region broken. Any other SIGBUS goes to the handler
/// that was there before (by default: the process dies, as it would have). Only async-signal-safe
/// calls: atomics, sysconf, mmap, sigaction.
void OnSigbus(int signal, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const uintptr_t address = reinterpret_cast<uintptr_t>(info->si_addr);
  for (FaultSlot& slot : g_slots) {
    const uint64_t before = slot.sequence.load(std::memory_order_acquire);
    if (before & 1) continue;
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire), end = slot.end.load(std::memory_order_acquire);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (slot.sequence.load(std::memory_order_relaxed) != before || begin == 0) continue;
    if (address >= begin && address < end) {
      // Zeros over the whole mapping at once: one mapping more, however many pages a client
      // makes fault (a page at a time would split the mapping until the process ran out).
      if (mmap(reinterpret_cast<void*>(begin), end - begin, PROT_READ | PROT_WRITE,
               MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
        slot.broken.store(true, std::memory_order_release);
        errno = saved_errno;
        return;
      }
    }
  }
  errno = saved_errno;
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction != nullptr) return g_previous_sigbus.sa_sigaction(signal, info, context);
  } else if (g_previous_sigbus.sa_handler != SIG_IGN && g_previous_sigbus.sa_handler != SIG_DFL &&
             g_previous_sigbus.sa_handler != nullptr) {
    return g_previous_sigbus.sa_handler(signal);
  }
  // The default action: reinstate it and return, so that the access faults again and ends the
  // process as an unhandled SIGBUS would.
  struct sigaction default_action = {};
  default_action.sa_handler = SIG_DFL;
  sigaction(SIGBUS, &default_action, nullptr);
}

void InstallFaultHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action = {};
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

int TakeSlot(uintptr_t begin, uintptr_t end) {
  for (size_t i = 0; i < g_slots.size(); ++i) {
    bool free = false;
    if (g_slots[i].taken.compare_exchange_strong(free, true)) {
      FaultSlot& slot = g_slots[i];
      slot.sequence.fetch_add(1, std::memory_order_acq_rel);  // odd: changing
      slot.broken.store(false);
      slot.begin.store(begin, std::memory_order_release);
      slot.end.store(end, std::memory_order_release);
      slot.sequence.fetch_add(1, std::memory_order_release);
      return static_cast<int>(i);
    }
  }
  return -1;
}

void ReleaseSlot(int i) {
  FaultSlot& slot = g_slots[static_cast<size_t>(i)];
  slot.sequence.fetch_add(1, std::memory_order_acq_rel);
  slot.end.store(0, std::memory_order_release);
  slot.begin.store(0, std::memory_order_release);
  slot.sequence.fetch_add(1, std::memory_order_release);
  g_slots[static_cast<size_t>(i)].taken.store(false, std::memory_order_release);
}

/// Names and keys are quoted in logs and errors: plain tokens.
bool IsToken(absl::string_view text) {
  for (char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

absl::Status CheckName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxSharedMemoryNameLength || !IsToken(name)) {
    return Invalid(absl::StrCat("name must be 1 to ", kMaxSharedMemoryNameLength, " characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

/// A POSIX shared-memory object's name as shm_open takes it, "/" then a file name of /dev/shm
/// (here of token characters, not "." or "..").
absl::Status CheckKey(absl::string_view key) {
  const absl::string_view file = key.empty() ? key : key.substr(1);
  if (key.empty() || key[0] != '/' || file.empty() || file.size() > 254 || !IsToken(file) || file == "." ||
      file == "..") {
    return Invalid("key must be '/' then 1 to 254 characters of [A-Za-z0-9._-], a POSIX shared-memory name");
  }
  return absl::OkStatus();
}

}  // namespace

/// Bytes mapped by all regions alive (kMaxSharedMemoryBytes).
static std::atomic<uint64_t> g_mapped_bytes{0};

SharedMemoryRegion::~SharedMemoryRegion() {
  if (slot_ >= 0) ReleaseSlot(slot_);
  if (mapping_ != nullptr) {
    munmap(mapping_, mapping_bytes_);
    g_mapped_bytes -= mapping_bytes_;
  }
}

bool SharedMemoryRegion::broken() const {
  return slot_ >= 0 && g_slots[static_cast<size_t>(slot_)].broken.load(std::memory_order_acquire);
}

SharedMemoryRegistry::SharedMemoryRegistry() { InstallFaultHandler(); }

absl::StatusOr<std::shared_ptr<SharedMemoryRegion>> SharedMemoryRegistry::Register(
    const v1::RegisterSharedMemoryRequest& request, std::function<void()> on_unregister) {
  if (absl::Status s = CheckName(request.name()); !s.ok()) return s;
  if (absl::Status s = CheckKey(request.key()); !s.ok()) return s;
  if (request.byte_size() == 0) return Invalid("byte_size is 0; a region has at least one byte");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (regions_.count(request.name())) {
      return absl::AlreadyExistsError(absl::StrCat("a region named '", request.name(), "' is registered"));
    }
  }
  // shm_open adds O_NOFOLLOW: a link planted in /dev/shm is not followed.
  const int fd = shm_open(request.key().c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    const int error = errno;
    const std::string what = absl::StrCat("key '", request.key(), "': ", std::strerror(error));
    if (error == ENOENT) return absl::NotFoundError(absl::StrCat(what, " (create it with shm_open first)"));
    if (error == EACCES) return absl::PermissionDeniedError(what);
    return Invalid(what);
  }
  struct stat st = {};
  const bool stat_ok = fstat(fd, &st) == 0;
  if (!stat_ok || !S_ISREG(st.st_mode)) {
    close(fd);
    return Invalid(absl::StrCat("key '", request.key(), "' is not a shared-memory object"));
  }
  const uint64_t object_bytes = static_cast<uint64_t>(st.st_size);
  if (request.offset() > object_bytes || request.byte_size() > object_bytes - request.offset()) {
    close(fd);
    return Invalid(absl::StrCat("offset ", request.offset(), " + byte_size ", request.byte_size(), " is past the end of '",
                                request.key(), "', which has ", object_bytes, " bytes"));
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = request.offset() / page * page, lead = request.offset() - start;
  const size_t bytes = static_cast<size_t>(lead + request.byte_size());
  if (bytes > kMaxSharedMemoryBytes || g_mapped_bytes.fetch_add(bytes) + bytes > kMaxSharedMemoryBytes) {
    if (bytes <= kMaxSharedMemoryBytes) g_mapped_bytes -= bytes;
    close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("regions of ", kMaxSharedMemoryBytes,
                                                     " bytes in all are mapped at most; unregister one first"));
  }
  void* mapping = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(start));
  const int map_error = errno;
  close(fd);  // the mapping keeps the object
  if (mapping == MAP_FAILED) {
    g_mapped_bytes -= bytes;
    return absl::ResourceExhaustedError(absl::StrCat("mapping '", request.key(), "' failed: ", std::strerror(map_error)));
  }
  std::shared_ptr<SharedMemoryRegion> region(new SharedMemoryRegion());
  region->mapping_ = mapping;
  region->mapping_bytes_ = bytes;
  region->object_ = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  region->data_ = static_cast<uint8_t*>(mapping) + lead;
  region->info_.set_name(request.name());
  region->info_.set_key(request.key());
  region->info_.set_offset(request.offset());
  region->info_.set_byte_size(request.byte_size());
  const uintptr_t begin = reinterpret_cast<uintptr_t>(mapping);
  region->slot_ = TakeSlot(begin, begin + bytes);
  if (region->slot_ < 0) {
    return absl::ResourceExhaustedError(absl::StrCat(kMaxSharedMemoryRegions,
                                                     " shared-memory regions are mapped (registered or still in use); "
                                                     "unregister one first"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!regions_.emplace(request.name(), Entry{region, std::move(on_unregister)}).second) {
    return absl::AlreadyExistsError(absl::StrCat("a region named '", request.name(), "' is registered"));
  }
  return region;
}

absl::Status SharedMemoryRegistry::Unregister(absl::string_view name) {
  std::function<void()> on_unregister;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = regions_.find(name);
    if (it == regions_.end()) return absl::NotFoundError(absl::StrCat("no region named '", name, "' is registered"));
    on_unregister = std::move(it->second.on_unregister);
    regions_.erase(it);
  }
  if (on_unregister) on_unregister();
  return absl::OkStatus();
}

void SharedMemoryRegistry::UnregisterIf(absl::string_view name, const SharedMemoryRegion* region) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = regions_.find(name);
  if (it != regions_.end() && it->second.region.get() == region) regions_.erase(it);
}

std::vector<v1::SharedMemoryRegion> SharedMemoryRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::SharedMemoryRegion> out;
  for (const auto& [name, entry] : regions_) out.push_back(entry.region->info());
  return out;
}

absl::StatusOr<SharedMemorySpan> SharedMemoryRegistry::Resolve(const v1::SharedMemoryRef& ref,
                                                              absl::string_view field) const {
  std::shared_ptr<SharedMemoryRegion> region;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = regions_.find(ref.region());
    if (it == regions_.end()) {
      return Invalid(absl::StrCat(field, ".region names no registered shared-memory region"));
    }
    region = it->second.region;
  }
  if (region->broken()) {
    return absl::FailedPreconditionError(absl::StrCat("shared-memory region '", ref.region(),
                                                      "' shrank under the server (its object was truncated): "
                                                      "register it again"));
  }
  if (ref.offset() > region->byte_size() || ref.byte_size() > region->byte_size() - ref.offset()) {
    return Invalid(absl::StrCat(field, ": offset ", ref.offset(), " + byte_size ", ref.byte_size(),
                                " is past the end of region '", ref.region(), "', which has ", region->byte_size(),
                                " bytes"));
  }
  SharedMemorySpan span;
  span.data = region->data() + ref.offset();
  span.byte_size = ref.byte_size();
  span.region = std::move(region);
  return span;
}

}  // namespace focal::server
