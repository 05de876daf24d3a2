// Opening a CUDA library at run time (dlopen), shared by the cuBLAS and NCCL loaders: the candidate paths of a file name
// and the first that opens, with every failed attempt kept for the error message.
#pragma once
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace duo {
namespace cuda {

// Where `name` may be: `directories` first (an override such as DUO_NCCL_PATH), then $CUDA_PATH/lib64, $CUDA_HOME/lib64,
// /usr/local/cuda/lib64, then the bare name (the dynamic loader's own search: LD_LIBRARY_PATH, ldconfig).
inline std::vector<std::string> libraryCandidates(const char* name, const std::vector<std::string>& directories = {}) {
  std::vector<std::string> out;
  for (const std::string& directory : directories) out.push_back(directory + "/" + name);
  for (const char* variable : {"CUDA_PATH", "CUDA_HOME"}) {
    if (const char* root = std::getenv(variable)) out.push_back(std::string(root) + "/lib64/" + name);
  }
  out.push_back(std::string("/usr/local/cuda/lib64/") + name);
  out.push_back(name);
  return out;
}

// The first of `names` (in order, each at every candidate path) that dlopen opens, or nullptr; `tried` gains a line per
// failed path with dlerror's reason.
inline void* openFirstLibrary(const std::vector<const char*>& names, std::string& tried,
                              const std::vector<std::string>& directories = {}) {
  for (const char* name : names) {
    for (const std::string& path : libraryCandidates(name, directories)) {
      void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
      if (library) return library;
      tried += "\n    " + path + ": " + dlerror();
    }
  }
  return nullptr;
}

}  // namespace cuda
}  // namespace duo
