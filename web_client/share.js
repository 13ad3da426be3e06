// The owner page's Share control: once session_info has brought a watch_token, a Share button opens
// the watch link, <origin>/watch?session=<id>&token=<watch_token> (watch.html), in a read-only field
// with a Copy button. A new session_info (a resumed session: a new token, the old link stops working)
// replaces the link; a session that ended, or a new one without its session_info yet, hides it.
// The link is a credential to watch (not steer): it lives in memory and on screen only.

/** The watch link of a session, on this page's origin. */
export function watchLink(sessionId, watchToken, origin = location.origin) {
  const query = new URLSearchParams({ session: sessionId, token: watchToken });
  return `${origin}/watch?${query}`;
}

const COPIED_MS = 2000;

export class ShareControl {
  /** `announce(text)`: tells screen readers (ui.js announce). */
  constructor(doc, { announce = () => {} } = {}) {
    const $ = (id) => doc.getElementById(id);
    this.doc = doc;
    this.announce = announce;
    this.root = $("share");
    this.toggle = $("share-toggle");
    this.panel = $("share-panel");
    this.input = $("share-link");
    this.copyButton = $("share-copy");
    this.hint = $("share-hint");
    this.sessionId = null;
    this.copiedTimer = null;
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    this.copyButton.addEventListener("click", () => this.copy());
    this.input.addEventListener("focus", () => this.input.select());
  }

  /** session_info: shows (or updates) the link; a session_info without a watch token hides it. */
  update(sessionId, watchToken) {
    if (typeof sessionId !== "string" || typeof watchToken !== "string" || !watchToken) {
      this.clear();
      return;
    }
    const renewed = this.sessionId === sessionId && this.input.value !== "";
    this.sessionId = sessionId;
    this.input.value = watchLink(sessionId, watchToken);
    this.root.hidden = false;
    this.root.dataset.sessionId = sessionId;
    this.hint.textContent = renewed
      ? "A new link: the session reconnected, and the earlier link stopped working."
      : "Anyone with this link can watch this session (not steer it) while it lasts.";
    if (renewed && !this.panel.hidden) this.announce("The watch link changed.");
  }

  /** Keeps the link only while `sessionId` is the live session it was made for (null: none). */
  keepFor(sessionId) {
    if (this.sessionId !== null && this.sessionId !== sessionId) this.clear();
  }

  clear() {
    this.sessionId = null;
    this.input.value = "";
    this.root.hidden = true;
    delete this.root.dataset.sessionId;
    this.setOpen(false);
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    if (open) this.input.focus();
  }

  async copy() {
    const text = this.input.value;
    if (!text) return;
    let done = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        done = true;
      }
    } catch {
      done = false; // permission refused: select it for the viewer to copy
    }
    if (!done) {
      this.input.focus();
      this.input.select();
      try {
        done = this.doc.execCommand("copy");
      } catch {
        done = false;
      }
    }
    this.copyButton.textContent = done ? "Copied" : "Copy";
    this.announce(done ? "Watch link copied." : "Select the link and copy it.");
    clearTimeout(this.copiedTimer);
    this.copiedTimer = setTimeout(() => {
      this.copyButton.textContent = "Copy";
    }, COPIED_MS);
  }
}
