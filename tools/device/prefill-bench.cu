// Prefill attention alone, the CUDA kernels side by side: the warpgroup-MMA kernel (attention-prefill-wgmma.cu; with
// tensor-memory copies, and with cp.async for every head) and the mma.sync one (prefillMmaKernel), causal over S tokens
// in one call at Llama-3-8B heads (32 query / 8 KV heads, head dim 128, bf16 caches), full attention and with half the
// KV heads streaming (sink 128, recent 256). Each kernel's output is checked against a float64 reference on sampled
// rows of every head; timed with CUDA events, median of 5 after a warm-up; TFLOP/s as FlashAttention counts causal
// attention (4·S²·D·heads / 2).
//   bash tools/device/run.sh prefill   (tools/device/prefill-sweep.sh; writes $OUT/prefill.json)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench-common.cuh"
#include "cuda-common.cuh"

using namespace duo;
using namespace duo::cuda;

namespace {

// out[r][h] for the sampled rows, in float64 from f32 q and the 16-bit caches, with the layout's mask. One block per
// (sample, head); 128 threads over keys.
__global__ void referenceKernel(const float* q, int64_t qStride, const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t capacity,
                                const int64_t* samples, double* out, int heads, int kvHeads, int D, float scale, StreamingLayout layout) {
  const int64_t row = samples[blockIdx.x];
  const int head = blockIdx.y, kvHead = head / (heads / kvHeads);
  const bool streams = layout.streams(kvHead);
  const __nv_bfloat16* keys = streams ? static_cast<const __nv_bfloat16*>(layout.key) + layout.headStart(kvHead, D)
                                      : k + layout.fullRow(kvHead) * capacity * D;
  const __nv_bfloat16* values = streams ? static_cast<const __nv_bfloat16*>(layout.value) + layout.headStart(kvHead, D)
                                        : v + layout.fullRow(kvHead) * capacity * D;
  auto slot = [&](int64_t key) { return streams ? layout.slot(key) : key; };
  __shared__ double reduce[128];
  double best = -1e300;
  for (int64_t key = threadIdx.x; key <= row; key += blockDim.x) {
    if (!keyVisible(layout, streams, row, key, 0)) continue;
    double dot = 0.0;
    for (int c = 0; c < D; c++) dot += static_cast<double>(q[row * qStride + head * D + c]) * __bfloat162float(keys[slot(key) * D + c]);
    best = fmax(best, dot * scale);
  }
  reduce[threadIdx.x] = best;
  __syncthreads();
  for (int s = 64; s > 0; s >>= 1) {
    if (threadIdx.x < s) reduce[threadIdx.x] = fmax(reduce[threadIdx.x], reduce[threadIdx.x + s]);
    __syncthreads();
  }
  const double maximum = reduce[0];
  __syncthreads();
  // Channel c's numerator by thread c (D ≤ 128), the denominator by all.
  double total = 0.0, numerator = 0.0;
  for (int64_t key = 0; key <= row; key++) {
    if (!keyVisible(layout, streams, row, key, 0)) continue;
    double dot = 0.0;
    for (int c = threadIdx.x; c < D; c += blockDim.x) dot += static_cast<double>(q[row * qStride + head * D + c]) * __bfloat162float(keys[slot(key) * D + c]);
    reduce[threadIdx.x] = dot;
    __syncthreads();
    for (int s = 64; s > 0; s >>= 1) {
      if (threadIdx.x < s) reduce[threadIdx.x] += reduce[threadIdx.x + s];
      __syncthreads();
    }
    const double p = exp(reduce[0] * scale - maximum);
    __syncthreads();
    total += p;
    if (threadIdx.x < D) numerator += p * __bfloat162float(values[slot(key) * D + threadIdx.x]);
  }
  if (threadIdx.x < D) out[(blockIdx.x * heads + head) * D + threadIdx.x] = numerator / total;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string commit = argc > 1 ? argv[1] : "unknown";
  std::vector<int64_t> lengths = {4096, 16384, 65536};
  if (argc > 2) {
    lengths.clear();
    for (int i = 2; i < argc; i++) lengths.push_back(std::atoll(argv[i]));
  }
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  const int heads = 32, kvHeads = 8, D = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::printf("{\n  \"card\": \"%s (sm_%d%d, %d SMs)\",\n  \"commit\": \"%s\",\n", properties.name, properties.major, properties.minor,
              properties.multiProcessorCount, commit.c_str());
  std::printf("  \"settings\": {\"heads\": %d, \"kvHeads\": %d, \"headDim\": %d, \"cache\": \"bf16\", \"streaming\": \"sink 128, recent 256, odd KV heads\", "
              "\"timing\": \"CUDA events around one call, median of 5 after a warm-up\", \"flops\": \"4*S^2*D*heads/2\"},\n  \"rows\": [\n",
              heads, kvHeads, D);
  bool first = true;
  for (const int64_t S : lengths) {
    float *q = nullptr, *out = nullptr;
    __nv_bfloat16 *k = nullptr, *v = nullptr, *regionK = nullptr, *regionV = nullptr;
    const int64_t qStride = static_cast<int64_t>(heads) * D;
    check(cudaMalloc(&q, S * qStride * 4), "cudaMalloc q");
    check(cudaMalloc(&out, S * qStride * 4), "cudaMalloc out");
    check(cudaMalloc(&k, static_cast<int64_t>(kvHeads) * S * D * 2), "cudaMalloc k");
    check(cudaMalloc(&v, static_cast<int64_t>(kvHeads) * S * D * 2), "cudaMalloc v");
    fillFloat<<<1024, 256, 0, stream>>>(q, S * qStride, 3u, 4.0f);
    fillHalf<<<1024, 256, 0, stream>>>(k, static_cast<int64_t>(kvHeads) * S * D, 5u, 2.0f);
    fillHalf<<<1024, 256, 0, stream>>>(v, static_cast<int64_t>(kvHeads) * S * D, 7u, 2.0f);
    // The streaming layout: odd KV heads stream; their region holds the sinks and a ring as long as the chunk plus
    // the window (so one call's keys all fit), filled from the same random rows.
    StreamingLayout streaming;
    streaming.sink = 128;
    streaming.recent = 256;
    streaming.ring = S + 256;
    for (int h = 1; h < kvHeads; h += 2) streaming.streamingHeads.add(h);
    streaming.retrievalKvHeads = kvHeads / 2;
    const int64_t regionElements = static_cast<int64_t>(kvHeads / 2) * streaming.slots() * D;
    check(cudaMalloc(&regionK, regionElements * 2), "cudaMalloc region");
    check(cudaMalloc(&regionV, regionElements * 2), "cudaMalloc region");
    fillHalf<<<1024, 256, 0, stream>>>(regionK, regionElements, 11u, 2.0f);
    fillHalf<<<1024, 256, 0, stream>>>(regionV, regionElements, 13u, 2.0f);
    streaming.key = regionK;
    streaming.value = regionV;
    // Sampled rows: the first tiles' edges, the middle, the end.
    std::vector<int64_t> samples = {0, 1, 63, 64, 127, 128, 129, 255, 300, 511, S / 2 - 1, S / 2, S - 129, S - 2, S - 1};
    int64_t* deviceSamples = nullptr;
    double* reference = nullptr;
    check(cudaMalloc(&deviceSamples, samples.size() * 8), "cudaMalloc samples");
    check(cudaMemcpy(deviceSamples, samples.data(), samples.size() * 8, cudaMemcpyHostToDevice), "copy samples");
    check(cudaMalloc(&reference, samples.size() * heads * D * 8), "cudaMalloc reference");
    for (int share = 0; share < 2; share++) {
      AttentionArgs args{};
      args.heads = heads;
      args.kvHeads = kvHeads;
      args.headDim = D;
      args.scale = scale;
      args.keyLength = S;
      args.queryStart = 0;
      if (share == 1) args.streaming = streaming;
      referenceKernel<<<dim3(static_cast<unsigned>(samples.size()), heads), 128, 0, stream>>>(q, qStride, k, v, S, deviceSamples, reference,
                                                                                          heads, kvHeads, D, scale, args.streaming);
      check(cudaGetLastError(), "reference");
      std::vector<double> expected(samples.size() * heads * D);
      check(cudaMemcpyAsync(expected.data(), reference, expected.size() * 8, cudaMemcpyDeviceToHost, stream), "copy reference");
      check(cudaStreamSynchronize(stream), "reference");
      const char* names[] = {"mma.sync", "wgmma", "wgmma-cp.async"};
      const char* only = std::getenv("PREFILL_KERNELS");  // e.g. "1": the default warpgroup kernel alone
      for (int kernel = 2; kernel >= 0; kernel--) {
        if (only && !std::strchr(only, '0' + kernel)) continue;
        const bool wgmma = kernel > 0;
        if (wgmma && !prefillWgmmaServes(q, qStride, S, args, DType::BF16)) continue;
        setPrefillWgmma(kernel);
        std::string error;
        double worst = 0.0, scaleOf = 0.0, ms = 0.0;
        try {
          check(cudaMemsetAsync(out, 0xff, S * qStride * 4, stream), "memset");  // NaN: a row left unwritten shows
          launchAttentionPrefill(q, qStride, k, v, DType::BF16, S, out, S, args, stream);
          check(cudaStreamSynchronize(stream), "prefill");
          std::vector<float> row(qStride);
          for (size_t i = 0; i < samples.size(); i++) {
            check(cudaMemcpy(row.data(), out + samples[i] * qStride, qStride * 4, cudaMemcpyDeviceToHost), "copy row");
            for (int h = 0; h < heads; h++)
              for (int c = 0; c < D; c++) {
                const double want = expected[(i * heads + h) * D + c], got = row[h * D + c];
                scaleOf = std::max(scaleOf, std::fabs(want));
                worst = std::isnan(got) ? INFINITY : std::max(worst, std::fabs(got - want));
              }
          }
          cudaEvent_t start, stop;
          check(cudaEventCreate(&start), "event");
          check(cudaEventCreate(&stop), "event");
          launchAttentionPrefill(q, qStride, k, v, DType::BF16, S, out, S, args, stream);
          std::vector<double> samplesMs;
          for (int trial = 0; trial < 5; trial++) {
            check(cudaEventRecord(start, stream), "record");
            launchAttentionPrefill(q, qStride, k, v, DType::BF16, S, out, S, args, stream);
            check(cudaEventRecord(stop, stream), "record");
            check(cudaEventSynchronize(stop), "sync");
            float elapsed = 0.0f;
            check(cudaEventElapsedTime(&elapsed, start, stop), "elapsed");
            samplesMs.push_back(elapsed);
          }
          ms = median(samplesMs);
          cudaEventDestroy(start);
          cudaEventDestroy(stop);
        } catch (const std::exception& failure) {
          error = failure.what();
          cudaGetLastError();
        }
        const double flops = 4.0 * static_cast<double>(S) * S * D * heads / 2.0;
        const double tflops = ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0;
        std::printf("%s    {\"length\": %lld, \"streaming\": %s, \"kernel\": \"%s\", \"ms\": %.3f, \"tflops\": %.1f, \"maxError\": %.3g, \"maxReference\": %.3g%s%s%s}",
                    first ? "" : ",\n", static_cast<long long>(S), share ? "0.5" : "0", names[kernel], ms, tflops,
                    worst / std::max(scaleOf, 1e-30), scaleOf, error.empty() ? "" : ", \"error\": \"", error.c_str(), error.empty() ? "" : "\"");
        std::fflush(stdout);
        std::fprintf(stderr, "S %6lld %-9s %-8s: %9.3f ms %7.1f TFLOP/s (causal count)  error %.3g of %.3g %s\n", static_cast<long long>(S),
                     share ? "stream50" : "full", names[kernel], ms, tflops, worst, scaleOf, error.c_str());
        first = false;
      }
    }
    cudaFree(q); cudaFree(out); cudaFree(k); cudaFree(v); cudaFree(regionK); cudaFree(regionV); cudaFree(deviceSamples); cudaFree(reference);
  }
  std::printf("\n  ]\n}\n");
  return 0;
}
