// Block-quantized weight formats (docs/decisions/0010-weight-quantization.md): GGUF's Q8_0 and the k-quants of
// Q4_K_M / Q5_K_M files (Q4_K, Q5_K, Q6_K) in llama.cpp's byte layout — their one description here, with a reference
// encoder (what our GGUF writer stores) and decoder (the float64 truth the kernels are checked against).
import { f16ToNumber, numberToF16 } from './half.js';

/** A weight format kept quantized: blocks of `blockValues` values along a row, `blockBytes` bytes each. */
export type WeightFormat = 'q8_0' | 'q4_k' | 'q5_k' | 'q6_k';

/** How a format lays out its blocks, and its GGML type id in GGUF files. */
export interface WeightFormatLayout {
  readonly blockValues: number;
  readonly blockBytes: number;
  readonly ggmlType: number;
  /** GGML's name, as GGUF tools print it. */
  readonly ggmlName: string;
}

/**
 * The formats by name. Q8_0: an f16 scale and 32 int8. The k-quants group 256 values into a super-block of sub-blocks
 * with 6-bit (Q4_K, Q5_K: 8 × 32 values, scales and mins) or 8-bit (Q6_K: 16 × 16 values, scales) sub-scales under
 * f16 super-scales.
 */
export const WEIGHT_FORMATS: Readonly<Record<WeightFormat, WeightFormatLayout>> = {
  q8_0: { blockValues: 32, blockBytes: 34, ggmlType: 8, ggmlName: 'Q8_0' },
  q4_k: { blockValues: 256, blockBytes: 144, ggmlType: 12, ggmlName: 'Q4_K' },
  q5_k: { blockValues: 256, blockBytes: 176, ggmlType: 13, ggmlName: 'Q5_K' },
  q6_k: { blockValues: 256, blockBytes: 210, ggmlType: 14, ggmlName: 'Q6_K' },
};

/** What `--weight-quant` accepts: none, the block formats, and int8 / int4 — Q8_0 and Q4_K under their plain names. */
export const WEIGHT_QUANT_CHOICES = ['none', 'int8', 'int4', 'q8_0', 'q4_k', 'q5_k', 'q6_k'] as const;
export type WeightQuantChoice = (typeof WEIGHT_QUANT_CHOICES)[number];

/** The block format a `--weight-quant` choice keeps matrices in (undefined for none). */
export function weightQuantFormat(choice: WeightQuantChoice): WeightFormat | undefined {
  if (choice === 'none') return undefined;
  if (choice === 'int8') return 'q8_0';
  if (choice === 'int4') return 'q4_k';
  return choice;
}

/** Bytes of `values` values in `format` (a whole number of blocks; throws otherwise, naming the format). */
export function weightFormatBytes(format: WeightFormat, values: number): number {
  const { blockValues, blockBytes, ggmlName } = WEIGHT_FORMATS[format];
  if (!Number.isInteger(values) || values < 0 || values % blockValues !== 0) {
    throw new RangeError(`${ggmlName} holds whole blocks of ${blockValues} values, not ${values}`);
  }
  return (values / blockValues) * blockBytes;
}

/**
 * The format a matrix with rows of `rowLength` values is stored in when `format` is asked for. A block format needs
 * rows of whole blocks; for the others our writer and planner fall back to Q8_0 where rows hold blocks of 32, else to
 * f16 (undefined). (llama.cpp's quantizer falls back to Q5_0 / Q5_1 for Q4_K / Q5_K, formats we do not read yet, so a
 * file it made from such rows does not load here, and the planner's bytes are ours, not its.)
 */
export function storedWeightFormat(format: WeightFormat, rowLength: number): WeightFormat | undefined {
  if (rowLength > 0 && rowLength % WEIGHT_FORMATS[format].blockValues === 0) return format;
  if (rowLength <= 0) return undefined;
  return rowLength % WEIGHT_FORMATS.q8_0.blockValues === 0 ? 'q8_0' : undefined;
}

/** Bytes of a `[rows, rowLength]` matrix stored as `format` asks (storedWeightFormat; the f16 fallback 2 a value). */
export function storedWeightBytes(format: WeightFormat, rows: number, rowLength: number): number {
  const stored = storedWeightFormat(format, rowLength);
  return stored ? weightFormatBytes(stored, rows * rowLength) : rows * rowLength * 2;
}

/**
 * `values` quantized into `format`'s blocks (its length a multiple of the block). Non-finite values, and values whose
 * f16 scales would overflow (|x| past about 8 · 10⁶), are refused: they would decode as whole blocks of NaN.
 */
