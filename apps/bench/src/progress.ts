// Progress on stderr for long work: weight loading (a bar drawn only on a terminal), gate training and the
// evaluations (passkey, niah, perplexity, accs).

/** Returns an onProgress(done, total) callback that redraws `label [#####-----] done/total` in place. */
export function loadingProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): (done: number, total: number) => void {
  if (!stream.isTTY) return () => {};
  const started = performance.now();
  return (done, total) => {
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    stream.write(`\r[duo-bench] loading ${label} ${bar(done, total, 30)} ${done}/${total} ${seconds}s`);
    if (done >= total) stream.write('\n');
  };
}

/** What the training progress line shows of a step. */
export interface TrainingStep {
  step: number;
  loss: number;
  distillation: number;
  meanGate: number;
  tokens: number;
  seconds: number;
}

/**
 * Progress of gate training: on a terminal one line redrawn in place (bar, loss, distillation loss, mean gate,
 * tokens/s, ETA); otherwise a line every 10 steps or 15 s, and at the end, so logs show it too.
 */
export function trainingProgress(
  totalSteps: number,
  stream: NodeJS.WriteStream = process.stderr,
): (step: TrainingStep) => void {
  let tokens = 0;
  let seconds = 0;
  let seen = 0; // steps of this run (a resumed run starts past 0)
  const write = progressWriter(stream);
  return (report) => {
    tokens += report.tokens;
    seconds += report.seconds;
    seen++;
    const done = report.step + 1;
    const remaining = (totalSteps - done) * (seconds / seen);
    write(
      `[train-gates] step ${done}/${totalSteps} ${bar(done, totalSteps, 24)} loss ${report.loss.toExponential(3)} distill ${report.distillation.toExponential(3)} gate ${report.meanGate.toFixed(3)} ${Math.round(tokens / Math.max(seconds, 1e-9))} tok/s ETA ${duration(remaining)}`,
      done,
      done >= totalSteps,
    );
  };
}

/**
 * Progress of an evaluation measured in work (tokens), reported after each trial or window: `[duo-bench] LABEL
 * [bar] DETAIL; N tok/s, ETA …`, the ETA being the work left at the rate so far (longer trials weigh more). Call it
 * with the work done and in all, and what was just done (e.g. "@4096 trial 3/20, score 3.0").
 */
export function runProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): (done: number, total: number, detail: string) => void {
  const started = performance.now();
  const write = progressWriter(stream);
  let count = 0;
  return (done, total, detail) => {
    count++;
    const seconds = (performance.now() - started) / 1000;
    const rate = done / Math.max(seconds, 1e-9);
    const eta = done > 0 ? (total - done) / rate : Number.NaN;
    const speed = rate >= 1000 ? `${(rate / 1000).toFixed(1)}k` : rate.toFixed(0);
    write(
      `[duo-bench] ${label} ${bar(done, total, 20)} ${detail}; ${speed} tok/s, ETA ${Number.isFinite(eta) ? duration(eta) : '?'}`,
      count,
      done >= total,
    );
  };
}

/**
 * Writes progress lines: on a terminal one line redrawn in place (ended when `finished`); otherwise, for logs, the
 * first, every tenth (by `index`), the last, and any after 15 s without a line — a log shows the run is alive without a
 * line per step.
 */
function progressWriter(stream: NodeJS.WriteStream): (line: string, index: number, finished: boolean) => void {
  let lastPrinted = -Infinity;
  return (line, index, finished) => {
    if (stream.isTTY) {
      stream.write(`\r${line}`);
      if (finished) stream.write('\n');
      return;
    }
    const now = performance.now();
    if (index % 10 === 0 || finished || now - lastPrinted > 15_000) {
      stream.write(`${line}\n`);
      lastPrinted = now;
    }
  };
}

/** `[#####-----]`: `done` of `total` in `width` characters. */
function bar(done: number, total: number, width: number): string {
  const filled = Math.min(width, Math.max(0, Math.round((done / Math.max(total, 1)) * width)));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/** 75 → "1m15s", 4000 → "1h06m". */
export function duration(seconds: number): string {
  const whole = Math.max(0, Math.round(seconds));
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, '0')}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, '0')}m`;
}
