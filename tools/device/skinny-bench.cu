// Decode-projection bandwidth at Llama-3-8B shapes for 1–64 rows of x: the skinny tensor-core matmul (gemm-skinny.cu:
// the engine's rule, the batch-invariant launch, the warp-MMA kernel at every cluster size and stage depths 64 and
// 128, the warpgroup kernel at every cluster size past 8 rows: "wide" with x rounded by a launch before it, "wide-f32"
// rounding x itself), the single-row GEMV and cuBLAS as the engine
// calls it (x rounded once, one GemmEx per matrix, the SwiGLU pass). Weights rotate through copies larger than L2 together;
// CUDA events around 20 launches, the median of 9 such runs after a warm-up. Each variant's output is checked against
// a float64 reference (x rounded to bf16 as the tensor-core paths round it; the GEMV keeps f32 x), and the skinny
// kernel's row 0 must have the same bits at every row count.
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -Ipackages/kernels/native
//        -Ipackages/kernels/native/cuda tools/device/skinny-bench.cu packages/kernels/native/cuda/{gemm-skinny,
//        gemv,elementwise}.cu packages/kernels/native/cuda/cublas-loader.cc -ldl -o skinny-bench
//   ./skinny-bench COMMIT > skinny.json   (bash tools/device/run.sh skinny)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cublas-loader.h"
#include "bench-common.cuh"
#include "cuda-common.cuh"

using namespace duo;
using namespace duo::cuda;

namespace {

// out[t][j] = Σ x[t][i] W[j][i] in float64; x rounded to bf16 first when `round`.
__global__ void referenceKernel(const float* x, const __nv_bfloat16* w, double* out, int rows, int64_t k, int64_t m, bool round) {
  const int64_t j = blockIdx.x, t = blockIdx.y;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const float xv = round ? __bfloat162float(__float2bfloat16(x[t * k + i])) : x[t * k + i];
    sum += static_cast<double>(xv) * static_cast<double>(__bfloat162float(w[j * k + i]));
  }
  __shared__ double partial[256];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[t * m + j] = partial[0];
}

struct Shape {
  const char* name;
  std::vector<int64_t> m;  // the matrices sharing x (q/k/v), or gate and up
  int64_t k;
  bool swiglu;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string commit = argc > 1 ? argv[1] : "unknown";
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  CublasLibrary& blas = CublasLibrary::instance();
  const std::vector<Shape> shapes = {
      {"q/k/v", {4096, 1024, 1024}, 4096, false},
      {"o_proj", {4096}, 4096, false},
      {"gate+up (SwiGLU)", {14336, 14336}, 4096, true},
      {"down", {4096}, 14336, false},
      {"lm_head", {128256}, 4096, false},
  };
  const std::vector<int> rowCounts = {1, 2, 4, 8, 16, 32, 64};
  constexpr int64_t kPoolBytes = 3LL << 30;  // weight copies rotate through 3 GB (L2: 50 MB)
  __nv_bfloat16* pool = nullptr;
  check(cudaMalloc(&pool, kPoolBytes), "cudaMalloc pool");
  fillHalf<<<4096, 256, 0, stream>>>(pool, kPoolBytes / 2, 17u, 0.1f);
  const int64_t maxK = 14336, maxM = 128256;
  float *x = nullptr, *out = nullptr, *product = nullptr, *residual = nullptr;
  __nv_bfloat16* rounded = nullptr;
  double* reference = nullptr;
  check(cudaMalloc(&x, 64 * maxK * 4), "cudaMalloc x");
  check(cudaMalloc(&rounded, 64 * maxK * 2), "cudaMalloc x bf16");
  check(cudaMalloc(&out, 64 * (maxM + 2 * 14336) * 4), "cudaMalloc out");
  check(cudaMalloc(&product, 64 * maxM * 4), "cudaMalloc product");
  check(cudaMalloc(&residual, 64 * maxM * 4), "cudaMalloc residual");
  check(cudaMalloc(&reference, 64 * maxM * 8), "cudaMalloc reference");
  fillFloat<<<1024, 256, 0, stream>>>(x, 64 * maxK, 5u, 2.0f);
  check(cudaMemsetAsync(residual, 0, 64 * maxM * 4, stream), "memset");
  check(cudaStreamSynchronize(stream), "fill");

