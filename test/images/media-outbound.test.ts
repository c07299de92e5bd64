import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { b64Item } from '../../src/images/b64-item.js';
import { createFileUrls } from '../../src/images/file-urls.js';
import { createMedia, MediaError, type ImageMedia } from '../../src/images/media.js';
import { isPrivateAddress, normalizeHostPattern } from '../../src/images/outbound.js';
import { loadConfig, ConfigError } from '../../src/config.js';

const fileUrls = createFileUrls({ secret: 'test-secret-test-secret-test-secret', ttlS: 3600 });

/**
 * The b64_json download path treats the image URL as hostile: only listed
 * hosts, https (except the fal base origin), no private addresses, no
 * redirects, bounded size and time. Nothing here reaches the network: names
 * resolve through a table, and the only real server is on loopback as the
 * fal base origin.
 */

const PNG = Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex');

const DNS: Record<string, string[]> = {
  'v3.fal.media': ['93.184.216.34'],
  'fal.media': ['93.184.216.35'],
  'evil.fal.media': ['10.0.0.7'],
  'mixed.fal.media': ['93.184.216.34', '127.0.0.1'],
  'meta.fal.media': ['169.254.169.254'],
  'v6.fal.media': ['fd00:ec2::254'],
  'mapped.fal.media': ['::ffff:192.168.0.1'],
};
const resolve = async (host: string): Promise<string[]> => {
  const a = DNS[host];
  if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
  return a;
};

/** Answers every allowed fetch with PNG bytes and remembers what was fetched. */
function stubFetch(): { fetchImpl: typeof fetch; urls: string[] } {
  const urls: string[] = [];
  const fetchImpl = (async (input: string | URL | Request) => {
    urls.push(String(input));
    return new Response(PNG, { status: 200, headers: { 'content-type': 'image/png' } });
  }) as typeof fetch;
  return { fetchImpl, urls };
}

let server: Server;
let base: string;
const sockets = new Set<import('node:net').Socket>();

