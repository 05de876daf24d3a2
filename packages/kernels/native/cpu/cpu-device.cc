// CPU backend: memory, conversions, normalisation, RoPE and the cache writes.
#include "cpu-device.h"
#include "../weight-blocks.h"

#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>


namespace duo {

namespace {
struct ReadyRead final : Device::PendingRead {
  void wait() override {}
};
std::string cpuModelName() {
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "CPU";
}
}  // namespace

CpuDevice::CpuDevice(unsigned threads) : pool_(threads) {}

std::string CpuDevice::name() const { return cpuModelName() + " (" + std::to_string(pool_.size()) + " threads)"; }

// Tensors from this size up (weights, caches) start on a 2 MB boundary and ask for transparent huge pages: a decode
// step streams every weight once, and with 4 KB pages its reads walk the page tables for every 4 KB of them.
constexpr size_t kHugePage = 2u << 20;
constexpr size_t kHugeFrom = 4u << 20;

void* CpuDevice::allocate(size_t bytes) {
  const bool huge = bytes >= kHugeFrom;
  const size_t alignment = huge ? kHugePage : 64;
  size_t rounded = (std::max<size_t>(bytes, 1) + alignment - 1) / alignment * alignment;
  void* pointer = std::aligned_alloc(alignment, rounded);
  if (!pointer) throw Error("DUO_OOM", "CPU allocation of " + std::to_string(bytes) + " bytes failed");
  if (huge) madvise(pointer, rounded, MADV_HUGEPAGE);  // advice only: where huge pages are off it changes nothing
  allocated_ += bytes;
  peak_ = std::max(peak_, allocated_);
  return pointer;
}

void CpuDevice::release(void* pointer, size_t bytes) {
  std::free(pointer);
  allocated_ -= bytes;
}

// Paged tensors on the CPU: one shared anonymous mapping (its own shmem object) per tensor, which the OS backs page by
// page on first touch, so memory that was never committed costs nothing; commits are accounted here. Shared, not
// private, so that sharePaged can map the same physical pages at a second address (mremap with old size 0 duplicates a
// shared mapping); each page's record counts the tensors that map it, and a page whose last mapping goes is punched
// out of its shmem object (MADV_REMOVE) even while that object lives on through another tensor's mappings.
size_t CpuDevice::pageBytes() const { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void CpuDevice::reservePaged(Tensor& tensor) {
  void* pointer = tensor.bytes == 0 ? nullptr
                                    : mmap(nullptr, tensor.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (pointer == MAP_FAILED) throw Error("DUO_OOM", "CPU reservation of " + std::to_string(tensor.bytes) + " bytes failed");
  tensor.data = pointer;
  tensor.backing = nextBacking_++;
  tensor.spanPages.assign(static_cast<size_t>(tensor.spans), {});
}

unsigned long long CpuDevice::newPage(unsigned long long backing, unsigned long long backingPage) {
  unsigned long long record;
  if (freeRecords_.empty()) {
    record = pages_.size();
    pages_.emplace_back();
  } else {
    record = freeRecords_.back();
    freeRecords_.pop_back();
  }
  pages_[record] = PageRecord{backing, backingPage, 1};
  return record;
}

void CpuDevice::commitPaged(Tensor& tensor, size_t bytesPerSpan) {
  const size_t page = pageBytes();
  const size_t wanted = std::min(tensor.spanBytes, (bytesPerSpan + page - 1) / page * page);
  if (wanted <= tensor.committedPerSpan) return;
  for (int64_t span = 0; span < tensor.spans; span++) {
    for (size_t offset = tensor.committedPerSpan; offset < wanted; offset += page)
      tensor.spanPages[span].push_back(newPage(tensor.backing, (span * tensor.spanBytes + offset) / page));
  }
  allocated_ += static_cast<size_t>(tensor.spans) * (wanted - tensor.committedPerSpan);
  peak_ = std::max(peak_, allocated_);
  tensor.committedPerSpan = wanted;
}

void CpuDevice::sharePaged(Tensor& target, Tensor& source, size_t bytesPerSpan) {
  const size_t page = pageBytes();
  const size_t whole = bytesPerSpan / page, total = (bytesPerSpan + page - 1) / page;
  for (int64_t span = 0; span < target.spans; span++) {
    char* from = static_cast<char*>(source.data) + span * source.spanBytes;
    char* to = static_cast<char*>(target.data) + span * target.spanBytes;
    const std::vector<unsigned long long>& sourcePages = source.spanPages[span];
    std::vector<unsigned long long>& targetPages = target.spanPages[span];
    // Runs of pages that are consecutive pages of one shmem object: one duplicated mapping each.
    for (size_t first = 0; first < whole;) {
      const PageRecord& start = pages_[sourcePages[first]];
      size_t run = 1;
      while (first + run < whole && pages_[sourcePages[first + run]].backing == start.backing &&
             pages_[sourcePages[first + run]].backingPage == start.backingPage + run)
        run++;
      void* mapped = mremap(from + first * page, 0, run * page, MREMAP_MAYMOVE | MREMAP_FIXED, to + first * page);
      if (mapped == MAP_FAILED) {
        // What is mapped so far stays recorded, so releasing the target frees exactly that; it is unusable otherwise.
        target.committedPerSpan = 0;
        target.sharesPages = source.sharesPages = true;
        throw Error("DUO_OOM", "mapping shared pages failed: " + std::string(std::strerror(errno)));
      }
      for (size_t i = first; i < first + run; i++) {
        pages_[sourcePages[i]].mappings++;
        targetPages.push_back(sourcePages[i]);
      }
      first += run;
    }
    if (total > whole) {  // the last partial page: a fresh page of the target's own, holding a copy
      targetPages.push_back(newPage(target.backing, (span * target.spanBytes + whole * page) / page));
      std::memcpy(to + whole * page, from + whole * page, bytesPerSpan - whole * page);
      allocated_ += page;
    }
  }
  peak_ = std::max(peak_, allocated_);
  target.committedPerSpan = total * page;
  target.sharesPages = source.sharesPages = true;
}

void CpuDevice::releasePaged(Tensor& tensor) {
  if (!tensor.data) return;
  const size_t page = pageBytes();
  size_t freed = 0;
  for (int64_t span = 0; span < tensor.spans; span++) {
    char* base = static_cast<char*>(tensor.data) + span * tensor.spanBytes;
    const std::vector<unsigned long long>& pages = tensor.spanPages[span];
    // Pages of this span that no other tensor maps: punched out in runs (a shmem object other tensors still map
    // would otherwise keep them), unless no page of this tensor was ever shared, when unmapping frees them all.
    size_t runStart = 0, runLength = 0;
    const auto punch = [&] {
      if (runLength > 0 && tensor.sharesPages) madvise(base + runStart * page, runLength * page, MADV_REMOVE);
      runLength = 0;
    };
    for (size_t i = 0; i < pages.size(); i++) {
      PageRecord& record = pages_[pages[i]];
      if (--record.mappings > 0) {
        punch();
        continue;
      }
      freeRecords_.push_back(pages[i]);
      freed++;
      if (runLength == 0) runStart = i;
      runLength++;
    }
    punch();
  }
  munmap(tensor.data, tensor.bytes);
  allocated_ -= freed * page;
  tensor.data = nullptr;
  tensor.committedPerSpan = 0;
  tensor.spanPages.clear();
}

void CpuDevice::write(Tensor& tensor, const void* host, size_t byteOffset, size_t bytes) {
  std::memcpy(static_cast<char*>(tensor.data) + byteOffset, host, bytes);
}

Device::PendingRead* CpuDevice::read(const Tensor& tensor, void* host, size_t byteOffset, size_t bytes) {
  std::memcpy(host, static_cast<const char*>(tensor.data) + byteOffset, bytes);
  return new ReadyRead();
}

namespace {

// f16 values widened eight at a time by F16C (exact, as f16ToFloat is): f16 embedding rows, norm gains and the backward
// pass's cache rows (the attention widens its rows in registers, attention-body.inc).
__attribute__((target("avx,f16c"))) void widenHalvesF16c(const uint16_t* source, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(source + i))));
  for (; i < count; i++) out[i] = f16ToFloat(source[i]);
}

}  // namespace

