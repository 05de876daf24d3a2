// Per-op device times of the CUDA backend (DUO_CUDA_PROFILE=1): an event after every op, summed per op name.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "cuda-common.cuh"

namespace duo {
namespace cuda {

// With DUO_CUDA_PROFILE=1 every op records an event after it; the gap between consecutive events is that op's
// device time, launch gaps included. takeProfile() sums them per op name.
class OpProfiler {
 public:
  void pause(bool paused) { paused_ = paused; }
  void enable(bool enabled) { enabled_ = enabled; }
  void mark(const char* name, cudaStream_t stream) {
    if (!enabled_ || paused_) return;
    cudaEvent_t event;
    check(cudaEventCreate(&event), "cudaEventCreate");
    check(cudaEventRecord(event, stream), "cudaEventRecord");
    marks_.push_back({name, event});
  }
  std::vector<Device::OpTime> take(cudaStream_t stream) {
    std::vector<Device::OpTime> out;
    if (!enabled_) return out;
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    for (size_t i = 1; i < marks_.size(); i++) {
      float ms = 0;
      check(cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second), "cudaEventElapsedTime");
      auto found = std::find_if(out.begin(), out.end(), [&](const Device::OpTime& t) { return t.name == marks_[i].first; });
      if (found == out.end()) out.push_back({marks_[i].first, 1, ms});
      else { found->count++; found->milliseconds += ms; }
    }
    for (auto& mark : marks_) cudaEventDestroy(mark.second);
    marks_.clear();
    return out;
  }

 private:
  bool enabled_ = false;  // Device::Tuning::profile
  bool paused_ = false;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_;
};

}  // namespace cuda
}  // namespace duo
