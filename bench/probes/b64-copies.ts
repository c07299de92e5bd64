/**
 * Where a `b64_json` answer's memory goes: what the service allocates
 * between fal's result body and the socket. One real result is fetched from
 * the emulator (sync_mode, so the image is a data URI inside the JSON, as
 * fal sends it) the way the service fetches it (undici's fetch on an undici
 * Agent, read chunk by chunk as src/fal/transport.ts does), and then put
 * through the service's own code: src/fal/inline-images.ts cuts the image
 * out as views of the body's chunks, the fal client's `response.json()` is
 * replayed on what is left, src/images/b64-item.ts wraps the image, and
 * src/http/images-json.ts lays out the answer. Sizes are exact (the bytes
 * each step allocates); the process's VmHWM is also reset before reading
 * and read after each stage, so the table's claims are checked against the
 * kernel's count, not only derived from the code.
 */
import { Agent, fetch as undiciFetch } from 'undici';
import { extractInlineImages } from '../../src/fal/inline-images.js';
import { b64Item } from '../../src/images/b64-item.js';
import { answerPieces } from '../../src/http/images-json.js';
import { readMem, resetPeak } from '../lib/procfs.js';

export interface CopyReport {
  b64Bytes: number;
  bodyBytes: number;
  steps: Array<{ step: string; bytes: number; liveUntil: string }>;
  /** VmHWM growth of this process, bytes: while reading the body, and on top of that for the rest. */
  peak: { read: number; rest: number };
}

const KEY = { authorization: 'Key bench' };

export async function measureCopies(emulatorUrl: string, size: string): Promise<CopyReport> {
  const [width, height] = size.split('x').map(Number);
  const submit = await fetch(`${emulatorUrl}/queue.fal.run/fal-ai/z-image/turbo`, {
    method: 'POST',
    headers: { ...KEY, 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'a lighthouse on a cliff at dusk, oil painting', image_size: { width, height }, sync_mode: true, output_format: 'png' }),
  });
  const { request_id: id } = (await submit.json()) as { request_id: string };
  const base = `${emulatorUrl}/queue.fal.run/fal-ai/z-image/requests/${id}`;
  for (;;) {
    const st = (await (await fetch(`${base}/status`, { headers: KEY })).json()) as { status: string };
    if (st.status === 'COMPLETED') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const agent = new Agent({ connections: 1 });
  try {
    // Once small, so the connection and the code paths exist before measuring.
    await (await undiciFetch(`${base}/status`, { headers: KEY, dispatcher: agent })).arrayBuffer();
    await new Promise((r) => setTimeout(r, 500));

    resetPeak(process.pid);
    const rss0 = readMem(process.pid).rss;
    const res = await undiciFetch(base, { headers: KEY, dispatcher: agent });
    const chunks: Buffer[] = [];
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c.buffer, c.byteOffset, c.byteLength));
    const afterRead = readMem(process.pid).hwm;

    const cut = extractInlineImages(chunks);
    if (!cut || cut.images.size !== 1) throw new Error('the emulator result had no data URI to cut out');
    const parsed = JSON.parse(cut.json.toString('utf8')) as { images: Array<{ url: string }>; seed: number };
    const image = cut.images.get(parsed.images[0]!.url)!;
    const body = {
      created: Math.floor(Date.now() / 1000),
      data: [b64Item(image)],
      output_format: 'png',
      size,
      meta: { usage: { credits_used: 20000, tokens_used: 20000, cost_usd: '0.020000' }, seed: parsed.seed, images: [{ width, height, content_type: 'image/png', has_nsfw_concept: false }] },
    };
    const pieces = answerPieces(body, JSON.stringify);
    if (!pieces) throw new Error('the answer did not split around the image');
    const imageParts = new Set<Buffer>(image.parts);
    const textBytes = pieces.filter((p) => !imageParts.has(p)).reduce((n, p) => n + p.length, 0);
    const afterAll = readMem(process.pid).hwm;

    const bodyBytes = chunks.reduce((n, c) => n + c.length, 0);
    return {
      b64Bytes: image.length,
      bodyBytes,
      peak: { read: afterRead - rss0, rest: afterAll - afterRead },
      steps: [
        { step: 'undici: socket reads (fetch copies each one, below)', bytes: bodyBytes, liveUntil: 'copied (then garbage until a collection)' },
        { step: "undici fetch: its copy of each chunk, which the service keeps as fal's result body", bytes: bodyBytes, liveUntil: 'the answer is written (the image is views of it)' },
        { step: 'inline-images: the result JSON with the data URI cut out (what the fal client parses)', bytes: cut.json.length, liveUntil: 'parsed' },
        { step: "fal client: response.json() of that (bytes, UTF-8 string; the parsed object is smaller)", bytes: 2 * cut.json.length, liveUntil: 'the request ends' },
        { step: 'images-json: the answer around the image (JSON text, then its Buffers)', bytes: 2 * textBytes, liveUntil: 'written' },
        { step: 'images-json: the image written to the socket (views of the result body)', bytes: 0, liveUntil: 'the client has read it all' },
      ],
    };
  } finally {
    await agent.close();
  }
}
