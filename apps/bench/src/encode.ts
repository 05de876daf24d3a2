// Encoding long texts for the benchmarks: a few kilobytes at a time, split at line or word ends, because a score-BPE
// tokenizer's cost grows with the square of what it is given at once (a whole book would take hours).
const PIECE = 4096;

/** The token ids of `text` (no BOS), encoded piece by piece; stops once `maxTokens` are there. */
export function encodeInPieces(
  tokenizer: { encode(text: string, options?: { addBos?: boolean }): number[] },
  text: string,
  maxTokens = Number.POSITIVE_INFINITY,
): number[] {
  const ids: number[] = [];
  for (let start = 0; start < text.length && ids.length < maxTokens; ) {
    let end = Math.min(text.length, start + PIECE);
    if (end < text.length) {
      const cut = Math.max(text.lastIndexOf('\n', end), text.lastIndexOf(' ', end));
      if (cut > start) end = cut + 1;
    }
    for (const id of tokenizer.encode(text.slice(start, end), { addBos: false })) ids.push(id);
    start = end;
  }
  return ids;
}
