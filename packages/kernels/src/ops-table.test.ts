// The native boundary follows one op table, native/ops.def: the addon exports exactly its entries, NativeAddon
// (native.ts) declares exactly its DUO_OP entries with their argument counts, and ELEMENTWISE_OPS holds exactly its
// DUO_ELEMENTWISE entries with their inputs. A binding that drifts from the table fails here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { ELEMENTWISE_NAMES, ELEMENTWISE_OPS } from './elementwise-ops.js';
import { loadNative, packageDirectory } from './native.js';
import { NativeBackend } from './native-backend.js';

interface TableEntry {
  name: string;
  arity: number;
}

const table = readFileSync(join(packageDirectory(), 'native', 'ops.def'), 'utf8');
const ops: TableEntry[] = Array.from(table.matchAll(/^DUO_OP\((\w+), (\d+)\)$/gm), ([, name = '', arity = '']) => ({
  name,
  arity: Number(arity),
}));
const elementwise: TableEntry[] = Array.from(
  table.matchAll(/^DUO_ELEMENTWISE\((\w+), \(([^)]*)\), /gm),
  ([, name = '', parameters = '']) => ({ name, arity: parameters.split(',').length }),
);

/** NativeAddon's methods and their parameter counts, read from native.ts with the TypeScript parser. */
function declaredMethods(): TableEntry[] {
  const path = join(packageDirectory(), 'src', 'native.ts');
  const source = ts.createSourceFile(path, readFileSync(path, 'utf8'), ts.ScriptTarget.ES2022, true);
  const addon = source.statements.find(
    (statement): statement is ts.InterfaceDeclaration =>
      ts.isInterfaceDeclaration(statement) && statement.name.text === 'NativeAddon',
  );
  if (!addon) throw new Error('native.ts declares no NativeAddon interface');
  return addon.members.filter(ts.isMethodSignature).map((method) => ({
    name: method.name.getText(source),
    arity: method.parameters.length,
  }));
}

describe('the op table (native/ops.def)', () => {
  it('lists ops and element-wise ops', () => {
    expect(ops.length).toBeGreaterThan(30);
    expect(elementwise.map(({ name }) => name)).toContain('swiglu');
  });

  it('is what NativeAddon declares, argument counts included', () => {
    const byName = (a: TableEntry, b: TableEntry) => a.name.localeCompare(b.name);
    expect(declaredMethods().sort(byName)).toEqual([...ops].sort(byName));
  });

  it('is what ELEMENTWISE_OPS holds, inputs included', () => {
    expect(ELEMENTWISE_NAMES.map((name) => ({ name, arity: ELEMENTWISE_OPS[name].inputs.length }))).toEqual(
      elementwise,
    );
  });

  it('is what the addon exports, and NativeBackend has every element-wise op', () => {
    const native = loadNative() as unknown as Record<string, unknown>;
    const exported = Object.keys(native).filter((key) => typeof native[key] === 'function');
    expect(exported.sort()).toEqual([...ops, ...elementwise].map(({ name }) => name).sort());
    expect(typeof native.cudaCompiled).toBe('boolean');
    for (const { name } of elementwise) {
      expect(typeof (NativeBackend.prototype as unknown as Record<string, unknown>)[name]).toBe('function');
    }
  });

  it('rejects a call with the wrong argument count, naming the op', () => {
    const native = loadNative() as unknown as Record<string, (...args: unknown[]) => unknown>;
    expect(() => native.convert?.(1)).toThrow(/the native op convert takes 2 arguments but received 1/);
  });
});
