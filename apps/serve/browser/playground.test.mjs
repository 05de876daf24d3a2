// The playground's browser test: starts the built duo-serve (CPU, the demo model) on a free port, drives the page in
// headless Chromium through playwright-core, and checks that an answer streams in, the request finishes, the gauges
// move, Stop cancels, the page fits a phone's width and logs no errors. Not part of `pnpm test` (that needs no
// browser): run `pnpm test:browser` at the root, which builds first. The browser is the system's (Debian:
// `apt-get install -y chromium`) or the one `--browser PATH` names. Exits 0 with a pass line, 1 with what failed.
// playwright-core rather than puppeteer-core: it supports Node 20 (this repository's floor; puppeteer-core 25 wants
// 22.12) and has no dependencies; neither downloads a browser when installed.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const appDirectory = join(dirname(fileURLToPath(import.meta.url)), '..');
const serverEntry = join(appDirectory, 'dist', 'cli.js');
const BROWSER_CANDIDATES = [
  '/usr/bin/chromium',
  '/usr/bin/chromium-browser',
  '/usr/bin/google-chrome-stable',
  '/usr/bin/google-chrome',
];
/** The whole test's limit; it takes ~15 s (the server's start, two generations on the CPU, the checks). */
const DEADLINE_MS = 180_000;
/** Long enough (~3 s on a CPU) for several stats polls to land while the answer is generated. */
const ANSWER_TOKENS = 400;

class TestFailure extends Error {}

/** A retrieval task the demo model was trained on: a passkey inside filler text, asked for at the end. */
function shortDocument() {
  const filler =
    'The garden behind the old house was quiet in the morning, and the gardener walked slowly between the rows. ';
  return `${filler.repeat(6)}The passkey is 40392. Remember it. ${filler.repeat(6)}`;
}

const checks = [];
function check(condition, description, detail = '') {
  if (!condition) throw new TestFailure(`${description}${detail ? `: ${detail}` : ''}`);
  checks.push(description);
  console.log(`  ok ${description}`);
}

