// Test support: the built duo-serve CLI as a child process on a free loopback port (the engine in its worker thread,
// as users run it), and small HTTP helpers.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const SERVE_CLI = join(import.meta.dirname, '..', '..', 'dist', 'cli.js');
export const BENCH_CLI = join(import.meta.dirname, '..', '..', '..', 'bench', 'dist', 'cli.js');

export interface ServeProcess {
  readonly url: string;
  readonly child: ChildProcess;
  /** Everything the process wrote so far. */
  output(): string;
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/** Starts `duo-serve --device cpu --port 0 …args` and resolves once it says it is ready. */
export async function startServe(args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<ServeProcess> {
  if (!existsSync(SERVE_CLI)) throw new Error(`${SERVE_CLI} is not built: run pnpm build first`);
  const child = spawn(process.execPath, [SERVE_CLI, '--device', 'cpu', '--port', '0', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`duo-serve did not become ready:\n${text}`)), 60_000);
    const onData = (chunk: Buffer) => {
      text += chunk.toString();
      const match = /ready on (http:\/\/[\d.]+:\d+)/.exec(text);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`duo-serve exited (${code}) before it was ready:\n${text}`));
    });
  });
  return {
    url,
    child,
    output: () => text,
    exited,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** POSTs JSON (or a raw string body) and returns the status, headers and parsed JSON (or text). */
export async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; json: unknown }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the text itself
  }
  return { status: response.status, headers: response.headers, json };
}

/** The value of one Prometheus sample line (`name{labels} value`), or undefined. */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (!(rest.startsWith('{') || rest.startsWith(' '))) continue;
    if (!Object.entries(labels).every(([key, value]) => rest.includes(`${key}="${value}"`))) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

/** What `duo-bench generate` prints for a prompt on the CPU (the prompt, then the continuation). */
export function benchGenerate(prompt: string, maxTokens: number, policy: readonly string[] = []): string {
  const run = spawnSync(
    process.execPath,
    [BENCH_CLI, 'generate', '--device', 'cpu', '--prompt', prompt, '--max-tokens', String(maxTokens), ...policy],
    { encoding: 'utf8' },
  );
  if (run.status !== 0) throw new Error(`duo-bench generate failed: ${run.stderr}`);
  return run.stdout.replace(/\n$/, '');
}
