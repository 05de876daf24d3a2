// Tensor-core decode over quantized caches (int8, int4, fp8 at head dims 64 and 128) that builds its MMA fragments
// straight from the codes: a warp streams its tiles' raw code rows and scale words into a ring of shared stages with
// cp.async (kStages − 1 tiles in flight while it multiplies one), and each lane turns the bytes it loads from a stage
// into 16-bit fragments in registers — no dequantized tile is ever written, so a block needs less shared memory than
// one 16-bit tile a warp, and three int4 blocks (two int8 or fp8 ones) stay resident on a multiprocessor.
//
// The products see exact codes, the scales are applied around them (ADR 0006):
// - Scores S = Q·Kᵀ, q split into a 16-bit high part and a remainder. int4: the high parts are rows 0…7 of A (the
//   query heads, rows past G zero) and the remainders rows 8…15, one product a k-step, its two row halves added (1.28
//   → 1.25× of the floor at 128K and 512K); int8 / fp8: two products, the heads as rows 0…G − 1 of each (the shared
//   product made them 6–12 % slower: bench/results/2026-12-07-h100-decode).
//   The dot product's channel order is free, so step s of lane pair p takes four channels of the pair's run of D/4
//   (int8 / fp8: 4s … 4s + 3; int4: two pairs j, j + 4 of a word of eight nibbles, int4Channel): a lane's B
//   fragments for one key are one contiguous run of its row's codes (16 or 32 bytes at D = 128). Keys are int4
//   nibble n → bf16 128 + n (a shift and a lop3 per register), int8 byte b → f16 1152 + b, fp8 → f16 (exact);
//   score = key scale · (q·code − offset·Σq) (+ zero·Σq for int4).
// - Values: Oᵀ = Vᵀ·Pᵀ, channels as the rows of A and query heads as the columns of B, so every accumulator holds a
//   head's channel (P as A would keep rows G…15 of zeros: twice the accumulators). Pᵀ's B fragments are a lane's own
//   probabilities from the scores; row r of m-tile i is channel (D/16)·r + i, so a lane's value codes for one key are
//   two runs of D/16 channels. Values are f16 codes (int4 1024 + n, int8 1152 + b, fp8 exact) and B holds p · value
//   scale / S, S the tile's largest value scale: below 1 and far from f16's underflow, with 11 bits of p. The
//   accumulator is kept in units of S (rescaled with the softmax correction); the offsets come off with the sum of B as
//   rounded (int4's zeros with p), so they cancel exactly.
// Included by attention-decode.cu inside its anonymous namespace (DecodeLaunch, decodeWork, storeWarpState,
// mergeWarpStates).
#pragma once

// One warp's ring of stages for a scheme and head dim: each stage holds 32 key rows and 32 value rows of codes
// (rows padded by 16 bytes: the lanes' fragment loads are conflict-free), then the rows' scale words (int4: scale |
// zero << 16; int8 / fp8: the aligned 32-bit word holding the row's f16 scale) and two masks of which rows' scales sit
// in the word's upper half.
template <int D, int kScheme>
struct CodeRing {
  static constexpr bool kInt4 = kScheme == static_cast<int>(KvQuant::Int4);
  static constexpr int kCodeBytes = kInt4 ? D / 2 : D;
  static constexpr int kRowStride = kCodeBytes + 16;
  static constexpr int kScaleOffset = 2 * 32 * kRowStride;
  static constexpr int kStageBytes = kScaleOffset + 2 * 32 * 4 + 16;
  // int4 tiles are half the bytes of int8 ones: one stage more in flight, and three blocks a multiprocessor (168
  // registers, a few bytes spilled); int8 and fp8 stages leave room for two blocks (about 175 registers, none spilled).
  static constexpr int kStages = kInt4 ? 3 : 2;
  static constexpr int kBlocks = kInt4 ? 3 : 2;
  static constexpr size_t kSharedBytes = static_cast<size_t>(kDecodeWarps) * kStages * kStageBytes;
  static constexpr int kKeyLaneBytes = kCodeBytes / 4;    // D/4 channels of one key
  static constexpr int kValueRunBytes = kCodeBytes / 16;  // D/16 channels of one value (a lane reads two runs)
  static_assert(kSharedBytes >= static_cast<size_t>(kDecodeWarps) * 8 * D * sizeof(float), "the block merge reuses the ring");
};

