/**
 * The SharedWorker: one per browser profile (per origin, link version and
 * socket URL), so every tab of the profile shares its single socket.
 *
 * The worker keeps no list of ports of its own: a port lives only inside the
 * TabLink the owner holds for an attached tab, so dropping a dead tab frees it.
 * Ports are not closed on drop: a tab that detached on pagehide may come back
 * from the back/forward cache and attach again over the same port.
 */
import { socketUrlFromWorkerName } from "./protocol.js";
import { SocketOwner } from "./socket-owner.js";

const owner = new SocketOwner({
  url: socketUrlFromWorkerName(self.name),
  transport: "sharedworker",
});

self.onconnect = (event) => {
  const port = event.ports[0];
  /** @type {import("./socket-owner.js").TabLink} */
  const link = { send: (msg) => port.postMessage(msg) };
  // Assigning onmessage also starts the port.
  port.onmessage = ({ data }) => owner.receive(data?.tab, data?.msg, link);
};
