// The sample app of tests/test_npm_package.py: what an app built with a bundler writes, importing
// the installed package by its name. Bundled with esbuild and with Vite, served from an origin of
// its own; `?rrr=` names the rrr socket URL (another origin) and `?room=` the room.
import { connect } from "rrr-client";

const params = new URLSearchParams(location.search);
const rt = connect({ url: params.get("rrr") });
const seen = { count: null, messages: [], errors: [] };
window.sample = { rt, seen };

const show = (id, text) => (document.getElementById(id).textContent = text);
rt.room(params.get("room"), {
  onCount: (count) => {
    seen.count = count;
    show("count", `${count.connections} browsers, ${count.tabs} tabs`);
  },
  onMessage: (data) => {
    seen.messages.push(data);
    show("messages", JSON.stringify(seen.messages));
  },
  onState: (state) => show("state", `${state.status} via ${state.sharing} over ${state.transport}`),
  onError: (error) => seen.errors.push(error),
});
