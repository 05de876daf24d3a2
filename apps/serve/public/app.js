// The playground's behaviour: counts the document's tokens (/tokenize), sends the question as a streamed chat request
// with the chosen policy, shows the answer as it arrives, and polls /v1/stats for the gauges. Plain browser JS, no
// build step and nothing fetched from outside the server.

const STATS_INTERVAL_MS = 500;
const TOKENIZE_DEBOUNCE_MS = 300;
/** Larger uploads would exceed the server's default body limit (--max-body 32 MB). */
const LARGEST_UPLOAD_BYTES = 32 * 1024 * 1024;

const element = (id) => {
  const found = document.getElementById(id);
  if (!found) throw new Error(`The page has no #${id}`);
  return found;
};

const page = {
  form: element('ask-form'),
  document: element('document'),
  documentFile: element('document-file'),
  tokenCount: element('token-count'),
  tokenMeter: element('token-meter'),
  attention: element('attention'),
  sparsity: element('sparsity'),
  sparsityValue: element('sparsity-value'),
  kvQuant: element('kv-quant'),
  maxTokens: element('max-tokens'),
  temperature: element('temperature'),
  apiKey: element('api-key'),
  question: element('question'),
  send: element('send'),
  stop: element('stop'),
  modelName: element('model-name'),
  serverState: element('server-state'),
  requestStatus: element('request-status'),
  error: element('error'),
  answer: element('answer'),
  usage: element('usage'),
  kvBar: element('kv-bar'),
  kvFullSegment: element('kv-full-segment'),
  kvStreamingSegment: element('kv-streaming-segment'),
  kvFull: element('kv-full'),
  kvStreaming: element('kv-streaming'),
  kvFree: element('kv-free'),
  kvSummary: element('kv-summary'),
  tokensPerSecond: element('gauge-tokens-per-second'),
  running: element('gauge-running'),
  waiting: element('gauge-waiting'),
  cachedTokens: element('gauge-cached-tokens'),
  statsPolls: element('stats-polls'),
};

/** What the page knows of the server, from /v1/stats. */
const server = { model: undefined, contextLength: undefined, defaults: undefined };
/** The request in flight, if any. */
let current;

// ---- helpers ----

function headers() {
  const result = { 'content-type': 'application/json' };
  const key = page.apiKey.value.trim();
  if (key) result.authorization = `Bearer ${key}`;
  return result;
}

/** A response's error in OpenAI's shape as one line ("400 invalid_value: … (param: x)"), or its status text. */
async function describeFailure(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    return `${response.status} ${response.statusText || 'error'}`;
  }
  return `${response.status} ${describeError(body?.error) ?? response.statusText}`;
}

function describeError(error) {
  if (!error || typeof error !== 'object') return undefined;
  const code = error.code ? `${error.code}: ` : '';
  const param = error.param ? ` (param: ${error.param})` : '';
  return `${code}${error.message ?? 'unknown error'}${param}`;
}

function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

const formatCount = (value) => (Number.isFinite(value) ? value.toLocaleString('en') : '–');

function showError(message) {
  page.error.textContent = message;
  page.error.hidden = false;
}

function clearError() {
  page.error.textContent = '';
  page.error.hidden = true;
}

function setStatus(state, text) {
  page.requestStatus.dataset.state = state;
  page.requestStatus.textContent = text;
}

function debounce(action, delay) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(action, delay);
  };
}

// ---- the request ----

/** The chat messages the question is sent as: the document as the system message, then the question. */
function messages() {
  const documentText = page.document.value;
  const question = page.question.value.trim();
  const result = [];
  if (documentText.trim()) result.push({ role: 'system', content: documentText });
  result.push({ role: 'user', content: question });
  return result;
}

/** The request body, with only the policy fields the user set (the rest are the server's defaults). */
function requestBody() {
  const body = {
    messages: messages(),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (server.model) body.model = server.model;
  const maxTokens = Number.parseInt(page.maxTokens.value, 10);
  if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
  const temperature = Number.parseFloat(page.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  if (page.attention.value) body.attention = page.attention.value;
  if (effectiveAttention() === 'duo') body.sparsity = Number.parseFloat(page.sparsity.value);
  if (page.kvQuant.value) body.kv_quant = page.kvQuant.value;
  return body;
}

function effectiveAttention() {
  return page.attention.value || server.defaults?.attention || 'full';
}

/** Reads a server-sent-events body and yields each event's data. */
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let boundary = buffer.indexOf('\n\n');
    while (boundary >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) yield data;
      boundary = buffer.indexOf('\n\n');
    }
  }
}

