// nocuda.cpp — cuda_backend() for builds without LLMT_CUDA (no nvcc at configure time): never available.
#include "cuda.hpp"

namespace llmt {

Backend *cuda_backend(int, std::string *why) {
  if (why) *why = "this engine was built without CUDA (nvcc was not found when it was configured)";
  return nullptr;
}

}  // namespace llmt