// `W` 32-bit words from shared memory at `source` (aligned to the load's width).
template <int W>
__device__ __forceinline__ void loadWords(const uint8_t* source, uint32_t (&words)[W]) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int i = 0; i < W / 4; i++) {
      const uint4 chunk = reinterpret_cast<const uint4*>(source)[i];
      words[4 * i] = chunk.x, words[4 * i + 1] = chunk.y, words[4 * i + 2] = chunk.z, words[4 * i + 3] = chunk.w;
    }
  } else if constexpr (W == 2) {
    const uint2 chunk = *reinterpret_cast<const uint2*>(source);
    words[0] = chunk.x, words[1] = chunk.y;
  } else {
    static_assert(W == 1, "loadWords reads 4, 8 or a multiple of 16 bytes");
    words[0] = *reinterpret_cast<const uint32_t*>(source);
  }
}

// A 4-byte cp.async (cached at all levels, as the 4- and 8-byte sizes require).
__device__ __forceinline__ void copyAsync4(void* shared, const void* global) {
  const unsigned target = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(target), "l"(global));
}

// int4 keys: the first channel of A register `half` of score step `s` for lane pair `pair` (its second is 4 on). The
// pair's run of D/4 channels is words of eight nibbles; step s takes word s / 2 and, in it, channels j and j + 4
// (half 0) and j + 1 and j + 5 (half 1) for j = 2 · (s % 2) — the pairs one lop3 makes from a shifted word.
template <int D>
__device__ __forceinline__ int int4Channel(int pair, int s, int half) {
  return (D / 4) * pair + 8 * (s / 2) + 2 * (s & 1) + half;
}

// Two fp8 codes (the low 16 bits of `codes`) as an f16 pair, exactly.
__device__ __forceinline__ uint32_t fp8PairHalf(uint32_t codes) {
  const __half2_raw pair = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(codes & 0xffffu), __NV_E4M3);
  return static_cast<uint32_t>(pair.x) | (static_cast<uint32_t>(pair.y) << 16);
}

// Bytes `byte` of x and y side by side as f16 1024 + x, 1024 + y (x low): the value pairs of int8 codes (biased by
// 128).
__device__ __forceinline__ uint32_t bytePairHalf(uint32_t x, uint32_t y, int byte) {
  return __byte_perm(__byte_perm(x, y, byte | ((4 + byte) << 4)), 0x6464u, 0x5140);
}

// The B fragments of score step `s` from a lane's key words (channels 4s … 4s + 3 of its run).
template <int kScheme, int W>
__device__ __forceinline__ void keyFragments(const uint32_t (&words)[W], int s, uint32_t& b0, uint32_t& b1) {
  if constexpr (kScheme == static_cast<int>(KvQuant::Int4)) {
    // Nibble j of a word is channel j of its eight: one shift and one lop3 make the bf16 pair 128 + channel j,
    // 128 + channel j + 4 (int4Channel's order).
    const uint32_t word = words[s / 2] >> (8 * (s & 1));
    b0 = (word & 0x000f000fu) | 0x43004300u;
    b1 = ((word >> 4) & 0x000f000fu) | 0x43004300u;
  } else if constexpr (kScheme == static_cast<int>(KvQuant::Int8)) {
    const uint32_t biased = words[s] ^ 0x80808080u;
    b0 = __byte_perm(biased, 0x6464u, 0x5140);
    b1 = __byte_perm(biased, 0x6464u, 0x5342);
  } else {
    b0 = fp8PairHalf(words[s]);
    b1 = fp8PairHalf(words[s] >> 16);
  }
}

