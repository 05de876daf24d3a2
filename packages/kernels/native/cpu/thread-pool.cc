// Thread pool behind the CPU backend.
#include "thread-pool.h"

#include <algorithm>
#include <chrono>

namespace duo {

namespace {

// How long a worker that finished a job watches for the next before it sleeps. A decode step is a few hundred small
// jobs a few microseconds apart; a sleeping worker took long enough to wake (a futex and the scheduler) that the
// calling thread often ran a small matrix's pieces alone. The watch costs one core for at most this long after the
// last job.
constexpr auto kSpin = std::chrono::microseconds(200);

}  // namespace

ThreadPool::ThreadPool(unsigned threads) {
  unsigned extra = threads > 1 ? threads - 1 : 0;
  for (unsigned i = 0; i < extra; i++) workers_.emplace_back([this] { workerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::runPieces() {
  for (;;) {
    int64_t begin = next_.fetch_add(piece_);
    if (begin >= count_) break;
    int64_t end = std::min(count_, begin + piece_);
    (*body_)(begin, end);
    remaining_.fetch_sub(end - begin);
  }
}

void ThreadPool::spinForJob(uint64_t seen) const {
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0;; round++) {
    if (stop_.load(std::memory_order_relaxed)) return;
    if (open_.load(std::memory_order_acquire) && generation_.load(std::memory_order_acquire) != seen) return;
    if ((round & 15) == 15 && std::chrono::steady_clock::now() - start > kSpin) return;
    // Yield rather than pause: where other processes want the core (tests in parallel), they get it.
    std::this_thread::yield();
  }
}

void ThreadPool::workerLoop() {
  uint64_t seen = 0;
  for (;;) {
    spinForJob(seen);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || (open_ && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      inside_.fetch_add(1);
    }
    runPieces();
    inside_.fetch_sub(1);
  }
}

void ThreadPool::parallelFor(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (count <= 0) return;
  int64_t threads = static_cast<int64_t>(size());
  grain = std::max<int64_t>(1, grain);
  if (threads == 1 || count <= grain) {
    body(0, count);
    return;
  }
  std::lock_guard<std::mutex> callLock(callMutex_);
  // About four pieces per thread balances uneven rows without much scheduling overhead.
  int64_t piece = std::max(grain, (count + threads * 4 - 1) / (threads * 4));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    count_ = count;
    piece_ = piece;
    next_.store(0);
    remaining_.store(count);
    open_ = true;
    generation_++;
  }
  wake_.notify_all();
  runPieces();
  // Wait only for pieces already taken; a worker that has not woken yet will find the job closed.
  while (remaining_.load() > 0) std::this_thread::yield();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
  }
  while (inside_.load() > 0) std::this_thread::yield();
}

}  // namespace duo