function findBrowser(named) {
  if (named) {
    if (!existsSync(named)) throw new TestFailure(`--browser: ${named} does not exist`);
    return named;
  }
  const found = BROWSER_CANDIDATES.find((path) => existsSync(path));
  if (!found) {
    throw new TestFailure(
      `no Chromium found (looked at ${BROWSER_CANDIDATES.join(', ')}): install one (Debian: apt-get install -y chromium) or pass --browser PATH`,
    );
  }
  return found;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const delay = (milliseconds) => new Promise((resolve) => setTimeout(resolve, milliseconds));

/** Starts duo-serve and waits for /health to say ok; its output is kept for the failure message. */
async function startServer(port) {
  if (!existsSync(serverEntry)) {
    throw new TestFailure(`${serverEntry} is missing: run \`pnpm build\` first (the root \`pnpm test:browser\` does)`);
  }
  const child = spawn(
    process.execPath,
    [serverEntry, '--device', 'cpu', '--host', '127.0.0.1', '--port', String(port), '--log-level', 'warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output = [];
  child.stdout.on('data', (data) => output.push(data));
  child.stderr.on('data', (data) => output.push(data));
  const server = { child, base: `http://127.0.0.1:${port}`, exited: false };
  const log = () => Buffer.concat(output).toString('utf8');
  child.once('exit', () => {
    server.exited = true;
  });
  const started = Date.now();
  while (Date.now() - started < 60_000) {
    if (server.exited) throw new TestFailure(`duo-serve exited before it was ready:\n${log()}`);
    try {
      const response = await fetch(`${server.base}/health`);
      if (response.ok) return server;
    } catch {
      // Not listening yet.
    }
    await delay(200);
  }
  child.kill('SIGKILL');
  throw new TestFailure(`duo-serve was not healthy after 60 s:\n${log()}`);
}

async function stopServer(server) {
  if (server.exited) return;
  const exited = new Promise((resolve) => server.child.once('exit', resolve));
  server.child.kill('SIGTERM');
  const timer = setTimeout(() => server.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Records, in the page, each state of the answer and each poll's gauges, for the checks after the fact. */
function installRecorder() {
  const byId = (id) => document.getElementById(id);
  const recorded = { answers: [], polls: [] };
  window.__playgroundRecord = recorded;
  const answer = byId('answer');
  const status = byId('request-status');
  new MutationObserver(() => {
    const text = answer.textContent ?? '';
    if (text !== recorded.answers.at(-1)?.text) {
      recorded.answers.push({ text, requestState: status.dataset.state });
    }
  }).observe(answer, { subtree: true, childList: true, characterData: true });
  const polls = byId('stats-polls');
  const bar = byId('kv-bar');
  new MutationObserver(() => {
    recorded.polls.push({
      tokensPerSecond: Number(byId('gauge-tokens-per-second').dataset.value),
      running: Number(byId('gauge-running').dataset.value),
      usedBytes: Number(bar.dataset.fullBytes) + Number(bar.dataset.streamingBytes),
      requestState: status.dataset.state,
    });
  }).observe(polls, { attributes: true, attributeFilter: ['data-polls'] });
}

const testId = (id) => `[data-testid="${id}"]`;

/** Waits until the page has polled /v1/stats `count` more times. */
async function waitForPolls(page, count) {
  const target = Number(await page.getByTestId('stats-polls').getAttribute('data-polls')) + count;
  await page.waitForFunction(
    (wanted) => Number(document.getElementById('stats-polls').dataset.polls) >= wanted,
    target,
    {
      timeout: 10_000,
    },
  );
}

async function gauges(page) {
  return page.evaluate(() => ({
    tokensPerSecond: Number(document.getElementById('gauge-tokens-per-second').dataset.value),
    running: Number(document.getElementById('gauge-running').dataset.value),
  }));
}

async function run(browserPath) {
  const started = performance.now();
  const server = await startServer(await freePort());
  let browser;
  try {
    browser = await chromium.launch({
      executablePath: browserPath,
      headless: true,
      args: ['--disable-dev-shm-usage', '--disable-gpu'],
    });
    const version = browser.version();
    console.log(`playground browser test: Chromium ${version} (${browserPath}), duo-serve at ${server.base}`);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems = watchPage(page, server.base);

    await page.goto(`${server.base}/`, { waitUntil: 'load' });
    await page.waitForSelector(`${testId('server-state')}[data-state="ready"]`, { timeout: 30_000 });
    check(true, 'the page loads and its stats say the server is ready');
    await page.evaluate(installRecorder);

    await checkAnswer(page);
    await checkStop(page);
    await checkNarrow(page);
    check(problems.length === 0, 'the page logged no errors and fetched nothing from elsewhere', problems.join('\n'));
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(`playground browser test: passed — ${checks.length} checks in ${seconds} s (Chromium ${version})`);
  } finally {
    await browser?.close();
    await stopServer(server);
  }
}

/** Paste, count, ask: the answer streams in, the request finishes, the gauges move while it runs. */
async function checkAnswer(page) {
  await page.getByTestId('document').fill(shortDocument());
  await page.getByTestId('question').fill('What is the passkey? The passkey is');
  await page.getByTestId('max-tokens').fill(String(ANSWER_TOKENS));
  await page.waitForFunction(() => Number(document.getElementById('token-count').dataset.count) > 0);
  const countText = await page.getByTestId('token-count').textContent();
  check(
    / of 16,384 context tokens/.test(countText ?? ''),
    'the token count of the pasted document shows against the context',
    countText,
  );

  const before = await gauges(page);
  await page.getByTestId('send').click();
  await page.waitForSelector(`${testId('request-status')}[data-state="done"]`, { timeout: 60_000 });
  const statusText = await page.getByTestId('request-status').textContent();
  const usage = (await page.getByTestId('usage').textContent()) ?? '';
  check(/generated/.test(usage), 'the request finishes and reports its usage', `${statusText} ${usage}`);
  const errorShown = await page.evaluate(() => {
    const error = document.getElementById('error');
    return error.hidden ? '' : error.textContent;
  });
  check(errorShown === '', 'no error is shown', errorShown);

  const record = await page.evaluate(() => window.__playgroundRecord);
  const finalAnswer = (await page.getByTestId('answer').textContent()) ?? '';
  const streamed = record.answers.filter((state) => state.text !== '' && state.requestState === 'streaming');
  check(
    streamed.length >= 2 && finalAnswer.startsWith(streamed[0].text) && streamed[0].text.length < finalAnswer.length,
    'the answer streams in (distinct growing states before completion)',
    `${streamed.length} states while streaming; final answer ${JSON.stringify(finalAnswer.slice(0, 80))}`,
  );

  await waitForPolls(page, 2);
  const polls = await page.evaluate(() => window.__playgroundRecord.polls);
  const moved = polls.some((poll) => poll.running >= 1 || poll.tokensPerSecond !== before.tokensPerSecond);
  check(moved, 'the gauges move (running or tokens/s changed)', JSON.stringify({ before, polls }));
  const generating = polls.filter((poll) => poll.requestState === 'streaming' || poll.requestState === 'waiting');
  check(
    generating.some((poll) => poll.usedBytes > 0),
    'KV memory is in use at a poll while generating',
    `${generating.length} polls while generating: ${JSON.stringify(generating)}`,
  );
}

/** Stop aborts the stream; the server cancels the request (running goes back to 0). */
async function checkStop(page) {
  await page.getByTestId('max-tokens').fill('4000');
  await page.getByTestId('send').click();
  await page.waitForFunction(() => (document.getElementById('answer').textContent ?? '').length > 0, undefined, {
    timeout: 30_000,
  });
  await page.getByTestId('stop').click();
  await page.waitForSelector(`${testId('request-status')}[data-state="stopped"]`, { timeout: 5_000 });
  const buttons = await page.evaluate(() => ({
    send: document.getElementById('send').disabled,
    stop: document.getElementById('stop').disabled,
  }));
  check(!buttons.send && buttons.stop, 'Stop cancels the stream and re-enables Ask', JSON.stringify(buttons));
  await waitForPolls(page, 1);
  await page.waitForFunction(() => document.getElementById('gauge-running').dataset.value === '0', undefined, {
    timeout: 10_000,
  });
  check(true, 'the server drops the stopped request (running back to 0)');
}

/** At a phone's width nothing overflows sideways. */
async function checkNarrow(page) {
  await page.setViewportSize({ width: 360, height: 740 });
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    view: document.documentElement.clientWidth,
  }));
  check(widths.scroll <= widths.view, 'the page fits a 360 px wide screen', JSON.stringify(widths));
}

/** Console errors, uncaught exceptions, failed requests (aborts of ours aside), HTTP errors and outside fetches. */
function watchPage(page, base) {
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith('data:')) problems.push(`fetched from elsewhere: ${url}`);
  });
  page.on('requestfailed', (request) => {
    const reason = request.failure()?.errorText ?? 'unknown';
    if (reason !== 'net::ERR_ABORTED') problems.push(`request failed: ${request.url()} (${reason})`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.url()}`);
  });
  return problems;
}

const watchdog = setTimeout(() => {
  console.error(`playground browser test: FAILED — no result after ${DEADLINE_MS / 1000} s`);
  process.exit(1);
}, DEADLINE_MS);
watchdog.unref();

try {
  // pnpm may pass its `--` along: drop it so that `pnpm test:browser -- --browser PATH` works too.
  const args = process.argv.slice(2).filter((argument) => argument !== '--');
  const { values } = parseArgs({ args, options: { browser: { type: 'string' } } });
  await run(findBrowser(values.browser));
} catch (error) {
  const message = error instanceof TestFailure ? error.message : (error?.stack ?? String(error));
  console.error(`playground browser test: FAILED — ${message}`);
  process.exitCode = 1;
}
