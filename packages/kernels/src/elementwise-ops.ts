// The element-wise ops as TypeScript sees them: one entry per DUO_ELEMENTWISE of native/ops.def (ops-table.test.ts
// checks they agree). NativeBackend's method for each op (validation and the native call) and its conformance case
// follow from the entry.

/** One element-wise op: `out[i] = f(inputs[0][i], …)` over f32 tensors of one shape; `out` may alias any input. */
export interface ElementwiseOp {
  /** The input tensors' names as the spec (`Backend`) names them, in order; `out` follows them. */
  readonly inputs: readonly string[];
  /** The op on one element in float64: the reference the conformance suite checks every backend against. */
  readonly reference: (...inputs: number[]) => number;
  /** Largest relative error from the reference a backend may show; 0: exactly the f32 rounding of the reference. */
  readonly tolerance: number;
}

/** Every element-wise op, by its name in the spec (`Backend`) and in native/ops.def. */
export const ELEMENTWISE_OPS = {
  swiglu: { inputs: ['gate', 'up'], reference: (gate, up) => (gate / (1 + Math.exp(-gate))) * up, tolerance: 1e-5 },
  add: { inputs: ['a', 'b'], reference: (a, b) => a + b, tolerance: 0 },
} as const satisfies Record<string, ElementwiseOp>;

/** The name of an element-wise op. */
export type ElementwiseName = keyof typeof ELEMENTWISE_OPS;

/** The element-wise ops' names. */
export const ELEMENTWISE_NAMES = Object.keys(ELEMENTWISE_OPS) as ElementwiseName[];
