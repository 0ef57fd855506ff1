// sdk.test.mjs — unit tests of web/switchboard.js's protocol layer, under Node's test runner with a scripted fake
// WebSocket: exact wire fields, transaction matching, timeouts, rejects as errors, events, reconnect with backoff and
// re-register, and the candidate / ICE server conversions. (Media is covered by run.mjs in a real Chromium.)
//
//   node --test web/tests/

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  browserAnswer,
  browserIceUrl,
  defaultSignalingUrl,
  firstMid,
  iceCredentials,
  randomId,
  SignalingClient,
  SignalingError,
  toBrowserCandidate,
  toProtocolCandidate,
  toRTCIceServers,
} from "../switchboard.js";

/** A WebSocket double: opens (or refuses) on the next tick, records what is sent, and lets the test push frames. */
class FakeSocket {
  /** @type {FakeSocket[]} */
  static all = [];
  /** How many of the next connection attempts fail. */
  static refuse = 0;
  /** Called with each new socket. */
  static onCreate = (/** @type {FakeSocket} */ _s) => {};

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    /** @type {any[]} */
    this.sent = [];
    this.createdAt = performance.now();
    FakeSocket.all.push(this);
    const refused = FakeSocket.refuse > 0;
    if (refused) FakeSocket.refuse--;
    setTimeout(() => {
      if (refused) {
        this.readyState = 3;
        this.onclose?.({ code: 1006, reason: "" });
      } else {
        this.readyState = 1;
        this.onopen?.();
      }
    }, 0);
    FakeSocket.onCreate(this);
  }

  send(data) {
    assert.equal(typeof data, "string");
    this.sent.push(JSON.parse(data));
    this.onSend?.(this.sent.at(-1));
  }

  close(code = 1005) {
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason: "" }), 0);
  }

  /** The server sends `msg`. */
  receive(msg) {
    this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
  }

  /** The connection drops. */
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}

function reset() {
  FakeSocket.all = [];
  FakeSocket.refuse = 0;
  FakeSocket.onCreate = () => {};
}

async function connected(options = {}) {
  reset();
  const client = new SignalingClient("ws://example.test:3000/signaling", { WebSocket: /** @type {any} */ (FakeSocket), ...options });
  await client.connect();
  return { client, ws: FakeSocket.all[0] };
}

