// The token exchange's rules (static/js/token-exchange.js), against the owner's real tab registry
// and a host that records what the exchange asks of it: `node --test tests/js/`
import assert from "node:assert/strict";
import { test } from "node:test";

import { TOKEN_TIMEOUT_MS, attachMsg, tokenReplyMsg } from "../../static/js/protocol.js";
import { TabRegistry } from "../../static/js/socket-owner.js";
import { TokenExchange } from "../../static/js/token-exchange.js";

/** Promise callbacks (a token's way to the socket) run after this. */
const tick = () => new Promise((resolve) => setImmediate(resolve));

function tabLink() {
  const got = [];
  return { got, send: (msg) => got.push(msg), of: (type) => got.filter((m) => m.type === type) };
}

/**
 * An exchange whose host is a real TabRegistry and a socket that records its frames.
 * `tabs`: tab id → {tokens, subs: {sub: room}}.
 */
function exchange(tabs) {
  const registry = new TabRegistry();
  const links = {};
  for (const [id, { tokens = false, subs = {} }] of Object.entries(tabs)) {
    links[id] = tabLink();
    const msg = attachMsg("none", tokens);
    registry.attach(id, msg.watch, links[id], 0, msg.tokens);
    for (const [sub, room] of Object.entries(subs)) registry.subscribe(id, sub, room);
  }
  const socket = { open: true, sent: [] };
  const identities = [];
  const tokens = new TokenExchange({
    tabs: registry,
    isOpen: () => socket.open,
    send: (frame) => socket.open && socket.sent.push(frame) > 0,
    onIdentity: (identity, first) => identities.push({ ...identity, first }),
  });
  return { tokens, registry, links, socket, identities };
}

const requests = (link) => link.of("token_request");
const errors = (link) => link.of("error").map((e) => [e.code, e.sub]);
const soon = (seconds) => Math.floor(Date.now() / 1000) + seconds;

test("an opened socket asks the first tab that can give a token; only that tab's answer counts", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket, identities } = exchange({
    A: { subs: { "A-1": "lobby" } },
    B: { tokens: true },
    C: { tokens: true, subs: { "C-1": "private-c" } },
  });
  tokens.opened();
  assert.equal(tokens.state, "pending");
  assert.deepEqual([links.A, links.B, links.C].map((l) => requests(l).length), [0, 1, 0]);
  const { id } = requests(links.B)[0];

  tokens.token("C", tokenReplyMsg(id, "from-the-wrong-tab"));
  await tick();
  assert.deepEqual(socket.sent, [], "an answer from a tab that was not asked is ignored");

  tokens.token("B", tokenReplyMsg(id, "jwt-1"));
  await tick();
  assert.deepEqual(socket.sent, [{ type: "auth", token: "jwt-1" }]);
  assert.equal(tokens.ok, false, "not ok before the server says so");
  assert.equal(tokens.identity, null);

  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(100) });
  assert.equal(tokens.ok, true);
  assert.deepEqual(tokens.identity, { type: "authenticated", user: "ada", exp: soon(100) });
  assert.deepEqual(identities.map((i) => [i.user, i.first]), [["ada", true]]);
  tokens.stop();
});

test("with no tab that can give a token the socket is direct: private rooms go at once, nobody is told no_token", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket, identities } = exchange({
    A: { subs: { "A-1": "lobby" } }, B: { subs: { "B-1": "presence-x" } },
  });
  tokens.opened();
  assert.equal(tokens.state, "none", "nobody is asked: no page has a getToken");
  assert.equal(tokens.ok, true, "the private and presence subscriptions go for the server to judge");
  tokens.need();
  await tick();
  t.mock.timers.tick(TOKEN_TIMEOUT_MS * 3);
  assert.deepEqual([requests(links.A).length, requests(links.B).length], [0, 0]);
  assert.deepEqual([...links.A.of("error"), ...links.B.of("error")], [], "no no_token");
  assert.deepEqual(socket.sent, [], "no auth");

  // The server's connect proxy knew the cookie: `authenticated`, unasked. The subscriptions went
  // already (not first), and no refresh is asked of pages that cannot give a token.
  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(100) });
  assert.deepEqual(identities.map((i) => [i.user, i.first]), [["ada", false]]);
  assert.deepEqual(tokens.identity, { type: "authenticated", user: "ada", exp: soon(100) });
  t.mock.timers.tick(200_000);
  assert.deepEqual([requests(links.A).length, requests(links.B).length], [0, 0]);
  // The server ended that identity (the application no longer vouches): still direct.
  tokens.error({ type: "error", code: "token_expired", reason: "x", room: "presence-x", sub: "B-1" });
  assert.equal(tokens.ok, true);
  assert.equal(tokens.identity, null);
  tokens.stop();
});

