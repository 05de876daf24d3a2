// Matrix products over GGUF block-format weights (Q8_0, Q4_K, Q5_K, Q6_K; ADR 0010), dequantized in registers.
// Decode (1–64 rows of x): each warp streams weight rows (SwiGLU: a gate row and its up row) through a cp.async ring
// in shared memory, a chunk of whole blocks a stage, and each of its 32 lanes decodes two 32-value pieces of the chunk:
// Q8_0 and Q4_K as integer dot products with x quantized to int8 pieces once per launch, the others with word loads
// and byte permutes into exact small-integer floats (no int→float conversion instructions: they run at a quarter of
// the FMA rate); then it applies the piece's scales once. Staging through shared memory is what lets the
// unaligned layouts (Q8_0's 34-byte and Q6_K's 210-byte blocks) load as aligned 16-byte copies. Prefill (more rows):
// a bounded slice of rows at a time is decoded to bf16 for cuBLAS, never the whole matrix. And block-format embeddings.
#include <algorithm>
#include <cstdint>

#include "../weight-blocks.h"
#include "cuda-common.cuh"

namespace duo {
namespace cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kPieceValues = 32;
// Pieces a lane decodes from each chunk of a warp's ring: two make a chunk of Q8_0 2 176 bytes and of Q4_K 1 152, so
// the ring's wait, copies and bookkeeping are paid half as often. On the H100 two took 5 % off Q4_K's decode and left
// Q8_0's as it was; four were slower for Q4_K and leave no room for Q8_0's SwiGLU ring
// (bench/results/2026-12-07-h100-blocks-lane-pieces).
constexpr int kLanePieces = 2;

// A chunk is 32 · kLanePieces pieces of 32 values (kLanePieces a lane) of whole blocks; its shared-memory slot holds
// the chunk's bytes from the 16-byte boundary below its first block (a chunk of Q8_0 or Q6_K starts anywhere even),
// plus slack for that and for the word loads that reach a few bytes past a piece (wordsAt).
template <DType F>
struct Format {
  static constexpr int kValues = F == DType::Q8_0 ? 32 : 256;
  static constexpr int kBytes = F == DType::Q8_0 ? 34 : (F == DType::Q4_K ? 144 : (F == DType::Q5_K ? 176 : 210));
  static constexpr int kPieces = kValues / kPieceValues;
  static constexpr int kBlocks = 32 * kLanePieces / kPieces;  // a chunk's
  static constexpr int kSlot = (kBlocks * kBytes + 15) / 16 * 16 + 32;
  static constexpr bool kOffset = F == DType::Q4_K || F == DType::Q5_K;  // values carry a min (− offset)
  // Integer products: x is quantized to int8 pieces and each piece's dot product is four-way byte dot products (dp4a)
  // of its codes; the others decode into floats (see decodeShared).
  static constexpr bool kIntegerX = F == DType::Q8_0 || F == DType::Q4_K;
};

// N little-endian words of the bytes at `p` in shared memory, any alignment: N + 1 aligned loads, funnel-shifted (the
// last may reach 4 bytes past the N words).
template <int N>
__device__ __forceinline__ void wordsAt(const uint8_t* p, uint32_t (&words)[N]) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(address & ~uintptr_t{3});
  const unsigned shift = static_cast<unsigned>(address & 3) * 8;
  uint32_t previous = base[0];
#pragma unroll
  for (int i = 0; i < N; i++) {
    const uint32_t next = base[i + 1];
    words[i] = __funnelshift_r(previous, next, shift);
    previous = next;
  }
}

// Byte j of `word` as the float 2^23 + byte (exact), by placing it in the mantissa of 2^23.
template <int J>
__device__ __forceinline__ float biasedByte(uint32_t word) {
  return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u | J));
}

// Four bytes of `word` as floats, each minus `bias` (2^23 plus the format's code offset): exact small integers.
__device__ __forceinline__ void unpackBytes(uint32_t word, float bias, float* out) {
  out[0] = biasedByte<0>(word) - bias;
  out[1] = biasedByte<1>(word) - bias;
  out[2] = biasedByte<2>(word) - bias;
  out[3] = biasedByte<3>(word) - bias;
}

__device__ __forceinline__ float halfAtShared(const uint8_t* at) {
  return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(at)));  // blocks start at even addresses
}

// Piece `piece` of the block at `block`: its 32 codes as exact floats `w`, and the affine map to the values:
// value[l] = (l < 16 ? scaleLow : scaleHigh) · w[l] − offset.
struct Piece {
  float w[32];
  float scaleLow, scaleHigh, offset;
};

