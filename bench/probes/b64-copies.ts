/**
 * Where a `b64_json` answer's memory goes: the copies of the image the
 * service makes between fal's result body and the socket. One real result is
 * fetched from the emulator (sync_mode, so the image is a data URI inside
 * the JSON, as fal sends it) and each step of the service's path is replayed
 * here on it, so every size is exact, not estimated. The steps and their
 * lifetimes follow the code the service runs:
 *
 *   undici (src/service.ts's fetch) reads the body in chunks, then
 *   `Response.json()` = Buffer.concat → UTF-8 decode → JSON.parse
 *   (undici/lib/web/fetch/util.js readAllBytes, infra parseJSONFromBytes);
 *   src/images/media.ts `toBase64` slices the data URI (V8 shares the
 *   parent's characters: no copy); Express `res.json` = JSON.stringify, then
 *   `res.send` turns the string into a Buffer (to set Content-Length and the
 *   ETag) and writes it to the socket, where it stays until the client has
 *   read it.
 */

export interface CopyReport {
  b64Bytes: number;
  steps: Array<{ step: string; bytes: number; liveUntil: string }>;
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
  const raw = Buffer.from(await (await fetch(base, { headers: KEY })).arrayBuffer());

  // The service's steps, on the same bytes.
  const text = raw.toString('utf8');
  const output = JSON.parse(text) as { images: Array<{ url: string; width: number; height: number; content_type: string }>; seed: number };
  const dataUri = output.images[0]!.url;
  const b64 = dataUri.slice(dataUri.indexOf(',') + 1);
  const answer = JSON.stringify({
    created: Math.floor(Date.now() / 1000),
    data: [{ b64_json: b64 }],
    output_format: 'png',
    size,
    meta: { usage: { credits_used: 20000, tokens_used: 20000, cost_usd: '0.020000' }, seed: output.seed, images: [{ width, height, content_type: 'image/png', has_nsfw_concept: false }] },
  });
  const wire = Buffer.from(answer, 'utf8');

  // Strings of ASCII characters take one byte per character in V8.
  return {
    b64Bytes: b64.length,
    steps: [
      { step: 'undici: body chunks from the socket', bytes: raw.length, liveUntil: 'the body is read (then garbage)' },
      { step: 'undici: Buffer.concat of the chunks', bytes: raw.length, liveUntil: 'decoded (garbage)' },
      { step: 'undici: UTF-8 decode to one string', bytes: text.length, liveUntil: 'parsed (garbage)' },
      { step: "JSON.parse: fal's output, the data URI string", bytes: dataUri.length, liveUntil: 'the request ends (the b64 slice shares it)' },
      { step: 'Express res.json: JSON.stringify of the answer', bytes: answer.length, liveUntil: 'encoded (garbage)' },
      { step: 'Express res.send: Buffer.from(string) written to the socket', bytes: wire.length, liveUntil: 'the client has read it all' },
    ],
  };
}