// A lane's value codes of one key — two runs of D/16 channels, at channels (D/16)·row and (D/16)·(row + 8) — ready
// for valueFragment to pair two keys' channel: int4 as read, int8 codes biased by 128, fp8 as read.
template <int kScheme, int kRunBytes>
struct ValueRuns {
  static constexpr int kWords = kRunBytes >= 4 ? kRunBytes / 4 : 1;  // a 2-byte run (int4, head dim 64) in one word
  uint32_t words[2][kWords];
  __device__ __forceinline__ void load(const uint8_t* low, const uint8_t* high) {
#pragma unroll
    for (int run = 0; run < 2; run++) {
      const uint8_t* source = run ? high : low;
      uint32_t raw[kWords];
      if constexpr (kRunBytes == 2) raw[0] = *reinterpret_cast<const uint16_t*>(source);
      else loadWords<kWords>(source, raw);
#pragma unroll
      for (int w = 0; w < kWords; w++) {
        if constexpr (kScheme == static_cast<int>(KvQuant::Int8)) {
          words[run][w] = raw[w] ^ 0x80808080u;
        } else {
          words[run][w] = raw[w];
        }
      }
    }
  }
};

// Channel i of run `run` of keys x (low) and y (high) as an f16 pair: an A register of P·V's m-tile i.
template <int kScheme, int kRunBytes>
__device__ __forceinline__ uint32_t valueFragment(const ValueRuns<kScheme, kRunBytes>& x, const ValueRuns<kScheme, kRunBytes>& y,
                                                  int run, int i) {
  if constexpr (kScheme == static_cast<int>(KvQuant::Int4)) {
    // Channel i is nibble i % 8 of word i / 8: one permute brings its byte of x and y to bytes 0 and 2, then a shift
    // for an odd channel and one lop3 make f16 1024 + n.
    const int byte = (i % 8) / 2;
    const uint32_t both = __byte_perm(x.words[run][i / 8], y.words[run][i / 8], byte | ((4 + byte) << 8));
    return (((i & 1) ? both >> 4 : both) & 0x000f000fu) | 0x64006400u;
  } else if constexpr (kScheme == static_cast<int>(KvQuant::Int8)) {
    return bytePairHalf(x.words[run][i / 4], y.words[run][i / 4], i % 4);
  } else {
    const int shift = 16 * ((i % 4) / 2);
    const uint32_t hx = fp8PairHalf(x.words[run][i / 4] >> shift), hy = fp8PairHalf(y.words[run][i / 4] >> shift);
    return __byte_perm(hx, hy, (i & 1) ? 0x7632 : 0x5410);
  }
}