test("on a direct socket a tab that can give a token, come later, authenticates; its answer sends the private rooms again", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, registry, socket, identities } = exchange({ A: { subs: { "A-1": "private-a" } } });
  tokens.opened();
  assert.equal(tokens.ok, true);
  const later = tabLink();
  registry.attach("B", "none", later, 0, true);
  tokens.need();
  assert.equal(tokens.state, "pending");
  assert.equal(tokens.ok, true, "what went directly stays: its unsubscribes still go");
  tokens.token("B", tokenReplyMsg(requests(later)[0].id, "jwt-b"));
  await tick();
  assert.deepEqual(socket.sent, [{ type: "auth", token: "jwt-b" }]);
  tokens.authenticated({ type: "authenticated", user: "bea", exp: soon(100) });
  assert.deepEqual(identities.map((i) => i.first), [true], "a room refused before may be granted now");

  // A getToken refusing on a direct socket tells nobody no_token (its rooms went; the server answered them).
  const quiet = exchange({ A: { subs: { "A-1": "private-a" } } });
  quiet.tokens.opened();
  const refusing = tabLink();
  quiet.registry.attach("B", "none", refusing, 0, true);
  quiet.tokens.need();
  quiet.tokens.token("B", tokenReplyMsg(requests(refusing)[0].id, null, "signed out"));
  await tick();
  assert.deepEqual([...quiet.links.A.of("error"), ...refusing.of("error")], []);
  assert.equal(quiet.tokens.ok, true);
  tokens.stop();
  quiet.tokens.stop();
});

test("a socket whose tabs can give a token asks at once; one whose can not asks nobody", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links } = exchange({ A: { subs: { "A-1": "lobby" } }, B: { tokens: true } });
  tokens.opened();
  assert.equal(tokens.state, "pending", "B's page has a getToken: it wants to know who it is");
  assert.equal(tokens.ok, false, "the private rooms wait for the reply");
  assert.equal(requests(links.B).length, 1);
  tokens.stop();

  const quiet = exchange({ A: { subs: { "A-1": "lobby" } } });
  quiet.tokens.opened();
  assert.equal(quiet.tokens.state, "none");
  assert.equal(requests(quiet.links.A).length, 0, "no tab can give one: none asked");
});

test("a private subscription asks for a token once while one is on its way, and never on a closed socket", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket } = exchange({ A: { tokens: true } });
  socket.open = false;
  tokens.need();
  assert.equal(requests(links.A).length, 0, "closed socket: nothing asked");
  socket.open = true;
  tokens.need();
  tokens.need();
  assert.equal(requests(links.A).length, 1, "one request while pending");
  tokens.stop();
});

test("a token fetched for a socket that has gone is never sent on the next one", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket } = exchange({ A: { tokens: true, subs: { "A-1": "private-a" } } });
  tokens.opened();
  const old = requests(links.A)[0].id;
  tokens.closed();
  assert.equal(tokens.state, "none");
  tokens.opened();
  const fresh = requests(links.A)[1].id;
  tokens.token("A", tokenReplyMsg(old, "for-the-old-socket"));
  await tick();
  assert.deepEqual(socket.sent, []);
  tokens.token("A", tokenReplyMsg(fresh, "for-this-socket"));
  await tick();
  assert.deepEqual(socket.sent, [{ type: "auth", token: "for-this-socket" }]);
  tokens.stop();
});

test("a silent tab is passed over after the timeout, a tab that goes at once; none left: no_token", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, registry, links } = exchange({
    A: { tokens: true, subs: { "A-1": "private-a", "A-2": "lobby" } },
    B: { tokens: true, subs: { "B-1": "presence-b" } },
    C: { tokens: true },
  });
  tokens.opened();
  assert.equal(requests(links.A).length, 1);
  t.mock.timers.tick(TOKEN_TIMEOUT_MS - 1);
  assert.equal(requests(links.B).length, 0, "A still has time");
  t.mock.timers.tick(1);
  assert.equal(requests(links.B).length, 1, "A said nothing: B is asked");
  registry.drop("B");
  tokens.tabGone("B");
  assert.equal(requests(links.C).length, 1, "B went: C is asked at once");
  t.mock.timers.tick(TOKEN_TIMEOUT_MS);
  await tick();
  assert.equal(tokens.state, "failed");
  assert.deepEqual(errors(links.A), [["no_token", "A-1"]], "each private subscription's own tab, public ones never");
  assert.deepEqual(errors(links.C), []);
  assert.match(links.A.of("error")[0].reason, /^no token: no page answered the token request$/);
  tokens.stop();
});

test("getToken refusing ends the request: no other tab is asked, its reason reaches the subscriptions", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links } = exchange({ A: { tokens: true, subs: { "A-1": "private-a" } }, B: { tokens: true } });
  tokens.opened();
  tokens.token("A", tokenReplyMsg(requests(links.A)[0].id, null, "signed out"));
  await tick();
  assert.equal(requests(links.B).length, 0);
  assert.deepEqual(links.A.of("error").map((e) => e.reason), ["no token: signed out"]);
  tokens.stop();
});

