// What a cached prefix is made of besides its tokens: the full regions' pages several caches map (counted once in the
// pool), and snapshots of the streaming heads' sinks + recent window at a chunk boundary.
import { type Backend, dtypeBytes, type TensorHandle } from '@duoattn/core';
import type { KvPagePool } from './page-pool.js';

/**
 * Full-region pages that several caches map at once: those of one prefill chunk of a cached prefix (the pages that
 * lie wholly inside the chunk's rows and not wholly inside the previous chunks', in every plane and head). The pool
 * counts them once, from when they become shared until the last holder releases them; the backend frees the memory
 * when the last tensor mapping it goes, which is the same moment.
 */
export class SharedPages {
  readonly pages: number;
  readonly #pool: KvPagePool | undefined;
  #holders = 1;

  /** `pages` already counted in `pool` (they were the creator's own); the creator is the first holder. */
  constructor(pages: number, pool: KvPagePool | undefined) {
    this.pages = pages;
    this.#pool = pool;
  }

  /** Holders now (0: released). */
  get holders(): number {
    return this.#holders;
  }

  /** One more holder. */
  retain(): this {
    if (this.#holders === 0) throw new Error('Shared pages retained after their last holder released them');
    this.#holders++;
    return this;
  }

  /** One holder fewer; the last gives the pages back to the pool. */
  release(): void {
    if (this.#holders === 0) throw new Error('Shared pages released more often than held');
    this.#holders--;
    if (this.#holders === 0) this.#pool?.give(this.pages, 'full');
  }
}

/** The streaming regions of one layer of a cache: its planes (keys, values, then their scales when quantized). */
export type StreamingPlanes = readonly TensorHandle[];

/** The streaming window's geometry: `sink` slots, then a ring of `ring` slots; the keys a later chunk may see. */
export interface RingGeometry {
  readonly sink: number;
  readonly recent: number;
  readonly ring: number;
}

/** A run of rows to copy between a ring (slot order) and a snapshot (sinks, then the window in position order). */
interface Run {
  readonly ringSlot: number;
  readonly snapshotSlot: number;
  readonly count: number;
}

/**
 * Where the positions a query at `position` or later can still see live, for a cache holding `position` tokens: the
 * sinks (0 … sink − 1) and the last `recent` positions (whichever mask: the exact one sees `recent − 1` of them, the
 * chunked one all `recent`). Ring slots of the window may wrap.
 */
function runs(geometry: RingGeometry, position: number): Run[] {
  const { sink, recent, ring } = geometry;
  const list: Run[] = [];
  const sinks = Math.min(sink, position);
  if (sinks > 0) list.push({ ringSlot: 0, snapshotSlot: 0, count: sinks });
  const first = Math.max(sink, position - recent);
  for (let p = first; p < position; ) {
    const slot = (p - sink) % ring;
    const count = Math.min(position - p, ring - slot);
    list.push({ ringSlot: sink + slot, snapshotSlot: sink + (p - first), count });
    p += count;
  }
  return list;
}

/**
 * The streaming heads' state at a chunk boundary: per layer with streaming heads, the rows of the sinks and of the
 * last `recent` positions of every plane ([heads, sink + recent, width] each), copied on the device. Restored into a
 * fresh cache of the same policy, the next chunk sees exactly the keys and values it sees in a cold run (the slots the
 * snapshot leaves out are outside every later query's window). Its bytes are taken from the pool's streaming pages.
 */
export class StreamingSnapshot {
  /** Tokens in the cache when it was taken. */
  readonly position: number;
  readonly pages: number;
  readonly #backend: Backend;
  readonly #geometry: RingGeometry;
  readonly #layers: readonly (readonly TensorHandle[] | undefined)[];
  readonly #pool: KvPagePool | undefined;
  #disposed = false;

  private constructor(
    backend: Backend,
    geometry: RingGeometry,
    position: number,
    layers: readonly (readonly TensorHandle[] | undefined)[],
    pages: number,
    pool: KvPagePool | undefined,
  ) {
    this.#backend = backend;
    this.#geometry = geometry;
    this.position = position;
    this.#layers = layers;
    this.pages = pages;
    this.#pool = pool;
  }

  /** Bytes a snapshot of `regions` holds. */
  static bytes(regions: readonly (StreamingPlanes | undefined)[], geometry: RingGeometry): number {
    let bytes = 0;
    for (const planes of regions) {
      for (const plane of planes ?? []) {
        const [heads = 0, , width = 0] = plane.shape;
        bytes += heads * (geometry.sink + geometry.recent) * width * dtypeBytes(plane.dtype);
      }
    }
    return bytes;
  }

  /**
   * Copies the live rows of `regions` (per layer, its streaming planes or undefined) for a cache holding `position`
   * tokens. Takes the snapshot's pages from `pool` first: throws DuoOutOfMemoryError, having copied nothing, when it
   * cannot.
   */
  static take(
    backend: Backend,
    regions: readonly (StreamingPlanes | undefined)[],
    geometry: RingGeometry,
    position: number,
    pool: KvPagePool | undefined,
  ): StreamingSnapshot {
    const pages = pool ? pool.pagesFor(StreamingSnapshot.bytes(regions, geometry)) : 0;
    pool?.take(pages, 'streaming');
    const made: TensorHandle[] = [];
    try {
      const layers = regions.map((planes) =>
        planes?.map((plane) => {
          const [heads = 0, , width = 0] = plane.shape;
          const copy = backend.alloc(plane.dtype, [heads, geometry.sink + geometry.recent, width]);
          made.push(copy);
          copyRuns(backend, plane, copy, geometry, position, 'out');
          return copy;
        }),
      );
      return new StreamingSnapshot(backend, geometry, position, layers, pages, pool);
    } catch (error) {
      for (const tensor of made) tensor.dispose();
      pool?.give(pages, 'streaming');
      throw error;
    }
  }

  /** Writes the snapshot's rows into `regions` (a fresh cache's streaming planes, same policy), at their ring slots. */
  restore(regions: readonly (StreamingPlanes | undefined)[]): void {
    if (this.#disposed) throw new Error('The streaming snapshot was disposed');
    this.#layers.forEach((copies, layer) => {
      const planes = regions[layer];
      copies?.forEach((copy, plane) => {
        const target = planes?.[plane];
        if (!target) throw new Error(`Expected streaming plane ${plane} in layer ${layer} to restore into`);
        copyRuns(this.#backend, target, copy, this.#geometry, this.position, 'in');
      });
    });
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const copies of this.#layers) for (const copy of copies ?? []) copy.dispose();
    this.#pool?.give(this.pages, 'streaming');
  }
}

/** Copies the live rows between a ring region and its snapshot, head by head ('out': ring → snapshot). */
function copyRuns(
  backend: Backend,
  ring: TensorHandle,
  snapshot: TensorHandle,
  geometry: RingGeometry,
  position: number,
  direction: 'out' | 'in',
): void {
  const [heads = 0, slots = 0] = ring.shape;
  const kept = geometry.sink + geometry.recent;
  for (let head = 0; head < heads; head++) {
    for (const { ringSlot, snapshotSlot, count } of runs(geometry, position)) {
      const ringRow = head * slots + ringSlot;
      const snapshotRow = head * kept + snapshotSlot;
      if (direction === 'out') backend.copyRows(ring, snapshot, ringRow, snapshotRow, count);
      else backend.copyRows(snapshot, ring, snapshotRow, ringRow, count);
    }
  }
}
