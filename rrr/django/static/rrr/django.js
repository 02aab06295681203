/**
 * The browser library, set up for a Django page by {% rrr_scripts %}:
 *
 *   import { connect } from "rrr/django";
 *   const rt = connect();                        // RRR_SOCKET_URL; tokens from the token view
 *   rt.room("presence-lobby", { onPresence });   // the rest is the library's API (rrr.js)
 *
 * `connect(options)` takes the library's options; `url` and `getToken` default to the page's
 * #rrr-config (written by the tag). With RRR_CONNECT_PROXY the config names no token view and
 * there is no getToken: rrr asks the site who the session cookie is (the connect proxy), and the
 * socket is told `authenticated` without asking.
 */
import { connect as connectRrr } from "rrr";

/** @returns {{socketUrl: string, tokenUrl?: string}} */
export function config() {
  const element = document.getElementById("rrr-config");
  if (!element) throw new Error("rrr/django: no #rrr-config on this page; put {% rrr_scripts %} in its <head>");
  return JSON.parse(element.textContent);
}

/** A fresh token for the signed-in user; rejects (the library then reports no_token) when the view refuses. */
export async function getToken() {
  const response = await fetch(config().tokenUrl, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`the token view answered ${response.status}`);
  return response.text();
}

/** The socket's URL: RRR_SOCKET_URL as given, or a path (rrr under this page's origin) made absolute, ws(s)://. */
export function socketUrl(value = config().socketUrl) {
  const url = new URL(value, location.href);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  return url.href;
}

export function connect(options = {}) {
  const { tokenUrl } = config();
  return connectRrr({ url: socketUrl(), ...(tokenUrl ? { getToken } : {}), ...options });
}