test("the server refusing our token is ours to handle; any other bad_token or error goes to the tabs", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links } = exchange({ A: { tokens: true, subs: { "A-1": "private-a" } } });
  tokens.opened();
  tokens.token("A", tokenReplyMsg(requests(links.A)[0].id, "revoked"));
  await tick();
  assert.equal(tokens.error({ type: "error", code: "bad_token", reason: "revoked" }), true);
  assert.equal(tokens.state, "failed");
  assert.deepEqual(links.A.of("error").map((e) => [e.code, e.sub, e.reason]),
    [["no_token", "A-1", "no token: the server refused it (revoked)"]]);
  assert.equal(tokens.error({ type: "error", code: "bad_token", reason: "not ours" }), false, "not pending: the tabs hear it");
  assert.equal(tokens.error({ type: "error", code: "forbidden", reason: "x", room: "private-a" }), false);
  tokens.stop();
});

test("a later failure tells only the subscriptions not told yet; after an accepted token, all again", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, registry, links } = exchange({ A: { tokens: true, subs: { "A-1": "private-a" } } });
  const refuse = async (reason) => {
    tokens.token("A", tokenReplyMsg(requests(links.A).at(-1).id, null, reason));
    await tick();
  };
  tokens.opened();
  await refuse("one");
  registry.subscribe("A", "A-2", "presence-b");
  tokens.need();
  assert.equal(requests(links.A).length, 2, "failed: a new private subscription asks again");
  await refuse("two");
  assert.deepEqual(errors(links.A), [["no_token", "A-1"], ["no_token", "A-2"]]);

  // Accepted, then expired: the next failure tells every subscription again.
  tokens.need();
  tokens.token("A", tokenReplyMsg(requests(links.A).at(-1).id, "jwt"));
  await tick();
  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(100) });
  assert.equal(tokens.error({ type: "error", code: "token_expired", reason: "x", room: "private-a", sub: "A-1" }), false);
  assert.equal(tokens.ok, false, "token_expired: the server forgot who we are");
  tokens.need();
  await refuse("three");
  assert.deepEqual(errors(links.A).slice(2), [["no_token", "A-1"], ["no_token", "A-2"]]);
  tokens.stop();
});

test("a token is refreshed at 80 % of its life, the socket staying authenticated; closing cancels it", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket, identities } = exchange({ A: { tokens: true } });
  tokens.opened();
  tokens.token("A", tokenReplyMsg(requests(links.A)[0].id, "jwt-1"));
  await tick();
  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(100) });
  t.mock.timers.tick(79_000);
  assert.equal(requests(links.A).length, 1, "not yet");
  t.mock.timers.tick(2_000);
  assert.equal(requests(links.A).length, 2, "refresh asked for a token");
  assert.equal(tokens.ok, true, "still authenticated while refreshing");
  tokens.token("A", tokenReplyMsg(requests(links.A)[1].id, "jwt-2"));
  await tick();
  assert.deepEqual(socket.sent.at(-1), { type: "auth", token: "jwt-2" });
  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(100) });
  assert.deepEqual(identities.map((i) => i.first), [true, false], "only the first acceptance sends the private rooms");

  tokens.closed();
  t.mock.timers.tick(100_000);
  assert.equal(requests(links.A).length, 2, "no refresh for a socket that has gone");
  tokens.stop();
});

test("a refresh that gets no token asks again later while the token has life left", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links } = exchange({ A: { tokens: true } });
  tokens.opened();
  tokens.token("A", tokenReplyMsg(requests(links.A)[0].id, "jwt-1"));
  await tick();
  tokens.authenticated({ type: "authenticated", user: "ada", exp: soon(1000) });
  t.mock.timers.tick(801_000);
  assert.equal(requests(links.A).length, 2);
  tokens.token("A", tokenReplyMsg(requests(links.A)[1].id, null, "offline"));
  await tick();
  assert.equal(tokens.ok, true, "a failed refresh is not a failure yet");
  assert.deepEqual(links.A.of("error"), [], "nobody is told no_token for a failed refresh");
  // Date.now() is the real clock: ~1000 s of life are left, and 80 % of that is the next wait.
  t.mock.timers.tick(801_000);
  assert.equal(requests(links.A).length, 3, "asked again");
  tokens.stop();
});

test("stopping ends every request: a late answer sends nothing and nobody is told no_token", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { tokens, links, socket } = exchange({ A: { tokens: true, subs: { "A-1": "private-a" } }, B: { tokens: true } });
  tokens.opened();
  const { id } = requests(links.A)[0];
  tokens.stop();
  await tick();
  t.mock.timers.tick(TOKEN_TIMEOUT_MS);
  tokens.token("A", tokenReplyMsg(id, "late"));
  await tick();
  assert.deepEqual(socket.sent, []);
  assert.equal(requests(links.B).length, 0, "an ended request asks no other tab");
  assert.deepEqual(links.A.of("error"), []);
  assert.equal(tokens.state, "none");
});
