// The subset of vitest's API our suites use, so the same suites run on the GPU machine (which has no node_modules)
// from one esbuild bundle. Collects results and prints a summary line like "N passed, N failed, N skipped".
import { isDeepStrictEqual } from 'node:util';

type Body = () => unknown | Promise<unknown>;
interface TestCase {
  name: string;
  body: Body;
  skip: boolean;
  /** beforeAll / afterAll: run in order like a test, not counted unless they fail. */
  hook?: boolean;
  /** A hook's describe path (its tests' names start with it). */
  scope?: string;
}

const tests: TestCase[] = [];
const prefix: string[] = [];
let skipDepth = 0;
// afterAll hooks of each open describe, appended when its body has registered everything.
const pendingAfter: TestCase[][] = [[]];

function format(name: string, args: unknown[]): string {
  let index = 0;
  const row = args[0];
  const named = (key: string) =>
    typeof row === 'object' && row !== null && key in row ? String((row as Record<string, unknown>)[key]) : `$${key}`;
  return name
    .replace(/%[sid]/g, () => String(args[index++]))
    .replace(/\$([A-Za-z_]\w*)/g, (_, key: string) => named(key));
}

function describeImpl(name: string, body: () => void, skip: boolean): void {
  prefix.push(name);
  if (skip) skipDepth++;
  pendingAfter.push([]);
  body();
  tests.push(...(pendingAfter.pop() ?? []));
  if (skip) skipDepth--;
  prefix.pop();
}

function hook(name: string, body: Body): TestCase {
  return { name: [...prefix, name].join(' > '), body, skip: skipDepth > 0, hook: true, scope: prefix.join(' > ') };
}

export function beforeAll(body: Body): void {
  tests.push(hook('beforeAll', body));
}

export function afterAll(body: Body): void {
  pendingAfter[pendingAfter.length - 1]?.push(hook('afterAll', body));
}

export const describe = Object.assign((name: string, body: () => void) => describeImpl(name, body, false), {
  skip: (name: string, body: () => void) => describeImpl(name, body, true),
  skipIf: (condition: boolean) => (name: string, body: () => void) => describeImpl(name, body, condition),
});

function register(name: string, body: Body): void {
  tests.push({ name: [...prefix, name].join(' > '), body, skip: skipDepth > 0 });
}

export const it = Object.assign(register, {
  each: (table: readonly unknown[]) => (name: string, body: (...args: never[]) => unknown) => {
    for (const row of table) {
      const args = Array.isArray(row) ? row : [row];
      register(format(name, args), () => (body as (...a: unknown[]) => unknown)(...args));
    }
  },
  skip: (name: string, _body: Body) => tests.push({ name: [...prefix, name].join(' > '), body: () => {}, skip: true }),
});
export const test = it;

class AssertionError extends Error {}

