/**
 * The SharedWorker: one per browser profile (per origin, link version, socket
 * URL and transports allowed), so every tab of the profile shares its single connection.
 *
 * The worker keeps no list of ports of its own: a port lives only inside the
 * TabLink the owner holds for an attached tab, so dropping a dead tab frees it.
 * A tab closes its port when it leaves (pagehide, close()) and opens a new
 * SharedWorker connection when it comes back.
 */
import { LINK_VERSION, endpointFromWorkerName, linkVersionOfWorkerName, linkVersionOfWorkerUrl } from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

// The page asked for a worker of its link version (`?link=` in our URL, which a bundler's URL
// lacks, and always in our name). With a protocol.js of another version (a cache mixing two
// deploys) we must not serve it: every tab that connects is told so, at once, and falls back
// to a leader. (An exception thrown here would not reach the pages in Chromium.)
const wanted = linkVersionOfWorkerUrl(self.location.href) ?? linkVersionOfWorkerName(self.name);
if (wanted !== null && wanted !== LINK_VERSION) {
  self.onconnect = ({ ports }) => ports[0].postMessage({ type: "unsupported", link: LINK_VERSION });
} else {
  const { url, transports } = endpointFromWorkerName(self.name);
  const owner = new SocketOwner({ url, sharing: "sharedworker", transports });

  self.onconnect = (event) => {
    const port = event.ports[0];
    /** @type {import("./socket-owner.js").TabLink} */
    const link = { send: (msg) => port.postMessage(msg) };
    // Assigning onmessage also starts the port.
    port.onmessage = ({ data }) => owner.receive(data?.tab, data?.msg, link);
  };
}
