// The /pusher/ page: "online now" and the site's events through pusher-js, authorized by
// rrr.django's Pusher views. rrr's own library is not loaded here: this is what a Laravel Echo or
// mobile client sees of the same room.
const $ = (id) => document.getElementById(id);
const { userId, pusherKey, wsHost, wsPort, wsPath, csrf } = document.body.dataset;
const headers = { "X-CSRFToken": csrf };

const pusher = new window.Pusher(pusherKey, {
  wsHost,
  wsPort: Number(wsPort),
  wsPath, // "/_rrr" under the site's own origin (run.py --same-origin), else ""
  forceTLS: location.protocol === "https:",
  enabledTransports: ["ws", "wss"],
  cluster: "rrr",
  disableStats: true,
  channelAuthorization: { endpoint: "/rrr/pusher/auth/", headers },
  userAuthentication: { endpoint: "/rrr/pusher/user-auth/", headers },
});
pusher.connection.bind("state_change", ({ current }) => {
  $("pusher-status").dataset.status = current;
  $("pusher-status").textContent = current;
});

const site = pusher.subscribe("presence-site");

function showMembers() {
  const entries = [];
  site.members.each((m) => entries.push([String(m.id), m.info?.name ?? String(m.id)]));
  entries.sort((a, b) => a[1].localeCompare(b[1]));
  $("pusher-members").replaceChildren(
    ...entries.map(([id, name]) => {
      const li = document.createElement("li");
      li.dataset.user = name;
      li.textContent = id === userId ? `${name} (you)` : name;
      return li;
    }),
  );
}

site.bind("pusher:subscription_succeeded", showMembers);
site.bind("pusher:member_added", showMembers);
site.bind("pusher:member_removed", showMembers);

// Every event on the room, whoever sent it: rrr's library (a whisper, a publish), pusher-js, the backend.
site.bind_global((event, data) => {
  if (event.startsWith("pusher:")) return;
  const li = document.createElement("li");
  li.dataset.event = event;
  li.dataset.from = String(data?.from ?? "");
  li.textContent = `${event} from ${data?.name ?? data?.from ?? "the site"}`;
  $("pusher-events").prepend(li);
});

$("wave").addEventListener("click", () => {
  site.trigger("client-wave", { from: userId, name: $("me").textContent });
});
