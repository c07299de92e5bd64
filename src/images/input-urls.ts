/**
 * Which image URLs a caller may hand to fal as an edit's input. fal fetches
 * them, not us; but fal may be the emulator (or a proxy) inside our own
 * network, so a URL is a request made on our behalf. The rules:
 * - a host in `EDIT_IMAGE_HOSTS_ALLOWED` (hostnames, `*.suffix` wildcards, IP
 *   literals, as IMAGE_HOSTS_ALLOWED spells them) is passed as it is, over
 *   http or https: the operator trusts it (the emulator's host in tests);
 * - anything else must be https, carry no credentials, and be a public
 *   address: an IP literal is checked as it is, a hostname is resolved and
 *   refused if any address is loopback, private, link-local, CGNAT,
 *   multicast or a metadata address (the list of src/images/outbound.ts).
 * fal resolves the name again when it fetches, so a DNS server that answers
 * differently the second time is not caught here (docs/SECURITY.md).
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { invalidRequest } from '../errors.js';
import { isPrivateAddress, type Resolve } from './outbound.js';

export interface InputUrlPolicy {
  /** The URL as it goes to fal, or a 400 naming `field`. */
  check(raw: string, field: string): Promise<string>;
}

const systemResolve: Resolve = async (hostname) => (await lookup(hostname, { all: true, verbatim: true })).map((a) => a.address);

export function createInputUrlPolicy(opts: { allowed: readonly string[]; resolve?: Resolve; timeoutMs?: number }): InputUrlPolicy {
  const resolve = opts.resolve ?? systemResolve;
  const listed = (host: string): boolean =>
    opts.allowed.some((p) => (p.startsWith('*.') ? isIP(host) === 0 && host.endsWith(p.slice(1)) : p === host));
  return {
    async check(raw, field) {
      const refuse = (why: string) => invalidRequest(`${field} cannot be used: ${why}.`, field, 'invalid_image_url');
      let u: URL;
      try {
        u = new URL(raw);
      } catch {
        throw refuse('it is not an absolute URL');
      }
      if (u.protocol !== 'https:' && u.protocol !== 'http:') throw refuse(`scheme ${u.protocol} is not accepted; send an https URL`);
      if (u.username || u.password) throw refuse('URLs with credentials are not accepted');
      const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname.replace(/\.$/, '');
      if (listed(host)) return u.href;
      if (u.protocol !== 'https:') throw refuse('only https URLs are accepted');
      if (isIP(host) !== 0) {
        if (isPrivateAddress(host)) throw refuse(`address ${host} is private, loopback or link-local`);
        return u.href;
      }
      let addresses: string[];
      try {
        addresses = await Promise.race([
          resolve(host),
          new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timeout')), opts.timeoutMs ?? 5_000).unref()),
        ]);
      } catch {
        throw refuse(`host ${host} could not be resolved`);
      }
      if (addresses.length === 0) throw refuse(`host ${host} has no addresses`);
      const bad = addresses.find(isPrivateAddress);
      if (bad !== undefined) throw refuse(`host ${host} resolves to a private, loopback or link-local address (${bad})`);
      return u.href;
    },
  };
}