template <int D, int kScheme, int N>
__global__ void __launch_bounds__(kDecodeThreads, CodeRing<D, kScheme>::kBlocks) decodeCodesKernel(const __grid_constant__ DecodeLaunch<N> launch) {
  if (launch.idle()) return;
  using Ring = CodeRing<D, kScheme>;
  constexpr bool kInt4 = kScheme == static_cast<int>(KvQuant::Int4);
  constexpr bool kInt8 = kScheme == static_cast<int>(KvQuant::Int8);
  constexpr bool kFp8 = kScheme == static_cast<int>(KvQuant::Fp8);
  using KeyT = std::conditional_t<kInt4, __nv_bfloat16, __half>;
  constexpr float kKeyOffset = kInt4 ? 128.0f : (kInt8 ? 1152.0f : 0.0f);
  constexpr float kValueOffset = kInt4 ? 1024.0f : (kInt8 ? 1152.0f : 0.0f);
  constexpr int kSteps = D / 16, kOutTiles = D / 16, kStages = Ring::kStages, kRowStride = Ring::kRowStride;
  constexpr int kKeyWords = Ring::kKeyLaneBytes / 4, kRunBytes = Ring::kValueRunBytes;
  constexpr int kMaxHeads = 8;
  extern __shared__ __align__(16) unsigned char tiles[];
  const DecodeSequence& sequence = launch.decoding();
  const DecodeWork<__nv_bfloat16> work = decodeWork<__nv_bfloat16, true>(sequence, launch.block(), D);
  const QuantHead& head = work.quant;
  const int group = launch.group, kvHead = work.kvHead;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row = lane >> 2, pair = lane & 3;
  uint8_t* ring = tiles + static_cast<size_t>(warp) * kStages * Ring::kStageBytes;

  // Stages tile `tile` (its first `count` keys) into ring stage `into`: rows past `count` and their scales are zeros.
  auto stage = [&](int64_t tile, int count, int into) {
    uint8_t* keys = ring + into * Ring::kStageBytes;
    uint8_t* values = keys + 32 * kRowStride;
    uint32_t* scales = reinterpret_cast<uint32_t*>(keys + Ring::kScaleOffset);
    constexpr int kChunks = Ring::kCodeBytes / 16;
    if (kInt4 && !work.streams && count == 32) {
      // A whole int4 tile of a full head (most of the bytes at long contexts): a full head's slots are its key indices,
      // so its 32 rows are one run of codes and one of scale words, copied without a slot lookup or a bound a row (the
      // tile loop, 1 275 instructions a warp, was bound by issue: bench/results/2026-12-07-h100-blocks-lane-pieces;
      // 2–5 % faster at 128K–512K: bench/results/2026-12-07-h100-int4-tiles).
      const int64_t first = work.slot(tile);
#pragma unroll
      for (int i = 0; i < kChunks; i++) {
        const int piece = lane + 32 * i, r = piece / kChunks, chunk = piece % kChunks;
        const int64_t at = first * Ring::kCodeBytes + 16 * piece;
        copyAsync16(keys + r * kRowStride + 16 * chunk, head.keyCodes + at);
        copyAsync16(values + r * kRowStride + 16 * chunk, head.valueCodes + at);
      }
      copyAsync4(scales + lane, head.keyScales + 2 * (first + lane));
      copyAsync4(scales + 32 + lane, head.valueScales + 2 * (first + lane));
      commitGroup();
      return;
    }
#pragma unroll
    for (int i = 0; i < kChunks; i++) {
      const int piece = lane + 32 * i, r = piece / kChunks, chunk = piece % kChunks;
      uint8_t* keyTarget = keys + r * kRowStride + 16 * chunk;
      uint8_t* valueTarget = values + r * kRowStride + 16 * chunk;
      if (r < count) {
        const int64_t at = work.slot(tile + r) * Ring::kCodeBytes + 16 * chunk;
        copyAsync16(keyTarget, head.keyCodes + at);
        copyAsync16(valueTarget, head.valueCodes + at);
      } else {
        *reinterpret_cast<uint4*>(keyTarget) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(valueTarget) = make_uint4(0, 0, 0, 0);
      }
    }
    bool keyHigh = false, valueHigh = false;
    if (lane < count) {
      const int64_t slot = work.slot(tile + lane);
      if constexpr (kInt4) {
        copyAsync4(scales + lane, head.keyScales + 2 * slot);
        copyAsync4(scales + 32 + lane, head.valueScales + 2 * slot);
      } else {
        // cp.async moves 4 bytes at least: the aligned word holding the f16 scale, and which half it is.
        const uintptr_t keyAt = reinterpret_cast<uintptr_t>(head.keyScales + slot);
        const uintptr_t valueAt = reinterpret_cast<uintptr_t>(head.valueScales + slot);
        keyHigh = (keyAt & 2) != 0;
        valueHigh = (valueAt & 2) != 0;
        copyAsync4(scales + lane, reinterpret_cast<const void*>(keyAt & ~uintptr_t{3}));
        copyAsync4(scales + 32 + lane, reinterpret_cast<const void*>(valueAt & ~uintptr_t{3}));
      }
    } else {
      scales[lane] = 0;
      scales[32 + lane] = 0;
    }
    if constexpr (!kInt4) {
      const unsigned keyMask = __ballot_sync(0xffffffffu, keyHigh), valueMask = __ballot_sync(0xffffffffu, valueHigh);
      if (lane == 0) scales[64] = keyMask, scales[65] = valueMask;
    }
    commitGroup();
  };

  // This warp's tiles: begin + 32·warp, then every kDecodeWarps·32 keys.
  const int64_t firstTile = work.begin + 32 * warp, end = work.end;
  constexpr int64_t kTileStep = kDecodeWarps * 32;
  const int tileCount = firstTile < end ? static_cast<int>((end - firstTile + kTileStep - 1) / kTileStep) : 0;
  auto tileAt = [&](int i) { return firstTile + i * kTileStep; };
  auto countAt = [&](int i) { return static_cast<int>(lesser(32, end - tileAt(i))); };
  // Cached keys other than the newest one are not written by the kernel before this one (RoPE + cache write): tiles
  // that end before it are staged before waiting for that kernel, so their reads overlap its tail (chained launches).
  bool waited = false;
#pragma unroll
  for (int i = 0; i < kStages - 1; i++) {
    if (i < tileCount) {
      if (!waited && tileAt(i) + 32 >= work.range.count) {
        dependOnPrevious();
        waited = true;
      }
      stage(tileAt(i), countAt(i), i);
    } else {
      commitGroup();
    }
  }
  if (!waited) dependOnPrevious();

  // A fragments of Q: row `row` (a query head); k positions 2·pair (+1) and 2·pair + 8 (+1) of step s are channels
  // (D/4)·pair + 4s (+1) and + 2 (+3). Offset codes need the query's sum as the products see it (high + low parts).
  uint32_t qHigh[kSteps][2], qLow[kSteps][2];
  float querySum = 0.0f;
#pragma unroll
  for (int s = 0; s < kSteps; s++)
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int channel = kInt4 ? int4Channel<D>(pair, s, half) : (D / 4) * pair + 4 * s + 2 * half;
      const int next = kInt4 ? 4 : 1;  // the register's second channel
      float x0 = 0.0f, x1 = 0.0f;
      if (row < group) {
        const float* source = sequence.q + (static_cast<int64_t>(kvHead) * group + row) * D + channel;
        x0 = source[0] * launch.scale;
        x1 = source[next] * launch.scale;
      }
      splitQuery<KeyT>(x0, x1, qHigh[s][half], qLow[s][half]);
      const KeyT high0 = fromFloat<KeyT>(x0), high1 = fromFloat<KeyT>(x1);
      querySum += toFloat(high0) + toFloat(fromFloat<KeyT>(x0 - toFloat(high0))) + toFloat(high1) +
                  toFloat(fromFloat<KeyT>(x1 - toFloat(high1)));
    }
  querySum += __shfl_xor_sync(0xffffffffu, querySum, 1);
  querySum += __shfl_xor_sync(0xffffffffu, querySum, 2);

  float maximum = -INFINITY, sum = 0.0f;
  float unit = 1.0f;      // out holds the products in units of the last tile's S
  float offsetTerm = 0.0f;  // Σ p · zero − offset · S · Σ A over this lane's keys, in true units
  // Oᵀ = Vᵀ·Pᵀ: m-tile i's rows are channels (D/16)·row + i and (D/16)·(row + 8) + i, its columns the query heads
  // 2·pair and 2·pair + 1 — every accumulator holds a head's channel (rows G…7 of the scores are zero columns here).
  float out[kOutTiles][4];