async function ask() {
  if (current) return;
  if (!page.question.value.trim()) {
    showError('Write a question first.');
    page.question.focus();
    return;
  }
  clearError();
  const answerText = document.createTextNode('');
  page.answer.replaceChildren(answerText);
  page.answer.setAttribute('aria-busy', 'true');
  page.usage.textContent = '';
  const controller = new AbortController();
  const started = performance.now();
  current = { controller };
  page.send.disabled = true;
  page.stop.disabled = false;
  setStatus('waiting', 'Sending… (the prompt is read first)');

  let firstTokenAt;
  let finishReason;
  let usage;
  try {
    const response = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await describeFailure(response));
    for await (const data of serverSentEvents(response)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(describeError(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const text = choice.delta?.content ?? '';
      if (text) {
        if (firstTokenAt === undefined) {
          firstTokenAt = performance.now();
          setStatus('streaming', `Streaming… (first token after ${formatSeconds(firstTokenAt - started)})`);
        }
        answerText.appendData(text);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    const seconds = formatSeconds(performance.now() - started);
    setStatus('done', `Done in ${seconds}${finishReason ? ` (finish reason: ${finishReason})` : ''}.`);
    page.usage.textContent = describeUsage(usage, firstTokenAt);
  } catch (error) {
    if (controller.signal.aborted) {
      setStatus('stopped', 'Stopped.');
    } else {
      setStatus('failed', 'The request failed.');
      showError(error instanceof TypeError ? `Could not reach the server: ${error.message}` : error.message);
    }
  } finally {
    current = undefined;
    page.answer.setAttribute('aria-busy', 'false');
    page.send.disabled = false;
    page.stop.disabled = true;
  }
}

function formatSeconds(milliseconds) {
  return `${(milliseconds / 1000).toFixed(2)} s`;
}

function describeUsage(usage, firstTokenAt) {
  if (!usage) return '';
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
  const parts = [
    `${formatCount(usage.prompt_tokens)} prompt tokens (${formatCount(cached)} cached)`,
    `${formatCount(usage.completion_tokens)} generated`,
  ];
  if (firstTokenAt !== undefined && usage.completion_tokens > 1) {
    const decodeSeconds = (performance.now() - firstTokenAt) / 1000;
    if (decodeSeconds > 0) parts.push(`${((usage.completion_tokens - 1) / decodeSeconds).toFixed(1)} tokens/s`);
  }
  return parts.join(' · ');
}

// ---- token count ----

let tokenizeController;

async function countTokens() {
  tokenizeController?.abort();
  if (!page.document.value && !page.question.value) {
    page.tokenCount.dataset.count = '';
    page.tokenCount.textContent = 'No text yet.';
    page.tokenMeter.value = 0;
    return;
  }
  const controller = new AbortController();
  tokenizeController = controller;
  const body = { messages: messages() };
  if (server.model) body.model = server.model;
  try {
    const response = await fetch('/tokenize', {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await describeFailure(response));
    const result = await response.json();
    showTokenCount(result.count, result.max_model_len);
  } catch (error) {
    if (controller.signal.aborted) return;
    page.tokenCount.dataset.count = '';
    page.tokenCount.textContent = `Could not count the tokens: ${error.message}`;
  }
}

function showTokenCount(count, contextLength) {
  const maxTokens = Number.parseInt(page.maxTokens.value, 10) || 0;
  page.tokenMeter.max = contextLength;
  page.tokenMeter.value = Math.min(count, contextLength);
  page.tokenMeter.high = Math.max(0, contextLength - maxTokens);
  page.tokenMeter.optimum = 0;
  page.tokenCount.dataset.count = String(count);
  const fits = count + maxTokens <= contextLength;
  page.tokenCount.classList.toggle('over', !fits);
  page.tokenCount.textContent =
    `${formatCount(count)} of ${formatCount(contextLength)} context tokens` +
    (fits
      ? ` (room for ${formatCount(contextLength - count)} more)`
      : ` — too long with ${formatCount(maxTokens)} answer tokens: shorten the text or lower max tokens`);
}

const countTokensSoon = debounce(countTokens, TOKENIZE_DEBOUNCE_MS);

async function loadFile() {
  const file = page.documentFile.files?.[0];
  if (!file) return;
  if (file.size > LARGEST_UPLOAD_BYTES) {
    showError(`${file.name} is ${formatBytes(file.size)}: larger than the server accepts by default (32 MiB).`);
    return;
  }
  clearError();
  page.document.value = await file.text();
  countTokensSoon();
}

// ---- gauges ----

let polls = 0;
/** A poll is scheduled or in flight: at most one loop, however often the page is hidden and shown. */
let statsPending = false;

async function pollStats() {
  try {
    const response = await fetch('/v1/stats', { headers: headers(), cache: 'no-store' });
    if (response.status === 401) {
      showServerState('unauthorized', 'needs an API key');
    } else if (!response.ok) {
      showServerState('error', `stats: ${await describeFailure(response)}`);
    } else {
      showStats(await response.json());
    }
  } catch {
    showServerState('unreachable', 'unreachable');
  }
  polls++;
  page.statsPolls.dataset.polls = String(polls);
  page.statsPolls.textContent = String(polls);
  statsPending = false;
  scheduleStats(STATS_INTERVAL_MS);
}

/** Polls again after `delay` ms unless a poll is pending or the page is hidden (visibilitychange resumes it). */
function scheduleStats(delay) {
  if (statsPending || document.hidden) return;
  statsPending = true;
  setTimeout(pollStats, delay);
}

function showServerState(state, text) {
  page.serverState.dataset.state = state;
  page.serverState.textContent = text;
}

function showStats(stats) {
  if (server.model === undefined) adoptServer(stats);
  showServerState(stats.state, stats.state);
  setGauge(page.tokensPerSecond, stats.tokensPerSecond, (value) => value.toFixed(1));
  setGauge(page.running, stats.running, formatCount);
  setGauge(page.waiting, stats.waiting, formatCount);
  setGauge(page.cachedTokens, stats.cachedTokens, formatCount);
  showMemory(stats.kv);
}

/** The first stats: the model's name, its context and the server's default policy (shown in the selects). */
function adoptServer(stats) {
  server.model = stats.model;
  server.contextLength = stats.contextLength;
  server.defaults = stats.policy;
  page.modelName.textContent = `${stats.model} · ${formatCount(stats.contextLength)}-token context`;
  page.maxTokens.max = String(stats.contextLength);
  const policy = stats.policy ?? {};
  page.attention.options[0].textContent = `server default (${policy.attention ?? 'full'})`;
  page.kvQuant.options[0].textContent = `server default (${policy.kv_quant ?? 'none'})`;
  if (typeof policy.sparsity === 'number') page.sparsity.value = String(policy.sparsity);
  showSparsity();
  countTokensSoon();
}

function setGauge(gauge, value, format) {
  gauge.dataset.value = String(value ?? '');
  gauge.textContent = typeof value === 'number' ? format(value) : '–';
}

function showMemory(kv) {
  const bar = page.kvBar;
  if (!kv) {
    page.kvSummary.textContent = 'No engine yet.';
    return;
  }
  const total = kv.totalBytes || 1;
  bar.dataset.fullBytes = String(kv.fullBytes);
  bar.dataset.streamingBytes = String(kv.streamingBytes);
  bar.dataset.freeBytes = String(kv.freeBytes);
  bar.dataset.totalBytes = String(kv.totalBytes);
  for (const [segment, bytes] of [
    [page.kvFullSegment, kv.fullBytes],
    [page.kvStreamingSegment, kv.streamingBytes],
  ]) {
    segment.style.width = `${(100 * bytes) / total}%`;
    segment.classList.toggle('used', bytes > 0);
  }
  page.kvFull.textContent = formatBytes(kv.fullBytes);
  page.kvStreaming.textContent = formatBytes(kv.streamingBytes);
  page.kvFree.textContent = formatBytes(kv.freeBytes);
  const used = kv.fullBytes + kv.streamingBytes;
  page.kvSummary.textContent = `${formatBytes(used)} used of ${formatBytes(kv.totalBytes)} (${((100 * used) / total).toFixed(2)} %, pages of ${formatBytes(kv.pageBytes)})`;
}

// ---- wiring ----

function showSparsity() {
  const percent = Math.round(Number.parseFloat(page.sparsity.value) * 100);
  page.sparsityValue.textContent = `${percent} % of KV heads stream`;
  page.sparsity.disabled = effectiveAttention() !== 'duo';
}

page.form.addEventListener('submit', (event) => {
  event.preventDefault();
  void ask();
});
page.question.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    void ask();
  }
});
page.stop.addEventListener('click', () => current?.controller.abort());
page.document.addEventListener('input', countTokensSoon);
page.question.addEventListener('input', countTokensSoon);
page.maxTokens.addEventListener('input', countTokensSoon);
page.apiKey.addEventListener('change', countTokensSoon);
page.documentFile.addEventListener('change', () => void loadFile());
page.attention.addEventListener('change', showSparsity);
page.sparsity.addEventListener('input', showSparsity);
document.addEventListener('visibilitychange', () => scheduleStats(0));

showSparsity();
scheduleStats(0);