template <DType F>
__device__ __forceinline__ void decodeShared(const uint8_t* block, int piece, Piece& out) {
  constexpr float kMagic = 8388608.0f;  // 2^23
  uint32_t words[8];
  if constexpr (F == DType::Q8_0) {
    wordsAt<8>(block + 2, words);
#pragma unroll
    for (int i = 0; i < 8; i++) unpackBytes(words[i] ^ 0x80808080u, kMagic + 128.0f, out.w + 4 * i);  // int8 → +128
    out.scaleLow = out.scaleHigh = halfAtShared(block);
    out.offset = 0.0f;
  } else if constexpr (F == DType::Q4_K || F == DType::Q5_K) {
    constexpr bool kFifth = F == DType::Q5_K;
    wordsAt<8>(block + (kFifth ? 48 : 16) + 32 * (piece >> 1), words);
    uint32_t high[8];
    if constexpr (kFifth) wordsAt<8>(block + 16, high);
    const unsigned shift = 4 * (piece & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) {
      uint32_t codes = (words[i] >> shift) & 0x0F0F0F0Fu;
      if constexpr (kFifth) codes |= ((high[i] >> piece) & 0x01010101u) << 4;
      unpackBytes(codes, kMagic, out.w + 4 * i);
    }
    int scale, min;
    scaleAndMin(block + 4, piece, scale, min);
    out.scaleLow = out.scaleHigh = halfAtShared(block) * static_cast<float>(scale);
    out.offset = halfAtShared(block + 2) * static_cast<float>(min);
  } else {  // Q6_K
    const int h = piece >> 2, q = piece & 3;
    uint32_t high[8];
    wordsAt<8>(block + 64 * h + 32 * (q & 1), words);
    wordsAt<8>(block + 128 + 32 * h, high);
    const unsigned lowShift = 4 * (q >> 1), highShift = 2 * q;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const uint32_t codes = ((words[i] >> lowShift) & 0x0F0F0F0Fu) | (((high[i] >> highShift) & 0x03030303u) << 4);
      unpackBytes(codes, kMagic + 32.0f, out.w + 4 * i);
    }
    const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192) + 8 * h + 2 * q;
    const float d = halfAtShared(block + 208);
    out.scaleLow = d * static_cast<float>(scales[0]);
    out.scaleHigh = d * static_cast<float>(scales[1]);
    out.offset = 0.0f;
  }
}

// Piece `piece` of the block at `block` as 32 small signed integers, four to a word (Q8_0: its int8 codes; Q4_K: the
// sub-block's nibbles, 0 … 15), and the affine map to the values: value = scale · code − minimum. `aligned`: the block
// starts on a 16-byte boundary (Q4_K's 144-byte blocks always do when the row does), so words load as two vectors.
template <DType F>
__device__ __forceinline__ void pieceCodes(const uint8_t* block, int piece, bool aligned, uint32_t (&codes)[8], float& scale,
                                           float& minimum) {
  if constexpr (F == DType::Q8_0) {
    wordsAt<8>(block + 2, codes);
    scale = halfAtShared(block);
    minimum = 0.0f;
  } else {
    static_assert(F == DType::Q4_K, "integer products read Q8_0 and Q4_K");
    const uint8_t* nibbles = block + 16 + 32 * (piece >> 1);
    if (aligned) {
      const uint4 low = reinterpret_cast<const uint4*>(nibbles)[0], high = reinterpret_cast<const uint4*>(nibbles)[1];
      codes[0] = low.x, codes[1] = low.y, codes[2] = low.z, codes[3] = low.w;
      codes[4] = high.x, codes[5] = high.y, codes[6] = high.z, codes[7] = high.w;
    } else {
      wordsAt<8>(nibbles, codes);
    }
    const unsigned shift = 4 * (piece & 1);
#pragma unroll
    for (int i = 0; i < 8; i++) codes[i] = (codes[i] >> shift) & 0x0F0F0F0Fu;
    int sub, min;
    scaleAndMin(block + 4, piece, sub, min);
    scale = halfAtShared(block) * static_cast<float>(sub);
    minimum = halfAtShared(block + 2) * static_cast<float>(min);
  }
}

