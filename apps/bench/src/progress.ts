// Progress on stderr for long work: weight loading (a bar drawn only on a terminal) and gate training.

/** Returns an onProgress(done, total) callback that redraws `label [#####-----] done/total` in place. */
export function loadingProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
): (done: number, total: number) => void {
  if (!stream.isTTY) return () => {};
  const started = performance.now();
  return (done, total) => {
    const width = 30;
    const filled = Math.round((done / Math.max(total, 1)) * width);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    stream.write(
      `\r[duo-bench] loading ${label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${done}/${total} ${seconds}s`,
    );
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
  let lastPrinted = -Infinity;
  return (report) => {
    tokens += report.tokens;
    seconds += report.seconds;
    seen++;
    const done = report.step + 1;
    const perStep = seconds / seen;
    const remaining = (totalSteps - done) * perStep;
    const width = 24;
    const filled = Math.round((done / Math.max(totalSteps, 1)) * width);
    const line = `[train-gates] step ${done}/${totalSteps} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] loss ${report.loss.toExponential(3)} distill ${report.distillation.toExponential(3)} gate ${report.meanGate.toFixed(3)} ${Math.round(tokens / Math.max(seconds, 1e-9))} tok/s ETA ${duration(remaining)}`;
    if (stream.isTTY) {
      stream.write(`\r${line}`);
      if (done >= totalSteps) stream.write('\n');
      return;
    }
    const now = performance.now();
    if (done % 10 === 0 || done >= totalSteps || now - lastPrinted > 15_000 || perStep > 15) {
      stream.write(`${line}\n`);
      lastPrinted = now;
    }
  };
}

/** 75 → "1m15s", 4000 → "1h06m". */
export function duration(seconds: number): string {
  const whole = Math.max(0, Math.round(seconds));
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, '0')}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, '0')}m`;
}
