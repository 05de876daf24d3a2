// KV-cache quantization on the CPU: rows quantized with quant.h's quantizeKvRow (the codes every backend writes),
// for bulk writes and for the quantized path of ropeWriteCache.
#include "../quant.h"
#include "cpu-device.h"

namespace duo {

void CpuDevice::writeCacheQuantized(const Tensor& source, Tensor& codes, Tensor& scales, int64_t start, int scheme) {
  const int64_t kvHeads = codes.shape[0], capacity = codes.shape[1];
  const int headDim = static_cast<int>(source.cols() / kvHeads);
  const KvQuant quant = static_cast<KvQuant>(scheme);
  const int64_t codeBytes = codes.shape[2], scaleHalves = scales.shape[2];
  pool_.parallelFor(kvHeads * source.rows(), 64, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; task++) {
      const int64_t row = task / kvHeads, head = task % kvHeads, slot = start + row;
      quantizeKvRow(quant, source.as<float>() + row * source.cols() + head * headDim, headDim,
                    codes.as<uint8_t>() + (head * capacity + slot) * codeBytes,
                    scales.as<uint16_t>() + (head * capacity + slot) * scaleHalves);
    }
  });
}

void CpuDevice::writeQuantizedRows(const Tensor& k, const Tensor& v, const int32_t* positions, int kvHeads, int headDim,
                                   Tensor& keyCodes, Tensor& valueCodes, const StreamingLayout& streaming,
                                   const KvQuantPlanes& quant) {
  const KvQuant scheme = static_cast<KvQuant>(quant.scheme);
  const int64_t rows = k.rows(), capacity = keyCodes.shape[1], codeBytes = quant.codeBytes, scaleHalves = quant.scaleHalves;
  pool_.parallelFor(kvHeads * rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; task++) {
      const int head = static_cast<int>(task / rows);
      const int64_t r = task % rows, position = positions[r];
      const bool streams = streaming.streams(head);
      if (!streams && !streaming.shard.owns(position)) continue;  // another rank's chunk (context parallelism)
      const int64_t codeAt = streams ? streaming.element(head, position, codeBytes)
                                     : streaming.fullElement(head, position, capacity, codeBytes);
      const int64_t scaleAt = streams ? streaming.element(head, position, scaleHalves)
                                      : streaming.fullElement(head, position, capacity, scaleHalves);
      const auto write = [&](const Tensor& source, void* mainCodes, void* streamCodes, const uint16_t* mainScales,
                             const uint16_t* streamScales) {
        uint8_t* codes = static_cast<uint8_t*>(streams ? streamCodes : mainCodes) + codeAt;
        uint16_t* scales = const_cast<uint16_t*>(streams ? streamScales : mainScales) + scaleAt;
        quantizeKvRow(scheme, source.as<float>() + r * source.cols() + head * headDim, headDim, codes, scales);
      };
      write(k, keyCodes.data, streaming.key, quant.keyScales, quant.streamKeyScales);
      write(v, valueCodes.data, streaming.value, quant.valueScales, quant.streamValueScales);
    }
  });
}

}  // namespace duo
