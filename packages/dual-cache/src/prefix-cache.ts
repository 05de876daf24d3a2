// The prefix cache: prompts' KV kept after their sequences end, so a request that starts with the same tokens (under
// the same policy) maps the retrieval heads' pages, restores the streaming heads' window and prefills only the rest.
import { type Backend, DuoArgumentError, type TensorHandle } from '@duoattn/core';
import type { DualKvCache, PrefixSource } from './dual-kv-cache.js';
import { kvPageTokens } from './dual-kv-cache.js';
import type { KvPagePool } from './page-pool.js';
import type { SharedPages, StreamingSnapshot } from './shared-pages.js';

/**
 * One cached prefix: its tokens, the full regions over them (paged tensors mapping the source cache's pages; the last
 * partial page a copy of its own), every chunk's shared pages, and the streaming snapshots at the chunk boundaries
 * where they were taken. Its own pool pages: the partial pages (full) and the snapshots (streaming).
 */
export class CachedPrefix implements PrefixSource {
  readonly key: string;
  readonly tokens: readonly number[];
  readonly chunkTokens: number;
  readonly blocks: readonly SharedPages[];
  /** Pool pages only this prefix holds: the copied partial pages and the snapshots. */
  readonly ownPages: number;
  readonly needsSnapshots: boolean;
  /** Last use (insertion or hit), in the cache's clock. */
  lastUsed = 0;
  readonly #planes: readonly (readonly TensorHandle[])[];
  readonly #snapshots: ReadonlyMap<number, StreamingSnapshot>;
  readonly #pool: KvPagePool | undefined;
  readonly #partialPages: number;
  #disposed = false;

  private constructor(
    parts: {
      key: string;
      tokens: readonly number[];
      chunkTokens: number;
      blocks: readonly SharedPages[];
      planes: readonly (readonly TensorHandle[])[];
      snapshots: ReadonlyMap<number, StreamingSnapshot>;
      needsSnapshots: boolean;
      partialPages: number;
    },
    pool: KvPagePool | undefined,
  ) {
    this.key = parts.key;
    this.tokens = parts.tokens;
    this.chunkTokens = parts.chunkTokens;
    this.blocks = parts.blocks;
    this.#planes = parts.planes;
    this.#snapshots = parts.snapshots;
    this.needsSnapshots = parts.needsSnapshots;
    this.#partialPages = parts.partialPages;
    this.#pool = pool;
    let snapshotPages = 0;
    for (const snapshot of parts.snapshots.values()) snapshotPages += snapshot.pages;
    this.ownPages = parts.partialPages + snapshotPages;
  }

  /**
   * A prefix of `cache`'s first `tokens.length` tokens (a multiple of its prefill chunk, within what the cache holds):
   * its pages become shared (`cache.shareRows`), the prefix maps them, and it takes ownership of `snapshots` (the
   * cache's streaming snapshots at chunk boundaries up to there; the caller hands them over, or disposes of them when
   * this throws). Takes the pool pages of its copied partial pages first: throws DuoOutOfMemoryError, nothing made, when
   * the pool cannot give them.
   */
  static fromCache(
    backend: Backend,
    cache: DualKvCache,
    tokens: readonly number[],
    snapshots: ReadonlyMap<number, StreamingSnapshot>,
    pool: KvPagePool | undefined,
  ): CachedPrefix {
    const rows = tokens.length;
    if (rows === 0 || rows % cache.chunkTokens !== 0 || rows > cache.capacity) {
      throw new DuoArgumentError(
        'tokens',
        `Expected a prefix of a positive multiple of ${cache.chunkTokens} tokens within the cache's ${cache.capacity} but received ${rows}`,
      );
    }
    const partialPages = cache.fullPages(rows, 'ceil') - cache.fullPages(rows, 'floor');
    pool?.take(partialPages, 'full');
    const made: TensorHandle[] = [];
    let blocks: readonly SharedPages[] = [];
    try {
      const sourcePlanes = cache.fullPlanes();
      const unit = kvPageTokens(
        sourcePlanes[0]?.map((plane) => ({ dtype: plane.dtype, width: plane.shape[2] ?? 0 })) ?? [],
        backend.pageBytes,
      );
      const length = Math.ceil(rows / unit) * unit;
      const planes = sourcePlanes.map((layer) =>
        layer.map((plane) => {
          const [spans = 0, , width = 0] = plane.shape;
          const copy = backend.allocPaged(plane.dtype, [spans, length, width]);
          made.push(copy);
          backend.sharePaged(copy, plane, rows);
          return copy;
        }),
      );
      blocks = cache.shareRows(rows).map((block) => block.retain());
      return new CachedPrefix(
        {
          key: cache.prefixKey,
          tokens: [...tokens],
          chunkTokens: cache.chunkTokens,
          blocks,
          planes,
          snapshots,
          needsSnapshots: cache.hasStreamingHeads,
          partialPages,
        },
        pool,
      );
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      for (const block of blocks) block.release();
      pool?.give(partialPages, 'full');
      throw error;
    }
  }