export function expect(actual: unknown, label?: string) {
  const fail = (message: string) => {
    throw new AssertionError(label ? `${label}: ${message}` : message);
  };
  return {
    toBe: (expected: unknown) =>
      Object.is(actual, expected) || fail(`expected ${String(actual)} to be ${String(expected)}`),
    toEqual: (expected: unknown) =>
      isDeepStrictEqual(actual, expected) ||
      fail(`expected ${JSON.stringify(actual)?.slice(0, 400)} to equal ${JSON.stringify(expected)?.slice(0, 400)}`),
    toBeLessThan: (limit: number) => (actual as number) < limit || fail(`expected ${String(actual)} < ${limit}`),
    toBeGreaterThan: (limit: number) => (actual as number) > limit || fail(`expected ${String(actual)} > ${limit}`),
    toBeLessThanOrEqual: (limit: number) =>
      (actual as number) <= limit || fail(`expected ${String(actual)} ≤ ${limit}`),
    toBeGreaterThanOrEqual: (limit: number) =>
      (actual as number) >= limit || fail(`expected ${String(actual)} ≥ ${limit}`),
    toBeDefined: () => actual !== undefined || fail('expected a defined value'),
    toThrow: (expected?: unknown) => {
      try {
        (actual as () => unknown)();
      } catch (error) {
        if (expected instanceof RegExp && !expected.test(String((error as Error).message))) {
          fail(`expected the error message to match ${String(expected)} but it was "${(error as Error).message}"`);
        }
        if (typeof expected === 'string' && !String((error as Error).message).includes(expected)) {
          fail(`expected the error message to contain "${expected}" but it was "${(error as Error).message}"`);
        }
        if (typeof expected === 'function' && !(error instanceof (expected as new () => unknown))) {
          fail(`expected a ${(expected as { name: string }).name} but got ${(error as Error).name}`);
        }
        return true;
      }
      return fail('expected a throw');
    },
    toMatch: (pattern: RegExp | string) =>
      (typeof pattern === 'string' ? String(actual).includes(pattern) : pattern.test(String(actual))) ||
      fail(`expected ${JSON.stringify(actual)?.slice(0, 200)} to match ${String(pattern)}`),
    toContain: (item: unknown) =>
      (typeof actual === 'string' ? actual.includes(String(item)) : (actual as unknown[]).includes(item)) ||
      fail(`expected ${JSON.stringify(actual)?.slice(0, 200)} to contain ${JSON.stringify(item)}`),
    toHaveLength: (length: number) =>
      (actual as { length: number }).length === length ||
      fail(`expected length ${length} but it is ${(actual as { length: number }).length}`),
    toBeInstanceOf: (type: new (...args: never[]) => unknown) =>
      actual instanceof type || fail(`expected an instance of ${type.name}`),
    not: {
      toThrow: () => {
        try {
          (actual as () => unknown)();
        } catch (error) {
          return fail(`expected no throw but it threw "${(error as Error).message}"`);
        }
        return true;
      },
      toBe: (expected: unknown) => !Object.is(actual, expected) || fail(`expected ${String(actual)} not to be it`),
    },
  };
}

/**
 * Runs every registered test in order; returns the per-test outcomes. `only`: run just the tests whose full name
 * (describe path included) it matches, and the hooks of their describes (a suite's beforeAll loads what its tests
 * use); the others are left out of the outcomes.
 */
export async function runRegistered(log: (line: string) => void, only?: RegExp) {
  const outcomes: { name: string; status: 'passed' | 'failed' | 'skipped'; ms: number; error?: string }[] = [];
  const inScope = (hook: TestCase, test: TestCase) => !hook.scope || test.name.startsWith(`${hook.scope} > `);
  const selected = (test: TestCase) =>
    !only ||
    only.test(test.name) ||
    (test.hook === true && tests.some((other) => !other.hook && inScope(test, other) && only.test(other.name)));
  for (const test of tests) {
    if (!selected(test)) continue;
    if (test.hook) {
      if (test.skip) continue;
      try {
        await test.body();
      } catch (error) {
        outcomes.push({ name: test.name, status: 'failed', ms: 0, error: String((error as Error).stack ?? error) });
        log(`  ✗ ${test.name}\n    ${String((error as Error).message)}`);
      }
      continue;
    }
    if (test.skip) {
      outcomes.push({ name: test.name, status: 'skipped', ms: 0 });
      log(`  - ${test.name} (skipped)`);
      continue;
    }
    const start = performance.now();
    try {
      await test.body();
      const ms = performance.now() - start;
      outcomes.push({ name: test.name, status: 'passed', ms });
      log(`  ✓ ${test.name} (${ms.toFixed(0)} ms)`);
    } catch (error) {
      const ms = performance.now() - start;
      outcomes.push({ name: test.name, status: 'failed', ms, error: String((error as Error).stack ?? error) });
      log(`  ✗ ${test.name}\n    ${String((error as Error).message)}`);
    }
  }
  return outcomes;
}