export function quantizeWeights(format: WeightFormat, values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(weightFormatBytes(format, values.length));
  for (let i = 0; i < values.length; i++) {
    const value = values[i] as number;
    if (!Number.isFinite(value) || Math.abs(value) > MAX_ENCODABLE) {
      throw new RangeError(
        `${WEIGHT_FORMATS[format].ggmlName}: value ${i} is ${value}; expected a finite value within ±${MAX_ENCODABLE}`,
      );
    }
  }
  const { blockValues, blockBytes } = WEIGHT_FORMATS[format];
  const encode = ENCODERS[format];
  for (let block = 0; block * blockValues < values.length; block++) {
    const start = block * blockValues;
    encode(
      Float64Array.from({ length: blockValues }, (_, i) => values[start + i] as number),
      out,
      block * blockBytes,
    );
  }
  return out;
}

/** The values `bytes` hold in `format`, exactly as its definition reads them (float64). */
export function dequantizeWeights(format: WeightFormat, bytes: Uint8Array, values: number): Float64Array {
  const expected = weightFormatBytes(format, values);
  const { blockValues, blockBytes, ggmlName } = WEIGHT_FORMATS[format];
  if (bytes.length < expected) {
    throw new RangeError(`${ggmlName}: ${values} values need ${expected} bytes but ${bytes.length} were given`);
  }
  const out = new Float64Array(values);
  const decode = DECODERS[format];
  for (let block = 0; block * blockValues < values; block++)
    decode(bytes, block * blockBytes, out, block * blockValues);
  return out;
}

/**
 * The largest magnitude every encoder stores without its f16 scales overflowing: Q4_K / Q5_K keep a sub-block's min
 * as 63 steps of an f16 `dmin` (≤ 65504), so |x| ≤ 63 · 65504 ≈ 4.1 · 10⁶ always fits.
 */
const MAX_ENCODABLE = 4e6;

type Encoder = (block: Float64Array, out: Uint8Array, at: number) => void;
type Decoder = (bytes: Uint8Array, at: number, out: Float64Array, start: number) => void;

const half = (bytes: Uint8Array, at: number) => f16ToNumber((bytes[at] as number) | ((bytes[at + 1] as number) << 8));
const writeHalf = (out: Uint8Array, at: number, value: number) => {
  const bits = numberToF16(value);
  out[at] = bits & 0xff;
  out[at + 1] = bits >> 8;
};
/** The f16 a value is stored as, read back. */
const asHalf = (value: number) => f16ToNumber(numberToF16(value));
const clamp = (value: number, low: number, high: number) => Math.min(high, Math.max(low, value));

// Q8_0: d = max|x| / 127 (f16), q = round(x / d).
const encodeQ8: Encoder = (block, out, at) => {
  const amax = block.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const d = asHalf(amax / 127);
  writeHalf(out, at, d);
  for (let i = 0; i < 32; i++)
    out[at + 2 + i] = d === 0 ? 0 : clamp(Math.round((block[i] as number) / d), -127, 127) & 0xff;
};
const decodeQ8: Decoder = (bytes, at, out, start) => {
  const d = half(bytes, at);
  for (let i = 0; i < 32; i++) out[start + i] = d * (((bytes[at + 2 + i] as number) << 24) >> 24);
};

/**
 * Q4_K / Q5_K sub-block parameters: for each of 8 sub-blocks of 32, a scale and a min (x ≈ scale · q − min, min ≥ 0),
 * stored as 6-bit multiples of the f16 super-scales d and dmin, packed into 12 bytes as llama.cpp's get_scale_min_k4
 * reads them back.
 */
function encodeScalesAndMins(block: Float64Array, levels: number, out: Uint8Array, at: number) {
  const scales: number[] = [];
  const mins: number[] = [];
  for (let j = 0; j < 8; j++) {
    const { scale, min } = fitScaleAndMin(block.subarray(32 * j, 32 * j + 32), levels);
    scales.push(scale);
    mins.push(min);
  }
  const d = asHalf(Math.max(...scales) / 63);
  const dmin = asHalf(Math.max(...mins) / 63);
  writeHalf(out, at, d);
  writeHalf(out, at + 2, dmin);
  const sc = scales.map((s) => (d === 0 ? 0 : clamp(Math.round(s / d), 0, 63)));
  const m = mins.map((v) => (dmin === 0 ? 0 : clamp(Math.round(v / dmin), 0, 63)));
  const packed = out.subarray(at + 4, at + 16);
  for (let j = 0; j < 4; j++) {
    packed[j] = (sc[j] as number) | (((sc[j + 4] as number) >> 4) << 6);
    packed[j + 4] = (m[j] as number) | (((m[j + 4] as number) >> 4) << 6);
    packed[j + 8] = ((sc[j + 4] as number) & 0xf) | (((m[j + 4] as number) & 0xf) << 4);
  }
  // The effective scale and min of each sub-block, as the decoder will see them.
  return { scale: sc.map((s) => d * s), min: m.map((v) => dmin * v) };
}