  /** Tokens it holds. */
  get rows(): number {
    return this.tokens.length;
  }

  fullPlanes(): readonly (readonly TensorHandle[])[] {
    return this.#planes;
  }

  snapshotAt(rows: number): StreamingSnapshot | undefined {
    return this.#snapshots.get(rows);
  }

  /**
   * The most tokens of `tokens` a cache can adopt from this prefix without reaching past `limit`: a chunk boundary
   * within the tokens both share, where a snapshot exists when the policy has streaming heads; 0 when none.
   */
  usableRows(tokens: readonly number[], limit: number): number {
    const most = Math.min(limit, this.rows, tokens.length);
    let common = 0;
    while (common < most && tokens[common] === this.tokens[common]) common++;
    for (let rows = Math.floor(common / this.chunkTokens) * this.chunkTokens; rows > 0; rows -= this.chunkTokens) {
      if (!this.needsSnapshots || this.#snapshots.has(rows)) return rows;
    }
    return 0;
  }

  /** Frees its tensors and snapshots and lets go of its shared pages (freed with their last holder). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const layer of this.#planes) for (const plane of layer) plane.dispose();
    for (const snapshot of this.#snapshots.values()) snapshot.dispose();
    for (const block of this.blocks) block.release();
    this.#pool?.give(this.#partialPages, 'full');
  }
}

/** Counters of a prefix cache. */
export interface PrefixCacheStats {
  readonly entries: number;
  /** Pool pages its entries hold: their own, and shared pages at least one entry holds (each once). */
  readonly pages: number;
  readonly lookups: number;
  readonly hits: number;
  /** Prompt tokens served from the cache over all hits. */
  readonly hitTokens: number;
  readonly evictions: number;
}

/** A match of a prompt: the prefix and how many of its tokens to adopt. */
export interface PrefixMatch {
  readonly prefix: CachedPrefix;
  readonly rows: number;
}

/**
 * Cached prefixes under a page budget, least recently used evicted first. Entries of different policies live side by
 * side; a lookup considers only those with the asking cache's `prefixKey`. Lookups scan the entries (they are few:
 * each is a whole prompt's KV) and compare tokens.
 */
export class PrefixCache {
  /** Most pool pages the entries may hold (`pages` in the stats). */
  readonly maxPages: number;
  readonly #entries: CachedPrefix[] = [];
  /** Shared pages entries hold → how many entries hold them. */
  readonly #heldBlocks = new Map<SharedPages, number>();
  #clock = 0;
  #ownPages = 0;
  #blockPages = 0;
  #lookups = 0;
  #hits = 0;
  #hitTokens = 0;
  #evictions = 0;

  constructor(options: { readonly maxPages: number }) {
    if (!(Number.isInteger(options.maxPages) && options.maxPages >= 0)) {
      throw new DuoArgumentError(
        'maxPages',
        `Expected \`maxPages\` to be an integer ≥ 0 but received ${String(options.maxPages)}`,
      );
    }
    this.maxPages = options.maxPages;
  }

  get size(): number {
    return this.#entries.length;
  }

  /** Pool pages the entries hold. */
  get pages(): number {
    return this.#ownPages + this.#blockPages;
  }

  /**
   * The entry of policy `key` whose chunk-aligned common prefix with `tokens` is longest (within `limit` tokens: leave
   * at least one prompt token to run), or undefined. Counts nothing: `record` what was used.
   */
  lookup(key: string, tokens: readonly number[], limit: number): PrefixMatch | undefined {
    let best: PrefixMatch | undefined;
    for (const prefix of this.#entries) {
      if (prefix.key !== key) continue;
      const rows = prefix.usableRows(tokens, limit);
      if (rows > 0 && (!best || rows > best.rows || (rows === best.rows && prefix.lastUsed > best.prefix.lastUsed))) {
        best = { prefix, rows };
      }
    }
    return best;
  }

  /** Counts a lookup whose match (if any) was used; a used entry becomes the most recently used. */
  record(match: PrefixMatch | undefined): void {
    this.#lookups++;
    if (!match) return;
    this.#hits++;
    this.#hitTokens += match.rows;
    match.prefix.lastUsed = ++this.#clock;
  }

  /** Whether an entry of `key` already serves every chunk boundary of `tokens` (a new entry would add nothing). */
  covers(key: string, tokens: readonly number[]): boolean {
    return this.#entries.some(
      (prefix) => prefix.key === key && prefix.usableRows(tokens, tokens.length) === tokens.length,
    );
  }

  /**
   * Adds `prefix` as the most recently used entry, then evicts the least recently used ones while the entries hold
   * more than `maxPages` (the new one last: it may not fit at all). Returns whether it stayed.
   */
  insert(prefix: CachedPrefix): boolean {
    prefix.lastUsed = ++this.#clock;
    this.#entries.push(prefix);
    this.#ownPages += prefix.ownPages;
    for (const block of prefix.blocks) {
      const holders = this.#heldBlocks.get(block) ?? 0;
      if (holders === 0) this.#blockPages += block.pages;
      this.#heldBlocks.set(block, holders + 1);
    }
    while (this.pages > this.maxPages && this.#entries.length > 1) {
      const oldest = this.#leastRecent(prefix);
      if (!oldest) break;
      this.#remove(oldest);
    }
    if (this.pages > this.maxPages) {
      this.#remove(prefix, false);
      return false;
    }
    return true;
  }

  /**
   * Evicts the least recently used entry that no cache outside this one maps (other than `keep`), so that its pages go
   * back to the pool now; returns whether there was one. An entry that running sequences share stays: evicting it would
   * free next to nothing and lose the prefix.
   */
  evictUnreferenced(keep?: CachedPrefix): boolean {
    const oldest = this.#leastRecent(keep, (prefix) =>
      prefix.blocks.every((block) => block.holders === this.#heldBlocks.get(block)),
    );
    if (!oldest) return false;
    this.#remove(oldest);
    return true;
  }

  /** Evicts every entry: their pages go back to the pool once no cache maps them. */
  clear(): void {
    while (this.#entries.length > 0) this.#remove(this.#entries[0] as CachedPrefix);
  }

  stats(): PrefixCacheStats {
    return {
      entries: this.#entries.length,
      pages: this.pages,
      lookups: this.#lookups,
      hits: this.#hits,
      hitTokens: this.#hitTokens,
      evictions: this.#evictions,
    };
  }

  #leastRecent(
    keep?: CachedPrefix,
    eligible: (prefix: CachedPrefix) => boolean = () => true,
  ): CachedPrefix | undefined {
    let oldest: CachedPrefix | undefined;
    for (const prefix of this.#entries) {
      if (prefix === keep || !eligible(prefix)) continue;
      if (!oldest || prefix.lastUsed < oldest.lastUsed) oldest = prefix;
    }
    return oldest;
  }

  #remove(prefix: CachedPrefix, counted = true): void {
    const index = this.#entries.indexOf(prefix);
    if (index < 0) return;
    this.#entries.splice(index, 1);
    if (counted) this.#evictions++;
    this.#ownPages -= prefix.ownPages;
    for (const block of prefix.blocks) {
      const holders = (this.#heldBlocks.get(block) ?? 1) - 1;
      if (holders === 0) {
        this.#heldBlocks.delete(block);
        this.#blockPages -= block.pages;
      } else this.#heldBlocks.set(block, holders);
    }
    prefix.dispose();
  }
}
