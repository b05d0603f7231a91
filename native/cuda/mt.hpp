// mt.hpp — the table the multi-tensor kernels of kernels.cu read (one entry per tensor), shared by the device code and
// backend_cuda.cpp so both sides agree on its layout. Plain data: no CUDA header needed.
#pragma once

namespace llmt {

// Elements one block of a multi-tensor kernel handles: a tensor of n elements is ceil(n / kMtChunk) blocks.
constexpr long long kMtChunk = 16384;

struct MtSlot {
  float *w;          // weights (AdamW)
  float *g;          // gradients (every op)
  float *m, *v;      // AdamW moments
  long long n;       // elements
  long long chunk0;  // the tensor's first chunk in the launch (a prefix sum; entries are in ascending order)
  int decay;         // AdamW: weight decay applies
  int pad;
};

}  // namespace llmt
