// Types for the part of LZMA-JS (the `lzma` package, pure JavaScript) that compress.ts uses. Its worker file is
// imported directly: the package's own entry finds it with a runtime path join, which bundles cannot follow.
declare module 'lzma/src/lzma_worker.js' {
  const worker: {
    LZMA_WORKER: {
      /** Compresses `data` at `mode` 1–9 (the xz presets' dictionary and match settings) into .lzma bytes. */
      compress(data: Uint8Array | number[] | string, mode?: number): number[];
    };
  };
  export default worker;
}