#pragma unroll
  for (int j = 0; j < kOutTiles; j++) out[j][0] = out[j][1] = out[j][2] = out[j][3] = 0.0f;

  for (int i = 0; i < tileCount; i++) {
    waitGroups<kStages - 2>();
    __syncwarp();  // tile i is in its stage, and every lane is done with the stage the refill below overwrites
    const int refill = i + kStages - 1;
    if (refill < tileCount) stage(tileAt(refill), countAt(refill), refill % kStages);
    else commitGroup();
    const uint8_t* keys = ring + (i % kStages) * Ring::kStageBytes;
    const uint8_t* values = keys + 32 * kRowStride;
    const uint32_t* scales = reinterpret_cast<const uint32_t*>(keys + Ring::kScaleOffset);
    const int count = countAt(i);

    // Scores of 32 keys: n-tile t holds keys 8t + 2·pair (+1) for query head `row`; its B fragments are key 8t + row.
    float score[4][4];
#pragma unroll
    for (int t = 0; t < 4; t++) {
      score[t][0] = score[t][1] = score[t][2] = score[t][3] = 0.0f;
      uint32_t words[kKeyWords];
      loadWords<kKeyWords>(keys + (8 * t + row) * kRowStride + pair * Ring::kKeyLaneBytes, words);
#pragma unroll
      for (int s = 0; s < kSteps; s++) {
        uint32_t b0, b1;
        keyFragments<kScheme>(words, s, b0, b1);
        if constexpr (kInt4) {
          mma16816<KeyT>(score[t], qHigh[s][0], qLow[s][0], qHigh[s][1], qLow[s][1], b0, b1);
        } else {
          mma16816<KeyT>(score[t], qHigh[s][0], 0u, qHigh[s][1], 0u, b0, b1);
          mma16816<KeyT>(score[t], qLow[s][0], 0u, qLow[s][1], 0u, b0, b1);
        }
      }
      if constexpr (kInt4) {
        score[t][0] += score[t][2];  // the high parts' products (rows 0–7) and the remainders' (rows 8–15)
        score[t][1] += score[t][3];
      }
    }
    // This lane's keys' scales (key 8t + 2·pair + j).
    float keyScale[4][2], valueScale[4][2], valueZero[4][2];
    const uint32_t keyHigh = kInt4 ? 0u : scales[64], valueHigh = kInt4 ? 0u : scales[65];
#pragma unroll
    for (int t = 0; t < 4; t++) {
      const int key = 8 * t + 2 * pair;
      const uint2 keyWords = *reinterpret_cast<const uint2*>(scales + key);
      const uint2 valueWords = *reinterpret_cast<const uint2*>(scales + 32 + key);
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const uint32_t keyBits = j ? keyWords.y : keyWords.x, valueBits = j ? valueWords.y : valueWords.x;
        if constexpr (kInt4) {
          keyScale[t][j] = halfBits(static_cast<uint16_t>(keyBits & 0xffff));
          score[t][j] = keyScale[t][j] * (score[t][j] - kKeyOffset * querySum) + halfBits(static_cast<uint16_t>(keyBits >> 16)) * querySum;
          valueScale[t][j] = halfBits(static_cast<uint16_t>(valueBits & 0xffff));
          valueZero[t][j] = halfBits(static_cast<uint16_t>(valueBits >> 16));
        } else {
          keyScale[t][j] = halfBits(static_cast<uint16_t>(keyBits >> (((keyHigh >> (key + j)) & 1) * 16)));
          score[t][j] = keyScale[t][j] * (score[t][j] - kKeyOffset * querySum);
          valueScale[t][j] = halfBits(static_cast<uint16_t>(valueBits >> (((valueHigh >> (key + j)) & 1) * 16)));
          valueZero[t][j] = 0.0f;
        }
      }
    }
    float tileMax = -INFINITY, largestScale = 0.0f;
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const bool valid = 8 * t + 2 * pair + j < count;
        score[t][j] = valid ? score[t][j] : -INFINITY;
        tileMax = fmaxf(tileMax, score[t][j]);
        largestScale = fmaxf(largestScale, valueScale[t][j]);
      }
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
    largestScale = fmaxf(largestScale, __shfl_xor_sync(0xffffffffu, largestScale, 1));
    largestScale = fmaxf(largestScale, __shfl_xor_sync(0xffffffffu, largestScale, 2));
    const float tileUnit = largestScale > 0.0f ? largestScale : 1.0f, inverseUnit = 1.0f / tileUnit;
    const float updated = fmaxf(maximum, tileMax);
    const float correction = __expf(maximum - updated);
    float weight[4][2];  // Pᵀ: p · value scale / S, as f16 rounds it
    float rowSum = 0.0f, tileOffset = 0.0f;