void loadFloats(const void* base, DType dtype, int64_t offset, int64_t count, float* out) {
  if (isBlockType(dtype)) {
    // Whole blocks only: the matmul's k-blocks (256) and the embedding's rows start and end on block boundaries.
    const int values = blockValues(dtype);
    if (offset % values != 0 || count % values != 0)
      throw Error("DUO_ARG", std::string("internal: ") + dtypeName(dtype) + " read off its block boundaries");
    decodeBlocks(static_cast<const uint8_t*>(base) + (offset / values) * blockBytes(dtype), dtype, count / values, out);
    return;
  }
  if (dtype == DType::F32) {
    std::memcpy(out, static_cast<const float*>(base) + offset, count * sizeof(float));
  } else if (dtype == DType::BF16) {
    const uint16_t* source = static_cast<const uint16_t*>(base) + offset;
    for (int64_t i = 0; i < count; i++) out[i] = bf16ToFloat(source[i]);
  } else if (static const bool f16c = __builtin_cpu_supports("f16c"); dtype == DType::F16 && f16c) {
    widenHalvesF16c(static_cast<const uint16_t*>(base) + offset, count, out);
  } else {
    for (int64_t i = 0; i < count; i++) out[i] = loadFloat(base, dtype, offset + i);
  }
}

void CpuDevice::copyRows(const Tensor& source, Tensor& target, int64_t sourceRow, int64_t targetRow, int64_t rows) {
  size_t rowBytes = source.cols() * dtypeBytes(source.dtype);
  std::memmove(static_cast<char*>(target.data) + targetRow * rowBytes,
               static_cast<const char*>(source.data) + sourceRow * rowBytes, rows * rowBytes);
}

