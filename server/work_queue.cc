#include "server/work_queue.h"

#include <cstdio>
#include <exception>

namespace focal::server {

WorkQueue::WorkQueue(int workers, int max_waiting) : max_waiting_(max_waiting) {
  threads_.reserve(workers);
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Work(); });
}

WorkQueue::~WorkQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (std::thread& t : threads_) t.join();
}

bool WorkQueue::TrySubmit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Room for one task per worker plus max_waiting_ more. A task handed to a worker that has
    // not woken up yet still sits in waiting_, so the bound is on the sum.
    if (running_ + static_cast<int>(waiting_.size()) >= static_cast<int>(threads_.size()) + max_waiting_) {
      return false;
    }
    waiting_.push_back(std::move(task));
  }
  ready_.notify_one();
  return true;
}

bool WorkQueue::TryRunInline(const std::function<void()>& task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_ + static_cast<int>(waiting_.size()) >= static_cast<int>(threads_.size())) return false;
    ++running_;
  }
  RunGuarded(task);
  std::lock_guard<std::mutex> lock(mu_);
  --running_;
  return true;
}

int WorkQueue::Pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_ + static_cast<int>(waiting_.size());
}

void WorkQueue::Work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      ready_.wait(lock, [this] { return stopping_ || !waiting_.empty(); });
      if (waiting_.empty()) return;  // stopping, and everything queued has run
      task = std::move(waiting_.front());
      waiting_.pop_front();
      ++running_;
    }
    RunGuarded(task);
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
  }
}

void WorkQueue::RunGuarded(const std::function<void()>& task) {
  // Tasks turn their own failures into their call's status (FocalLossServiceImpl::RunBatch);
  // this is the last line: an exception that still gets here costs a log line, not the process.
  try {
    task();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "focalserve: a queued task threw and was dropped: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "focalserve: a queued task threw and was dropped\n");
  }
}

}  // namespace focal::server
