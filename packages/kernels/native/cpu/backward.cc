// CPU input gradients for the gate trainer: matmul, RMSNorm, SwiGLU, attention (causal or Λ) and the gate mix.
// Every sum runs in a fixed order on one thread, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "cpu-device.h"

namespace duo {

void CpuDevice::matmulBackward(const Tensor& gradOut, const Tensor& weight, Tensor& gradInput, bool accumulate) {
  // gradOut · W = gradOut · (Wᵀ)ᵀ: the forward GEMM over the transposed weight (f32, once per call).
  const int64_t m = weight.rows(), k = weight.cols();
  std::vector<float> transposed(static_cast<size_t>(m * k));
  pool_.parallelFor(m, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(k);
    for (int64_t j = begin; j < end; j++) {
      loadFloats(weight.data, weight.dtype, j * k, k, row.data());
      for (int64_t i = 0; i < k; i++) transposed[i * m + j] = row[i];
    }
  });
  cpuMatmul(pool_, gradOut.as<float>(), gradOut.rows(), m, transposed.data(), DType::F32, k, gradInput.as<float>(), nullptr,
            accumulate ? gradInput.as<float>() : nullptr);
}

void CpuDevice::rmsNormBackward(const Tensor& x, const Tensor& weight, const Tensor& gradOut, Tensor& gradInput, float eps,
                                bool accumulate) {
  const int64_t dim = x.cols();
  std::vector<float> gain(dim);
  loadFloats(weight.data, weight.dtype, 0, dim, gain.data());
  pool_.parallelFor(x.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const float* row = x.as<float>() + r * dim;
      const float* grad = gradOut.as<float>() + r * dim;
      float* target = gradInput.as<float>() + r * dim;
      double sumSquares = 0, dot = 0;
      for (int64_t i = 0; i < dim; i++) {
        sumSquares += static_cast<double>(row[i]) * row[i];
        dot += static_cast<double>(row[i]) * gain[i] * grad[i];
      }
      // dx = r·(w ⊙ dy) − r³/n · x · Σ(x ⊙ w ⊙ dy)
      const float inverse = 1.0f / std::sqrt(static_cast<float>(sumSquares / dim) + eps);
      const float correction = static_cast<float>(dot / dim) * inverse * inverse * inverse;
      for (int64_t i = 0; i < dim; i++) {
        const float value = inverse * gain[i] * grad[i] - correction * row[i];
        target[i] = accumulate ? target[i] + value : value;
      }
    }
  });
}

void CpuDevice::swigluBackward(const Tensor& gate, const Tensor& up, const Tensor& gradOut, Tensor& gradGate, Tensor& gradUp) {
  pool_.parallelFor(gate.size, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float g = gate.as<float>()[i], u = up.as<float>()[i], d = gradOut.as<float>()[i];
      const float sigmoid = 1.0f / (1.0f + std::exp(-g));
      gradGate.as<float>()[i] = d * u * sigmoid * (1.0f + g * (1.0f - sigmoid));
      gradUp.as<float>()[i] = d * g * sigmoid;
    }
  });
}

namespace {

// Rows of a [kvHeads, capacity, headDim] cache widened to f32, one KV head at a time.
struct HeadRows {
  std::vector<float> data;
  int64_t headDim;
  HeadRows(const Tensor& cache, int kvHead, int64_t length, int64_t headDim) : data(length * headDim), headDim(headDim) {
    loadFloats(cache.data, cache.dtype, static_cast<int64_t>(kvHead) * cache.shape[1] * headDim, length * headDim, data.data());
  }
  const float* row(int64_t position) const { return data.data() + position * headDim; }
};


}  // namespace

