// Types for the parts of LZMA-JS (the `lzma` package, pure JavaScript) that compress.ts uses.
declare module 'lzma' {
  /** Compresses `data` at `mode` 1–9 (the xz presets' dictionary and match settings) into .lzma bytes. */
  export function compress(data: Uint8Array | number[] | string, mode?: number): number[];
}