// x as int8 pieces (the integer products' input, quantized by each block into shared memory): per row of x, k codes,
// then per 32-value piece its scale d = max|x| / 127 (codes round(x / d)) and the sum of its dequantized values
// d · Σ codes (Q4_K's mins multiply it). llama.cpp's CUDA decode quantizes x the same way (its q8_1 blocks): the
// products of the codes are exact integers, and x's rounding, below half a step of 1/127 of each piece's largest value,
// is far under the weights' own.
inline size_t quantizedInputBytes(int rows, int64_t k) { return static_cast<size_t>(rows) * (k + 2 * (k / kPieceValues) * 4); }

// x staged in shared memory: each 32-value piece padded to 36 floats, so the eight lanes of a phase, reading 16 bytes
// each of pieces 36 floats apart, touch every bank once (straight from global memory, a warp's 8 loads of its lanes'
// pieces touched 32 lines each: the x reads, not the weights, bounded the first version).
constexpr int kPaddedPiece = kPieceValues + 4;
inline size_t stagedInputBytes(int rows, int64_t k) { return static_cast<size_t>(rows) * (k / kPieceValues) * kPaddedPiece * 4; }
// Chunks in a warp's ring (all but one in flight): four, or three where four would leave room for a single block an SM
// (more than 110 KB a block). Deeper rings measured slower on the H100: shared memory took resident blocks
// (bench/results/2026-12-06-h100-weight-formats/c91be34).
template <DType F, bool SWIGLU>
constexpr int stagesOf() { return static_cast<size_t>(kWarps) * 4 * (SWIGLU ? 2 : 1) * Format<F>::kSlot <= 110 * 1024 ? 4 : 3; }
template <DType F, bool SWIGLU>
constexpr size_t ringBytes() { return static_cast<size_t>(kWarps) * stagesOf<F, SWIGLU>() * (SWIGLU ? 2 : 1) * Format<F>::kSlot; }
// After the staged x: each row's piece sums (the k-quants' mins multiply them), rows × k / 32 floats.
inline size_t pieceSumBytes(int rows, int64_t k) { return static_cast<size_t>(rows) * (k / kPieceValues) * 4; }

// x quantized for the integer products, once per launch (every block used to quantize all of it behind a barrier at
// its start: a quarter of the q/k/v kernel's warp cycles on the H100, with every block reading the same 16 KB at once).
// One thread a 32-value piece; `out`: codes (rows × k), then the pieces' scales, then their sums (rows × k / 32 each).
__global__ void quantizeInputKernel(const float* __restrict__ x, int64_t rows, int64_t k, uint8_t* __restrict__ out) {
  dependOnPrevious();
  const int64_t piecesPerRow = k / kPieceValues;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * piecesPerRow) return;
  int8_t* xCodes = reinterpret_cast<int8_t*>(out);
  float* xScales = reinterpret_cast<float*>(out + rows * k);
  float* xSums = xScales + rows * piecesPerRow;
  const float4* source = reinterpret_cast<const float4*>(x + i * kPieceValues);
  float4 values[8];
  float largest = 0.0f;
#pragma unroll
  for (int v = 0; v < 8; v++) {
    values[v] = __ldg(source + v);
    largest = fmaxf(largest, fmaxf(fmaxf(fabsf(values[v].x), fabsf(values[v].y)), fmaxf(fabsf(values[v].z), fabsf(values[v].w))));
  }
  const float step = largest / 127.0f, inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
  uint32_t words[8];
  int total = 0;
#pragma unroll
  for (int v = 0; v < 8; v++) {
    const int a = __float2int_rn(values[v].x * inverse), b = __float2int_rn(values[v].y * inverse);
    const int c = __float2int_rn(values[v].z * inverse), d = __float2int_rn(values[v].w * inverse);
    total += (a + b) + (c + d);
    words[v] = __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
  }
  uint4* target = reinterpret_cast<uint4*>(xCodes + i * kPieceValues);  // row r's piece p sits at (r · k + 32 p)
  target[0] = make_uint4(words[0], words[1], words[2], words[3]);
  target[1] = make_uint4(words[4], words[5], words[6], words[7]);
  xScales[i] = step;
  xSums[i] = step * static_cast<float>(total);
}

