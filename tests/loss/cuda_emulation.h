// Runs CUDA kernels on the CPU (cpp/cuda/pairwise_cuda.cu for test_cuda_emulated.py, the
// colour kernel for tests/data/test_dali_color.py): each
// CUDA thread of a block is a std::thread, blocks run one after another, __syncthreads is a
// barrier of the block's threads and __shared__ variables are statics (one block at a time uses
// them). test_cuda_emulated.py rewrites each launch `k<<<grid, block, smem, stream>>>(args)` into
// `emu_launch(grid, block, k, args)` and compiles the file as C++ against this header.
#pragma once

#include <barrier>
#include <thread>
#include <vector>

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim;
inline std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class Kernel, class... Args>
void emu_launch(long long grid, int block, Kernel kernel, Args... args) {
  blockDim.x = unsigned(block);
  for (long long b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    emu_block_barrier = &barrier;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (int t = 0; t < block; ++t) {
      threads.emplace_back([=] {
        threadIdx.x = unsigned(t);
        blockIdx.x = unsigned(b);
        kernel(args...);
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
}

#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(threads)
#define C10_CUDA_KERNEL_LAUNCH_CHECK()

#ifdef TORCH_LIBRARY  // the torch ops' kernels (included after torch/library.h)
namespace c10::cuda {
inline int getCurrentCUDAStream() { return 0; }
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
#endif
