// Compressibility of a prefix: the LZMA ratio (compressed / original bytes) of its text and of its token ids, the
// paper's measure of how regular a sequence is (lower = more compressible).
import lzmaWorker from 'lzma/src/lzma_worker.js';

const { compress } = lzmaWorker.LZMA_WORKER;

/** LZMA-JS at preset 6 (Python's lzma default); .lzma framing adds 13 bytes of header against xz's ~60. */
const PRESET = 6;

/** Compressed / original size of `bytes` (NaN for an empty input). */
export function lzmaRatio(bytes: Uint8Array): number {
  if (bytes.length === 0) return Number.NaN;
  return compress(bytes, PRESET).length / bytes.length;
}

/** The token ids as little-endian u16s when they all fit, else u32s (so the ratio does not depend on how ids print). */
export function tokenBytes(tokens: readonly number[]): Uint8Array {
  const width = tokens.every((token) => token < 65536) ? 2 : 4;
  const bytes = new Uint8Array(tokens.length * width);
  const view = new DataView(bytes.buffer);
  tokens.forEach((token, i) => {
    if (width === 2) view.setUint16(i * 2, token, true);
    else view.setUint32(i * 4, token, true);
  });
  return bytes;
}

export interface Compressibility {
  /** LZMA ratio of the UTF-8 text (when a tokenizer can decode the tokens). */
  readonly text?: number;
  /** LZMA ratio of the token ids (u16s, or u32s for ids past 65535). */
  readonly tokens: number;
}

/** Both ratios of a prefix (`text`: its decoded text, when there is one). */
export function compressibility(tokens: readonly number[], text?: string): Compressibility {
  return {
    tokens: lzmaRatio(tokenBytes(tokens)),
    ...(text === undefined ? {} : { text: lzmaRatio(new TextEncoder().encode(text)) }),
  };
}
