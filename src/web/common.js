// Shared by the playground and the usage page.

// sessionStorage, never localStorage or a cookie: the key lives as long as
// the tab and never leaves the browser except in the Authorization header.
const KEY_ITEM = 'fal-gateway.api-key';

export function storedKey() {
  return sessionStorage.getItem(KEY_ITEM) ?? '';
}

/**
 * Wires the key form: submitting stores the key and calls `onKey`; "Forget
 * key" removes it. A key already in this tab's session is used at once, so
 * moving between pages does not ask for it again.
 */
export function bindKeyForm(onKey) {
  const form = document.getElementById('key-form');
  const input = document.getElementById('api-key');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    onKey();
  });
  document.getElementById('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_ITEM);
    input.value = '';
    input.focus();
  });
  if (storedKey()) {
    input.value = storedKey();
    onKey();
  }
}

/** Calls the API with the stored key; answers the parsed body whatever the status. */
export async function api(path, init = {}) {
  // A string body is JSON; a FormData body gets its multipart content type (with the boundary) from fetch itself.
  const headers = { authorization: `Bearer ${storedKey()}`, ...(typeof init.body === 'string' ? { 'content-type': 'application/json' } : {}) };
  let res;
  try {
    res = await fetch(path, { ...init, headers, cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    return { ok: false, status: 0, headers: new Headers(), body: null, message: `The service could not be reached (${err.message}).` };
  }
  const body = await res.json().catch(() => null);
  const message = res.ok ? '' : (body?.error?.message ?? `HTTP ${res.status}`);
  return { ok: res.ok, status: res.status, headers: res.headers, body, message };
}

/** Shows `message` in the page's alert region, or hides it when empty. */
export function showError(message) {
  const el = document.getElementById('error');
  el.textContent = message;
  el.hidden = !message;
}

export function setStatus(text) {
  document.getElementById('status').textContent = text;
}

/** Creates an element with attributes and children (strings become text, never HTML). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) el.setAttribute(name, value === true ? '' : String(value));
  }
  el.append(...children.filter((c) => c !== undefined && c !== null));
  return el;
}
