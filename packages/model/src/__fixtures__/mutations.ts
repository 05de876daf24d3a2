// Mutations of real files for the fuzz suite: JSON documents (a value replaced, removed, nudged, swapped, added) and
// binary headers (a field overwritten with a hostile integer, bytes flipped, the file cut or extended).
import fc from 'fast-check';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Integers that break size arithmetic: zero, signs, powers of two at the 8/16/31/32/53/63/64-bit edges. */
export const HOSTILE_INTEGERS: readonly number[] = [
  0,
  1,
  -1,
  2,
  3,
  7,
  31,
  32,
  33,
  255,
  256,
  2 ** 15,
  2 ** 16 - 1,
  2 ** 31 - 1,
  -(2 ** 31),
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53 + 2,
  2 ** 63,
  -(2 ** 63),
  2 ** 64,
];

/** Values a hostile JSON document puts where a number, a string, a list or an object belongs. */
export const hostileJson: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(...HOSTILE_INTEGERS, 0.5, -0.5, 1e308, -1e-308, 1e-3),
  fc.constantFrom<Json>(
    null,
    true,
    false,
    '',
    'F32',
    'BF16',
    'I8',
    'NaN',
    '0',
    '../x',
    '/etc/passwd',
    [],
    {},
    [0],
    [-1, 1],
  ),
  fc.integer({ min: -1024, max: 1 << 20 }),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.string({ maxLength: 12 }),
  fc.array(fc.integer({ min: -2, max: 1 << 20 }), { maxLength: 4 }),
);

/** One edit of a JSON document: which path (an index into its paths, wrapped), what to do, with what. */
export interface JsonMutation {
  action: 'replace' | 'delete' | 'nudge' | 'swap' | 'add';
  path: number;
  other: number;
  value: Json;
  delta: number;
}

/** One to three edits of a JSON document. */
export const jsonMutations: fc.Arbitrary<JsonMutation[]> = fc.array(
  fc.record({
    action: fc.constantFrom('replace', 'delete', 'nudge', 'swap', 'add'),
    path: fc.nat(),
    other: fc.nat(),
    value: hostileJson,
    delta: fc.oneof(fc.integer({ min: -64, max: 64 }), fc.constantFrom(1024, -1024, 2 ** 31)),
  }),
  { minLength: 1, maxLength: 3 },
);

/** Every path in `value` (the root is []), objects' keys and arrays' indices, depth first. */
function paths(value: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  const children: [string | number, Json][] = Array.isArray(value)
    ? value.map((item, i) => [i, item])
    : value !== null && typeof value === 'object'
      ? Object.entries(value)
      : [];
  for (const [key, item] of children) paths(item, [...prefix, key], out);
  return out;
}

function get(root: Json, path: readonly (string | number)[]): Json {
  let node: Json = root;
  for (const key of path) node = (node as Record<string | number, Json>)[key] as Json;
  return node;
}

/** Sets (or, with `remove`, deletes) the value at a non-empty path. */
function set(root: Json, path: readonly (string | number)[], value: Json, remove = false): void {
  const parent = get(root, path.slice(0, -1)) as Record<string | number, Json> | Json[];
  const key = path[path.length - 1] as string | number;
  if (remove && Array.isArray(parent)) parent.splice(key as number, 1);
  else if (remove) delete (parent as Record<string, Json>)[key];
  else (parent as Record<string | number, Json>)[key] = value;
}

/** A copy of `document` with `mutations` applied in turn. */
export function mutateJson(document: Json, mutations: readonly JsonMutation[]): Json {
  let root = structuredClone(document);
  for (const { action, path: pathIndex, other, value, delta } of mutations) {
    const all = paths(root);
    const path = all[pathIndex % all.length] ?? [];
    const current = get(root, path);
    // Copies, so that later edits never change the fuzzer's own value (its report must reproduce the input).
    let replacement: Json = structuredClone(value);
    if (action === 'nudge') replacement = typeof current === 'number' ? current + delta : value;
    if (action === 'swap') replacement = structuredClone(get(root, all[other % all.length] ?? []));
    if (action === 'add' && current !== null && typeof current === 'object') {
      if (Array.isArray(current)) current.push(replacement);
      else current[`fuzz${other}`] = replacement;
      continue;
    }
    if (path.length === 0) root = action === 'delete' ? null : replacement;
    else set(root, path, replacement, action === 'delete');
  }
  return root;
}

/** One edit of a binary file's first `region` bytes (its header), or of its length. */
export interface ByteMutation {
  kind: 'write' | 'flip' | 'truncate' | 'extend';
  position: number;
  width: 1 | 2 | 4 | 8;
  value: bigint;
}

/** One to three edits of a binary header; writes favour hostile integers and values near zero. */
export const byteMutations: fc.Arbitrary<ByteMutation[]> = fc.array(
  fc.record({
    kind: fc.constantFrom('write', 'write', 'write', 'flip', 'truncate', 'extend'),
    position: fc.nat(),
    width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const),
    value: fc.oneof(
      fc.constantFrom(...HOSTILE_INTEGERS.map((n) => BigInt(n))),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
      fc.bigInt({ min: -64n, max: 64n }),
    ),
  }),
  { minLength: 1, maxLength: 3 },
);

/**
 * `bytes` with `mutations` applied: writes and flips land in the first `region` bytes (little-endian, at a position
 * aligned to the width, as header fields are); truncations cut anywhere; extensions append up to 64 KiB of zeros.
 */
export function mutateBytes(bytes: Buffer, region: number, mutations: readonly ByteMutation[]): Buffer {
  let out = Buffer.from(bytes);
  for (const { kind, position, width, value } of mutations) {
    if (kind === 'truncate') {
      out = out.subarray(0, position % (out.length + 1));
      continue;
    }
    if (kind === 'extend') {
      out = Buffer.concat([out, Buffer.alloc(position % 65536)]);
      continue;
    }
    const span = Math.min(region, out.length) - width;
    if (span < 0) continue;
    const at = Math.floor((position % (span + 1)) / width) * width;
    if (kind === 'flip') {
      out[at] = (out[at] ?? 0) ^ (1 << Number(value & 7n));
      continue;
    }
    const bits = BigInt.asUintN(width * 8, value);
    for (let i = 0; i < width; i++) out[at + i] = Number((bits >> BigInt(8 * i)) & 0xffn);
  }
  return out;
}
