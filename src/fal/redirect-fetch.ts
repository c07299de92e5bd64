/**
 * The one hook that sees every HTTP call `@fal-ai/client` makes (queue,
 * fal.run, storage, SSE status streams): a custom `fetch`. We use it to send
 * fal's traffic to a fal-protocol server of our choosing (the bundled
 * emulator, a proxy) using the emulator's addressing contract:
 * `https://<host>/<path>?<query>` becomes `<baseUrl>/<host>/<path>?<query>`.
 *
 * This file does not import `@fal-ai/client`; it is shared by the gateway and
 * by tests that drive the client directly against the emulator.
 */

export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/** Maps a URL meant for fal onto `baseUrl` using host-prefixed paths. */
export function redirectUrl(target: string, baseUrl: string): string {
  const u = new URL(target);
  const base = baseUrl.replace(/\/+$/, '');
  return `${base}/${u.host}${u.pathname}${u.search}`;
}

export interface RedirectFetchOptions {
  /** When unset, requests go to fal's real hosts untouched. */
  baseUrl?: string;
  fetchImpl?: FetchLike;
}

export function createRedirectFetch(opts: RedirectFetchOptions): FetchLike {
  const inner: FetchLike = opts.fetchImpl ?? ((input, init) => fetch(input, init));
  const baseUrl = opts.baseUrl;
  if (!baseUrl) return inner;
  return (input, init) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    return inner(redirectUrl(url, baseUrl), init);
  };
}
