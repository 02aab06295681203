// The live parts of every signed-in page: who is online (presence-site), how many browsers view
// this page (page-…, the talk's counter), and this user's own notifications (private-user-<pk>).
import { connect } from "rrr/django";

const $ = (id) => document.getElementById(id);
const { userId, pageRoom } = document.body.dataset;
const rt = connect();

function onError({ code, reason }) {
  // signed_out: an admin signed this user out (socket closed with 4001); no_token: the token
  // view refuses us (the session ended). Either way this page is no longer live.
  if (code === "signed_out" || code === "no_token") {
    const banner = $("signed-out");
    banner.hidden = false;
    banner.dataset.code = banner.dataset.code || code;
  }
  console.warn(`rrr: ${code}: ${reason}`);
}

function onState({ status, sharing, transport }) {
  const el = $("live-status");
  el.dataset.status = status;
  el.textContent = status === "open" ? `live (${sharing} over ${transport})` : status;
  // Between tries after a drop: connect now instead of waiting out the backoff.
  $("retry-now").hidden = status !== "reconnecting" && status !== "offline";
}

$("retry-now").addEventListener("click", () => rt.retryNow());

if (pageRoom) {
  rt.room(pageRoom, {
    onCount: ({ connections }) => {
      $("viewers").textContent = String(connections);
      $("viewers-label").textContent = connections === 1 ? "browser" : "browsers";
    },
    onState,
    onError,
  });
}

// The room's events, whoever sent them: another page's whisper (rrr's library or pusher-js's client
// event), or the backend's publish.
function siteEvent(event, data) {
  const li = document.createElement("li");
  li.dataset.event = event;
  li.dataset.from = String(data?.from ?? "");
  li.textContent = `${event} from ${data?.name ?? data?.from ?? "the site"}`;
  $("site-events").prepend(li);
}

const site = rt.room("presence-site", {
  onWhisper: (event, data) => siteEvent(event, data),
  onMessage: (data, { event }) => siteEvent(event ?? "message", data),
  // One entry per user however many tabs: the server keys members by user id. The first page
  // (up to rrr's --presence-list-max members) is plenty for a site's "online now".
  onPresence: ({ members }) => {
    const list = $("online");
    const entries = Object.entries(members).map(([id, m]) => [id, m?.info?.name ?? id]);
    entries.sort((a, b) => a[1].localeCompare(b[1]));
    list.replaceChildren(
      ...entries.map(([id, name]) => {
        const li = document.createElement("li");
        li.dataset.user = name;
        li.textContent = id === userId ? `${name} (you)` : name;
        return li;
      }),
    );
  },
  onError,
});

// Shown once: a notification recovered after a reconnect, or heard twice, is skipped by item id.
const seen = new Set();
rt.room(`private-user-${userId}`, {
  onMessage: (data) => {
    if (data?.type !== "item_created" || seen.has(data.item)) return;
    seen.add(data.item);
    const li = document.createElement("li");
    li.className = "notification";
    li.dataset.item = String(data.item);
    const link = document.createElement("a");
    link.href = `/items/${encodeURIComponent(data.item)}/`;
    link.textContent = data.title;
    li.append(`${data.by} added `, link);
    $("notifications").prepend(li);
  },
  // The missed messages could not all be recovered (history gone): say so.
  onReset: () => {
    $("notifications-reset").hidden = false;
  },
  onError,
});

$("wave").addEventListener("click", () => {
  site.whisper("client-wave", { from: userId, name: $("me").textContent });
});
