// Admission control: computations run on a fixed set of workers with a bounded wait queue, so a
// burst beyond capacity is refused at once (RESOURCE_EXHAUSTED) instead of growing memory.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace focal::server {

class WorkQueue {
 public:
  /// `workers` tasks run at once; at most `max_waiting` more wait for a worker.
  WorkQueue(int workers, int max_waiting);
  ~WorkQueue();  ///< finishes queued tasks, then joins the workers
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  /// Queues `task`; false (and `task` is dropped) when the queue is full.
  bool TrySubmit(std::function<void()> task);
  /// Runs `task` on the calling thread when a worker slot is free and nobody waits for one
  /// (it counts against the concurrency limit like a queued task); false otherwise. For small
  /// requests, where handing over to a worker would cost more than the computation.
  bool TryRunInline(const std::function<void()>& task);
  /// Tasks queued or running.
  int Pending() const;

 private:
  void Work();
  static void RunGuarded(const std::function<void()>& task);

  const int max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> waiting_;
  int running_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace focal::server
