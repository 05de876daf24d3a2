// Thread pool behind the CPU backend.
#include "thread-pool.h"

#include <algorithm>

namespace duo {

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
    (*body_)(begin, std::min(count_, begin + piece_));
  }
}

void ThreadPool::workerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    runPieces();
    if (busy_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_all();
    }
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
    busy_.store(static_cast<int>(workers_.size()));
    generation_++;
  }
  wake_.notify_all();
  runPieces();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_.load() == 0; });
}

}  // namespace duo