before(async () => {
  server = createServer((req, res) => {
    const path = req.url ?? '/';
    if (path === '/ok.png') {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': PNG.length });
      res.end(PNG);
    } else if (path === '/redirect-metadata') {
      res.writeHead(302, { location: 'http://169.254.169.254/latest/meta-data/' });
      res.end();
    } else if (path === '/redirect-private') {
      res.writeHead(307, { location: 'http://10.0.0.1/x.png' });
      res.end();
    } else if (path === '/redirect-self') {
      res.writeHead(301, { location: `${base}/ok.png` });
      res.end();
    } else if (path === '/big-declared') {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': 4096 });
      res.end(Buffer.alloc(4096));
    } else if (path === '/big-chunked') {
      res.writeHead(200, { 'content-type': 'image/png' });
      let sent = 0;
      const more = () => {
        if (sent >= 64 * 1024 || res.destroyed) return res.end();
        sent += 512;
        res.write(Buffer.alloc(512), () => setImmediate(more));
      };
      more();
    } else if (path === '/slow-body') {
      res.writeHead(200, { 'content-type': 'image/png' });
      res.write(PNG); // then never finishes
    } else if (path === '/slow-headers') {
      // never answers
    } else if (path === '/500') {
      res.writeHead(500);
      res.end('boom');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

async function refused(media: ImageMedia, url: string, pattern: RegExp): Promise<void> {
  await assert.rejects(media.base64(url), (err: unknown) => {
    assert.ok(err instanceof MediaError, `${url}: expected a MediaError, got ${String(err)}`);
    assert.match(err.message, pattern, url);
    return true;
  });
}

describe('outbound image fetches: default allow list (fal media hosts + the FAL_BASE_URL origin)', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['loopback, another port than the fal base', 'http://127.0.0.1:1/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['the metadata IP', 'http://169.254.169.254/latest/meta-data/', /not in IMAGE_HOSTS_ALLOWED/],
    ['the metadata IP over https', 'https://169.254.169.254/latest/meta-data/', /not in IMAGE_HOSTS_ALLOWED/],
    ['10/8', 'https://10.0.0.1/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['172.16/12', 'https://172.16.5.4/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['192.168/16', 'https://192.168.1.1/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['0.0.0.0', 'https://0.0.0.0/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['decimal loopback', 'https://2130706433/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['IPv6 loopback', 'https://[::1]/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['IPv6 link-local', 'https://[fe80::1]/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['IPv6 unique local', 'https://[fc00::1]/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['IPv4-mapped loopback', 'https://[::ffff:127.0.0.1]/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['another host', 'https://example.com/x.png', /host example\.com is not in IMAGE_HOSTS_ALLOWED/],
    ['a look-alike suffix', 'https://fal.media.evil.example/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['a look-alike without the dot', 'https://evilfal.media/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['localhost', 'https://localhost/x.png', /not in IMAGE_HOSTS_ALLOWED/],
    ['http on a listed host', 'http://v3.fal.media/files/x.png', /must be fetched over https/],
    ['a listed name resolving to 10/8', 'https://evil.fal.media/x.png', /resolves to a private.*10\.0\.0\.7/],
    ['a listed name with one private address among public ones', 'https://mixed.fal.media/x.png', /127\.0\.0\.1/],
    ['a listed name resolving to the metadata IP', 'https://meta.fal.media/x.png', /169\.254\.169\.254/],
    ['a listed name resolving to an IPv6 unique-local address', 'https://v6.fal.media/x.png', /fd00:ec2::254/],
    ['a listed name resolving to an IPv4-mapped private address', 'https://mapped.fal.media/x.png', /::ffff:192\.168\.0\.1/],
    ['a listed name that does not resolve', 'https://nx.fal.media/x.png', /could not be resolved/],
    ['credentials in the URL', 'https://user:pw@v3.fal.media/x.png', /credentials/],
    ['ftp', 'ftp://v3.fal.media/x.png', /scheme ftp: is not fetched/],
    ['file', 'file:///etc/passwd', /scheme file: is not fetched/],
    ['not a URL', 'not a url', /does not parse/],
    ['https to the fal base host (another origin)', 'https://127.0.0.1/x.png', /not in IMAGE_HOSTS_ALLOWED/],
  ];
  for (const [what, url, pattern] of cases) {
    it(`refuses ${what}: ${url}`, async () => {
      const stub = stubFetch();
      const media = createMedia({ fileUrls, falBaseUrl: base, fetchImpl: stub.fetchImpl, resolve });
      await refused(media, url, pattern);
      assert.deepEqual(stub.urls, [], 'nothing was fetched');
    });
  }

  it('fetches a public fal media host over https', async () => {
    const stub = stubFetch();
    const media = createMedia({ fileUrls, falBaseUrl: base, fetchImpl: stub.fetchImpl, resolve });
    assert.equal(b64Item(await media.base64('https://v3.fal.media/files/x.png')).b64_json, PNG.toString('base64'));
    assert.equal(b64Item(await media.base64('https://fal.media/files/y.png')).b64_json, PNG.toString('base64'));
    assert.deepEqual(stub.urls, ['https://v3.fal.media/files/x.png', 'https://fal.media/files/y.png']);
  });

  it('fetches from the fal base origin over http, though it is loopback', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, resolve });
    assert.equal(b64Item(await media.base64(`${base}/ok.png`)).b64_json, PNG.toString('base64'));
  });

  it('refuses a data URI that is not base64', async () => {
    await refused(createMedia({ fileUrls, falBaseUrl: base }), 'data:image/png,abc', /not base64/);
  });

  it('resolves names with the system resolver when none is injected (localhost is loopback)', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, allowedHosts: ['localhost'] });
    await refused(media, 'https://localhost/x.png', /resolves to a private, loopback or link-local address/);
  });
});

