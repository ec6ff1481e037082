// SharedMemoryRegistry (server/shared_memory.h) against hostile requests and references: every
// range checked without overflow, names and keys refused before anything is opened, the
// regions' lifetime, the table of mapped regions bounded, and a shrunk object survived.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "server/codec.h"
#include "server/shared_memory.h"

namespace focal::server {
namespace {

/// A POSIX shared-memory object for one test, removed at the end.
class Object {
 public:
  explicit Object(size_t bytes) : key_("/focalserve-test-" + std::to_string(getpid()) + "-" + std::to_string(next_++)) {
    const int fd = shm_open(key_.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    data_ = static_cast<uint8_t*>(p);
    bytes_ = bytes;
    close(fd);
  }
  ~Object() {
    munmap(data_, bytes_);
    shm_unlink(key_.c_str());
  }
  const std::string& key() const { return key_; }
  uint8_t* data() const { return data_; }

 private:
  static inline int next_ = 0;
  std::string key_;
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

v1::RegisterSharedMemoryRequest Request(const std::string& name, const std::string& key, uint64_t offset,
                                        uint64_t byte_size) {
  v1::RegisterSharedMemoryRequest r;
  r.set_name(name);
  r.set_key(key);
  r.set_offset(offset);
  r.set_byte_size(byte_size);
  return r;
}

v1::SharedMemoryRef Ref(const std::string& region, uint64_t offset, uint64_t byte_size) {
  v1::SharedMemoryRef r;
  r.set_region(region);
  r.set_offset(offset);
  r.set_byte_size(byte_size);
  return r;
}

TEST(SharedMemory, RegionsMapTheirBytesAndReferencesStayInside) {
  const Object object(3 * 4096);
  for (uint32_t i = 0; i < 3 * 4096; ++i) object.data()[i] = static_cast<uint8_t>(i * 7);
  SharedMemoryRegistry registry;
  // An offset that is no page boundary maps too, its byte 0 at the object's `offset`.
  auto region = registry.Register(Request("r", object.key(), 5000, 6000), nullptr);
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ((*region)->data()[0], static_cast<uint8_t>(5000 * 7));
  EXPECT_EQ((*region)->data()[5999], static_cast<uint8_t>(10999 * 7));
  auto span = registry.Resolve(Ref("r", 10, 100), "logits.shared_memory");
  ASSERT_TRUE(span.ok());
  EXPECT_EQ(span->data[0], static_cast<uint8_t>(5010 * 7));
  EXPECT_EQ(span->byte_size, 100u);
  EXPECT_TRUE(registry.Resolve(Ref("r", 0, 6000), "x").ok());
  EXPECT_TRUE(registry.Resolve(Ref("r", 6000, 0), "x").ok());  // empty, at the end
  for (const auto& [offset, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 6001}, {6000, 1}, {6001, 0}, {1, UINT64_MAX}, {UINT64_MAX, 1}, {UINT64_MAX, UINT64_MAX}}) {
    const auto bad = registry.Resolve(Ref("r", offset, size), "targets.shared_memory");
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << offset << " " << size;
    EXPECT_NE(bad.status().message().find("targets.shared_memory: offset"), std::string::npos) << bad.status();
  }
  EXPECT_NE(registry.Resolve(Ref("nowhere", 0, 1), "weights.shared_memory").status().message().find(
                "weights.shared_memory.region names no registered shared-memory region"),
            std::string::npos);
  ASSERT_EQ(registry.List().size(), 1u);
  EXPECT_EQ(registry.List()[0].name(), "r");
}

TEST(SharedMemory, RegistrationRefusesBadNamesKeysAndRanges) {
  const Object object(4096);
  SharedMemoryRegistry registry;
  auto code = [&](const v1::RegisterSharedMemoryRequest& r) { return registry.Register(r, nullptr).status().code(); };
  using absl::StatusCode;
  EXPECT_EQ(code(Request("", object.key(), 0, 1)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request(std::string(129, 'a'), object.key(), 0, 1)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("a\nb", object.key(), 0, 1)), StatusCode::kInvalidArgument);
  for (const char* key : {"", "/", "x", "/a/b", "/.", "/..", "/a b", "//"}) {
    EXPECT_EQ(code(Request("k", key, 0, 1)), StatusCode::kInvalidArgument) << key;
  }
  EXPECT_EQ(code(Request("k", std::string("/a\0b", 4), 0, 1)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("k", "/focalserve-test-absent-object", 0, 1)), StatusCode::kNotFound);
  EXPECT_EQ(code(Request("k", object.key(), 0, 0)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("k", object.key(), 0, 4097)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("k", object.key(), 4097, 1)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("k", object.key(), UINT64_MAX, 2)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request("k", object.key(), 2, UINT64_MAX)), StatusCode::kInvalidArgument);
  EXPECT_TRUE(registry.List().empty());
}

TEST(SharedMemory, UnregisteredRegionsStayMappedForTheirHoldersAndTheTableIsBounded) {
  const Object object(4096);
  SharedMemoryRegistry registry;
  int ended = 0;
  auto region = registry.Register(Request("held", object.key(), 0, 4096), [&] { ++ended; });
  ASSERT_TRUE(region.ok());
  auto span = registry.Resolve(Ref("held", 0, 8), "logits.shared_memory");
  ASSERT_TRUE(span.ok());
  EXPECT_EQ(registry.Register(Request("held", object.key(), 0, 16), nullptr).status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(registry.Unregister("held").ok());
  EXPECT_EQ(ended, 1);
  EXPECT_EQ(registry.Unregister("held").code(), absl::StatusCode::kNotFound);
  span->data[0] = 42;  // still mapped for the call that holds it
  EXPECT_EQ(object.data()[0], 42);
  EXPECT_EQ(registry.Resolve(Ref("held", 0, 8), "x").status().code(), absl::StatusCode::kInvalidArgument);
  // A lease that ends removes only its own region, not a newer one of the same name.
  auto newer = registry.Register(Request("held", object.key(), 0, 16), nullptr);
  ASSERT_TRUE(newer.ok());
  registry.UnregisterIf("held", region->get());
  EXPECT_EQ(registry.List().size(), 1u);
  registry.UnregisterIf("held", newer->get());
  EXPECT_TRUE(registry.List().empty());
  newer->reset();
  // Mapped regions (the two above still held) are bounded: the 65th is refused, and a released
  // one frees its slot.
  std::vector<std::shared_ptr<SharedMemoryRegion>> many;
  for (int i = 0; i < kMaxSharedMemoryRegions + 4; ++i) {
    auto r = registry.Register(Request("m" + std::to_string(i), object.key(), 0, 64), nullptr);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
      break;
    }
    many.push_back(*r);
  }
  EXPECT_EQ(many.size(), static_cast<size_t>(kMaxSharedMemoryRegions - 1));  // "held" keeps one
  ASSERT_TRUE(registry.Unregister("m0").ok());
  many.erase(many.begin());
  EXPECT_TRUE(registry.Register(Request("again", object.key(), 0, 64), nullptr).ok());
}

TEST(SharedMemory, AnObjectShrunkUnderTheMappingIsSurvivedAndReported) {
  Object object(4 * 4096);
  SharedMemoryRegistry registry;
  auto region = registry.Register(Request("shrinks", object.key(), 0, 4 * 4096), nullptr);
  ASSERT_TRUE(region.ok());
  EXPECT_FALSE((*region)->broken());
  const int fd = shm_open(object.key().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  close(fd);
  // Past the new end: a SIGBUS the handler turns into zeros and a broken region.
  volatile uint8_t* past = (*region)->data() + 2 * 4096 + 5;
  EXPECT_EQ(*past, 0);
  *past = 1;  // written to the zero page that replaced it
  EXPECT_TRUE((*region)->broken());
  SharedMemoryUse use;
  use.inputs.push_back(SharedMemorySpan{*region, (*region)->data(), 16});
  const absl::Status status = SharedMemoryIntact(use);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("'shrinks' shrank while the request used it"), std::string::npos) << status;
  // The whole mapping reads zeros now (one mapping, however many pages fault), and the region is
  // refused before anything is read.
  EXPECT_EQ((*region)->data()[0], 0);
  EXPECT_EQ(registry.Resolve(Ref("shrinks", 0, 8), "logits.shared_memory").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace focal::server
