/**
 * Which URLs this service may fetch image bytes from (`b64_json` when fal
 * answers with a URL instead of a data URI). The URL comes from upstream, so
 * it is untrusted: without a policy, a compromised or spoofed upstream could
 * make us read cloud metadata or internal services and hand the bytes back to
 * the caller as "an image".
 *
 * The rules (docs/SECURITY.md, "Image downloads"):
 * - the host must be on the allow list (`IMAGE_HOSTS_ALLOWED`: hostnames,
 *   `*.suffix` wildcards, IP literals), default fal's media hosts plus the
 *   `FAL_BASE_URL` origin;
 * - https only, and no loopback/private/link-local/metadata address, for
 *   every host except the `FAL_BASE_URL` origin (the emulator, or a proxy the
 *   operator chose, is typically plain http on a private address);
 * - an IP literal is allowed only when that literal itself is listed;
 *   wildcards never match IPs;
 * - a hostname is resolved first and refused if any of its addresses is
 *   private. The fetch then resolves again on its own, so a DNS server that
 *   answers differently the second time (rebinding) is not caught here; a
 *   listed host is one the operator trusts, which is what bounds that risk.
 */
import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

/** fal's media CDN hosts (v3.fal.media, v3b.fal.media, fal.media ...). */
export const DEFAULT_IMAGE_HOSTS: readonly string[] = ['fal.media', '*.fal.media'];

const HOSTNAME = /^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * One `IMAGE_HOSTS_ALLOWED` entry in canonical form (lower case, IPv6
 * without brackets and compressed as the URL parser writes it), or null when
 * it is not a hostname, a `*.suffix` wildcard or an IP literal.
 */
export function normalizeHostPattern(entry: string): string | null {
  const e = entry.trim().toLowerCase().replace(/\.$/, '');
  // A numeric last label is how URLs spell IPv4 (1.2.3 is 1.2.0.3): never a DNS name.
  const dnsName = (h: string) => HOSTNAME.test(h) && !/(?:^|\.)\d+$/.test(h);
  if (e.startsWith('*.')) return dnsName(e.slice(2)) ? e : null;
  const bare = e.startsWith('[') && e.endsWith(']') ? e.slice(1, -1) : e;
  if (isIP(bare) === 4) return bare;
  if (isIP(bare) === 6) return canonicalHost(`[${bare}]`);
  return dnsName(e) ? e : null;
}

/** The hostname as `URL` writes it, without IPv6 brackets or a trailing dot. */
function canonicalHost(hostname: string): string | null {
  try {
    const h = new URL(`http://${hostname}/`).hostname;
    return (h.startsWith('[') ? h.slice(1, -1) : h).replace(/\.$/, '');
  } catch {
    return null;
  }
}

const PRIVATE = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8], // "this network", 0.0.0.0 connects to the local host
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT: internal to the provider
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, incl. the 169.254.169.254 metadata service
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved and broadcast
] as const) {
  PRIVATE.addSubnet(net, bits, 'ipv4');
}
for (const [net, bits] of [
  ['::', 128],
  ['::1', 128],
  ['64:ff9b::', 96], // NAT64 can reach any IPv4 address, private ones included
  ['fc00::', 7], // unique local, incl. AWS's fd00:ec2::254 metadata address
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  PRIVATE.addSubnet(net, bits, 'ipv6');
}

/** True for loopback, private, link-local, metadata and other non-public addresses (IPv4-mapped IPv6 included). */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  return PRIVATE.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export type Resolve = (hostname: string) => Promise<string[]>;

const systemResolve: Resolve = async (hostname) => (await lookup(hostname, { all: true, verbatim: true })).map((a) => a.address);

export interface ImageHostPolicyOptions {
  /** `IMAGE_HOSTS_ALLOWED`, already normalized; undefined = the default list plus the fal base origin. */
  allowed?: readonly string[] | undefined;
  /** `FAL_BASE_URL` (or the embedded emulator's URL). */
  falBaseUrl?: string | undefined;
  /** Injected by tests; default the system resolver. */
  resolve?: Resolve;
}

export interface ImageHostPolicy {
  /** Resolves when `raw` may be fetched; otherwise rejects with the reason (never fetches). */
  check(raw: string, signal?: AbortSignal): Promise<URL>;
}

export class RefusedUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RefusedUrlError';
  }
}

export function createImageHostPolicy(opts: ImageHostPolicyOptions): ImageHostPolicy {
  const falOrigin = opts.falBaseUrl ? new URL(opts.falBaseUrl).origin : undefined;
  const patterns = opts.allowed ?? DEFAULT_IMAGE_HOSTS;
  const resolve = opts.resolve ?? systemResolve;

  const listed = (host: string): boolean =>
    patterns.some((p) => {
      if (!p.startsWith('*.')) return p === host;
      // Wildcards name DNS subdomains; an IP literal is never a subdomain.
      return isIP(host) === 0 && host.endsWith(p.slice(1));
    });

  return {
    async check(raw, signal) {
      let u: URL;
      try {
        u = new URL(raw);
      } catch {
        throw new RefusedUrlError('the image URL does not parse');
      }
      if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new RefusedUrlError(`scheme ${u.protocol} is not fetched`);
      if (u.username || u.password) throw new RefusedUrlError('URLs with credentials are not fetched');
      const host = canonicalHost(u.hostname);
      if (!host) throw new RefusedUrlError('the image URL has no usable host');
      const isFalBase = falOrigin !== undefined && u.origin === falOrigin;
      if (!listed(host) && !(isFalBase && opts.allowed === undefined)) {
        throw new RefusedUrlError(`host ${host} is not in IMAGE_HOSTS_ALLOWED`);
      }
      // The fal-protocol server the operator configured is trusted as it is
      // (the emulator runs on loopback over http); nothing else is.
      if (isFalBase) return u;
      if (u.protocol !== 'https:') throw new RefusedUrlError(`host ${host} must be fetched over https`);
      if (isIP(host) !== 0) {
        if (isPrivateAddress(host)) throw new RefusedUrlError(`address ${host} is private, loopback or link-local`);
        return u;
      }
      let addresses: string[];
      try {
        addresses = await withSignal(resolve(host), signal);
      } catch (err) {
        if (err instanceof RefusedUrlError) throw err;
        throw new RefusedUrlError(`host ${host} could not be resolved`);
      }
      if (addresses.length === 0) throw new RefusedUrlError(`host ${host} has no addresses`);
      const bad = addresses.find(isPrivateAddress);
      if (bad !== undefined) throw new RefusedUrlError(`host ${host} resolves to a private, loopback or link-local address (${bad})`);
      return u;
    },
  };
}

function withSignal<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new RefusedUrlError('timed out resolving the image host'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new RefusedUrlError('timed out resolving the image host'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