// Where a unit's weight rows start (SwiGLU: gate row j and up row j; else row j of the job's matrix `which`).
template <DType F, bool SWIGLU>
struct UnitRows {
  static constexpr int kColumns = SWIGLU ? 2 : 1;
  const uint8_t* row[kColumns];
  int which;
  int64_t column;
  __device__ __forceinline__ void locate(const WeightJob<uint8_t>& job, int64_t unit, int64_t blocks) {
    which = 0;
    while (which + 1 < job.count && unit >= job.first[which + 1]) which++;
    column = unit - job.first[which];
#pragma unroll
    for (int c = 0; c < kColumns; c++)
      row[c] = (SWIGLU ? job.weight[c] : job.weight[which]) + column * blocks * Format<F>::kBytes;
  }
};

// Persistent warps (the grid is what fits at once): warp g of W takes output columns (units; SwiGLU: gate row j and
// up row j) g, g + W, g + 2W … and streams their chunks as one sequence through its ring, so the next column's first
// chunks are in flight while the current one finishes and x is staged once per block, not once per 8 columns. (One
// block per 8 columns ran 1.16 waves of short-lived blocks at q/k/v and read DRAM at 38–74 %: its time went to each
// block's start — x quantized, the ring's first copies — not to streaming.) ROWS rows of x per launch row (blockIdx.y
// tiles the rest). Chained launch: the first chunks' copies go out before waiting for the previous kernel (weights are
// never written during a step); x is read only after. STAGED: x is copied into shared memory first (when it fits).
template <DType F, int ROWS, bool SWIGLU, bool STAGED>
__global__ void __launch_bounds__(kWarps * 32) blockGemvKernel(const float* __restrict__ x, const uint8_t* __restrict__ quantized,
                                                               int64_t rows, int64_t k, WeightJob<uint8_t> job) {
  using Fmt = Format<F>;
  constexpr int kColumns = SWIGLU ? 2 : 1;
  constexpr int kStages = stagesOf<F, SWIGLU>();
  extern __shared__ __align__(16) uint8_t shared[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t units = job.first[job.count];
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  const int64_t firstUnit = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t blocks = k / Fmt::kValues;
  const int64_t chunks = (blocks + Fmt::kBlocks - 1) / Fmt::kBlocks;  // of each column
  const int64_t items = firstUnit < units ? ((units - 1 - firstUnit) / warps + 1) * chunks : 0;
  uint8_t* ring = shared + static_cast<size_t>(warp) * kStages * kColumns * Fmt::kSlot;
  // The copying cursor runs kStages − 1 items ahead of the products' cursor: (unit, chunk) of the next item to stage.
  UnitRows<F, SWIGLU> staging;
  staging.locate(job, firstUnit, blocks);
  int64_t stagingUnit = firstUnit, stagingChunk = 0, stagedItems = 0;
  int stagingSlot = 0;
  // The next item's bytes, from the 16-byte boundary at or below its first block, into its slot.
  auto stage = [&]() {
    if (stagedItems < items) {
      const int64_t firstBlock = stagingChunk * Fmt::kBlocks;
      const int64_t count = lesser(Fmt::kBlocks, blocks - firstBlock);
#pragma unroll
      for (int c = 0; c < kColumns; c++) {
        const uint8_t* start = staging.row[c] + firstBlock * Fmt::kBytes;
        const uint8_t* aligned = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(start) & ~uintptr_t{15});
        const int copies = static_cast<int>((start - aligned + count * Fmt::kBytes + 15) / 16);
        uint8_t* slot = ring + (stagingSlot * kColumns + c) * Fmt::kSlot;
        for (int i = lane; i < copies; i += 32) copyAsync16(slot + 16 * i, aligned + 16 * i);
      }
      stagedItems++;
      stagingSlot = stagingSlot + 1 == kStages ? 0 : stagingSlot + 1;
      if (++stagingChunk == chunks && stagedItems < items) {
        stagingChunk = 0;
        stagingUnit += warps;
        staging.locate(job, stagingUnit, blocks);
      }
    }
    commitGroup();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; s++) stage();
  dependOnPrevious();

  const int64_t rowBase = static_cast<int64_t>(blockIdx.y) * ROWS;
  const int rowsHere = static_cast<int>(lesser(ROWS, rows - rowBase));
  const int64_t paddedRow = k / kPieceValues * kPaddedPiece;
  float* staged = reinterpret_cast<float*>(shared + ringBytes<F, SWIGLU>());
  // Piece sums of the staged rows (k-quants), rows × k / 32, after them.
  float* pieceSums = staged + static_cast<int64_t>(rowsHere) * paddedRow;
  // Integer products: the block's rows of the quantized x in shared memory (codes, then scales, then sums).
  const int64_t piecesPerRow = k / kPieceValues;
  int8_t* xCodes = reinterpret_cast<int8_t*>(shared + ringBytes<F, SWIGLU>());
  float* xScales = reinterpret_cast<float*>(xCodes + static_cast<int64_t>(rowsHere) * k);
  float* xSums = xScales + static_cast<int64_t>(rowsHere) * piecesPerRow;
  if constexpr (Fmt::kIntegerX) {
    // Rows rowBase … of the launch's quantized x (quantizeInputKernel): codes with 16-byte copies, scales and sums
    // (rows × k / 32 floats each, not 16-byte aligned for every k) with word loads.
    const int64_t codeVectors = rowsHere * k / 16;
    for (int64_t i = threadIdx.x; i < codeVectors; i += kWarps * 32) copyAsync16(xCodes + 16 * i, quantized + rowBase * k + 16 * i);
    commitGroup();
    const float* scales = reinterpret_cast<const float*>(quantized + rows * k);
    for (int64_t i = threadIdx.x; i < rowsHere * piecesPerRow; i += kWarps * 32) {
      xScales[i] = scales[rowBase * piecesPerRow + i];
      if constexpr (Fmt::kOffset) xSums[i] = scales[(rows + rowBase) * piecesPerRow + i];
    }
    waitGroups<0>();
    __syncthreads();
  } else if constexpr (STAGED) {
    // One copy group for all of x (the weights' first groups, committed before it, land first anyway).
    const int64_t vectors = rowsHere * k / 4;
    for (int64_t i = threadIdx.x; i < vectors; i += kWarps * 32) {
      const int64_t e = i * 4, r = e / k, c = e % k;
      copyAsync16(staged + r * paddedRow + c / kPieceValues * kPaddedPiece + c % kPieceValues, x + rowBase * k + e);
    }
    commitGroup();
    waitGroups<0>();
    __syncthreads();
    if constexpr (Fmt::kOffset) {
      const int64_t pieces = rowsHere * (k / kPieceValues);
      for (int64_t i = threadIdx.x; i < pieces; i += kWarps * 32) {
        const float* values = staged + i * kPaddedPiece;  // row r's piece p sits at r · paddedRow + p · 36 = i · 36
        float total = 0.0f;
#pragma unroll
        for (int v = 0; v < kPieceValues; v += 4) {
          const float4 four = *reinterpret_cast<const float4*>(values + v);
          total += (four.x + four.y) + (four.z + four.w);
        }
        pieceSums[i] = total;
      }
      __syncthreads();
    }
  }
  float acc[ROWS][kColumns];
#pragma unroll
  for (int r = 0; r < ROWS; r++)
#pragma unroll
    for (int c = 0; c < kColumns; c++) acc[r][c] = 0.0f;
  // The lane's pieces of a chunk: lane, lane + 32, … (32 is a whole number of blocks' pieces, so the same piece of
  // blocks kBlocks / kLanePieces apart).
  const int laneBlock = lane / Fmt::kPieces, piece = lane % Fmt::kPieces;
  constexpr int kBlockStride = Fmt::kBlocks / kLanePieces;
  UnitRows<F, SWIGLU> current;
  current.locate(job, firstUnit, blocks);
  int64_t unit = firstUnit, chunk = 0;
  int slotIndex = 0;
  for (int64_t item = 0; item < items; item++) {
    waitGroups<kStages - 2>();
    __syncwarp();  // every lane's copies of this item have landed, and every lane is done with the slot refilled next
    stage();
    const int64_t firstBlock = chunk * Fmt::kBlocks;
    const uint8_t* const* row = current.row;
#pragma unroll
    for (int lanePiece = 0; lanePiece < kLanePieces; lanePiece++) {
      const int blockInChunk = laneBlock + lanePiece * kBlockStride;
      if (firstBlock + blockInChunk >= blocks) {
        // This piece's block is past the row's end (its last chunk is partial): no products.
      } else if constexpr (Fmt::kIntegerX) {
        uint32_t codes[kColumns][8];
        float scale[kColumns], minimum[kColumns];
#pragma unroll
        for (int c = 0; c < kColumns; c++) {
          const uint8_t* start = row[c] + firstBlock * Fmt::kBytes;
          const int offset = static_cast<int>(reinterpret_cast<uintptr_t>(start) & 15);
          const uint8_t* slot = ring + (slotIndex * kColumns + c) * Fmt::kSlot;
          pieceCodes<F>(slot + offset + blockInChunk * Fmt::kBytes, piece, offset == 0, codes[c], scale[c], minimum[c]);
        }
        const int64_t pieceIndex = ((firstBlock + blockInChunk) * Fmt::kValues) / kPieceValues + piece;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
          if (r >= rowsHere) break;
          const uint4* words = reinterpret_cast<const uint4*>(xCodes + r * k + pieceIndex * kPieceValues);
          const uint4 low = words[0], high = words[1];
          const uint32_t xw[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
          const float step = xScales[r * piecesPerRow + pieceIndex];
#pragma unroll
          for (int c = 0; c < kColumns; c++) {
            int dot = 0;
#pragma unroll
            for (int i = 0; i < 8; i++) dot = __dp4a(static_cast<int>(codes[c][i]), static_cast<int>(xw[i]), dot);
            acc[r][c] += scale[c] * step * static_cast<float>(dot);
            if constexpr (Fmt::kOffset) acc[r][c] -= minimum[c] * xSums[r * piecesPerRow + pieceIndex];
          }
        }
      } else {
        Piece pieces[kColumns];
#pragma unroll
        for (int c = 0; c < kColumns; c++) {
          const uint8_t* start = row[c] + firstBlock * Fmt::kBytes;
          const int offset = static_cast<int>(reinterpret_cast<uintptr_t>(start) & 15);
          const uint8_t* slot = ring + (slotIndex * kColumns + c) * Fmt::kSlot;
          decodeShared<F>(slot + offset + blockInChunk * Fmt::kBytes, piece, pieces[c]);
        }
        const int64_t value0 = (firstBlock + blockInChunk) * Fmt::kValues + kPieceValues * piece;
        const float* xs = STAGED ? staged + value0 / kPieceValues * kPaddedPiece : x + rowBase * k + value0;
        const int64_t rowStride = STAGED ? paddedRow : k;
        const int64_t pieceIndex = value0 / kPieceValues;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
          if (r >= rowsHere) break;
          float low[kColumns] = {}, high[kColumns] = {}, sum = 0.0f;
          constexpr bool kSummed = STAGED && Fmt::kOffset;  // the piece's sum was taken at staging
#pragma unroll
          for (int v = 0; v < kPieceValues; v += 4) {
            const float4 xv = STAGED ? *reinterpret_cast<const float4*>(xs + r * rowStride + v)
                                     : __ldg(reinterpret_cast<const float4*>(xs + r * rowStride + v));
            const float values[4] = {xv.x, xv.y, xv.z, xv.w};
            // The piece's sum in the staging's order, so a row gets the same bits whichever path its launch takes.
            if (Fmt::kOffset && !kSummed) sum += (xv.x + xv.y) + (xv.z + xv.w);
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
              for (int c = 0; c < kColumns; c++) {
                float& part = v < 16 ? low[c] : high[c];
                part += pieces[c].w[v + i] * values[i];
              }
            }
          }
          if constexpr (kSummed) sum = pieceSums[r * (k / kPieceValues) + pieceIndex];
#pragma unroll
          for (int c = 0; c < kColumns; c++)
            acc[r][c] += pieces[c].scaleLow * low[c] + pieces[c].scaleHigh * high[c] - (Fmt::kOffset ? pieces[c].offset * sum : 0.0f);
        }
      }
    }
    slotIndex = slotIndex + 1 == kStages ? 0 : slotIndex + 1;
    if (++chunk < chunks) continue;
    // The column's last chunk: its sums out, then the next column.
    const int which = current.which;
    const int64_t m = job.m[which], column = current.column;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
      if (r >= rowsHere) break;
      float totals[kColumns];