void CpuDevice::convert(const Tensor& source, Tensor& target) {
  pool_.parallelFor(source.size, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) storeFloat(target.data, target.dtype, i, loadFloat(source.data, source.dtype, i));
  });
}

void CpuDevice::fillRandom(Tensor& tensor, uint64_t seed, float standardDeviation) {
  pool_.parallelFor(tensor.size, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++)
      storeFloat(tensor.data, tensor.dtype, i, randomNormal(seed, static_cast<uint64_t>(i)) * standardDeviation);
  });
}

void CpuDevice::embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  int64_t dim = table.cols();
  const int32_t* index = ids.as<int32_t>();
  pool_.parallelFor(ids.size, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) loadFloats(table.data, table.dtype, index[r] * dim, dim, out.as<float>() + r * dim);
  });
}

void CpuDevice::rmsNorm(const Tensor& x, const Tensor& weight, Tensor& out, float eps) {
  int64_t dim = x.cols();
  std::vector<float> scale(dim);
  loadFloats(weight.data, weight.dtype, 0, dim, scale.data());
  pool_.parallelFor(x.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* row = x.as<float>() + r * dim;
      float* target = out.as<float>() + r * dim;
      double sumSquares = 0;
      for (int64_t i = 0; i < dim; i++) sumSquares += static_cast<double>(row[i]) * row[i];
      float inverse = 1.0f / std::sqrt(static_cast<float>(sumSquares / dim) + eps);
      for (int64_t i = 0; i < dim; i++) target[i] = row[i] * inverse * scale[i];
    }
  });
}

void CpuDevice::matmul(const Tensor& x, const Tensor& weight, Tensor& out, const Tensor* bias, const Tensor* residual) {
  cpuMatmul(pool_, x.as<float>(), x.rows(), x.cols(), weight.data, weight.dtype, weight.rows(), out.as<float>(),
            bias ? bias->as<float>() : nullptr, residual ? residual->as<float>() : nullptr, integerQ8_);
}

void CpuDevice::rope(Tensor& x, const Tensor& positions, const Tensor& inverseFrequencies, const RopeArgs& args) {
  int64_t half = args.headDim / 2;
  const float* frequency = inverseFrequencies.as<float>();
  const int32_t* position = positions.as<int32_t>();
  pool_.parallelFor(x.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      float* row = x.as<float>() + r * x.cols();
      for (int64_t i = 0; i < half; i++) {
        // Angles in double so long positions (1M+) keep their phase as the float64 reference does.
        double angle = (args.inverse ? -1.0 : 1.0) * static_cast<double>(position[r]) * static_cast<double>(frequency[i]);
        float cosine = static_cast<float>(std::cos(angle)), sine = static_cast<float>(std::sin(angle));
        for (int h = 0; h < args.heads; h++) {
          float* head = row + static_cast<int64_t>(h) * args.headDim;
          int64_t a = args.interleaved ? 2 * i : i, b = args.interleaved ? 2 * i + 1 : i + half;
          float first = head[a], second = head[b];
          head[a] = first * cosine - second * sine;
          head[b] = first * sine + second * cosine;
        }
      }
    }
  });
}

void CpuDevice::writeCache(const Tensor& source, Tensor& cache, int64_t start) {
  int64_t kvHeads = cache.shape[0], capacity = cache.shape[1], headDim = cache.shape[2];
  int64_t rows = source.rows();
  pool_.parallelFor(kvHeads * rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; t++) {
      int64_t head = t / rows, r = t % rows;
      const float* from = source.as<float>() + r * source.cols() + head * headDim;
      int64_t base = (head * capacity + start + r) * headDim;
      for (int64_t i = 0; i < headDim; i++) storeFloat(cache.data, cache.dtype, base + i, from[i]);
    }
  });
}