  std::printf("{\n  \"card\": \"%s (sm_%d%d, %d SMs)\",\n  \"commit\": \"%s\",\n", properties.name, properties.major, properties.minor,
              properties.multiProcessorCount, commit.c_str());
  std::printf("  \"settings\": {\"weights\": \"bf16, rotated through %lld MB of copies\", \"timing\": \"CUDA events around 20 launches, median of 9 after 3 warm-up launches\", \"x\": \"f32 rows\"},\n",
              static_cast<long long>(kPoolBytes >> 20));
  std::printf("  \"rows\": [\n");
  bool firstRow = true;
  std::vector<float> host, hostOne;
  std::vector<double> hostReference;
  for (const Shape& shape : shapes) {
    int64_t totalRows = 0;
    for (int64_t m : shape.m) totalRows += m;
    const int64_t matrixBytes = totalRows * shape.k * 2;
    const int copies = static_cast<int>(std::max<int64_t>(1, kPoolBytes / matrixBytes));
    auto weightOf = [&](int copy, size_t matrix) {
      int64_t offset = static_cast<int64_t>(copy % copies) * totalRows * shape.k;
      for (size_t i = 0; i < matrix; i++) offset += shape.m[i] * shape.k;
      return pool + offset;
    };
    // Output layout: matrix i at out + rows · Σ m[<i] (SwiGLU: gate's product is out, up's is `product`).
    auto outOf = [&](size_t matrix, int rows) {
      int64_t offset = 0;
      for (size_t i = 0; i < matrix; i++) offset += shape.m[i];
      return out + offset * rows;
    };
    for (int rows : rowCounts) {
      // Variants: name, cluster size (-1 when not the skinny kernel), launcher.
      // "skinny" is the engine's rule; "warp" the warp-MMA kernel at a pinned split and depth; "wide" the warpgroup
      // kernel (Hopper, more than 8 rows) at a pinned split.
      struct Variant { std::string name; int slices; int depth = 0; int kernel = SkinnyOptions::kRule; };
      std::vector<Variant> variants;
      if (rows <= 2) variants.push_back({"gemv", -1});
      if (blas.available()) variants.push_back({"cublas", -1});
      variants.push_back({"skinny", 0});
      variants.push_back({"skinny-invariant", 0});
      if (rows > 8) variants.push_back({"warp", 0, 0, SkinnyOptions::kWarp});
      for (int depth : {64, 128})
        for (int s = 1; s <= 8; s *= 2)
          if (shape.k % (s * depth) == 0 && shape.k / s >= 256 && (depth == 64 || rows <= 16))
            variants.push_back({"warp", s, depth, SkinnyOptions::kWarp});
      if (rows > 8 && wgmmaCompiled())
        for (int s = 1; s <= 8; s *= 2)
          if (shape.k % (s * 64) == 0 && shape.k / s >= 256) {
            variants.push_back({"wide", s, 0, SkinnyOptions::kWarpgroup});
            variants.push_back({"wide-f32", s, 0, SkinnyOptions::kWarpgroup});
          }
      // Float64 references of this row count: x rounded (tensor cores) and not (GEMV).
      std::vector<std::vector<double>> references[2];
      for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < shape.m.size(); i++) {
          referenceKernel<<<dim3(static_cast<unsigned>(shape.m[i]), rows), 256, 0, stream>>>(x, weightOf(0, i), reference, rows, shape.k,
                                                                                            shape.m[i], round == 1);
          check(cudaGetLastError(), "reference");
          std::vector<double> values(rows * shape.m[i]);
          check(cudaMemcpyAsync(values.data(), reference, values.size() * 8, cudaMemcpyDeviceToHost, stream), "copy");
          check(cudaStreamSynchronize(stream), "reference");
          references[round].push_back(std::move(values));
        }
      for (const Variant& variant : variants) {
        auto launch = [&](int copy, int rows) {
          if (variant.name == "gemv") {
            if (shape.swiglu) {
              launchGemvSwiglu(x, rows, shape.k, weightOf(copy, 0), weightOf(copy, 1), DType::BF16, shape.m[0], out, stream);
            } else if (shape.m.size() > 1) {
              GemvTarget targets[3];
              for (size_t i = 0; i < shape.m.size(); i++) targets[i] = {weightOf(copy, i), outOf(i, rows), nullptr, shape.m[i]};
              launchGemvGroup(x, rows, shape.k, DType::BF16, targets, static_cast<int>(shape.m.size()), stream);
            } else {
              launchGemv(x, rows, shape.k, weightOf(copy, 0), DType::BF16, shape.m[0], out, nullptr, residual, stream);
            }
          } else if (variant.name == "cublas") {
            launchConvert(x, DType::F32, rounded, DType::BF16, rows * shape.k, stream);
            if (shape.swiglu) {
              blas.gemm(stream, static_cast<int>(shape.m[0]), rows, static_cast<int>(shape.k), weightOf(copy, 0), rounded, CUDA_R_16BF, out, 0.0f);
              blas.gemm(stream, static_cast<int>(shape.m[1]), rows, static_cast<int>(shape.k), weightOf(copy, 1), rounded, CUDA_R_16BF, product, 0.0f);
              const float* inputs[] = {out, product};
              launchElementwise(ElementwiseOp::swiglu, inputs, out, rows * shape.m[0], stream);
            } else {
              for (size_t i = 0; i < shape.m.size(); i++) {
                blas.gemm(stream, static_cast<int>(shape.m[i]), rows, static_cast<int>(shape.k), weightOf(copy, i), rounded, CUDA_R_16BF,
                          outOf(i, rows), 0.0f);
              }
            }
          } else {
            SkinnyOptions options;
            options.invariant = variant.name == "skinny-invariant";
            options.slices = variant.slices;
            options.depth = variant.depth;
            options.kernel = variant.kernel;
            // The engine rounds x once for more than 8 rows (the rounding launch is timed with the matmul), unless the
            // warpgroup kernel takes them (it rounds x itself).
            const void* round = nullptr;
            const bool engineRounds =
                variant.name != "skinny" || !wgmmaCompiled() || options.invariant || (shape.m.size() == 1 && !shape.swiglu);
            if (rows > 8 && variant.name != "wide-f32" && engineRounds) {
              launchConvert(x, DType::F32, rounded, DType::BF16, rows * shape.k, stream);
              round = rounded;
            }
            if (shape.swiglu) {
              launchSkinnySwiglu(x, round, rows, shape.k, weightOf(copy, 0), weightOf(copy, 1), DType::BF16, shape.m[0], out, options, stream);
            } else {
              GemvTarget targets[3];
              for (size_t i = 0; i < shape.m.size(); i++) targets[i] = {weightOf(copy, i), outOf(i, rows), nullptr, shape.m[i]};
              const int count = static_cast<int>(shape.m.size());
              launchSkinny(x, round, rows, shape.k, DType::BF16, targets, nullptr, count, options, stream);
            }
          }
        };
        std::string error;
        double us = 0.0, worst = 0.0;
        bool invariant = true;
        try {
          // Correctness on copy 0.
          launch(0, rows);
          check(cudaStreamSynchronize(stream), variant.name.c_str());
          const auto& refs = references[variant.name == "gemv" ? 0 : 1];
          for (size_t i = 0; i < (shape.swiglu ? 1 : shape.m.size()); i++) {
            const int64_t count = rows * shape.m[i];
            host.resize(count);
            check(cudaMemcpy(host.data(), outOf(i, rows), count * 4, cudaMemcpyDeviceToHost), "copy out");
            double scale = 0.0;
            std::vector<double> expected(count);
            for (int64_t e = 0; e < count; e++) {
              double value = refs[i][e];
              if (shape.swiglu) value = value / (1.0 + std::exp(-value)) * refs[1][e];
              expected[e] = value;
              scale = std::max(scale, std::fabs(value));
            }
            for (int64_t e = 0; e < count; e++) worst = std::max(worst, std::fabs(host[e] - expected[e]) / scale);
          }
          // Row 0 alone must give the same bits (skinny kernel).
          if (variant.name == "skinny-invariant" && rows > 1) {
            host.resize(shape.m[0]);
            check(cudaMemcpy(host.data(), outOf(0, rows), shape.m[0] * 4, cudaMemcpyDeviceToHost), "copy out");
            launch(0, 1);
            hostOne.resize(shape.m[0]);
            check(cudaMemcpy(hostOne.data(), outOf(0, 1), shape.m[0] * 4, cudaMemcpyDeviceToHost), "copy out");
            invariant = std::memcmp(host.data(), hostOne.data(), shape.m[0] * 4) == 0;
          }
          std::vector<double> samples;
          for (int i = 0; i < 3; i++) launch(i, rows);
          cudaEvent_t start, stop;
          check(cudaEventCreate(&start), "event");
          check(cudaEventCreate(&stop), "event");
          int copy = 3;
          for (int trial = 0; trial < 9; trial++) {
            check(cudaEventRecord(start, stream), "record");
            for (int i = 0; i < 20; i++) launch(copy++, rows);
            check(cudaEventRecord(stop, stream), "record");
            check(cudaEventSynchronize(stop), "sync");
            float ms = 0.0f;
            check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
            samples.push_back(ms * 1000.0 / 20);
          }
          cudaEventDestroy(start);
          cudaEventDestroy(stop);
          us = median(samples);
        } catch (const std::exception& failure) {
          error = failure.what();
          cudaGetLastError();
        }
        std::printf("%s    {\"shape\": \"%s\", \"m\": %lld, \"k\": %lld, \"rows\": %d, \"variant\": \"%s\", \"slices\": %d, \"depth\": %d, "
                    "\"us\": %.2f, \"TBps\": %.3f, \"maxError\": %.3g, \"rowZeroAlone\": %s%s%s%s}",
                    firstRow ? "" : ",\n", shape.name, static_cast<long long>(totalRows), static_cast<long long>(shape.k), rows,
                    variant.name.c_str(), variant.slices, variant.depth, us, us > 0 ? matrixBytes / (us * 1e-6) / 1e12 : 0.0, worst,
                    variant.name == "skinny-invariant" ? (invariant ? "\"same bits\"" : "\"DIFFERENT\"") : "null", error.empty() ? "" : ", \"error\": \"", error.c_str(), error.empty() ? "" : "\"");
        std::fflush(stdout);
        std::fprintf(stderr, "%-18s rows %2d %-9s slices %2d depth %3d: %8.1f us %6.3f TB/s err %.2g%s %s\n", shape.name, rows, variant.name.c_str(),
                     variant.slices, variant.depth, us, us > 0 ? matrixBytes / (us * 1e-6) / 1e12 : 0.0, worst, invariant ? "" : " NOT INVARIANT",
                     error.c_str());
        firstRow = false;
      }
    }
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
