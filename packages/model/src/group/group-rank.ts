// One rank of a parallel group serving requests one at a time (ADR 0011): every rank runs the same session calls on
// its part of the sequence (context parallelism: its shard of the keys) or of the weights (tensor parallelism); rank 0
// samples each token and broadcasts it, so the ranks never disagree about what comes next or when a request ends.
import { type Communicator, DuoCapacityError, DuoError } from '@duoattn/core';
import { type BatchRequest, type CheckedRequest, checkRequest, Generation, type TokenSink } from '../batch/request.js';
import type { LlamaModel } from '../llama-model.js';
import type { Session } from '../session.js';

/** What the ranks of a group split: the retrieval heads' keys by position ('keys') or each layer's matrices ('weights'). */
export type ParallelSplit = 'keys' | 'weights';

/** A request as the ranks run it: its prompt as token ids (text is encoded where it was submitted), no signal. */
export type GroupRequest = Omit<BatchRequest, 'signal' | 'prompt'> & { readonly prompt: readonly number[] };

/** What rank 0 does beside running its part: it streams the request's tokens and reports its cache's bytes. */
export interface RankLeader {
  /** The request's id (`cancel(id)`). */
  readonly id: number;
  /** Where its tokens and result go; a refused request fails it. */
  readonly sink: TokenSink;
  /** Called after the prompt and whenever the cache grows by a page: rank 0's bytes (each rank holds about as much). */
  cacheBytes?(bytes: { readonly full: number; readonly streaming: number }): void;
}

/** Options of a `GroupRank`. */
export interface GroupRankOptions {
  /** Bytes of KV cache this rank's share of a request may take; a request that needs more on any rank is refused. */
  readonly kvBudgetBytes: number;
  /** Lets a request's prompt + maxTokens exceed the model's context (benchmarks on synthetic caches). Default false. */
  readonly allowBeyondContext?: boolean;
}

/** Stop, from rank 0: the request is done (any reason); every rank leaves its loop. */
const STOP = -1;
/** Go on with the prompt's next chunk, from rank 0. */
const GO = 0;

/**
 * One rank's side of a parallel group. `run` is called on every rank with the same request (rank 0 with its leader);
 * the ranks meet at the collectives of their session's layers and at one broadcast per token. A rank whose session
 * cannot be made, or whose share of the cache would pass its budget, refuses the request on every rank together
 * before any token runs; a failure after that is the group's (its ranks may wait on each other): `run` rejects.
 */
export class GroupRank {
  readonly #model: LlamaModel;
  readonly #communicator: Communicator | undefined;
  readonly #split: ParallelSplit;
  readonly #options: GroupRankOptions;
  // Device scalars of the collectives: the token rank 0 picked, and each rank's cache need (MiB, gathered).
  readonly #decision;
  readonly #need;
  readonly #needs;
  // Rank 0's running request, and the requests cancelled (a cancel may come before the request's first token).
  #generation: Generation | undefined;
  readonly #cancelled = new Set<number>();

  constructor(
    model: LlamaModel,
    communicator: Communicator | undefined,
    split: ParallelSplit,
    options: GroupRankOptions,
  ) {
    this.#model = model;
    this.#communicator = communicator && communicator.size > 1 ? communicator : undefined;
    this.#split = split;
    this.#options = options;
    const backend = model.backend;
    const size = this.#communicator?.size ?? 1;
    this.#decision = backend.alloc('i32', [1]);
    this.#need = backend.alloc('f32', [1]);
    this.#needs = backend.alloc('f32', [size]);
  }

  /** This rank, 0 … size − 1 (0 alone). */
  get rank(): number {
    return this.#communicator?.rank ?? 0;
  }

  /** Ranks in the group. */
  get size(): number {
    return this.#communicator?.size ?? 1;
  }

