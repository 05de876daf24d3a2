// A one-line progress bar on stderr for long work (weight loading), drawn only when stderr is a terminal.

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
