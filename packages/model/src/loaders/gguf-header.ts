// A bounds-checked walk over a GGUF header, run before @huggingface/gguf parses it. That parser reads past the end of a
// file as zeros and sizes its loops by the declared counts, so a small crafted file could have it fill a 50 MB view and
// build tens of millions of values before anything fails. After this walk, every string, array and tensor info is
// known to lie inside the file, and the parser reads nothing else.
import { DuoCheckpointError } from '@duoattn/core';
import { readExactly } from './validate.js';

/** The parser's own cap on the bytes it reads for a header; a header past it cannot be parsed. */
const MAX_HEADER_BYTES = 50 * 10 ** 6;
/** Bytes of each fixed-size GGUF value type (ggml's gguf_type: u8, i8, u16, i16, u32, i32, f32, bool, u64, i64, f64). */
const FIXED_BYTES: Readonly<Record<number, number>> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};
const STRING = 8;
const ARRAY = 9;
/** The parser's limits: nested arrays, dimensions of a tensor, elements of one array. */
const MAX_ARRAY_DEPTH = 4;
const MAX_DIMENSIONS = 8;
const MAX_ARRAY_LENGTH = 1_000_000;

/** Reads a GGUF header front to back, never past `limit`, loading the file's bytes as it goes. */
class HeaderCursor {
  offset = 0;
  littleEndian = true;
  /** v2 and v3 store sizes and counts as u64, v1 as u32. */
  sizeBytes = 8;
  #bytes: Buffer = Buffer.alloc(0);

  constructor(
    readonly file: string,
    readonly fd: number,
    readonly limit: number,
    readonly fileSize: number,
  ) {}

  fail(message: string): never {
    throw new DuoCheckpointError(this.file, undefined, `not a readable GGUF file: ${message}`);
  }

  /** Bytes left before the limit. */
  get remaining(): number {
    return this.limit - this.offset;
  }

  /** The next `length` bytes (checked against the limit before anything is read). */
  take(length: number, what: string): Buffer {
    if (length > this.remaining) {
      const end = this.limit < this.fileSize ? `the parser's ${MAX_HEADER_BYTES}-byte limit` : `the file's end`;
      this.fail(`${what} at byte ${this.offset} needs ${length} bytes but ${end} is ${this.remaining} bytes away`);
    }
    const end = this.offset + length;
    if (end > this.#bytes.length) {
      const size = Math.min(this.limit, Math.max(end, 2 * this.#bytes.length, 1 << 16));
      this.#bytes = readExactly(this.fd, this.file, size, 0);
    }
    const slice = this.#bytes.subarray(this.offset, end);
    this.offset = end;
    return slice;
  }

  u32(what: string): number {
    const bytes = this.take(4, what);
    return this.littleEndian ? bytes.readUInt32LE(0) : bytes.readUInt32BE(0);
  }

  /** A size or count (u32 in v1, u64 after), refused unless `count × minimumBytes` fits in what is left. */
  count(what: string, minimumBytes: number): number {
    const bytes = this.take(this.sizeBytes, what);
    const value =
      this.sizeBytes === 4
        ? BigInt(this.littleEndian ? bytes.readUInt32LE(0) : bytes.readUInt32BE(0))
        : this.littleEndian
          ? bytes.readBigUInt64LE(0)
          : bytes.readBigUInt64BE(0);
    if (value * BigInt(minimumBytes) > BigInt(this.remaining)) {
      this.fail(
        `${what} ${value} at byte ${this.offset - this.sizeBytes} cannot fit in the ${this.remaining} bytes left`,
      );
    }
    return Number(value);
  }

  /** Skips a string: its length, then its bytes. */
  string(what: string): void {
    this.take(this.count(`the length of ${what}`, 1), what);
  }
}

function skipValue(cursor: HeaderCursor, type: number, depth: number): void {
  const fixed = FIXED_BYTES[type];
  if (fixed !== undefined) {
    cursor.take(fixed, 'a metadata value');
  } else if (type === STRING) {
    cursor.string('a metadata string');
  } else if (type === ARRAY) {
    if (depth >= MAX_ARRAY_DEPTH) cursor.fail(`arrays nested deeper than ${MAX_ARRAY_DEPTH}`);
    const elementType = cursor.u32('an array type');
    // The least bytes one element can take: its fixed size, a string's length, an array's type and length.
    const minimum = FIXED_BYTES[elementType] ?? (elementType === STRING ? cursor.sizeBytes : 4 + cursor.sizeBytes);
    const length = cursor.count('an array length', minimum);
    if (length > MAX_ARRAY_LENGTH) cursor.fail(`an array of ${length} values (at most ${MAX_ARRAY_LENGTH})`);
    const elementFixed = FIXED_BYTES[elementType];
    if (elementFixed !== undefined) cursor.take(length * elementFixed, 'an array');
    else for (let i = 0; i < length; i++) skipValue(cursor, elementType, depth + 1);
  } else {
    cursor.fail(`unknown metadata value type ${type} at byte ${cursor.offset - 4}`);
  }
}

/**
 * Walks the header of the GGUF file open as `fd` (of `size` bytes): magic, version, every metadata entry and tensor
 * info, checking each length and count against the bytes left. Returns the byte where the tensor infos end.
 */
export function walkGgufHeader(file: string, fd: number, size: number): number {
  const cursor = new HeaderCursor(file, fd, Math.min(size, MAX_HEADER_BYTES), size);
  if (size < 8 || cursor.take(4, 'the magic').toString('latin1') !== 'GGUF') cursor.fail('no GGUF magic');
  const version = cursor.take(4, 'the version');
  // As the parser does: a version whose low 16 bits are zero is a big-endian file.
  cursor.littleEndian = (version.readUInt32LE(0) & 0xffff) !== 0;
  const number = cursor.littleEndian ? version.readUInt32LE(0) : version.readUInt32BE(0);
  if (number < 1 || number > 3) cursor.fail(`unsupported version ${number}`);
  cursor.sizeBytes = number === 1 ? 4 : 8;
  // The least bytes of a tensor info (name length, n_dims, type, offset) and of a metadata entry (key length, type, 1).
  const tensorInfoBytes = cursor.sizeBytes + 4 + 4 + 8;
  const entryBytes = cursor.sizeBytes + 4 + 1;
  const tensorCount = cursor.count('the tensor count', tensorInfoBytes);
  const entryCount = cursor.count('the metadata count', entryBytes);
  if (tensorCount * tensorInfoBytes + entryCount * entryBytes > cursor.remaining) {
    cursor.fail(`${tensorCount} tensors and ${entryCount} metadata entries cannot fit in ${size} bytes`);
  }
  for (let entry = 0; entry < entryCount; entry++) {
    cursor.string('a metadata key');
    skipValue(cursor, cursor.u32('a metadata type'), 0);
  }
  for (let tensor = 0; tensor < tensorCount; tensor++) {
    cursor.string('a tensor name');
    const dimensions = cursor.u32('n_dims');
    if (dimensions > MAX_DIMENSIONS) cursor.fail(`a tensor with ${dimensions} dimensions (at most ${MAX_DIMENSIONS})`);
    cursor.take(dimensions * cursor.sizeBytes + 4 + 8, 'a tensor info');
  }
  return cursor.offset;
}
