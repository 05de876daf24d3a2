// A request's policy: duoattn's extensions (attention, sparsity, kv_quant, sink, recent) over the server's defaults,
// built once per distinct setting (a duo plan is binarized from the pattern once per sparsity).
import { buildPolicy, duoPlan, type PolicySettings } from '@duoattn/app-kit';
import type { AttentionPolicy, AttentionPolicyName, HeadPlan, KvQuantScheme, ModelConfig } from '@duoattn/core';
import { ApiError } from './errors.js';

/** The extensions as a request carries them. */
export interface PolicyRequest {
  attention?: AttentionPolicyName;
  sparsity?: number;
  kv_quant?: KvQuantScheme;
  sink?: number;
  recent?: number;
}

export class PolicyResolver {
  readonly defaults: PolicySettings & { readonly attention: AttentionPolicyName };
  readonly #config: ModelConfig;
  readonly #plans = new Map<string, HeadPlan>();

  constructor(config: ModelConfig, defaults: PolicySettings & { readonly attention: AttentionPolicyName }) {
    this.#config = config;
    this.defaults = defaults;
  }

  /** The AttentionPolicy of a request; 400 naming the extension that does not apply or cannot be met. */
  resolve(request: PolicyRequest): AttentionPolicy {
    const attention = request.attention ?? this.defaults.attention;
    if (attention === 'full') {
      for (const field of ['sparsity', 'sink', 'recent'] as const) {
        if (request[field] !== undefined) {
          throw new ApiError(400, `'${field}' applies to attention 'duo' or 'streaming', not 'full'`, {
            param: field,
            code: 'invalid_value',
          });
        }
      }
    }
    if (attention === 'streaming' && request.sparsity !== undefined) {
      throw new ApiError(400, "'sparsity' applies to attention 'duo', not 'streaming'", {
        param: 'sparsity',
        code: 'invalid_value',
      });
    }
    const settings: PolicySettings = {
      ...this.defaults,
      window: {
        ...this.defaults.window,
        ...(request.sink === undefined ? {} : { sink: request.sink }),
        ...(request.recent === undefined ? {} : { recent: request.recent }),
      },
      ...(request.sparsity === undefined ? {} : { sparsity: request.sparsity }),
      kvQuant: request.kv_quant ?? this.defaults.kvQuant,
    };
    return buildPolicy(attention, settings, this.#config, attention === 'duo' ? this.#plan(settings) : undefined);
  }

  #plan(settings: PolicySettings): HeadPlan {
    const key = JSON.stringify([settings.sparsity, settings.window]);
    let plan = this.#plans.get(key);
    if (!plan) {
      plan = duoPlan(settings, this.#config);
      this.#plans.set(key, plan);
    }
    return plan;
  }
}