/** Resolves with the next event of `type`, or fails after `ms`. */
function nextEvent(target, type, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${ms} ms`)), ms);
    target.addEventListener(type, (ev) => {
      clearTimeout(timer);
      resolve(ev.detail);
    }, { once: true });
  });
}

/** Resolves once `cond()` holds; checks on every macrotask, fails after `ms`. */
async function until(cond, ms = 2000, what = "condition") {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

const keys = (o) => Object.keys(o).sort();
const ALNUM32 = /^[A-Za-z0-9]{32}$/;

test("candidates convert between the browser's prefixed form and the protocol's", () => {
  const line = "7e0de214 1 udp 2113955071 192.168.1.1 46411 typ host";
  assert.equal(toProtocolCandidate(`candidate:${line}`), line);
  assert.equal(toProtocolCandidate(`a=candidate:${line}`), line);
  assert.equal(toProtocolCandidate(line), line);
  assert.equal(toBrowserCandidate(line), `candidate:${line}`);
  assert.equal(toBrowserCandidate(toBrowserCandidate(line)), `candidate:${line}`);
});

test("ice_servers entries become RTCIceServers", () => {
  assert.deepEqual(
    toRTCIceServers([
      { url: "turn:192.0.2.1:3478?transport=udp", ufrag: "1700000000:room", pwd: "c2VjcmV0" },
      { url: "stun:192.0.2.1:3478?transport=udp", ufrag: "", pwd: "" },
      { url: "" },
      null,
    ]),
    [
      { urls: "turn:192.0.2.1:3478?transport=udp", username: "1700000000:room", credential: "c2VjcmV0" },
      { urls: "stun:192.0.2.1:3478" },
    ],
  );
  assert.deepEqual(toRTCIceServers(undefined), []);
});

test("stun: urls lose their query (Chromium refuses `stun:…?transport=udp`); turn: urls keep it", () => {
  assert.equal(browserIceUrl("stun:10.0.0.1:3478?transport=udp"), "stun:10.0.0.1:3478");
  assert.equal(browserIceUrl("STUNS:stun.example.org:5349?transport=tcp"), "STUNS:stun.example.org:5349");
  assert.equal(browserIceUrl("stun:stun.example.org"), "stun:stun.example.org");
  assert.equal(browserIceUrl("turn:10.0.0.1:3478?transport=udp"), "turn:10.0.0.1:3478?transport=udp");
  assert.equal(browserIceUrl("turns:t.example.org:443?transport=tcp"), "turns:t.example.org:443?transport=tcp");
});

test("a ZLMediaKit answer's port-0 bundled sections become live; rejected ones stay rejected", () => {
  // The shape of a ZLMediaKit keeper's P2P answer (ice-lite, candidates trickled later).
  const zlm = [
    "v=0", "o=- 1 1 IN IP4 10.77.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=ice-lite",
    "m=video 0 UDP/TLS/RTP/SAVPF 102 103", "c=IN IP4 10.77.0.1", "a=mid:0", "a=sendonly", "a=rtcp-mux",
    "m=audio 0 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.77.0.1", "a=mid:1", "a=sendonly",
    "m=application 0 UDP/DTLS/SCTP webrtc-datachannel", "a=mid:2", "",
  ].join("\r\n");
  const out = browserAnswer(zlm);
  assert.match(out, /\r\nm=video 9 UDP\/TLS\/RTP\/SAVPF 102 103\r\n/);
  assert.match(out, /\r\nm=audio 9 UDP\/TLS\/RTP\/SAVPF 96\r\n/);
  assert.match(out, /\r\nm=application 0 /, "mid 2 is not bundled: still rejected");
  assert.equal(out.replace(/m=(video|audio) 9 /g, "m=$1 0 "), zlm, "nothing else changes");
  const inactive = zlm.replace("a=mid:1\r\na=sendonly", "a=mid:1\r\na=inactive");
  assert.match(browserAnswer(inactive), /\r\nm=audio 0 /, "an inactive section stays rejected");
  const browser = zlm.replace(/m=(video|audio) 0 /g, "m=$1 9 ");
  assert.equal(browserAnswer(browser), browser, "a normal answer is untouched");
});

test("SDP helpers: first m-line's mid and the ICE credentials", () => {
  const sdp = [
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE v a",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdefghijkl", "a=mid:v",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=ice-ufrag:abcd", "a=mid:a", "",
  ].join("\r\n");
  assert.equal(firstMid(sdp), "v");
  assert.deepEqual(iceCredentials(sdp), { ufrag: "abcd", pwd: "0123456789abcdefghijkl" });
  assert.equal(firstMid("v=0\r\nm=video 9 RTP/AVP 96\r\nc=IN IP4 0.0.0.0\r\n"), null);
});

test("random ids and the default signaling URL", () => {
  assert.match(randomId(), ALNUM32);
  assert.match(randomId(16), /^[A-Za-z0-9]{16}$/);
  assert.notEqual(randomId(), randomId());
  assert.equal(defaultSignalingUrl(new URL("https://demo.example:8443/x/index.html")), "wss://demo.example:8443/signaling");
  assert.equal(defaultSignalingUrl(new URL("http://127.0.0.1:3000/")), "ws://127.0.0.1:3000/signaling");
  assert.throws(() => new SignalingClient("http://example.test/"), TypeError);
});

test("register sends exactly the spec's fields and returns the room and RTCIceServers", async () => {
  const { client, ws } = await connected();
  const named = client.register("camera_1");
  const msg = ws.sent.at(-1);
  assert.deepEqual(keys(msg), ["class", "method", "room_id", "transaction_id"]);
  assert.equal(msg.class, "request");
  assert.equal(msg.method, "register");
  assert.match(msg.transaction_id, ALNUM32);
  ws.receive({
    class: "accept", method: "register", transaction_id: msg.transaction_id, room_id: "camera_1",
    ice_servers: [{ url: "turn:10.0.0.1:3478?transport=udp", ufrag: "u", pwd: "p" }],
  });
  const reg = await named;
  assert.equal(reg.roomId, "camera_1");
  assert.deepEqual(reg.iceServers, [{ urls: "turn:10.0.0.1:3478?transport=udp", username: "u", credential: "p" }]);
  assert.equal(client.roomId, "camera_1");
  client.close();

  // Without a room id: the field is left out and the assigned id is kept.
  const second = await connected();
  const assigned = second.client.register();
  const m2 = second.ws.sent.at(-1);
  assert.deepEqual(keys(m2), ["class", "method", "transaction_id"]);
  // ZLMediaKit's pretty-printed JSON with tabs, extra fields and all.
  second.ws.receive(
    `{\n\t"class" : "accept",\n\t"ice_servers" : [ { "pwd" : "ZLMediaKit", "ufrag" : "ZLMediaKit", "url" : "stun:10.0.0.1:3478?transport=udp" } ],\n\t"method" : "register",\n\t"room_id" : "7_Ll2tjQgigRKaY1di",\n\t"transaction_id" : "${m2.transaction_id}"\n}`,
  );
  assert.equal((await assigned).roomId, "7_Ll2tjQgigRKaY1di");
  second.client.close();
});

test("call sends exactly the spec's fields; the answer is matched by transaction_id", async () => {
  const { client, ws } = await connected();
  const answered = client.call({ roomId: "camera_1", guestId: "viewer_9_x", stream: "cam", app: "live", sdp: "v=0 offer" });
  const call = ws.sent.at(-1);
  assert.deepEqual(keys(call), ["app", "class", "guest_id", "method", "room_id", "sdp", "stream", "transaction_id", "type", "vhost"]);
  assert.deepEqual(
    { ...call, transaction_id: "" },
    {
      class: "request", method: "call", transaction_id: "", guest_id: "viewer_9_x", room_id: "camera_1", type: "play",
      vhost: "__defaultVhost__", app: "live", stream: "cam", sdp: "v=0 offer",
    },
  );
  // An accept for another transaction, or another method, does not settle it.
  ws.receive({ class: "accept", method: "call", transaction_id: "other", sdp: "wrong" });
  ws.receive({ class: "accept", method: "register", transaction_id: call.transaction_id, sdp: "wrong" });
  ws.receive({ class: "accept", method: "call", transaction_id: call.transaction_id, guest_id: "viewer_9_x", sdp: "v=0 answer", sender: "camera_1" });
  assert.equal(await answered, "v=0 answer");
  client.close();
});

test("every reject is a SignalingError with code and reason", async () => {
  const { client, ws } = await connected();
  const p = client.call({ roomId: "nobody", guestId: "g", sdp: "o" });
  const tid = ws.sent.at(-1).transaction_id;
  ws.receive({ class: "reject", method: "call", transaction_id: tid, reason: 'room_id: "nobody" unregistered', code: "room_not_found" });
  await assert.rejects(p, (e) => e instanceof SignalingError && e.code === "room_not_found" && e.reason === 'room_id: "nobody" unregistered' && e.method === "call");

  // A callee's refusal (or ZLMediaKit) carries no code.
  const q = client.call({ roomId: "camera_1", guestId: "g2", sdp: "o" });
  ws.receive({ class: "reject", method: "call", transaction_id: ws.sent.at(-1).transaction_id, reason: "stream not found" });
  await assert.rejects(q, (e) => e instanceof SignalingError && e.code === "rejected" && e.reason === "stream not found");

  // A reject that answers nothing pending (e.g. a candidate for an ended call) is an event.
  const ev = nextEvent(client, "reject");
  ws.receive({ class: "reject", method: "candidate", transaction_id: "t", reason: 'guest_id "g" not found', code: "unknown_guest" });
  const err = await ev;
  assert.ok(err instanceof SignalingError);
  assert.equal(err.code, "unknown_guest");
  client.close();
});

test("a request times out; a timed-out call is ended with a bye", async () => {
  const { client, ws } = await connected({ requestTimeoutMs: 30 });
  await assert.rejects(client.register("r"), (e) => e.code === "timeout" && e.method === "register");
  await assert.rejects(client.call({ roomId: "camera_1", guestId: "g", sdp: "o" }), (e) => e.code === "timeout");
  const bye = ws.sent.at(-1);
  assert.deepEqual(keys(bye), ["class", "guest_id", "method", "reason", "room_id", "transaction_id"]);
  assert.equal(bye.method, "bye");
  assert.equal(bye.guest_id, "g");
  assert.equal(bye.room_id, "camera_1");
  client.close();
});

test("incoming calls are answered with exactly the spec's fields, once", async () => {
  const { client, ws } = await connected();
  const callEvent = nextEvent(client, "call");
  const offer = {
    class: "request", method: "call", transaction_id: "T1", guest_id: "ringing_x_y", room_id: "camera_1", type: "play",
    vhost: "__defaultVhost__", app: "live", stream: "cam", sdp: "v=0 offer",
  };
  ws.receive(offer);
  const call = await callEvent;
  assert.equal(call.sdp, "v=0 offer");
  call.accept("v=0 answer");
  const accept = ws.sent.at(-1);
  assert.deepEqual(accept, { ...offer, class: "accept", sdp: "v=0 answer" });
  assert.throws(() => call.reject("late"), SignalingError);

  const second = nextEvent(client, "call");
  ws.receive({ ...offer, transaction_id: "T2", guest_id: "other" });
  (await second).reject("busy");
  const reject = ws.sent.at(-1);
  const { sdp: _sdp, ...rest } = offer;
  assert.deepEqual(reject, { ...rest, class: "reject", transaction_id: "T2", guest_id: "other", reason: "busy" });
  client.close();
});

test("candidates and byes both ways", async () => {
  const { client, ws } = await connected();
  client.candidate({ guestId: "g", roomId: "camera_1", candidate: "candidate:1 1 udp 2113955071 127.0.0.1 5000 typ host", ufrag: "uf", pwd: "pw" });
  const c = ws.sent.at(-1);
  assert.deepEqual(keys(c), ["candidate", "class", "guest_id", "method", "pwd", "room_id", "transaction_id", "ufrag"]);
  assert.equal(c.class, "indication");
  assert.equal(c.candidate, "1 1 udp 2113955071 127.0.0.1 5000 typ host");
  client.bye("g", "camera_1");
  assert.deepEqual(keys(ws.sent.at(-1)), ["class", "guest_id", "method", "room_id", "transaction_id"]);

  const cand = nextEvent(client, "candidate");
  ws.receive({ class: "indication", method: "candidate", transaction_id: "t", guest_id: "g", room_id: "camera_1",
    candidate: "9a6c4a99 1 udp 2113955071 10.77.0.1 44239 typ host", ufrag: "u", pwd: "p", sender: "camera_1" });
  assert.deepEqual(await cand, { guestId: "g", roomId: "camera_1", candidate: "9a6c4a99 1 udp 2113955071 10.77.0.1 44239 typ host", ufrag: "u", pwd: "p" });
  const bye = nextEvent(client, "bye");
  ws.receive({ class: "indication", method: "bye", transaction_id: "t", guest_id: "g", room_id: "camera_1", reason: "peer unregister" });
  assert.deepEqual(await bye, { guestId: "g", roomId: "camera_1", reason: "peer unregister" });
  client.close();
});

test("a drop fails pending requests, reconnects and registers the room again", async () => {
  const { client, ws } = await connected({ reconnect: { initialMs: 40, maxMs: 160 } });
  const reg = client.register();
  ws.receive({ class: "accept", method: "register", transaction_id: ws.sent.at(-1).transaction_id, room_id: "5_assigned", ice_servers: [] });
  await reg;
  const pending = client.call({ roomId: "camera_1", guestId: "g", sdp: "o" });
  const disconnected = nextEvent(client, "disconnected");
  FakeSocket.refuse = 3;
  ws.drop(1001);
  await assert.rejects(pending, (e) => e.code === "disconnected");
  assert.equal((await disconnected).code, 1001);

  // Three refused attempts, then one that opens and receives the re-register.
  const reconnected = nextEvent(client, "reconnected", 5000);
  await until(() => FakeSocket.all.length === 5 && FakeSocket.all[4].sent.length === 1, 5000, "re-register sent");
  const again = FakeSocket.all[4].sent[0];
  assert.deepEqual(keys(again), ["class", "method", "room_id", "transaction_id"]);
  assert.equal(again.room_id, "5_assigned");
  FakeSocket.all[4].receive({ class: "accept", method: "register", transaction_id: again.transaction_id, room_id: "5_assigned", ice_servers: [] });
  assert.deepEqual(await reconnected, { roomId: "5_assigned", error: null });
  client.close();
});

/** Lets every pending promise callback run (setImmediate is not faked by the mock timers below). */
async function settle() {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

/**
 * With setTimeout faked, drops the connection and checks each reconnect attempt happens exactly `delays[i]` ms after
 * the previous one failed: not a millisecond earlier, and at that instant. Every attempt is refused.
 */
async function expectReconnectDelays(t, client, ws, delays) {
  FakeSocket.refuse = delays.length;
  ws.drop(1006);
  await settle();
  for (const [i, delay] of delays.entries()) {
    const before = FakeSocket.all.length;
    t.mock.timers.tick(delay - 1);
    await settle();
    assert.equal(FakeSocket.all.length, before, `attempt ${i + 1} came before ${delay} ms`);
    t.mock.timers.tick(1);
    await settle();
    assert.equal(FakeSocket.all.length, before + 1, `attempt ${i + 1} at ${delay} ms`);
    t.mock.timers.tick(0); // the refusal
    await settle();
  }
}

test("reconnect backoff by default: 200 ms doubling to a 10 s cap", async (t) => {
  const { client, ws } = await connected();
  t.mock.method(Math, "random", () => 0.5); // no jitter
  t.mock.timers.enable({ apis: ["setTimeout"] });
  await expectReconnectDelays(t, client, ws, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
  client.close();
});

test("reconnect backoff: configured initial and cap, and ±20 % jitter at its bounds", async (t) => {
  const random = t.mock.method(Math, "random", () => 0);
  const reconnect = { initialMs: 100, maxMs: 250 };
  // random() = 0 gives 0.8 × the base: 80, 160, then the cap 250 → 200.
  let { client, ws } = await connected({ reconnect });
  t.mock.timers.enable({ apis: ["setTimeout"] });
  await expectReconnectDelays(t, client, ws, [80, 160, 200]);
  client.close();
  t.mock.timers.reset();
  // random() just under 1 gives just under 1.2 × the base.
  random.mock.mockImplementation(() => 0.999_999);
  ({ client, ws } = await connected({ reconnect }));
  t.mock.timers.enable({ apis: ["setTimeout"] });
  await expectReconnectDelays(t, client, ws, [120, 240, 300]);
  client.close();
});

test("a failed re-register is reported; close() stops for good", async () => {
  const { client, ws } = await connected({ reconnect: { initialMs: 5, maxMs: 10 } });
  const reg = client.register("camera_1");
  ws.receive({ class: "accept", method: "register", transaction_id: ws.sent.at(-1).transaction_id, room_id: "camera_1", ice_servers: [] });
  await reg;
  FakeSocket.onCreate = (s) => {
    s.onSend = (m) => s.receive({ class: "reject", method: "register", transaction_id: m.transaction_id, room_id: m.room_id, reason: "room id conflict", code: "room_conflict" });
  };
  const reconnected = nextEvent(client, "reconnected");
  ws.drop();
  const detail = await reconnected;
  assert.equal(detail.roomId, null);
  assert.equal(detail.error.code, "room_conflict");
  assert.equal(client.roomId, null);

  FakeSocket.all.at(-1).onSend = null; // from now on nothing answers
  const closed = nextEvent(client, "closed");
  const pending = client.register("x");
  client.close();
  await closed;
  await assert.rejects(pending, (e) => e.code === "closed");
  const count = FakeSocket.all.length;
  assert.throws(() => client.bye("g", "r"), (e) => e.code === "closed");
  await assert.rejects(client.connect(), (e) => e.code === "closed");
  assert.equal(FakeSocket.all.length, count, "no reconnect after close()");
});

test("ICE servers are refreshed on their own before ice_servers_expire, and later calls get the fresh ones", async () => {
  const { client, ws } = await connected();
  const registering = client.register("keeper");
  const reg = ws.sent.at(-1);
  // Expiring in 1 s: the refresh is due at 80 % of that.
  const expire = Date.now() / 1000 + 1;
  ws.receive({ class: "accept", method: "register", transaction_id: reg.transaction_id, room_id: "keeper",
    ice_servers: [{ url: "turn:10.0.0.1:3478?transport=udp", ufrag: "old", pwd: "p" }], ice_servers_expire: expire });
  const first = await registering;
  assert.equal(first.expire, expire);
  const asked = performance.now();
  await until(() => ws.sent.at(-1)?.method === "ice_servers", 3000, "an ice_servers request");
  const req = ws.sent.at(-1);
  assert.deepEqual(keys(req), ["class", "method", "transaction_id"]);
  assert.equal(req.class, "request");
  assert.ok(Date.now() / 1000 < expire, "asked before the expiry");
  assert.ok(performance.now() - asked >= 500, "not at once");
  const refreshed = nextEvent(client, "ice-servers");
  ws.receive({ class: "accept", method: "ice_servers", transaction_id: req.transaction_id, room_id: "keeper",
    ice_servers: [{ url: "turn:10.0.0.1:3478?transport=udp", ufrag: "new", pwd: "q" }], ice_servers_expire: expire + 3600 });
  const detail = await refreshed;
  assert.equal(detail.iceServers[0].username, "new");
  assert.deepEqual(client.iceServers, [{ urls: "turn:10.0.0.1:3478?transport=udp", username: "new", credential: "q" }]);
  client.close();
});

test("a server that ignores ice_servers (ZLMediaKit) is asked once; the register accept's servers stay in use", async () => {
  const { client, ws } = await connected({ requestTimeoutMs: 50 });
  const registering = client.register("keeper");
  const reg = ws.sent.at(-1);
  ws.receive({ class: "accept", method: "register", transaction_id: reg.transaction_id, room_id: "keeper",
    ice_servers: [{ url: "turn:10.0.0.1:3478?transport=udp", ufrag: "old", pwd: "p" }], ice_servers_expire: Date.now() / 1000 + 0.5 });
  await registering;
  await until(() => ws.sent.at(-1)?.method === "ice_servers", 3000, "an ice_servers request");
  // Unanswered: after the 50 ms timeout the client stops asking (the next refresh would be due 500 ms later).
  const sentBefore = ws.sent.length;
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(ws.sent.length, sentBefore, `asked again: ${JSON.stringify(ws.sent.slice(sentBefore))}`);
  assert.equal(client.iceServers[0].username, "old");
  client.close();
});
