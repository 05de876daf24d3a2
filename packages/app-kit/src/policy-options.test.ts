// The shared policy options: validation before a model loads, the duo plan from a pattern, and the AttentionPolicy
// built for each attention.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_PREFILL_CHUNK,
  DEFAULT_RECENT,
  DEFAULT_SINK,
  type ModelConfig,
  retrievalHeadCount,
  SHAPES,
} from '@duoattn/core';
import { describe, expect, it } from 'vitest';
import { usageError } from './__fixtures__/usage-error.js';
import {
  attentionPolicies,
  buildPolicy,
  describePolicy,
  duoPlan,
  duoPlanFor,
  kvQuantList,
  POLICY_HELP,
  POLICY_OPTIONS,
  policySettings,
  runLabel,
} from './policy-options.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const demoPattern = resolve(root, 'models/duo-demo/pattern');
/** The demo model's shape: 6 layers × 2 KV heads. */
const demo: ModelConfig = {
  ...(SHAPES['llama-3-8b'] as ModelConfig),
  vocabSize: 259,
  hiddenSize: 512,
  numLayers: 6,
  numHeads: 8,
  numKvHeads: 2,
  headDim: 64,
};

describe('policySettings', () => {
  it('defaults every option', () => {
    expect(policySettings({})).toEqual({
      window: {},
      invert: false,
      prefillMask: 'exact',
      prefillChunk: DEFAULT_PREFILL_CHUNK,
      kvQuant: 'none',
    });
  });

  it('reads every option', () => {
    const settings = policySettings({
      pattern: 'p',
      invert: true,
      sparsity: '0.75',
      sink: '128',
      recent: '1k',
      'prefill-mask': 'chunked',
      'prefill-chunk': '256',
      'kv-quant': 'int4',
    });
    expect(settings).toEqual({
      window: { sink: 128, recent: 1024 },
      pattern: 'p',
      invert: true,
      sparsity: 0.75,
      prefillMask: 'chunked',
      prefillChunk: 256,
      kvQuant: 'int4',
    });
  });

  it.each([
    ['sink', '-4', 'an integer in [0, 9007199254740991]'],
    ['recent', '0', 'an integer in [1, 9007199254740991]'],
    ['sparsity', '1.5', 'a number in [0, 1]'],
    ['prefill-mask', 'lambda', 'one of exact, chunked'],
    ['prefill-chunk', '0', 'an integer in [1, 9007199254740991]'],
    ['kv-quant', 'int3', 'one of none, int8, int4, fp8'],
  ])('rejects --%s %s, saying what it expected', (option, received, expected) => {
    const error = usageError(() => policySettings({ [option]: received }));
    expect(error).toMatchObject({ option, received, expected });
    expect(error.message).toBe(`--${option}: expected ${expected} but received "${received}"`);
  });

  it('rejects --invert without a pattern', () => {
    expect(usageError(() => policySettings({ invert: true })).message).toBe('--invert: expected a --pattern to invert');
  });

  it('rejects options that none of the run policies reads', () => {
    expect(usageError(() => policySettings({ pattern: 'p' }, ['full', 'streaming'])).message).toBe(
      '--pattern: applies to --attention duo but this run uses full, streaming',
    );
    expect(usageError(() => policySettings({ sparsity: '0.5' }, ['streaming'])).option).toBe('sparsity');
    expect(usageError(() => policySettings({ sink: '4' }, ['full'])).message).toBe(
      '--sink: applies to --attention streaming or duo but this run uses full',
    );
    expect(policySettings({ sink: '4', recent: '8' }, ['streaming']).window).toEqual({ sink: 4, recent: 8 });
    expect(policySettings({ pattern: 'p', 'kv-quant': 'int8' }, ['full', 'duo']).kvQuant).toBe('int8');
  });
});

describe('attention and KV lists', () => {
  it('reads one policy or a list, and names bad ones', () => {
    expect(attentionPolicies(undefined, ['full'])).toEqual(['full']);
    expect(attentionPolicies('duo', ['full'])).toEqual(['duo']);
    expect(attentionPolicies('full, duo,streaming', ['full'], true)).toEqual(['full', 'duo', 'streaming']);
    expect(usageError(() => attentionPolicies('foo', ['full'])).message).toBe(
      '--attention: expected one of full, streaming, duo but received "foo"',
    );
    expect(usageError(() => attentionPolicies('full,duo', ['full'])).message).toBe(
      '--attention: expected one of full, streaming, duo but received "full,duo"',
    );
  });

  it('reads a list of KV schemes', () => {
    expect(kvQuantList(undefined)).toEqual(['none']);
    expect(kvQuantList('none, int8,int4')).toEqual(['none', 'int8', 'int4']);
    expect(usageError(() => kvQuantList('int8,int2')).received).toBe('int2');
    expect(runLabel('duo', 'int4')).toBe('duo + int4');
    expect(runLabel('full', 'none')).toBe('full');
  });

  it('documents every option in the help text', () => {
    for (const option of Object.keys(POLICY_OPTIONS)) expect(POLICY_HELP).toContain(`--${option}`);
  });
});

