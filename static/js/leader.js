/**
 * Fallback when there is no SharedWorker (Safari before 16, Chrome on Android):
 * the tabs elect a leader with a Web Lock and the leader owns the socket.
 *
 * Every tab asks for LEADER_LOCK; the browser grants it to one tab and queues
 * the rest, so when the leader closes or crashes the next tab in the queue is
 * granted the lock without any timeout of ours. A new leader announces itself
 * on the BroadcastChannel and every follower attaches to it again with all its
 * subscriptions; the dead leader's socket took its subscriptions with it.
 *
 * Channel messages:
 *   {to: "leader", tab, msg}  follower → leader (a tab-link message)
 *   {to: tabId, msg}          leader → one follower
 *   {type: "leader"}          a new leader took over
 */
import { CHANNEL_NAME, LEADER_LOCK } from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

/**
 * @param {import("./rrr.js").TabSide} tab
 * @returns {import("./rrr.js").Link}
 */
export function leaderLink(tab) {
  const channel = new BroadcastChannel(CHANNEL_NAME);
  /** Set once this tab is the leader. @type {SocketOwner|null} */
  let owner = null;
  const self = { send: (msg) => queueMicrotask(() => tab.deliver(msg)) };
  const follower = (tabId) => ({ send: (msg) => channel.postMessage({ to: tabId, msg }) });

  channel.onmessage = ({ data }) => {
    if (data?.to === "leader") owner?.receive(data.tab, data.msg, follower(data.tab));
    else if (data?.to === tab.tabId) tab.deliver(data.msg);
    else if (data?.type === "leader") tab.reannounce();
  };

  navigator.locks
    .request(LEADER_LOCK, () => {
      owner = new SocketOwner({ url: tab.url, transport: "leader" });
      channel.postMessage({ type: "leader" });
      tab.reannounce();
      // Hold the lock for the rest of this tab's life.
      return new Promise(() => {});
    })
    .catch(() => tab.fail());

  return {
    transport: "leader",
    isLocal: () => owner !== null,
    send(envelope) {
      if (owner) owner.receive(envelope.tab, envelope.msg, self);
      else channel.postMessage({ to: "leader", ...envelope });
    },
  };
}
