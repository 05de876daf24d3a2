// The KV page pool shared by every sequence of a batch: a budget of pages from which each sequence's full regions grow
// and its streaming regions are made, with live counters per region.
import { DuoArgumentError, DuoOutOfMemoryError } from '@duoattn/core';

/** The regions a pool's pages go to. */
export type KvRegion = 'full' | 'streaming';

/** Pages of a pool in use and free, per region. */
export interface KvPoolUsage {
  readonly pageBytes: number;
  readonly totalPages: number;
  readonly freePages: number;
  readonly usedPages: { readonly full: number; readonly streaming: number };
}

/**
 * A budget of KV pages (`pageBytes` each: the backend's page, so a full region's growth is whole pages) shared by the
 * caches of many sequences. A cache takes pages before it maps memory and gives them back when it is disposed, so the
 * memory the sequences hold never passes the budget and a sequence that cannot grow is told so before anything is
 * mapped. Each sequence's full region is its own address range; the pool hands out the right to map pages into it (the
 * device's allocator supplies them), so kernels keep reading each region as one contiguous array.
 */
export class KvPagePool {
  readonly pageBytes: number;
  readonly totalPages: number;
  readonly #used = { full: 0, streaming: 0 };

  constructor(options: { readonly budgetBytes: number; readonly pageBytes: number }) {
    const { budgetBytes, pageBytes } = options;
    if (!Number.isInteger(pageBytes) || pageBytes < 1) {
      throw new DuoArgumentError(
        'pageBytes',
        `Expected \`pageBytes\` to be a positive integer but received ${pageBytes}`,
      );
    }
    if (!(Number.isFinite(budgetBytes) && budgetBytes >= 0)) {
      throw new DuoArgumentError(
        'budgetBytes',
        `Expected \`budgetBytes\` to be a finite number ≥ 0 but received ${budgetBytes}`,
      );
    }
    this.pageBytes = pageBytes;
    this.totalPages = Math.floor(budgetBytes / pageBytes);
  }

  /** Pages holding `bytes`. */
  pagesFor(bytes: number): number {
    return Math.ceil(bytes / this.pageBytes);
  }

  get freePages(): number {
    return this.totalPages - this.#used.full - this.#used.streaming;
  }

  /** Whether `pages` more pages are free now. */
  fits(pages: number): boolean {
    return pages <= this.freePages;
  }

  /** Takes `pages` for `region`; throws DuoOutOfMemoryError (nothing taken) when fewer are free. */
  take(pages: number, region: KvRegion): void {
    if (!Number.isInteger(pages) || pages < 0) {
      throw new DuoArgumentError('pages', `Expected \`pages\` to be an integer ≥ 0 but received ${pages}`);
    }
    if (!this.fits(pages)) {
      throw new DuoOutOfMemoryError(
        `The KV page pool has ${this.freePages} free pages of ${this.pageBytes} bytes but the ${region} region needs ${pages} more`,
      );
    }
    this.#used[region] += pages;
  }

  /** Gives back `pages` of `region`. */
  give(pages: number, region: KvRegion): void {
    if (!Number.isInteger(pages) || pages < 0 || pages > this.#used[region]) {
      throw new DuoArgumentError(
        'pages',
        `Expected at most the ${this.#used[region]} pages the ${region} region holds but received ${pages}`,
      );
    }
    this.#used[region] -= pages;
  }

  usage(): KvPoolUsage {
    return {
      pageBytes: this.pageBytes,
      totalPages: this.totalPages,
      freePages: this.freePages,
      usedPages: { ...this.#used },
    };
  }
}
