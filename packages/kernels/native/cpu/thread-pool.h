// A fixed pool of worker threads with a blocking parallelFor; the calling thread takes a share of the work.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace duo {

class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads);
  ~ThreadPool();
  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }
  // Calls body(begin, end) over [0, count) in pieces of at least `grain`; returns when all pieces are done.
  void parallelFor(int64_t count, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

 private:
  void workerLoop();
  void runPieces();
  // Watches for the next job (a generation after `seen`) for a short while; the caller's wait then decides.
  void spinForJob(uint64_t seen) const;

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t count_ = 0, piece_ = 1;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> remaining_{0};  // elements not yet processed in the open job
  std::atomic<int> inside_{0};         // workers currently inside the open job
  // Written under mutex_; atomic so that spinning workers may read them without it.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> open_{false};  // a job is accepting workers
  std::atomic<bool> stop_{false};
  std::mutex callMutex_;  // one parallelFor at a time
};

}  // namespace duo
