// The access token the server may require, and how each request carries it.
//
// Where the token comes from, first found wins:
//   1. the page's URL fragment, `#token=<token>` (URL-decoded). The fragment never reaches the server
//      or its logs; the page removes it from the address bar at once (history.replaceState), so it is
//      not left on screen, in bookmarks or in shared links, and keeps it in sessionStorage;
//   2. sessionStorage: a reload of the same tab keeps working (the store dies with the tab);
//   3. the optional deployment file `client-config.json` next to index.html, `{"token": "..."}`;
//      a 404 (or no `token` in it) means no token.
// How it travels: `Authorization: Bearer <token>` on HTTP requests (the offer, ICE servers, DELETE),
// and the WebSocket subprotocols ["rtcvs", "bearer.<token>"] (browsers cannot set headers on a
// WebSocket); a token that is not a valid subprotocol value goes as `?token=` instead.

export const TOKEN_STORAGE_KEY = "live-video.token.v1";
export const WS_PROTOCOL = "rtcvs";
export const WS_TOKEN_PREFIX = "bearer.";
const FRAGMENT_KEY = "token";
// RFC 7230 `token` characters: what a Sec-WebSocket-Protocol value may hold (JWTs always fit).
const SUBPROTOCOL_SAFE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function decode(value) {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // a stray "%": take it as written
  }
}

/**
 * Splits a location hash ("#token=abc&x=1") into {token, rest}: the URL-decoded token (null when
 * absent or empty) and the fragment without it ("x=1", "" when nothing is left). `+` stays `+`.
 */
export function tokenFromFragment(hash) {
  const text = (hash || "").replace(/^#/, "");
  let token = null;
  const rest = [];
  for (const part of text.split("&")) {
    if (part === "") continue;
    if (part.startsWith(`${FRAGMENT_KEY}=`)) {
      const value = decode(part.slice(FRAGMENT_KEY.length + 1)).trim();
      if (value && token === null) token = value;
    } else {
      rest.push(part);
    }
  }
  return { token, rest: rest.join("&") };
}

// sessionStorage itself may throw on access (storage blocked by the browser's privacy settings).
function tabStorage() {
  try {
    return window.sessionStorage;
  } catch {
    return null;
  }
}

function readStored(storage) {
  try {
    return storage.getItem(TOKEN_STORAGE_KEY) || null;
  } catch {
    return null; // storage unavailable (privacy settings)
  }
}

function writeStored(storage, token) {
  try {
    if (token) storage.setItem(TOKEN_STORAGE_KEY, token);
    else storage.removeItem(TOKEN_STORAGE_KEY);
  } catch {
    // the token then lasts until the page is left
  }
}

/**
 * Takes the token out of the address bar, synchronously: call it first thing. Returns
 * {token, source: "fragment"|"session"} or {token: null} when neither has one.
 */
export function takeTokenFromAddress({ location = window.location, history = window.history, storage = tabStorage() } = {}) {
  const { token, rest } = tokenFromFragment(location.hash);
  if (location.hash && (token !== null || rest === "")) {
    // Drop the token (and an empty "#") from the address; other fragment parts stay.
    try {
      history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
    } catch (error) {
      console.warn(`could not remove the token from the address bar: ${error.message || error}`);
    }
  }
  if (token !== null) {
    writeStored(storage, token);
    return { token, source: "fragment" };
  }
  const stored = readStored(storage);
  return stored ? { token: stored, source: "session" } : { token: null, source: null };
}

/** The deployment file's token, or null (404, no `token`, unreadable). Never throws. */
export async function tokenFromClientConfig(url = new URL("client-config.json", import.meta.url), fetchImpl = fetch) {
  let response;
  try {
    response = await fetchImpl(url, { cache: "no-store", credentials: "same-origin" });
  } catch {
    return null; // offline or blocked: no token, the server says whether one was needed
  }
  if (response.status === 404 || !response.ok) return null;
  try {
    const config = await response.json();
    const token = config && typeof config.token === "string" ? config.token.trim() : "";
    return token || null;
  } catch {
    console.warn(`${url}: not JSON; no access token from it`);
    return null;
  }
}

/** The token for this page: the address or this tab's storage, else the deployment file. */
export async function loadAccessToken(options = {}) {
  const found = takeTokenFromAddress(options);
  if (found.token) return found;
  const token = await tokenFromClientConfig(options.configUrl, options.fetchImpl);
  return token ? { token, source: "client-config" } : { token: null, source: null };
}

/** Forgets a token the server refused, so a reload does not present it again. */
export function forgetStoredToken(storage = tabStorage()) {
  writeStored(storage, null);
}

/** HTTP headers carrying the token (none without one). */
export function authHeaders(token, headers = {}) {
  return token ? { ...headers, Authorization: `Bearer ${token}` } : { ...headers };
}

/**
 * How a WebSocket to `url` carries the token: {url, protocols}. The subprotocols when the token fits
 * in one (it stays out of URLs and access logs), else `?token=` on the URL. No token: neither.
 */
export function webSocketAuth(url, token) {
  if (!token) return { url, protocols: undefined };
  if (SUBPROTOCOL_SAFE.test(token)) return { url, protocols: [WS_PROTOCOL, `${WS_TOKEN_PREFIX}${token}`] };
  const withToken = new URL(url);
  withToken.searchParams.set("token", token);
  return { url: withToken.toString(), protocols: undefined };
}
