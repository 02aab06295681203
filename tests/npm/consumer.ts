// A TypeScript app's use of every public call of rrr-client, type-checked against the package's
// hand-written declarations (rrr.d.ts) by `tsc --noEmit` in tests/test_npm_package.py. The
// `@ts-expect-error` lines are misuses the types must refuse: were a declaration `any`, tsc would
// report the directive unused and the check would fail.
import {
  connect,
  type Connection,
  type ConnectOptions,
  type Count,
  type Identity,
  type LinkState,
  type MemberPages,
  type MessageMeta,
  type Position,
  type PresenceDiff,
  type PresencePage,
  type Room,
  type RoomHandlers,
  type RrrError,
  type Sharing,
  type Transport,
} from "rrr-client";

const transports: Transport[] = ["websocket", "sse", "poll"];
const options: ConnectOptions = {
  url: "wss://rrr.example/ws/",
  getToken: () => fetch("/rrr-token").then((r) => r.text()),
  onAuth: ({ user, exp }: Identity) => console.log(user.toUpperCase(), exp.toFixed()),
  transports,
};
const rt: Connection = connect(options);
connect();

const sharing: Sharing = rt.sharing;
const transport: Transport | "none" = rt.transport;
const state: LinkState = rt.state;
const who: Identity | null = rt.identity;
const tabId: string = rt.tabId;
const url: string = rt.url;
console.log(sharing, transport, state.status, state.retryAt, who?.user, tabId, url);

const since: Position = { offset: 7, epoch: "9f3a61c2" };
const handlers: RoomHandlers = {
  onCount: ({ connections, tabs, updated, users }: Count) => console.log(connections + tabs, updated, users ?? 0),
  onMessage: (data: unknown, { offset, epoch, event }: MessageMeta) => console.log(data, offset, epoch, event),
  onWhisper: (event: string, data: unknown, user: string | null) => console.log(event, data, user),
  onReset: ({ offset, epoch }) => console.log(offset.toFixed(), epoch),
  onState: ({ sharing, transport, status, retryAt }: LinkState) => console.log(sharing, transport, status, retryAt),
  onError: ({ code, reason }: RrrError) => console.log(code.length, reason),
  onPresence: ({ members, total, more }: PresencePage, diff: PresenceDiff | null) =>
    console.log(Object.keys(members), total, more, diff?.joins, diff?.leaves),
  since,
};
const room: Room = rt.room("presence-team-7", handlers);
rt.room("lobby");
console.log(room.room.length);
room.publish({ hello: "world" });
room.publish("shipped", { event: "order.shipped" });
room.whisper("client-typing", { on: true });
const at: Position | null = room.position();
console.log(at?.offset, at?.epoch);

async function everyone(): Promise<number> {
  const pages: MemberPages = room.members();
  for await (const page of pages) console.log(page.total, page.more);
  for await (const page of room.members({ after: "ada" })) console.log(Object.keys(page.members));
  const all = await room.members().all();
  return Object.keys(all).length;
}
void everyone();

room.leave();
rt.retryNow();
rt.close();

// Misuses the declarations refuse.
// @ts-expect-error: not a transport
connect({ transports: ["carrier-pigeon"] });
// @ts-expect-error: getToken returns a Promise of the token
connect({ getToken: () => 42 });
// @ts-expect-error: a slug is a string
rt.room(7);
// @ts-expect-error: no such handler
rt.room("lobby", { onCounts: () => {} });
// @ts-expect-error: publish takes the data
room.publish();
// @ts-expect-error: an event name is a string
room.whisper(1, {});
// @ts-expect-error: sharing is read-only
rt.sharing = "direct";
// @ts-expect-error: a count's numbers are numbers
const wrong: string = ({} as Count).connections;
console.log(wrong);
