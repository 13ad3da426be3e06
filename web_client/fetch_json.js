// fetch() with a time bound, and the answer's JSON body: the WebRTC clients' requests (ICE servers,
// the offer, the session probe) all want both, and an abort from the client closing.

export class RequestTimeout extends Error {}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/**
 * fetch() and the answer's JSON body (null when not JSON), within `timeoutMs`: {response, body}.
 * Throws RequestTimeout past it, AbortError when `signal` aborts, TypeError when the request fails.
 * (A plain AbortController rather than AbortSignal.any/timeout: iOS Safari before 17.4 lacks them.)
 */
export async function fetchJson(url, options, timeoutMs, signal = null) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onAbort = () => controller.abort();
  if (signal) signal.addEventListener("abort", onAbort, { once: true });
  try {
    const response = await fetch(url, { ...options, signal: controller.signal });
    const body = await readJson(response);
    if (timedOut) throw new RequestTimeout(`no answer within ${Math.round(timeoutMs / 1000)} s`);
    return { response, body };
  } catch (error) {
    if (timedOut) throw new RequestTimeout(`no answer within ${Math.round(timeoutMs / 1000)} s`);
    throw error;
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", onAbort);
  }
}