/**
 * The scale and min (x ≈ scale · q − min, q in 0 … levels, min ≥ 0) that fit a sub-block best in squared error: the
 * min/max grid, then 21 grids a little finer or coarser, each refit by least squares on its codes — the search
 * llama.cpp's quantizer makes, which a plain min/max fit loses to by several percent of perplexity at 4 bits.
 */
function fitScaleAndMin(part: Float64Array, levels: number): { scale: number; min: number } {
  const low = Math.min(0, ...part);
  const high = Math.max(...part);
  if (high === low) return { scale: 0, min: -low };
  const error = (scale: number, offset: number) => {
    let sum = 0;
    for (const x of part) {
      const q = scale === 0 ? 0 : clamp(Math.round((x - offset) / scale), 0, levels);
      sum += (scale * q + offset - x) ** 2;
    }
    return sum;
  };
  let best = { scale: (high - low) / levels, offset: low };
  let bestError = error(best.scale, best.offset);
  for (let step = 0; step <= 20; step++) {
    const inverse = (levels - 1 + 0.1 * step) / (high - low);
    // Codes on this grid, then the least-squares scale and offset for them (the offset kept ≤ 0).
    let [n, sumQ, sumQ2, sumX, sumQX] = [0, 0, 0, 0, 0];
    for (const x of part) {
      const q = clamp(Math.round(inverse * (x - low)), 0, levels);
      n++;
      sumQ += q;
      sumQ2 += q * q;
      sumX += x;
      sumQX += q * x;
    }
    const determinant = n * sumQ2 - sumQ * sumQ;
    if (determinant <= 0) continue;
    let scale = (n * sumQX - sumX * sumQ) / determinant;
    let offset = (sumQ2 * sumX - sumQ * sumQX) / determinant;
    if (offset > 0) {
      offset = 0;
      scale = sumQX / sumQ2;
    }
    if (!(scale > 0)) continue;
    const candidate = error(scale, offset);
    if (candidate < bestError) {
      best = { scale, offset };
      bestError = candidate;
    }
  }
  return { scale: best.scale, min: -best.offset };
}

/** Sub-block j's 6-bit scale and min from the 12 packed bytes (llama.cpp's get_scale_min_k4). */
function scaleAndMin(bytes: Uint8Array, at: number, j: number): [number, number] {
  const q = (i: number) => bytes[at + i] as number;
  if (j < 4) return [q(j) & 63, q(j + 4) & 63];
  return [(q(j + 4) & 0xf) | ((q(j - 4) >> 6) << 4), (q(j + 4) >> 4) | ((q(j) >> 6) << 4)];
}

/** Q4_K and Q5_K's codes: q = round((x + min) / scale) in 0 … levels, per sub-block. */
function subBlockCodes(block: Float64Array, levels: number, scale: number[], min: number[]): number[] {
  return Array.from(block, (x, i) => {
    const s = scale[i >> 5] as number;
    return s === 0 ? 0 : clamp(Math.round((x + (min[i >> 5] as number)) / s), 0, levels);
  });
}

