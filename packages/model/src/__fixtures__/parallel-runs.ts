// Runs sessions side by side, as the ranks of a parallel group (or one session alone) run: the same calls with the
// same tokens on each, every call awaited together so the ranks meet at their collectives.
import type { LlamaModel } from '../llama-model.js';
import type { Session, SessionOptions } from '../session.js';

/**
 * Each session's logits, flattened: the prefill's (`tokens[0 … prefill − 1]`, every row), then one row for each later
 * token fed as its own call.
 */
export async function logitsTogether(
  sessions: Session[],
  tokens: readonly number[],
  prefill: number,
): Promise<Float32Array[]> {
  const rows: Float32Array[][] = sessions.map(() => []);
  const first = await Promise.all(
    sessions.map((session) => session.forward(tokens.slice(0, prefill), { logits: 'all' })),
  );
  for (const [i, result] of first.entries()) rows[i]?.push(result.logits as Float32Array);
  for (const token of tokens.slice(prefill)) {
    const step = await Promise.all(sessions.map((session) => session.forward([token])));
    for (const [i, result] of step.entries()) rows[i]?.push(result.logits as Float32Array);
  }
  return rows.map((list) => Float32Array.from(list.flatMap((row) => Array.from(row))));
}

/** `logitsTogether` over one new session (`options`) of each model, disposed after. */
export async function modelLogitsTogether(
  models: LlamaModel[],
  options: SessionOptions,
  tokens: readonly number[],
  prefill: number,
): Promise<Float32Array[]> {
  const sessions = models.map((model) => model.createSession(options));
  try {
    return await logitsTogether(sessions, tokens, prefill);
  } finally {
    for (const session of sessions) session.dispose();
  }
}