void CpuDevice::ropeWriteCache(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& frequencies,
                               const RopeArgs& args, int kvHeads, Tensor& keyCache, Tensor& valueCache,
                               const StreamingLayout& streaming, const KvQuantPlanes& quant) {
  rope(q, positions, frequencies, args);
  rope(k, positions, frequencies, RopeArgs{kvHeads, args.headDim, args.interleaved});
  const int64_t rows = q.rows(), headDim = args.headDim, capacity = keyCache.shape[1];
  const int32_t* position = positions.as<int32_t>();
  if (quant.scheme != 0) {
    writeQuantizedRows(k, v, position, kvHeads, static_cast<int>(headDim), keyCache, valueCache, streaming, quant);
    return;
  }
  pool_.parallelFor(kvHeads * rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; t++) {
      const int64_t head = t / rows, r = t % rows;
      const bool streams = streaming.streams(static_cast<int>(head));
      if (!streams && !streaming.shard.owns(position[r])) continue;  // another rank's chunk (context parallelism)
      void* keys = streams ? streaming.key : keyCache.data;
      void* values = streams ? streaming.value : valueCache.data;
      const int64_t base = streams ? streaming.element(static_cast<int>(head), position[r], headDim)
                                   : streaming.fullElement(static_cast<int>(head), position[r], capacity, headDim);
      const float* key = k.as<float>() + r * k.cols() + head * headDim;
      const float* value = v.as<float>() + r * v.cols() + head * headDim;
      for (int64_t i = 0; i < headDim; i++) {
        storeFloat(keys, keyCache.dtype, base + i, key[i]);
        storeFloat(values, keyCache.dtype, base + i, value[i]);
      }
    }
  });
}

void CpuDevice::argmax(const Tensor& logits, Tensor& out) {
  int64_t vocab = logits.cols();
  for (int64_t r = 0; r < logits.rows(); r++) {
    const float* row = logits.as<float>() + r * vocab;
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; i++)
      if (row[i] > row[best]) best = i;
    out.as<int32_t>()[r] = static_cast<int32_t>(best);
  }
}

void CpuDevice::sample(const Tensor& logits, const Tensor& settings, Tensor& out) {
  const int64_t vocab = logits.cols();
  pool_.parallelFor(logits.rows(), 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order;
    std::vector<double> weights;
    for (int64_t r = begin; r < end; r++) {
      const float* row = logits.as<float>() + r * vocab;
      const float* setting = settings.as<float>() + r * 4;
      const double temperature = setting[0], topP = setting[2], u = setting[3];
      const int64_t topK = static_cast<int64_t>(setting[1]);
      int32_t& chosen = out.as<int32_t>()[r];
      if (temperature <= 0) {
        chosen = static_cast<int32_t>(std::max_element(row, row + vocab) - row);  // the first maximum
        continue;
      }
      // Falling logit, the lower index first on ties; only the first `keep` need ordering.
      const int64_t keep = topK > 0 && topK < vocab ? topK : vocab;
      order.resize(static_cast<size_t>(vocab));
      for (int64_t i = 0; i < vocab; i++) order[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      const auto before = [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); };
      std::partial_sort(order.begin(), order.begin() + keep, order.end(), before);
      const double maximum = row[order[0]];
      weights.resize(static_cast<size_t>(keep));
      double total = 0;
      for (int64_t i = 0; i < keep; i++) total += weights[static_cast<size_t>(i)] = std::exp((row[order[static_cast<size_t>(i)]] - maximum) / temperature);
      int64_t kept = keep;
      if (topP < 1) {
        double cumulative = 0;
        kept = 0;
        while (kept < keep && cumulative < topP * total) cumulative += weights[static_cast<size_t>(kept++)];
        total = cumulative;
      }
      double threshold = u * total;
      chosen = order[static_cast<size_t>(kept - 1)];
      for (int64_t i = 0; i < kept; i++) {
        threshold -= weights[static_cast<size_t>(i)];
        if (threshold <= 0) {
          chosen = order[static_cast<size_t>(i)];
          break;
        }
      }
    }
  });
}

void CpuDevice::softmax(const Tensor& logits, Tensor& out, float temperature) {
  int64_t vocab = logits.cols();
  pool_.parallelFor(logits.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* row = logits.as<float>() + r * vocab;
      float* target = out.as<float>() + r * vocab;
      float maximum = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int64_t i = 0; i < vocab; i++) {
        target[i] = std::exp((row[i] - maximum) / temperature);
        sum += target[i];
      }
      float inverse = static_cast<float>(1.0 / sum);
      for (int64_t i = 0; i < vocab; i++) target[i] *= inverse;
    }
  });
}

}  // namespace duo