#pragma unroll
    for (int t = 0; t < 4; t++)
#pragma unroll
      for (int j = 0; j < 2; j++) {
        const float p = score[t][j] == -INFINITY ? 0.0f : __expf(score[t][j] - updated);
        rowSum += p;
        weight[t][j] = __half2float(__float2half_rn(p * valueScale[t][j] * inverseUnit));
        tileOffset += p * valueZero[t][j] - kValueOffset * tileUnit * weight[t][j];
      }
    rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 1);
    rowSum += __shfl_xor_sync(0xffffffffu, rowSum, 2);
    sum = sum * correction + rowSum;
    maximum = updated;
    if constexpr (!kFp8) offsetTerm = offsetTerm * correction + tileOffset;
    // The columns' heads are rows 2·pair and 2·pair + 1 of the scores: their corrections from those lanes.
    const float ratio = unit / tileUnit;
    const float rescaleLow = __shfl_sync(0xffffffffu, correction, 8 * pair) * ratio;
    const float rescaleHigh = __shfl_sync(0xffffffffu, correction, 8 * pair + 4) * ratio;
    unit = tileUnit;
#pragma unroll
    for (int m = 0; m < kOutTiles; m++) {
      out[m][0] *= rescaleLow;
      out[m][1] *= rescaleHigh;
      out[m][2] *= rescaleLow;
      out[m][3] *= rescaleHigh;
    }
    // P·V over two 16-key steps: keys 16u + 2·pair (+1) and 16u + 8 + 2·pair (+1). Pᵀ's B fragments are this lane's
    // own probabilities (head `row`), Vᵀ's A fragments pair two keys' codes of one channel.
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const uint32_t b0 = packPair<__half>(weight[2 * u][0], weight[2 * u][1]);
      const uint32_t b1 = packPair<__half>(weight[2 * u + 1][0], weight[2 * u + 1][1]);
      ValueRuns<kScheme, kRunBytes> x0, x1, y0, y1;
      const uint8_t* low = values + row * kRunBytes;
      const uint8_t* high = values + (row + 8) * kRunBytes;
      auto load = [&](ValueRuns<kScheme, kRunBytes>& runs, int key) { runs.load(low + key * kRowStride, high + key * kRowStride); };
      load(x0, 16 * u + 2 * pair);
      load(x1, 16 * u + 2 * pair + 1);
      load(y0, 16 * u + 8 + 2 * pair);
      load(y1, 16 * u + 9 + 2 * pair);
