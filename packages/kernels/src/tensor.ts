// Tensor handles: JS holds ids; the backend owns the memory until dispose().
import { type DeviceKind, type DType, DuoDisposedError, type TensorHandle } from '@duoattn/core';
import type { NativeAddon } from './native.js';

let leakWarnings = 0;
const leaks = new FinalizationRegistry<string>((description) => {
  // The memory stays allocated (the registry never frees native memory behind the owner's back): say so.
  if (leakWarnings++ < 5) {
    process.emitWarning(`duoattn: ${description} was garbage-collected without dispose(); its memory is leaked`, {
      code: 'DUO_TENSOR_LEAK',
    });
  }
});

/** A native tensor. Free it with `dispose()` or a `using` declaration. */
export class Tensor implements TensorHandle {
  readonly id: number;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: DeviceKind;
  readonly size: number;
  /** For paged tensors (`allocPaged`): rows of each span backed by memory; undefined for ordinary tensors. */
  committedRows: number | undefined;
  #disposed = false;
  readonly #native: NativeAddon;

  /** @internal */
  constructor(native: NativeAddon, id: number, dtype: DType, shape: readonly number[], device: DeviceKind) {
    this.#native = native;
    this.id = id;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
    this.size = shape.reduce((a, b) => a * b, 1);
    leaks.register(this, `${device} ${dtype} tensor [${shape.join(', ')}]`, this);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Rows when viewed as a matrix: every dimension but the last. */
  get rows(): number {
    const last = this.shape[this.shape.length - 1] ?? 1;
    return last === 0 ? 0 : this.size / last;
  }

  /** Length of the last dimension. */
  get cols(): number {
    return this.shape[this.shape.length - 1] ?? 1;
  }

  /** Frees the memory now. Safe to call twice. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    leaks.unregister(this);
    this.#native.free(this.id);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Throws if disposed; returns the id for a native call. */
  liveId(argument: string): number {
    if (this.#disposed) {
      throw new DuoDisposedError(`\`${argument}\` (${this.describe()}) was used after dispose()`);
    }
    return this.id;
  }

  /** "bf16 [4096, 4096] on cuda" */
  describe(): string {
    return `${this.dtype} [${this.shape.join(', ')}] on ${this.device}`;
  }
}