#pragma unroll
      for (int c = 0; c < kColumns; c++) {
        totals[c] = warpSum(acc[r][c]);
        acc[r][c] = 0.0f;
      }
      if (lane != 0) continue;
      const int64_t index = (rowBase + r) * m + column;
      if (SWIGLU) {
        job.out[0][index] = totals[0] / (1.0f + __expf(-totals[0])) * totals[kColumns - 1];
      } else {
        job.out[which][index] = totals[0] + (job.bias[which] ? job.bias[which][column] : 0.0f) +
                                (job.residual[which] ? job.residual[which][index] : 0.0f);
      }
    }
    chunk = 0;
    unit += warps;
    if (item + 1 < items) current.locate(job, unit, blocks);
  }
}

// Shared memory a block may take for x beside its ring. At the limit an SM holds a single such block (8 warps); x of one
// row at k = 14 336 (65 KB) leaves room for two. Past the limit x is read from global memory (slower, see above).
constexpr size_t kStagedLimit = 108 * 1024;

template <DType F, int ROWS, bool SWIGLU>
void launchBlockRows(const float* x, const uint8_t* quantized, int64_t rows, int64_t k, const WeightJob<uint8_t>& job,
                     cudaStream_t stream) {
  const int rowsStaged = static_cast<int>(std::min<int64_t>(ROWS, rows));
  const size_t staged = Format<F>::kIntegerX ? quantizedInputBytes(rowsStaged, k)
                                             : stagedInputBytes(rowsStaged, k) + (Format<F>::kOffset ? pieceSumBytes(rowsStaged, k) : 0);
  const int64_t units = job.first[job.count];
  const unsigned rowTiles = static_cast<unsigned>((rows + ROWS - 1) / ROWS);
  auto launch = [&](auto kernel, size_t shared, size_t most) {
    static const bool raised = [&] {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)), "cudaFuncSetAttribute");
      return true;
    }();
    (void)raised;
    // As many blocks as are resident at once, shared by the row tiles (which then stream the same columns together,
    // so the tiles after the first find the weights in L2); never more than the columns need.
    const int64_t resident = static_cast<int64_t>(residentBlocks(reinterpret_cast<const void*>(kernel), kWarps * 32, shared)) *
                             multiprocessorCount();
    const int64_t columnBlocks = std::max<int64_t>(1, std::min<int64_t>(blocksFor(units, kWarps), resident / rowTiles));
    const dim3 grid(static_cast<unsigned>(columnBlocks), rowTiles);
    launchChained(kernel, grid, dim3(kWarps * 32), shared, stream, x, quantized, rows, k, job);
  };
  // Integer products always stage x (launchBlockFormat picked ROWS so it fits); the float path reads it from global
  // memory past the limit.
  if (Format<F>::kIntegerX || staged <= kStagedLimit)
    launch(blockGemvKernel<F, ROWS, SWIGLU, true>, ringBytes<F, SWIGLU>() + staged, ringBytes<F, SWIGLU>() + kStagedLimit);
  else if constexpr (!Format<F>::kIntegerX)
    launch(blockGemvKernel<F, ROWS, SWIGLU, false>, ringBytes<F, SWIGLU>(), ringBytes<F, SWIGLU>());
}