#pragma unroll
      for (int m = 0; m < kOutTiles; m++)
        mma16816<__half>(out[m], valueFragment(x0, x1, 0, m), valueFragment(x0, x1, 1, m), valueFragment(y0, y1, 0, m),
                         valueFragment(y0, y1, 1, m), b0, b1);
    }
  }
  if constexpr (!kFp8) {
    offsetTerm += __shfl_xor_sync(0xffffffffu, offsetTerm, 1);
    offsetTerm += __shfl_xor_sync(0xffffffffu, offsetTerm, 2);
  }
  const float offsetLow = __shfl_sync(0xffffffffu, offsetTerm, 8 * pair);
  const float offsetHigh = __shfl_sync(0xffffffffu, offsetTerm, 8 * pair + 4);
#pragma unroll
  for (int m = 0; m < kOutTiles; m++) {
    out[m][0] = out[m][0] * unit + offsetLow;
    out[m][1] = out[m][1] * unit + offsetHigh;
    out[m][2] = out[m][2] * unit + offsetLow;
    out[m][3] = out[m][3] * unit + offsetHigh;
  }
  // The block merge: stateAcc[warp][head][channel] takes each column of Oᵀ (heads 2·pair and 2·pair + 1 below G).
  __shared__ float stateMax[kDecodeWarps][kMaxHeads];
  __shared__ float stateSum[kDecodeWarps][kMaxHeads];
  __syncthreads();
  float* stateAcc = reinterpret_cast<float*>(tiles);  // the ring is no longer needed
  storeWarpState<D>(stateMax, stateSum, stateAcc, out, maximum, sum, group, warp, row, pair,
                    [](int m, int r) { return (D / 16) * r + m; });
  __syncthreads();
  mergeWarpStates<D, kMaxHeads>(stateMax, stateSum, stateAcc, sequence, work, group);
}
