// The work of causal prefill attention, counted two ways: as FlashAttention's benchmarks count it (every causal pair
// of a full head, 4·S²·D / 2 flops a head) and as the (query, key) pairs a head's mask leaves visible — the Λ mask of a
// streaming head keeps the sinks and a window, so its work grows linearly in S.

/** Visible (query, key) pairs of one head for queries at positions 0 … length − 1 over keys 0 … length − 1. */
export function visiblePairs(length: number, streaming?: { sink: number; recent: number }): number {
  if (!streaming) return (length * (length + 1)) / 2;
  const { sink, recent } = streaming;
  let pairs = 0;
  for (let i = 0; i < length; i++) {
    // Query i sees the sinks below it, then the window i − recent + 1 … i past the sinks.
    const sinks = Math.min(sink, i + 1);
    const windowFirst = Math.max(sink, i - recent + 1);
    pairs += sinks + Math.max(0, i - windowFirst + 1);
  }
  return pairs;
}

/** FlashAttention's count of causal forward flops: 4 · S² · D · heads / 2. */
export function causalFlops(length: number, headDim: number, heads: number): number {
  return (4 * length * length * headDim * heads) / 2;
}

/** Flops of the pairs a layer's heads leave visible: 4 · D per pair (Q·Kᵀ and P·V), streaming heads by the Λ mask. */
export function visibleFlops(
  length: number,
  headDim: number,
  heads: { full: number; streaming: number },
  window: { sink: number; recent: number },
): number {
  return 4 * headDim * (heads.full * visiblePairs(length) + heads.streaming * visiblePairs(length, window));
}

/** The tiles of a blocked prefill kernel: query rows per block and keys per tile (the CUDA tensor-core kernel: 64, 64). */
export interface AttentionTiles {
  queryRows: number;
  keyTile: number;
}

/**
 * Key tiles one head's query blocks visit over `length` tokens (queries and keys 0 … length − 1), the way the kernels
 * walk them (`keyRangeFor`): a full head's block visits every key up to its last query; a streaming head's block the
 * sinks, then the window from its first query's oldest visible key to its last query, as one run of logical keys cut
 * into tiles — so a streaming head's tiles per block stay bounded and the rest are skipped, not masked.
 */
export function visitedTiles(
  length: number,
  tiles: AttentionTiles,
  streaming?: { sink: number; recent: number },
): number {
  let visited = 0;
  for (let first = 0; first < length; first += tiles.queryRows) {
    const keyEnd = Math.min(length, first + tiles.queryRows);
    let keys = keyEnd;
    if (streaming) {
      const sinks = Math.min(keyEnd, streaming.sink);
      const windowFirst = Math.max(streaming.sink, first - streaming.recent + 1);
      keys = sinks + Math.max(0, keyEnd - windowFirst);
    }
    visited += Math.ceil(keys / tiles.keyTile);
  }
  return visited;
}
