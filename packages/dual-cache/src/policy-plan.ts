// The head plan an attention policy runs: which KV heads of each layer keep every key, and the streaming window.
import {
  type AttentionPolicy,
  DEFAULT_RECENT,
  DEFAULT_SINK,
  DuoArgumentError,
  type HeadPlan,
  type ModelConfig,
} from '@duoattn/core';
import { checkPlan, uniformPlan } from './binarize.js';

/**
 * The head plan `policy` stands for on a model of `config`: every head full ('full'), every head streaming with the
 * policy's window ('streaming'), or the policy's plan with its `sink` / `recent` overrides ('duo'; checked against
 * the model). Retrieval heads are returned ascending, as the kernels' head map takes them.
 */
export function policyPlan(config: Pick<ModelConfig, 'numLayers' | 'numKvHeads'>, policy: AttentionPolicy): HeadPlan {
  const { numLayers, numKvHeads } = config;
  switch (policy.attention) {
    case 'full':
      return uniformPlan('full', numLayers, numKvHeads);
    case 'streaming':
      return uniformPlan(
        'streaming',
        numLayers,
        numKvHeads,
        policy.sink ?? DEFAULT_SINK,
        policy.recent ?? DEFAULT_RECENT,
      );
    case 'duo': {
      if (!policy.plan) {
        throw new DuoArgumentError(
          'policy.plan',
          "Expected a head plan for attention 'duo' (policy.plan) but received none",
        );
      }
      const plan = checkPlan(
        {
          ...policy.plan,
          retrievalHeads: policy.plan.retrievalHeads.map((heads) => [...heads].sort((a, b) => a - b)),
          sink: policy.sink ?? policy.plan.sink,
          recent: policy.recent ?? policy.plan.recent,
        },
        numLayers,
        numKvHeads,
      );
      return plan;
    }
    default:
      throw new DuoArgumentError(
        'policy.attention',
        `Expected \`policy.attention\` to be 'full', 'streaming' or 'duo' but received ${String((policy as { attention?: unknown }).attention)}`,
      );
  }
}
