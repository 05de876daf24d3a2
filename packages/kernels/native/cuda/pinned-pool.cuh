// Page-locked host staging of the CUDA backend: a pool of reusable pinned buffers, and the pending read that copies a
// tensor through one of them and waits on an event.
#pragma once
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// Reusable page-locked host buffers, so device-to-host copies are truly asynchronous.
class PinnedPool {
 public:
  struct Buffer { char* data; size_t bytes; };
  PinnedPool() = default;
  PinnedPool(const PinnedPool&) = delete;
  PinnedPool& operator=(const PinnedPool&) = delete;
  ~PinnedPool() {
    for (const Buffer& buffer : free_) cudaFreeHost(buffer.data);
  }
  Buffer take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_.size(); i++) {
      if (free_[i].bytes >= bytes) {
        Buffer buffer = free_[i];
        free_.erase(free_.begin() + static_cast<long>(i));
        return buffer;
      }
    }
    void* data = nullptr;
    size_t size = std::max<size_t>(bytes, 1 << 16);
    check(cudaMallocHost(&data, size), "cudaMallocHost");
    return {static_cast<char*>(data), size};
  }
  void give(Buffer buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(buffer);
  }

 private:
  std::mutex mutex_;
  std::vector<Buffer> free_;
};

class CudaRead final : public Device::PendingRead {
 public:
  CudaRead(PinnedPool& pool, PinnedPool::Buffer buffer, cudaEvent_t event, void* host, size_t bytes)
      : pool_(pool), buffer_(buffer), event_(event), host_(host), bytes_(bytes) {}
  ~CudaRead() override {
    cudaEventDestroy(event_);
    pool_.give(buffer_);
  }
  void wait() override {
    check(cudaEventSynchronize(event_), "reading a tensor (an earlier kernel may have failed)");
    std::memcpy(host_, buffer_.data, bytes_);
  }

 private:
  PinnedPool& pool_;
  PinnedPool::Buffer buffer_;
  cudaEvent_t event_;
  void* host_;
  size_t bytes_;
};

}  // namespace cuda
}  // namespace duo
