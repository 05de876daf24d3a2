// Factory for the CUDA backend; built only when the addon is compiled with CUDA (DUO_CUDA=1).
#pragma once
#include <string>

#include "../common.h"

namespace duo {
// Returns the CUDA device or nullptr with `reason` set (no driver, no GPU, built without CUDA, ...).
Device* createCudaDevice(std::string& reason);
// Whether this binary contains the CUDA backend.
bool cudaCompiled();
}  // namespace duo