template <DType F, bool SWIGLU>
void launchBlockFormat(const float* x, uint8_t* workspace, int64_t rows, int64_t k, const WeightJob<uint8_t>& job,
                       cudaStream_t stream) {
  // Rows of x a pass takes: as many as the call has (up to 8), fewer where integer products' quantized x would not fit.
  const auto fits = [&](int passRows) { return !Format<F>::kIntegerX || quantizedInputBytes(passRows, k) <= kStagedLimit; };
  if (!fits(1))
    throw Error("DUO_ARG", std::string("Expected k ≤ ") + std::to_string(kStagedLimit * kPieceValues / (kPieceValues + 8)) +
                               " for a " + dtypeName(F) + " decode matmul but received k = " + std::to_string(k));
  if (rows == 1 || !fits(2)) launchBlockRows<F, 1, SWIGLU>(x, workspace, rows, k, job, stream);
  else if (rows == 2 || !fits(4)) launchBlockRows<F, 2, SWIGLU>(x, workspace, rows, k, job, stream);
  else if (rows <= 4 || !fits(8)) launchBlockRows<F, 4, SWIGLU>(x, workspace, rows, k, job, stream);
  else launchBlockRows<F, 8, SWIGLU>(x, workspace, rows, k, job, stream);
}

template <bool SWIGLU>
void launchBlockJob(const float* x, void* workspace, int64_t rows, int64_t k, DType dtype, const WeightJob<uint8_t>& job,
                    cudaStream_t stream) {
  if (blockGemvWorkspaceBytes(dtype, rows, k) > 0) {
    if (!workspace) throw Error("DUO_ARG", "a block-format decode matmul over integer products needs its workspace");
    constexpr unsigned kThreads = 256;
    launchChained(quantizeInputKernel, dim3(blocksFor(rows * (k / kPieceValues), kThreads)), dim3(kThreads), 0, stream, x, rows, k,
                  static_cast<uint8_t*>(workspace));
  }
  uint8_t* quantized = static_cast<uint8_t*>(workspace);
  switch (dtype) {
    case DType::Q8_0: launchBlockFormat<DType::Q8_0, SWIGLU>(x, quantized, rows, k, job, stream); break;
    case DType::Q4_K: launchBlockFormat<DType::Q4_K, SWIGLU>(x, quantized, rows, k, job, stream); break;
    case DType::Q5_K: launchBlockFormat<DType::Q5_K, SWIGLU>(x, quantized, rows, k, job, stream); break;
    case DType::Q6_K: launchBlockFormat<DType::Q6_K, SWIGLU>(x, quantized, rows, k, job, stream); break;
    default: throw Error("DUO_ARG", std::string("expected a block-format weight but received ") + dtypeName(dtype));
  }
}

