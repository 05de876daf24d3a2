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