describe('outbound image fetches: an explicit IMAGE_HOSTS_ALLOWED', () => {
  const allowed = ['fal.media', '*.fal.media', '93.184.216.34', '10.1.2.3', 'cdn.example.com'];

  it('allows a listed public IP literal, and a listed name', async () => {
    const stub = stubFetch();
    const media = createMedia({ fileUrls, falBaseUrl: base, allowedHosts: allowed, fetchImpl: stub.fetchImpl, resolve: async () => ['93.184.216.40'] });
    b64Item(await media.base64('https://93.184.216.34/x.png')).b64_json;
    b64Item(await media.base64('https://cdn.example.com/x.png')).b64_json;
    assert.equal(stub.urls.length, 2);
  });

  it('refuses a listed private IP literal, an unlisted public IP, and the unlisted fal base origin', async () => {
    const stub = stubFetch();
    const media = createMedia({ fileUrls, falBaseUrl: base, allowedHosts: allowed, fetchImpl: stub.fetchImpl, resolve });
    await refused(media, 'https://10.1.2.3/x.png', /private/);
    await refused(media, 'https://93.184.216.99/x.png', /not in IMAGE_HOSTS_ALLOWED/);
    await refused(media, `${base}/ok.png`, /host 127\.0\.0\.1 is not in IMAGE_HOSTS_ALLOWED/);
    assert.deepEqual(stub.urls, []);
  });

  it('keeps the fal base exemption when its host is listed', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, allowedHosts: ['127.0.0.1'], resolve });
    assert.equal(b64Item(await media.base64(`${base}/ok.png`)).b64_json, PNG.toString('base64'));
    // The same literal on another origin is not the fal base: https and the private check apply.
    await refused(media, 'https://127.0.0.1/x.png', /private/);
  });

  it('normalizes entries and refuses ones that are not hosts', () => {
    assert.equal(normalizeHostPattern('FAL.Media.'), 'fal.media');
    assert.equal(normalizeHostPattern('*.Fal.Media'), '*.fal.media');
    assert.equal(normalizeHostPattern('[::1]'), '::1');
    assert.equal(normalizeHostPattern('::FFFF:127.0.0.1'), '::ffff:7f00:1');
    for (const bad of ['https://fal.media', 'fal.media:443', 'fal.media/x', '*.1.2.3', '*', '*.', 'a b', 'user@host']) {
      assert.equal(normalizeHostPattern(bad), null, bad);
    }
    const c = loadConfig({ IMAGE_HOSTS_ALLOWED: ' fal.media , *.FAL.media,10.0.0.1 ', FAL_KEY: 'k' });
    assert.deepEqual(c.imageHostsAllowed, ['fal.media', '*.fal.media', '10.0.0.1']);
    assert.equal(loadConfig({ FAL_KEY: 'k' }).imageHostsAllowed, undefined);
    assert.throws(() => loadConfig({ IMAGE_HOSTS_ALLOWED: 'fal.media,https://x.example', FAL_KEY: 'k' }), (e: unknown) => e instanceof ConfigError && /IMAGE_HOSTS_ALLOWED entries/.test(e.message));
  });
});

describe('outbound image fetches: redirects, size and time', () => {
  it('follows no redirect: to the metadata IP, to a private address, not even to itself', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, resolve });
    await refused(media, `${base}/redirect-metadata`, /redirect \(HTTP 302\); redirects are not followed/);
    await refused(media, `${base}/redirect-private`, /HTTP 307/);
    await refused(media, `${base}/redirect-self`, /HTTP 301/);
  });

  it('refuses a body whose declared length is over the cap, and one that streams past it', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, maxBytes: 1024, resolve });
    await refused(media, `${base}/big-declared`, /larger than 1024 bytes/);
    await refused(media, `${base}/big-chunked`, /larger than 1024 bytes/);
    // Under the cap is fine.
    assert.equal(b64Item(await media.base64(`${base}/ok.png`)).b64_json, PNG.toString('base64'));
  });

  it('gives up on a body (or headers) slower than the time cap', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, timeoutMs: 300, resolve });
    const started = Date.now();
    await refused(media, `${base}/slow-body`, /did not finish within 300 ms/);
    await refused(media, `${base}/slow-headers`, /did not finish within 300 ms/);
    assert.ok(Date.now() - started < 3000, 'both ended near the cap');
  });

  it('turns an HTTP error and a connection failure into MediaError (never a 500)', async () => {
    const media = createMedia({ fileUrls, falBaseUrl: base, resolve });
    await refused(media, `${base}/500`, /HTTP 500/);
    const closed = createMedia({ fileUrls, falBaseUrl: 'http://127.0.0.1:1', resolve });
    await refused(closed, 'http://127.0.0.1:1/x.png', /image download failed/);
  });
});

describe('private address table', () => {
  it('classifies', () => {
    for (const a of ['127.0.0.1', '127.255.0.9', '10.1.1.1', '172.31.255.255', '192.168.0.1', '169.254.169.254', '0.0.0.0', '100.64.0.1', '::1', '::', 'fe80::1', 'fc00::1', 'fd12::1', '::ffff:10.0.0.1', 'not-an-ip']) {
      assert.equal(isPrivateAddress(a), true, a);
    }
    for (const a of ['93.184.216.34', '8.8.8.8', '172.32.0.1', '2606:4700::1111', '::ffff:8.8.8.8']) {
      assert.equal(isPrivateAddress(a), false, a);
    }
  });
});