// One thread per 32-value piece: rows rowBegin … of the block-format matrix decoded to bf16 (prefill's slice) or f32.
template <typename T>
__global__ void decodeRowsKernel(const uint8_t* __restrict__ weight, DType dtype, int64_t k, const int32_t* ids, int64_t rowBegin,
                                 int64_t rows, T* out) {
  const int64_t piecesPerRow = k / kPieceValues;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * piecesPerRow) return;
  const int64_t row = index / piecesPerRow, pieceInRow = index % piecesPerRow;
  const int pieces = blockPieces(dtype);
  const int64_t source = ids ? ids[row] : rowBegin + row;
  const uint8_t* block = weight + (source * (k / blockValues(dtype)) + pieceInRow / pieces) * blockBytes(dtype);
  float values[kPieceValues];
  decodePiece(block, dtype, static_cast<int>(pieceInRow % pieces), values);
  T* target = out + row * k + pieceInRow * kPieceValues;
#pragma unroll
  for (int i = 0; i < kPieceValues; i++) target[i] = fromFloat<T>(values[i]);
}

}  // namespace

int64_t blockGemvRowsMax() { return 64; }

size_t blockGemvWorkspaceBytes(DType dtype, int64_t rows, int64_t k) {
  const bool integer = dtype == DType::Q8_0 || dtype == DType::Q4_K;  // Format<F>::kIntegerX
  return integer && rows > 0 ? quantizedInputBytes(static_cast<int>(rows), k) : 0;
}

