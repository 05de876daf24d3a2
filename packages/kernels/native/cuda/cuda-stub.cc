// Stand-in for the CUDA backend in a CPU-only build (DUO_CUDA=0).
#include "cuda-device.h"

namespace duo {
Device* createCudaDevice(std::string& reason) {
  reason = "this binary was built without CUDA (DUO_CUDA=0 or no nvcc at build time)";
  return nullptr;
}
bool cudaCompiled() { return false; }
}  // namespace duo