describe('duoPlan', () => {
  it('binarizes the demo pattern at sparsity 0.75: 25 % retrieval heads, the pattern window', () => {
    const plan = duoPlan(policySettings({ pattern: demoPattern, sparsity: '0.75' }), demo);
    expect(retrievalHeadCount(plan)).toBe(3);
    expect(plan.sparsity).toBe(0.75);
    expect(plan.retrievalHeads).toHaveLength(6);
    expect(plan).toMatchObject({ sink: 128, recent: 256, kvHeads: 2 });
  });

  it('inverts the pattern: the heads it would stream are kept', () => {
    const settings = policySettings({ pattern: demoPattern, sparsity: '0.5' });
    const plan = duoPlan(settings, demo);
    const inverted = duoPlan({ ...settings, invert: true }, demo);
    for (const [layer, heads] of plan.retrievalHeads.entries()) {
      for (const head of heads) expect(inverted.retrievalHeads[layer]).not.toContain(head);
    }
    expect(retrievalHeadCount(inverted)).toBe(6);
  });

  it('splits evenly without a pattern, at the default sparsity and window unless told', () => {
    const plan = duoPlan(policySettings({}), demo);
    expect(retrievalHeadCount(plan)).toBe(6);
    expect(plan).toMatchObject({ sink: DEFAULT_SINK, recent: DEFAULT_RECENT, sparsity: 0.5 });
    expect(duoPlan(policySettings({ sink: '4', recent: '16' }), demo)).toMatchObject({ sink: 4, recent: 16 });
  });

  it('names a missing pattern and one for another shape', () => {
    const missing = usageError(() => duoPlan(policySettings({ pattern: '/nowhere' }), demo));
    expect(missing.message).toMatch(/^--pattern: .*\/nowhere/);
    expect(missing.option).toBe('pattern');
    const other = usageError(() =>
      duoPlan(policySettings({ pattern: demoPattern }), SHAPES['llama-3-8b'] as ModelConfig),
    );
    expect(other.message).toBe(`--pattern: expected gates for 32 layers × 8 KV heads but "${demoPattern}" has 6 × 2`);
  });

  it('is built only when a run uses duo', () => {
    expect(duoPlanFor(['full', 'streaming'], policySettings({}), demo)).toBeUndefined();
    expect(duoPlanFor(['full', 'duo'], policySettings({}), demo)?.sparsity).toBe(0.5);
  });
});

describe('buildPolicy', () => {
  const settings = policySettings({ 'kv-quant': 'int8', 'prefill-chunk': '128', 'prefill-mask': 'chunked' });
  const common = { kvQuant: 'int8', prefillMask: 'chunked', prefillChunk: 128 };

  it('full: every head full, with the KV scheme and prefill settings', () => {
    expect(buildPolicy('full', settings, demo)).toEqual({ attention: 'full', ...common });
  });

  it('streaming: the window only where given, so the session applies its defaults', () => {
    expect(buildPolicy('streaming', settings, demo)).toEqual({ attention: 'streaming', ...common });
    const windowed = policySettings({ sink: '4', recent: '16' });
    expect(buildPolicy('streaming', windowed, demo)).toMatchObject({ attention: 'streaming', sink: 4, recent: 16 });
  });

  it('duo: the plan of the settings, or the one given', () => {
    const duo = policySettings({ pattern: demoPattern, sparsity: '0.75', 'kv-quant': 'int4' });
    const policy = buildPolicy('duo', duo, demo);
    expect(policy).toMatchObject({ attention: 'duo', kvQuant: 'int4', prefillChunk: DEFAULT_PREFILL_CHUNK });
    expect(policy.attention === 'duo' && retrievalHeadCount(policy.plan)).toBe(3);
    const shared = duoPlan(policySettings({ sparsity: '0.25' }), demo);
    const given = buildPolicy('duo', duo, demo, shared);
    expect(given.attention === 'duo' && given.plan).toBe(shared);
  });
});

describe('describePolicy', () => {
  it('says which policy runs, with the window the session resolves', () => {
    const settings = policySettings({ pattern: 'models/duo-demo/pattern', sparsity: '0.75' });
    const duo = buildPolicy('duo', settings, demo, duoPlan({ ...settings, pattern: demoPattern }, demo));
    expect(describePolicy(duo, demo, settings)).toBe(
      'duo 25 % retrieval heads (3 of 12; sparsity 0.75, pattern models/duo-demo/pattern), sink 128, recent 256',
    );
    expect(describePolicy(buildPolicy('full', policySettings({ 'kv-quant': 'int4' }), demo), demo)).toBe(
      'full, KV int4',
    );
    expect(describePolicy(buildPolicy('streaming', policySettings({}), demo), demo)).toBe(
      `streaming, sink ${DEFAULT_SINK}, recent ${DEFAULT_RECENT}`,
    );
    const even = buildPolicy('duo', policySettings({ sink: '8' }), demo);
    expect(describePolicy(even, demo)).toBe(
      `duo 50 % retrieval heads (6 of 12; sparsity 0.5, an even split), sink 8, recent ${DEFAULT_RECENT}`,
    );
  });
});
