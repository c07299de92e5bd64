/**
 * A `b64_json` answer item whose base64 is held as Buffers (views of fal's
 * result body) rather than a string. A 4-megapixel PNG is ~10 MB of base64;
 * as a string it would be copied again by JSON.stringify and once more on its
 * way to the socket. The images route writes these Buffers to the socket as
 * they are (src/http/images-json.ts).
 *
 * The item still reads as an ordinary `{ b64_json: string }`: the getter
 * builds the string on demand (each time; nothing keeps it), so code that
 * needs the text (the stream events, the idempotency store, JSON.stringify,
 * tests) gets exactly the string a plain item would hold, at the cost of that copy.
 */

const PARTS = Symbol('b64 parts');

export interface Base64Parts {
  /** In order; together, the base64 text (ASCII). */
  parts: readonly Buffer[];
  length: number;
}

type Item = { b64_json: string };

export function b64Item(b64: string | Base64Parts): Item {
  if (typeof b64 === 'string') return { b64_json: b64 };
  const item = {} as Item;
  Object.defineProperty(item, 'b64_json', {
    enumerable: true,
    get: () => Buffer.concat(b64.parts as Buffer[], b64.length).toString('latin1'),
  });
  // Not enumerable: invisible to JSON.stringify, spreading and deep equality.
  Object.defineProperty(item, PARTS, { value: b64, enumerable: false });
  return item;
}

/** The Buffers behind an item made by b64Item from parts; undefined for any other value. */
export function b64Parts(item: unknown): Base64Parts | undefined {
  if (!item || typeof item !== 'object') return undefined;
  return (item as { [PARTS]?: Base64Parts })[PARTS];
}
