// One loaded model serving several policies at once: full, duo at 50 % and duo at 75 % with int4 KV, interleaved step
// by step, each equal to the same policy run alone on its own model; and no weight copy per plan (planner = allocation).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { AttentionPolicy } from '@duoattn/core';
import { loadPattern, planHeads, planMemory, weightBytes } from '@duoattn/dual-cache';
import { describe, expect, it } from 'vitest';
import { LlamaModel } from '../llama-model.js';
import { argmax } from '../sampling.js';
import type { Session } from '../session.js';
import { demoModelDirectory } from './demo-suite.js';

const PROMPT_TOKENS = 800; // past the pattern's sink (128) + recent (256): streaming heads drop keys
const DECODE_STEPS = 12;
const MAX_TOKENS = 1024;
const CHUNK = 160;

/** Logits (one row per step: the prompt's last, then each fed token's) and the greedy tokens of one run. */
interface Run {
  logits: Float32Array[];
  tokens: number[];
}

/** The three policies, with the demo model's trained pattern binarized at 50 % and 75 %. */
function policies(directory: string): Record<string, AttentionPolicy> {
  const pattern = loadPattern(join(directory, 'pattern'));
  return {
    full: { attention: 'full', prefillChunk: CHUNK },
    'duo 50 %': { attention: 'duo', plan: planHeads(pattern, { sparsity: 0.5 }), prefillChunk: CHUNK },
    'duo 75 % + int4': {
      attention: 'duo',
      plan: planHeads(pattern, { sparsity: 0.75 }),
      kvQuant: 'int4',
      prefillChunk: CHUNK,
    },
  };
}

/** A prompt of real text (byte-level ids) with a fact early on, so the streaming heads' window matters. */
function promptIds(model: LlamaModel): number[] {
  const question = 'Later that day, someone asked about the blue door. The secret number of the blue door is';
  let text = 'The secret number of the blue door is 4721. ';
  while (model.encode(text + question).length < PROMPT_TOKENS) {
    text += 'Every morning the baker walked past the river and counted the boats tied along the old wall. ';
  }
  // A whole number of chunks (so each session holds one chunk workspace, as the planner counts): trim the filler.
  const ids = model.encode(text + question);
  const extra = ids.length % CHUNK;
  return [...ids.slice(0, 60), ...ids.slice(60 + extra)];
}

/** Runs `sessions` round-robin: each prompt in chunk-sized pieces, then DECODE_STEPS greedy tokens, one step each. */
async function interleave(sessions: Session[], prompt: number[]): Promise<Run[]> {
  const runs: Run[] = sessions.map(() => ({ logits: [], tokens: [] }));
  for (let offset = 0; offset < prompt.length; offset += CHUNK) {
    for (const [index, session] of sessions.entries()) {
      const piece = prompt.slice(offset, offset + CHUNK);
      const { logits } = await session.forward(piece, { logits: offset + CHUNK >= prompt.length ? 'last' : 'none' });
      if (logits) runs[index]?.logits.push(logits);
    }
  }
  for (let step = 0; step < DECODE_STEPS; step++) {
    for (const [index, session] of sessions.entries()) {
      const run = runs[index] as Run;
      const next = argmax(run.logits.at(-1) as Float32Array);
      run.tokens.push(next);
      run.logits.push((await session.forward([next])).logits as Float32Array);
    }
  }
  return runs;
}

function largestDifference(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let worst = a.length === b.length ? 0 : Number.POSITIVE_INFINITY;
  a.forEach((row, i) => {
    const other = b[i] as Float32Array;
    for (let j = 0; j < row.length; j++) worst = Math.max(worst, Math.abs((row[j] ?? 0) - (other[j] ?? Number.NaN)));
  });
  return Number.isNaN(worst) ? Number.POSITIVE_INFINITY : worst;
}

/**
 * Registers the suite for `device`: logits within `tolerance` of the same policy run alone (CPU 1e-6; on CUDA only
 * the tokens are compared, `tolerance` undefined), and allocation equal to the planner's bytes within 1 %.
 */
export function interleavedPoliciesSuite(device: 'cpu' | 'cuda', tolerance: number | undefined, skipReason?: string) {
  const directory = demoModelDirectory();
  const reason = skipReason ?? (existsSync(join(directory, 'config.json')) ? undefined : `${directory} not found`);
  (reason ? describe.skip : describe)(
    `one model, many policies on ${device}${reason ? ` (skipped: ${reason})` : ''}`,
    () => {
      it('serves full, duo 50 % and duo 75 % + int4 interleaved, each as if it ran alone, without copying weights', async () => {
        const named = policies(directory);
        const model = await LlamaModel.load(directory, { device, weightDtype: 'f32' });
        const backend = model.backend;
        // Loading the demo model again (for the solo runs) allocates the same: measured from here.
        const solo = await LlamaModel.load(directory, { device: backend, weightDtype: 'f32' });
        const beforeSolo = backend.memory().allocatedBytes;
        solo.dispose();
        const weights = beforeSolo - backend.memory().allocatedBytes;
        const prompt = promptIds(model);
        const sessionOptions = (policy: AttentionPolicy) =>
          ({ policy, maxTokens: MAX_TOKENS, cacheBlockTokens: MAX_TOKENS, cacheDtype: 'f32' }) as const;
        try {
          const loaded = backend.memory().allocatedBytes;
          const sessions = Object.values(named).map((policy) => model.createSession(sessionOptions(policy)));
          const together = await interleave(sessions, prompt);
          // Memory: the weights once, plus what the planner gives each session — nothing per plan besides its cache.
          const sessionBytes = sessions.map((session) => {
            const planned = planMemory({
              config: model.config,
              plan: session.plan,
              weightDtype: 'f32',
              kvDtype: 'f32',
              kvQuant: session.kvQuant,
              tokens: MAX_TOKENS,
              prefillChunk: CHUNK,
              pageBytes: backend.pageBytes,
            });
            return planned.total - planned.weights;
          });
          const planned = sessionBytes.reduce((sum, bytes) => sum + bytes, 0);
          const measured = backend.memory().allocatedBytes - loaded;
          expect(Math.abs(measured - planned) / planned).toBeLessThan(0.01);
          for (const session of sessions) session.dispose();
          expect(backend.memory().allocatedBytes).toBe(loaded);
          // One copy of the weights, exactly as the planner counts them.
          expect(weights).toBe(weightBytes(model.config, 'f32'));

          const names = Object.keys(named);
          for (const [index, policy] of Object.values(named).entries()) {
            const alone = await LlamaModel.load(directory, { device: backend, weightDtype: 'f32' });
            try {
              const session = alone.createSession(sessionOptions(policy));
              const [run] = await interleave([session], prompt);
              session.dispose();
              const label = names[index];
              expect(together[index]?.tokens, `${label}: greedy tokens`).toEqual(run?.tokens);
              if (tolerance !== undefined) {
                expect(
                  largestDifference(together[index]?.logits ?? [], run?.logits ?? []),
                  `${label}: logits`,
                ).toBeLessThanOrEqual(tolerance);
              }
            } finally {
              alone.dispose();
            }
          }
          // The policies really differ: the streaming heads change the logits of the duo sessions.
          const [full, half, quarter] = together;
          expect(largestDifference(full?.logits ?? [], half?.logits ?? [])).toBeGreaterThan(1e-3);
          expect(largestDifference(half?.logits ?? [], quarter?.logits ?? [])).toBeGreaterThan(1e-3);
        } finally {
          model.dispose();
        }
      });
    },
  );
}
