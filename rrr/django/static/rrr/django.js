/**
 * The browser library, set up for a Django page by {% rrr_scripts %}:
 *
 *   import { connect } from "rrr/django";
 *   const rt = connect();                        // RRR_SOCKET_URL; tokens from the token view
 *   rt.room("presence-lobby", { onPresence });   // the rest is the library's API (rrr.js)
 *
 * `connect(options)` takes the library's options; `url` and `getToken` default to the page's
 * #rrr-config (written by the tag).
 */
import { connect as connectRrr } from "rrr";

/** @returns {{socketUrl: string, tokenUrl: string}} */
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

export function connect(options = {}) {
  return connectRrr({ url: config().socketUrl, getToken, ...options });
}
