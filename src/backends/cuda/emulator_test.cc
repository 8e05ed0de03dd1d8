// The emulated CUDA runtime's own checks must catch what they exist for;
// otherwise the backend's tests passing on it prove little.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "backends/cuda/cast_kernel.h"

namespace {

TEST(CudaEmulatorTest, CopiesMustStayInsideOneAllocation) {
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  void* b = nullptr;
  ASSERT_EQ(cudaMalloc(&b, 1000), cudaSuccess);
  std::vector<unsigned char> host(2000, 1);
  auto* bytes = static_cast<unsigned char*>(b);
  EXPECT_EQ(cudaMemcpy(b, host.data(), 1000, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(bytes + 1, host.data(), 1000, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  // Beyond the allocation's pages, or before them (the one allocation there
  // is): not device memory at all.
  EXPECT_EQ(cudaMemcpy(bytes + 4096, host.data(), 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(bytes - 4096, host.data(), 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  // A host side that is device memory.
  void* a = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 1000), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(a, b, 8, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read once, then cleared
  std::vector<unsigned char> back(1000, 0);
  EXPECT_EQ(cudaMemcpy(back.data(), b, 1000, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, std::vector<unsigned char>(1000, 1));
  EXPECT_EQ(cudaFree(a), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaSuccess);
  EXPECT_EQ(cudaFree(b), cudaErrorInvalidValue);
}

TEST(CudaEmulatorTest, PageableCopiesReadTheirSourceAtOnce) {
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  void* d = nullptr;
  ASSERT_EQ(cudaMalloc(&d, 64), cudaSuccess);
  std::vector<unsigned char> src(64, 3);
  ASSERT_EQ(cudaMemcpyAsync(d, src.data(), 64, cudaMemcpyHostToDevice, s), cudaSuccess);
  src.assign(64, 4);  // too late to matter: CUDA has read a pageable source on return
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  unsigned char got = 0;
  ASSERT_EQ(cudaMemcpy(&got, d, 1, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, 3);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

TEST(CudaEmulatorTest, EventsAndKernelsCheckTheirDevices) {
  cudaStream_t s1 = nullptr;
  cudaEvent_t e0 = nullptr;
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
  void* d1 = nullptr;
  ASSERT_EQ(cudaMalloc(&d1, 4096), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&e0, cudaEventDisableTiming), cudaSuccess);
  // An event of device 0 recorded on a stream of device 1: refused, and the
  // event is not left waiting for a record that never lands.
  EXPECT_EQ(cudaEventRecord(e0, s1), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventSynchronize(e0), cudaSuccess);
  // A kernel on another device's stream, and misaligned or overlapping buffers.
  auto* bytes = static_cast<unsigned char*>(d1);
  using hoist::cuda::FloatType;
  EXPECT_EQ(hoist::cuda::LaunchCast(FloatType::kBF16, bytes, FloatType::kF32, bytes + 1024, 16, s1),
            cudaErrorInvalidResourceHandle);
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  EXPECT_EQ(hoist::cuda::LaunchCast(FloatType::kBF16, bytes, FloatType::kF32, bytes + 1024, 16, s1), cudaSuccess);
  EXPECT_EQ(hoist::cuda::LaunchCast(FloatType::kBF16, bytes + 1, FloatType::kF32, bytes + 1024, 16, s1),
            cudaErrorInvalidValue);
  EXPECT_EQ(hoist::cuda::LaunchCast(FloatType::kBF16, bytes, FloatType::kF32, bytes + 16, 16, s1),
            cudaErrorInvalidValue);
  EXPECT_EQ(hoist::cuda::LaunchCast(FloatType::kBF16, bytes + 4000, FloatType::kF32, bytes, 100, s1),
            cudaErrorInvalidValue);  // reads past the allocation
  EXPECT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
  EXPECT_EQ(cudaFree(d1), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s1), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(e0), cudaSuccess);
  (void)cudaGetLastError();
}

}  // namespace
