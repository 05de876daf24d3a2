// The consumer side of one submitted request: an async iterable of its tokens, then its result.

/**
 * A queue of items that one consumer iterates while a producer pushes; `end` closes it with a result, `fail` with an
 * error (the iterator rethrows it after the items already pushed).
 */
export class TokenQueue<Item, Result> implements AsyncIterable<Item> {
  readonly result: Promise<Result>;
  readonly #items: Item[] = [];
  #waiter: (() => void) | undefined;
  #done = false;
  #error: unknown;
  #failed = false;
  #resolve!: (result: Result) => void;
  #reject!: (error: unknown) => void;

  constructor() {
    this.result = new Promise<Result>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A consumer that only iterates must not see an unhandled rejection: the iterator reports the error.
    this.result.catch(() => undefined);
  }

  get closed(): boolean {
    return this.#done;
  }

  push(item: Item): void {
    if (this.#done) return;
    this.#items.push(item);
    this.#wake();
  }

  end(result: Result): void {
    if (this.#done) return;
    this.#done = true;
    this.#resolve(result);
    this.#wake();
  }

  fail(error: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#failed = true;
    this.#error = error;
    this.#reject(error);
    this.#wake();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Item> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.#done) {
        if (this.#failed) throw this.#error;
        return;
      }
      await new Promise<void>((resolve) => {
        this.#waiter = resolve;
      });
    }
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }
}