void launchBlockGemv(const float* x, void* workspace, int64_t rows, int64_t k, DType dtype, const GemvTarget* targets, int count,
                     const float* residual, cudaStream_t stream) {
  if (rows == 0) return;
  WeightJob<uint8_t> job = weightJobFor<uint8_t>(targets, count);
  job.residual[0] = residual;
  job.first[0] = 0;
  for (int i = 0; i < count; i++) job.first[i + 1] = job.first[i] + job.m[i];
  if (job.first[count] == 0) return;
  launchBlockJob<false>(x, workspace, rows, k, dtype, job, stream);
  checkLaunch("blockGemv");
}

void launchBlockGemvSwiglu(const float* x, void* workspace, int64_t rows, int64_t k, const void* gate, const void* up, DType dtype,
                           int64_t m, float* out, cudaStream_t stream) {
  if (rows == 0 || m == 0) return;
  WeightJob<uint8_t> job{};
  job.count = 1;
  job.weight[0] = static_cast<const uint8_t*>(gate);
  job.weight[1] = static_cast<const uint8_t*>(up);
  job.out[0] = out;
  job.m[0] = m;
  job.first[0] = 0;
  job.first[1] = m;
  launchBlockJob<true>(x, workspace, rows, k, dtype, job, stream);
  checkLaunch("blockGemvSwiglu");
}

void launchDecodeBlockRows(const void* weight, DType dtype, int64_t k, int64_t rowBegin, int64_t rows, void* out,
                           cudaStream_t stream) {
  if (rows == 0) return;
  constexpr unsigned kThreads = 256;
  decodeRowsKernel<__nv_bfloat16><<<blocksFor(rows * (k / kPieceValues), kThreads), kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(weight), dtype, k, nullptr, rowBegin, rows, static_cast<__nv_bfloat16*>(out));
  checkLaunch("decodeBlockRows");
}

void launchBlockEmbedding(const void* table, DType dtype, const int32_t* ids, float* out, int64_t rows, int64_t dim,
                          cudaStream_t stream) {
  if (rows == 0) return;
  constexpr unsigned kThreads = 256;
  decodeRowsKernel<float><<<blocksFor(rows * (dim / kPieceValues), kThreads), kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(table), dtype, dim, ids, 0, rows, out);
  checkLaunch("blockEmbedding");
}

}  // namespace cuda
}  // namespace duo
