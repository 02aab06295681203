/**
 * Fallback when there is no SharedWorker (Safari before 16, Chrome on Android):
 * the tabs elect a leader with a Web Lock and the leader owns the connection.
 *
 * Every tab asks for the leader lock; the browser grants it to one tab and
 * queues the rest, so when the leader closes or crashes the next tab in the
 * queue is granted the lock without any timeout of ours. A new leader announces
 * itself on the BroadcastChannel and every follower attaches to it again with
 * all its subscriptions; the dead leader's socket took its subscriptions with it.
 * The lock and channel names carry the link version, the socket URL and the
 * transports allowed (protocol.js), so two deploys or two endpoints on one origin
 * never share a leader.
 *
 * Channel messages:
 *   {to: "leader", tab, msg}  follower → leader (a tab-link message)
 *   {to: [tabId, …], msg}     leader → the followers named (one post per message, however many)
 *   {type: "leader"}          a new leader took over
 *
 * A leader that loses its lock (stolen, or released by the browser) stops at
 * once, socket and channel, and its tab joins the election again as a follower.
 */
import { channelName, leaderLockName } from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

/**
 * @param {import("./rrr.js").TabSide} tab
 * @returns {import("./rrr.js").Link}
 */
export function leaderLink(tab) {
  const channel = new BroadcastChannel(channelName(tab.url, tab.transports));
  /** Set once this tab is the leader. @type {SocketOwner|null} */
  let owner = null;
  let closed = false;
  /** Ends the lock callback, which releases the leader lock. */
  let release = () => {};
  const abort = new AbortController();
  const self = { send: (msg) => queueMicrotask(() => closed || tab.deliver(msg)) };
  const group = { sendMany: (tabIds, msg) => channel.postMessage({ to: tabIds, msg }) };
  const follower = (tabId) => ({ send: (msg) => channel.postMessage({ to: [tabId], msg }), group });

  channel.onmessage = ({ data }) => {
    if (data?.to === "leader") owner?.receive(data.tab, data.msg, follower(data.tab));
    else if (Array.isArray(data?.to)) data.to.includes(tab.tabId) && tab.deliver(data.msg);
    else if (data?.type === "leader") tab.reannounce();
  };

  function close() {
    if (closed) return;
    closed = true;
    abort.abort();
    release();
    owner?.close();
    channel.close();
  }

  navigator.locks
    .request(leaderLockName(tab.url, tab.transports), { signal: abort.signal }, () => {
      if (closed) return undefined;
      owner = new SocketOwner({ url: tab.url, sharing: "leader", transports: tab.transports });
      channel.postMessage({ type: "leader" });
      tab.reannounce();
      // Hold the lock until close().
      return new Promise((resolve) => (release = resolve));
    })
    .catch(() => {
      if (closed) return;
      const wasLeader = owner !== null;
      close();
      // Lost the lock we held: elect again. Never got it (no permission…): next transport.
      if (wasLeader) tab.relink();
      else tab.fail();
    });

  return {
    sharing: "leader",
    isLocal: () => owner !== null && !closed,
    send(envelope) {
      if (closed) return;
      if (owner) owner.receive(envelope.tab, envelope.msg, self);
      else channel.postMessage({ to: "leader", ...envelope });
    },
    close,
  };
}