// Q4_K: d, dmin, 12 bytes of scales and mins, 128 bytes of nibbles (chunk c of 64 values: low nibbles the first 32).
// Q5_K: the same with 32 bytes of fifth bits before the nibbles (bit 2c of byte l: value 64c + l; bit 2c + 1: value
// 64c + 32 + l).
function encodeScaledK(fifthBits: boolean): Encoder {
  const levels = fifthBits ? 31 : 15;
  const nibbles = fifthBits ? 48 : 16;
  return (block, out, at) => {
    const { scale, min } = encodeScalesAndMins(block, levels, out, at);
    const q = subBlockCodes(block, levels, scale, min);
    if (fifthBits) out.fill(0, at + 16, at + 48);
    for (let c = 0; c < 4; c++)
      for (let l = 0; l < 32; l++) {
        const first = q[64 * c + l] as number;
        const second = q[64 * c + 32 + l] as number;
        out[at + nibbles + 32 * c + l] = (first & 0xf) | ((second & 0xf) << 4);
        if (fifthBits)
          out[at + 16 + l] = (out[at + 16 + l] as number) | ((first >> 4) << (2 * c)) | ((second >> 4) << (2 * c + 1));
      }
  };
}
function decodeScaledK(fifthBits: boolean): Decoder {
  const nibbles = fifthBits ? 48 : 16;
  return (bytes, at, out, start) => {
    const d = half(bytes, at);
    const dmin = half(bytes, at + 2);
    for (let c = 0; c < 4; c++) {
      const [sc1, m1] = scaleAndMin(bytes, at + 4, 2 * c);
      const [sc2, m2] = scaleAndMin(bytes, at + 4, 2 * c + 1);
      for (let l = 0; l < 32; l++) {
        const byte = bytes[at + nibbles + 32 * c + l] as number;
        const high = fifthBits ? (bytes[at + 16 + l] as number) : 0;
        out[start + 64 * c + l] = d * sc1 * ((byte & 0xf) + (((high >> (2 * c)) & 1) << 4)) - dmin * m1;
        out[start + 64 * c + 32 + l] = d * sc2 * ((byte >> 4) + (((high >> (2 * c + 1)) & 1) << 4)) - dmin * m2;
      }
    }
  };
}

// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 sub-scales (sub-block of 16 values), f16 d; codes
// q − 32 in −32 … 31. Half h (128 values): value 128h + 32k + l has its low nibble in ql[64h + 32(k & 1) + l] (high
// nibble for k ≥ 2) and its high bits at 2k of qh[32h + l].
const encodeQ6K: Encoder = (block, out, at) => {
  const scales = Array.from({ length: 16 }, (_, s) => {
    const part = block.subarray(16 * s, 16 * s + 16);
    const amax = part.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    return amax / 31;
  });
  const d = asHalf(Math.max(...scales) / 127);
  const sc = scales.map((s) => (d === 0 ? 0 : clamp(Math.round(s / d), -128, 127)));
  const q = Array.from(block, (x, i) => {
    const s = d * (sc[i >> 4] as number);
    return (s === 0 ? 0 : clamp(Math.round(x / s), -32, 31)) + 32;
  });
  for (let h = 0; h < 2; h++)
    for (let l = 0; l < 32; l++) {
      const [q1, q2, q3, q4] = [0, 1, 2, 3].map((k) => q[128 * h + 32 * k + l] as number) as [
        number,
        number,
        number,
        number,
      ];
      out[at + 64 * h + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
      out[at + 64 * h + 32 + l] = (q2 & 0xf) | ((q4 & 0xf) << 4);
      out[at + 128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
    }
  for (let s = 0; s < 16; s++) out[at + 192 + s] = (sc[s] as number) & 0xff;
  writeHalf(out, at + 208, d);
};
const decodeQ6K: Decoder = (bytes, at, out, start) => {
  const d = half(bytes, at + 208);
  const scale = (s: number) => ((bytes[at + 192 + s] as number) << 24) >> 24;
  for (let h = 0; h < 2; h++)
    for (let l = 0; l < 32; l++) {
      const low = bytes[at + 64 * h + l] as number;
      const low2 = bytes[at + 64 * h + 32 + l] as number;
      const high = bytes[at + 128 + 32 * h + l] as number;
      const codes = [
        (low & 0xf) | ((high & 3) << 4),
        (low2 & 0xf) | (((high >> 2) & 3) << 4),
        (low >> 4) | (((high >> 4) & 3) << 4),
        (low2 >> 4) | (((high >> 6) & 3) << 4),
      ];
      for (let k = 0; k < 4; k++) {
        const index = 128 * h + 32 * k + l;
        out[start + index] = d * scale(index >> 4) * ((codes[k] as number) - 32);
      }
    }
};

const ENCODERS: Record<WeightFormat, Encoder> = {
  q8_0: encodeQ8,
  q4_k: encodeScaledK(false),
  q5_k: encodeScaledK(true),
  q6_k: encodeQ6K,
};
const DECODERS: Record<WeightFormat, Decoder> = {
  q8_0: decodeQ8,
  q4_k: decodeScaledK(false),
  q5_k: decodeScaledK(true),
  q6_k: decodeQ6K,
};