  /** Runs `request`: prefill, then one token per step until rank 0's generation ends (stop, length or abort). */
  async run(request: GroupRequest, leader?: RankLeader): Promise<void> {
    // Requests run in id order: cancels of earlier ones came too late to matter.
    for (const id of this.#cancelled) if (leader && id < leader.id) this.#cancelled.delete(id);
    const model = this.#model;
    const config = model.tensorParallel?.modelConfig ?? model.config;
    let checked: CheckedRequest | undefined;
    let session: Session | undefined;
    let refusal: unknown;
    // Whatever this rank cannot do is refused by every rank together, at the first collective.
    try {
      checked = checkRequest(request, config, model.tokenizer, this.#options.allowBeyondContext);
      session = model.createSession({
        ...(request.policy === undefined ? {} : { policy: request.policy }),
        maxTokens: capacityOf(checked),
        allowBeyondContext: this.#options.allowBeyondContext ?? false,
        ...(this.#split === 'keys' && this.#communicator
          ? { contextParallel: { communicator: this.#communicator } }
          : {}),
      });
    } catch (error) {
      refusal = error;
    }
    try {
      const need = session && checked ? total(session.cacheBytesAt(capacityOf(checked))) : -1;
      const needs = await this.#gather(need < 0 ? -1 : need / MIB);
      const refused = this.#refusal(needs, refusal, session);
      if (refused || !session || !checked) {
        leader?.sink.fail(refused);
        return;
      }
      this.#generation = leader && new Generation(leader.id, request, checked, model.tokenizer, leader.sink);
      await this.#generate(session, checked.prompt, checked.synthetic, leader);
    } finally {
      this.#generation = undefined;
      session?.dispose();
    }
  }

  /** Ends request `id` with 'abort' before its next token, if it runs here (rank 0). */
  cancel(id: number): void {
    this.#cancelled.add(id);
  }

  /** Frees the rank's scalars (not the model, which the caller owns). */
  dispose(): void {
    this.#decision.dispose();
    this.#need.dispose();
    this.#needs.dispose();
  }

  async #generate(
    session: Session,
    prompt: readonly number[],
    synthetic: number,
    leader: RankLeader | undefined,
  ): Promise<void> {
    const generation = this.#generation;
    if (generation) generation.admittedAt = performance.now();
    if (synthetic > 0) session.syntheticFill(synthetic);
    let reported = -1;
    // Rank 0's cache bytes when they changed, then this thread's events (a cancel arriving from the launcher; on the
    // CPU a step never yields by itself); true when rank 0's request was cancelled.
    const between = async () => {
      if (leader) {
        const bytes = session.cacheBytes();
        if (total(bytes) !== reported) leader.cacheBytes?.(bytes);
        reported = total(bytes);
      }
      await new Promise<void>((resolve) => setImmediate(resolve));
      return generation !== undefined && this.#cancelled.has(generation.id);
    };
    // The prompt a chunk at a time (as one forward call runs it), the ranks agreeing after each whether to go on: a
    // cancelled request stops within a chunk, not after the whole prompt.
    const rest = prompt.slice(synthetic);
    const chunk = session.prefillChunk;
    let logits: Float32Array | undefined;
    for (let offset = 0; offset < rest.length; offset += chunk) {
      const last = offset + chunk >= rest.length;
      const result = await session.forward(rest.slice(offset, offset + chunk), { logits: last ? 'last' : 'none' });
      if (last) logits = result.logits;
      else if ((await this.#agree((await between()) ? STOP : GO)) === STOP) {
        generation?.finish('abort');
        return;
      }
    }
    for (;;) {
      const cancelled = await between();
      let next = STOP;
      if (generation) {
        if (cancelled) generation.finish('abort');
        else {
          const { token, finish } = generation.sampleAndAccept(logits as Float32Array);
          if (finish) generation.finish(finish);
          else next = token;
        }
      }
      next = await this.#agree(next);
      if (next === STOP) return;
      logits = (await session.forward([next])).logits as Float32Array;
    }
  }

  /** Rank 0's token (or STOP), the same on every rank. */
  async #agree(next: number): Promise<number> {
    const communicator = this.#communicator;
    if (!communicator) return next;
    const backend = this.#model.backend;
    backend.write(this.#decision, Int32Array.of(next));
    await communicator.broadcast(this.#decision, 0);
    const [agreed] = (await backend.read(this.#decision)) as Int32Array;
    return agreed ?? STOP;
  }

  /** Every rank's cache need in MiB (−1: its session could not be made), in rank order. */
  async #gather(need: number): Promise<number[]> {
    const communicator = this.#communicator;
    if (!communicator) return [need];
    const backend = this.#model.backend;
    backend.write(this.#need, Float32Array.of(need));
    await communicator.allGather(this.#need, this.#needs);
    return Array.from((await backend.read(this.#needs)) as Float32Array);
  }

  /** Why the ranks refuse the request together, or undefined when every rank can run it. */
  #refusal(needs: readonly number[], ownError: unknown, session: Session | undefined): Error | undefined {
    if (ownError !== undefined) return ownError instanceof Error ? ownError : new Error(String(ownError));
    const failed = needs.findIndex((need) => need < 0);
    if (failed >= 0) {
      return new DuoError('DUO_OOM', `Rank ${failed} of ${needs.length} could not make the request's KV cache`);
    }
    const budget = this.#options.kvBudgetBytes / MIB;
    const most = Math.max(...needs);
    if (most <= budget) return undefined;
    const where = needs.length === 1 ? '' : ` on rank ${needs.indexOf(most)} of ${needs.length}`;
    return new DuoCapacityError(
      `The request needs ${gib(most * MIB)} of KV cache${where} for ${session?.capacity} tokens (${session?.attention} attention, ${session?.kvQuant} KV) but each rank's budget is ${gib(this.#options.kvBudgetBytes)}`,
      false,
    );
  }
}

const MIB = 1024 * 1024;

/** Positions the cache may reach: the prompt and every new token but the last (never fed back). */
function capacityOf(checked: CheckedRequest): number {
  return Math.max(1, checked.prompt.length + checked.maxNew - 1);
}

function total(bytes: { readonly full: number; readonly streaming: number }): number {
  return bytes.full + bytes.streaming;
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}