void CpuDevice::attentionBackward(const Tensor& q, const Tensor& keyCache, const Tensor& valueCache, const Tensor& out,
                                  const Tensor& gradOut, Tensor& gradQuery, Tensor& gradKey, Tensor& gradValue,
                                  const AttentionBackwardArgs& args) {
  const int64_t length = args.length, headDim = args.headDim, group = args.heads / args.kvHeads;
  const int64_t queryStride = static_cast<int64_t>(args.heads) * headDim, keyStride = static_cast<int64_t>(args.kvHeads) * headDim;
  std::vector<HeadRows> keys, values;
  for (int g = 0; g < args.kvHeads; g++) {
    keys.emplace_back(keyCache, g, length, headDim);
    values.emplace_back(valueCache, g, length, headDim);
  }
  // Per (head, query): the softmax's log-normaliser and D = ⟨dO, O⟩ (= Σ_j P_j dP_j).
  std::vector<float> logNormaliser(args.heads * length), outputDot(args.heads * length);
  const float* query = q.as<float>();
  const float* gradient = gradOut.as<float>();
  pool_.parallelFor(length * args.heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, accumulator(headDim);
    for (int64_t task = begin; task < end; task++) {
      const int64_t i = task / args.heads, head = task % args.heads, kvHead = head / group;
      const float* row = query + i * queryStride + head * headDim;
      const float* gradRow = gradient + i * queryStride + head * headDim;
      const int64_t count = args.keyCount(i);
      scores.resize(count);
      float maximum = -INFINITY;
      for (int64_t n = 0; n < count; n++) {
        scores[n] = dotProduct(row, keys[kvHead].row(args.keyAt(i, n)), headDim) * args.scale;
        maximum = std::max(maximum, scores[n]);
      }
      float sum = 0;
      for (int64_t n = 0; n < count; n++) sum += std::exp(scores[n] - maximum);
      const float normaliser = maximum + std::log(sum);
      const float d = dotProduct(gradRow, out.as<float>() + i * queryStride + head * headDim, headDim);
      logNormaliser[head * length + i] = normaliser;
      outputDot[head * length + i] = d;
      std::fill(accumulator.begin(), accumulator.end(), 0.0f);
      for (int64_t n = 0; n < count; n++) {
        const int64_t j = args.keyAt(i, n);
        const float p = std::exp(scores[n] - normaliser);
        const float ds = p * (dotProduct(gradRow, values[kvHead].row(j), headDim) - d);
        addScaled(ds, keys[kvHead].row(j), accumulator.data(), headDim);
      }
      float* target = gradQuery.as<float>() + i * queryStride + head * headDim;
      for (int64_t t = 0; t < headDim; t++) target[t] = accumulator[t] * args.scale;
    }
  });
  // Key-centric: each key's gradient sums over the queries that see it.
  pool_.parallelFor(length * args.kvHeads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> keyAccumulator(headDim), valueAccumulator(headDim);
    for (int64_t task = begin; task < end; task++) {
      const int64_t j = task / args.kvHeads, kvHead = task % args.kvHeads;
      const float* key = keys[kvHead].row(j);
      const float* value = values[kvHead].row(j);
      std::fill(keyAccumulator.begin(), keyAccumulator.end(), 0.0f);
      std::fill(valueAccumulator.begin(), valueAccumulator.end(), 0.0f);
      for (int64_t head = kvHead * group; head < (kvHead + 1) * group; head++) {
        for (int64_t i = j; i < args.queryEnd(j); i++) {
          const float* row = query + i * queryStride + head * headDim;
          const float* gradRow = gradient + i * queryStride + head * headDim;
          const float p = std::exp(dotProduct(row, key, headDim) * args.scale - logNormaliser[head * length + i]);
          const float ds = p * (dotProduct(gradRow, value, headDim) - outputDot[head * length + i]);
          addScaled(p, gradRow, valueAccumulator.data(), headDim);
          addScaled(ds, row, keyAccumulator.data(), headDim);
        }
      }
      float* keyTarget = gradKey.as<float>() + j * keyStride + kvHead * headDim;
      float* valueTarget = gradValue.as<float>() + j * keyStride + kvHead * headDim;
      for (int64_t t = 0; t < headDim; t++) {
        keyTarget[t] = keyAccumulator[t] * args.scale;
        valueTarget[t] = valueAccumulator[t];
      }
    }
  });
}

namespace {
inline float clampGate(float gate) { return std::min(1.0f, std::max(0.0f, gate)); }
}  // namespace

void CpuDevice::gateMix(const Tensor& streaming, const Tensor& full, const Tensor& gates, Tensor& out, const GateMixArgs& args) {
  const int64_t width = static_cast<int64_t>(args.heads) * args.headDim, group = args.heads / args.kvHeads;
  pool_.parallelFor(streaming.size, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; e++) {
      const float gate = clampGate(gates.as<float>()[(e % width) / args.headDim / group]);
      out.as<float>()[e] = (1.0f - gate) * streaming.as<float>()[e] + gate * full.as<float>()[e];
    }
  });
}

void CpuDevice::gateMixBackward(const Tensor& gradOut, const Tensor& streaming, const Tensor& full, const Tensor& gates,
                                Tensor& gradStreaming, Tensor& gradGates, const GateMixArgs& args) {
  const int64_t width = static_cast<int64_t>(args.heads) * args.headDim, group = args.heads / args.kvHeads;
  const int64_t rows = streaming.rows();
  constexpr int64_t kRowsPerPart = 64;  // fixed partition: the sum's order never depends on the thread count
  const int64_t parts = (rows + kRowsPerPart - 1) / kRowsPerPart;
  std::vector<double> partial(static_cast<size_t>(parts * args.kvHeads), 0.0);
  pool_.parallelFor(parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; part++) {
      for (int64_t r = part * kRowsPerPart; r < std::min(rows, (part + 1) * kRowsPerPart); r++) {
        for (int64_t c = 0; c < width; c++) {
          const int64_t e = r * width + c, kvHead = c / args.headDim / group;
          const float g = gradOut.as<float>()[e];
          const float gate = clampGate(gates.as<float>()[kvHead]);
          partial[part * args.kvHeads + kvHead] += static_cast<double>(g) * (full.as<float>()[e] - streaming.as<float>()[e]);
          gradStreaming.as<float>()[e] = (1.0f - gate) * g;
        }
      }
    }
  });
  for (int g = 0; g < args.kvHeads; g++) {
    double sum = 0;
    for (int64_t part = 0; part < parts; part++) sum += partial[part * args.kvHeads + g];
    gradGates.as<float>()[g] = static_cast<float>(sum);
  }
}

}  // namespace duo
