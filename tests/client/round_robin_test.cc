// Three focalserve processes behind one client target: gRPC's round_robin spreads the calls over
// all of them, and when one is killed with SIGKILL in the middle of a run, every call still
// succeeds (calls caught on the dead connection get UNAVAILABLE and gRPC's retry policy sends
// them again, to a server that is still up).
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_join.h"
#include "focal/client.h"
#include "tests/client/test_support.h"

namespace focal::client_test {
namespace {

constexpr int kServers = 3;

/// Compute calls that finished OK on `server`, from its /metrics.
double ComputeCallsServed(const ServerProcess& server) {
  absl::StatusOr<std::string> metrics = HttpGet(server.metrics_address(), "/metrics");
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  if (!metrics.ok()) return -1;
  return SumSamples(*metrics, "focal_requests_total", {"method=\"Compute\"", "code=\"OK\""});
}

ComputeCall SmallCall() {
  ComputeCall call;
  call.loss.params = SigmoidFocalParams{};
  std::vector<float> logits(64), targets(64);
  for (size_t i = 0; i < logits.size(); ++i) {
    logits[i] = static_cast<float>(i % 9) - 4.0f;
    targets[i] = i % 5 == 0 ? 1.0f : 0.0f;
  }
  call.logits = HostTensor::Float32({8, 8}, logits);
  call.targets = HostTensor::Float32({8, 8}, targets);
  call.compute_gradient = true;
  return call;
}

TEST(RoundRobinTest, SpreadsCallsAndSurvivesAKilledServer) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> addresses;
  for (int i = 0; i < kServers; ++i) {
    // Each computation takes 20 ms, so that calls are in flight on the server that is killed.
    absl::StatusOr<std::unique_ptr<ServerProcess>> s = StartServer({"--debug-delay-ms", "20"}, /*metrics=*/true);
    ASSERT_TRUE(s.ok()) << s.status();
    addresses.push_back((*s)->address());
    servers.push_back(*std::move(s));
  }
  ClientOptions options;
  options.target = "ipv4:" + absl::StrJoin(addresses, ",");
  options.deadline = absl::Seconds(15);
  absl::StatusOr<std::unique_ptr<Client>> created = Client::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  const Client& client = **created;
  const ComputeCall call = SmallCall();
  const absl::StatusOr<LossResult> expected = ComputeLocally(call);
  ASSERT_TRUE(expected.ok()) << expected.status();

  // Phase 1: sequential calls rotate over the three servers.
  for (int i = 0; i < 30; ++i) {
    absl::StatusOr<ComputeOutput> out = client.Compute(call);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->loss, expected->loss);
  }
  std::vector<double> served_before(kServers);
  for (int i = 0; i < kServers; ++i) {
    served_before[i] = ComputeCallsServed(*servers[i]);
    EXPECT_GE(served_before[i], 5) << "server " << i << " got too few of 30 calls: round_robin is not in effect";
  }

  // Phase 2: four workers call back to back; server 1 is killed once 24 calls have finished.
  constexpr int kWorkers = 4, kCallsPerWorker = 40;
  std::atomic<int> finished{0}, failed{0};
  std::vector<std::string> errors(kWorkers);
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < kCallsPerWorker; ++i) {
        absl::StatusOr<ComputeOutput> out = client.Compute(call);
        if (!out.ok() || out->loss != expected->loss) {
          ++failed;
          if (errors[w].empty()) errors[w] = out.ok() ? "wrong loss" : out.status().ToString();
        }
        ++finished;
      }
    });
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (finished.load() < 24 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(servers[1]->Signal(SIGKILL));
  EXPECT_EQ(servers[1]->WaitForExit(std::chrono::seconds(5)), 128 + SIGKILL);
  for (std::thread& t : workers) t.join();

  EXPECT_EQ(finished.load(), kWorkers * kCallsPerWorker);
  EXPECT_EQ(failed.load(), 0) << absl::StrJoin(errors, "; ");
  // The survivors took the rest of the run.
  for (int i : {0, 2}) {
    EXPECT_GT(ComputeCallsServed(*servers[i]), served_before[i]) << "server " << i;
  }

  // After the kill the channel keeps working on the two that are left, for every kind of call.
  std::vector<ComputeCall> batches(3, call);
  absl::StatusOr<std::vector<ComputeOutput>> many = client.ComputeMany(batches);
  ASSERT_TRUE(many.ok()) << many.status();
  absl::StatusOr<EvaluateOutput> eval = client.Evaluate(batches.begin(), batches.end());
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_EQ(eval->batches, 3);
  absl::StatusOr<ServingStatus> health = client.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, ServingStatus::kServing);
}

}  // namespace
}  // namespace focal::client_test
