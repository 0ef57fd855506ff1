// switchboard.js — the browser SDK of switchboard, a WebRTC signaling server that speaks ZLMediaKit's websocket
// signaling protocol (see SPEC.md in the protocol folder). An ES module with no dependencies.
//
// Two layers:
// - `SignalingClient`: the protocol itself. Requests (register, unregister, call) are matched to their answer by
//   transaction_id and time out after 10 s; every reject becomes a `SignalingError` with `.code` and `.reason`;
//   incoming calls, candidates and byes are events; a dropped connection is re-established with exponential backoff
//   and the room registered again. Messages carry exactly the fields SPEC.md lists, so the client also works against
//   a ZLMediaKit server.
// - `publish()` and `play()`: the two roles of a media session, built on RTCPeerConnection.
//
// Candidates: the protocol carries a candidate without its `candidate:` prefix and without any mid. Every peer
// connection made here uses `bundlePolicy: "max-bundle"`, so there is exactly one ICE transport, the one of the first
// m-line; a received candidate is therefore applied to the first m-line of the remote description (its `a=mid`, or
// sdpMLineIndex 0 when the SDP has no mid). A remote that does not bundle gets candidates for its first m-line only.

/** @typedef {{url: string, ufrag?: string, pwd?: string}} ProtocolIceServer An `ice_servers` entry of a register accept. */

/**
 * @typedef {object} Registration
 * @property {string} roomId The room now held (the one asked for, or the one the server assigned).
 * @property {RTCIceServer[]} iceServers The accept's `ice_servers`, ready for `new RTCPeerConnection`.
 * @property {ProtocolIceServer[]} rawIceServers The accept's `ice_servers` as received.
 * @property {number|null} expire When their credentials expire (unix seconds; `ice_servers_expire`, SPEC.md §4.6), or
 *   null when the server gives no expiry (static credentials, ZLMediaKit).
 */

/**
 * @typedef {object} CallOptions
 * @property {string} roomId The callee's room.
 * @property {string} guestId This call's id; unique towards that room.
 * @property {"play"|"push"} [type] Default `play`.
 * @property {string} [vhost] Default `__defaultVhost__`.
 * @property {string} [app] Default `live`.
 * @property {string} [stream] Default: the room id.
 * @property {string} sdp The SDP offer.
 */

/**
 * @typedef {object} CandidateMessage
 * @property {string} guestId
 * @property {string} roomId The callee's room.
 * @property {string} candidate The protocol form: no `candidate:` prefix.
 * @property {string} ufrag The sender's ICE username fragment.
 * @property {string} pwd The sender's ICE password.
 */

/**
 * @typedef {object} ByeMessage
 * @property {string} guestId
 * @property {string} roomId The callee's room.
 * @property {string|null} reason
 */

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [initialMs] First delay (200 ms).
 * @property {number} [maxMs] Largest delay (10 s).
 */

/**
 * @typedef {object} ClientOptions
 * @property {number} [requestTimeoutMs] How long a request waits for its answer (10 s, as ZLMediaKit).
 * @property {ReconnectOptions|false} [reconnect] Reconnect and re-register after a drop; `false` turns it off.
 * @property {typeof WebSocket} [WebSocket] The WebSocket class (for tests and non-browser hosts).
 */

export const DEFAULT_VHOST = "__defaultVhost__";
export const DEFAULT_APP = "live";
export const REQUEST_TIMEOUT_MS = 10_000;
/** Fresh TURN credentials are fetched when this share of the old ones' remaining lifetime has passed (SPEC.md §4.6). */
const REFRESH_AT = 0.8;
/** ...but never sooner than this after the accept that brought them (credentials about to expire, clock skew). */
const MIN_REFRESH_DELAY_MS = 500;

const ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/**
 * Random alphanumerics from the platform CSPRNG (32 is what transaction ids use).
 * @param {number} [length]
 * @returns {string}
 */
export function randomId(length = 32) {
  let out = "";
  const bytes = new Uint8Array(length * 2);
  while (out.length < length) {
    crypto.getRandomValues(bytes);
    for (const b of bytes) {
      // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
      if (b < 248 && out.length < length) out += ALNUM[b % 62];
    }
  }
  return out;
}

/**
 * A browser candidate (`candidate:…`, or `a=candidate:…`) in the protocol's form, without the prefix.
 * @param {string} candidate
 * @returns {string}
 */
export function toProtocolCandidate(candidate) {
  let c = candidate.trim();
  if (c.startsWith("a=")) c = c.slice(2);
  if (c.startsWith("candidate:")) c = c.slice("candidate:".length);
  return c;
}

/**
 * A protocol candidate in the browser's form, with the `candidate:` prefix (added once).
 * @param {string} candidate
 * @returns {string}
 */
export function toBrowserCandidate(candidate) {
  return `candidate:${toProtocolCandidate(candidate)}`;
}

/**
 * Converts a register accept's `ice_servers` (`{url, ufrag, pwd}`) into `RTCIceServer`s (`{urls, username, credential}`).
 * Credentials are only set when present, as a browser rejects a `turn:` server without them but ignores them on `stun:`.
 * @param {ProtocolIceServer[]|undefined|null} servers
 * @returns {RTCIceServer[]}
 */
export function toRTCIceServers(servers) {
  if (!Array.isArray(servers)) return [];
  /** @type {RTCIceServer[]} */
  const out = [];
  for (const s of servers) {
    if (!s || typeof s.url !== "string" || s.url === "") continue;
    /** @type {RTCIceServer} */
    const server = { urls: browserIceUrl(s.url) };
    if (s.ufrag) server.username = s.ufrag;
    if (s.pwd) server.credential = s.pwd;
    out.push(server);
  }
  return out;
}

/**
 * An `ice_servers` url in the form browsers accept. ZLMediaKit's keeper only reads `stun:HOST:PORT?transport=udp`, so
 * servers send that; but a `stun:`/`stuns:` URI has no query (RFC 7064) and Chromium refuses the whole
 * RTCPeerConnection over one. `turn:`/`turns:` keep their `?transport=` (RFC 7065).
 * @param {string} url
 * @returns {string}
 */
export function browserIceUrl(url) {
  return /^stuns?:/i.test(url) ? url.replace(/\?.*$/s, "") : url;
}

/**
 * A remote answer in the form browsers accept. ZLMediaKit's answer (an ICE-lite endpoint that trickles its candidates)
 * puts port 0 on every m-line, which a browser reads as "section rejected" (RFC 8843 allows port 0 only for
 * bundle-only sections of an offer). A section that is bundled and not `inactive` is live, so its port becomes the
 * placeholder 9; truly rejected sections (not in the BUNDLE group, or inactive) stay as they are.
 * @param {string} sdp
 * @returns {string}
 */
export function browserAnswer(sdp) {
  const eol = sdp.includes("\r\n") ? "\r\n" : "\n";
  const [session, ...sections] = sdp.split(/\r?\nm=/);
  const bundle = session.split(/\r?\n/).find((l) => l.startsWith("a=group:BUNDLE "));
  const bundled = new Set(bundle ? bundle.slice("a=group:BUNDLE ".length).trim().split(/\s+/) : []);
  const fixed = sections.map((section) => {
    const lines = section.split(/\r?\n/);
    const mid = lines.find((l) => l.startsWith("a=mid:"))?.slice("a=mid:".length).trim();
    const live = mid !== undefined && bundled.has(mid) && !lines.includes("a=inactive");
    return live ? section.replace(/^(\w+) 0 /, "$1 9 ") : section;
  });
  return [session, ...fixed].join(`${eol}m=`);
}

/**
 * The signaling URL of the server a page was served from: same host, `ws:` or `wss:` following the page, `/signaling`.
 * @param {Location|URL} [loc]
 * @returns {string}
 */
export function defaultSignalingUrl(loc = globalThis.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/signaling`;
}

/**
 * The `a=mid` of an SDP's first m-line, or null.
 * @param {string} sdp
 * @returns {string|null}
 */
export function firstMid(sdp) {
  const sections = sdp.split(/\r?\nm=/);
  if (sections.length < 2) return null;
  const m = /(?:^|\r?\n)a=mid:([^\r\n]+)/.exec(sections[1]);
  return m ? m[1].trim() : null;
}

/**
 * The first `a=ice-ufrag` and `a=ice-pwd` of an SDP (with BUNDLE there is one pair).
 * @param {string} sdp
 * @returns {{ufrag: string, pwd: string}}
 */
export function iceCredentials(sdp) {
  const ufrag = /(?:^|\n)a=ice-ufrag:([^\r\n]+)/.exec(sdp);
  const pwd = /(?:^|\n)a=ice-pwd:([^\r\n]+)/.exec(sdp);
  return { ufrag: ufrag ? ufrag[1].trim() : "", pwd: pwd ? pwd[1].trim() : "" };
}

/**
 * Every failure the SDK reports. `code` is the server's machine code (`room_not_found`, `room_conflict`, …; see
 * SPEC.md §2), or one of the SDK's own: `timeout`, `disconnected`, `closed`, `bad_message`, `webrtc`. A reject from a
 * server or callee that sends no code (ZLMediaKit, a callee's refusal) has code `rejected`.
 */
export class SignalingError extends Error {
  /**
   * @param {string} code
   * @param {string} reason
   * @param {{method?: string, transactionId?: string, message?: object}} [extra]
   */
  constructor(code, reason, extra = {}) {
    super(code === "rejected" ? reason : `${reason} (${code})`);
    this.name = "SignalingError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.reason = reason;
    /** @type {string|undefined} */
    this.method = extra.method;
    /** @type {string|undefined} */
    this.transactionId = extra.transactionId;
    /** The reject as received, when there was one. @type {object|undefined} */
    this.rejectMessage = extra.message;
  }
}

/**
 * A call that reached our room. Answer it exactly once, with `accept(sdp)` or `reject(reason)`.
 */
export class IncomingCall {
  /**
   * @param {SignalingClient} client
   * @param {Record<string, any>} msg
   */
  constructor(client, msg) {
    this.client = client;
    /** @type {string} */ this.transactionId = msg.transaction_id;
    /** @type {string} */ this.guestId = msg.guest_id;
    /** @type {string} */ this.roomId = msg.room_id;
    /** @type {string} */ this.type = msg.type;
    /** @type {string} */ this.vhost = msg.vhost;
    /** @type {string} */ this.app = msg.app;
    /** @type {string} */ this.stream = msg.stream;
    /** The caller's SDP offer. @type {string} */ this.sdp = msg.sdp;
    this.answered = false;
  }

  /** @param {"accept"|"reject"} cls @param {Record<string, string>} extra */
  #answer(cls, extra) {
    if (this.answered) throw new SignalingError("bad_message", "this call was already answered", { method: "call" });
    this.client.send({
      class: cls,
      method: "call",
      transaction_id: this.transactionId,
      guest_id: this.guestId,
      room_id: this.roomId,
      type: this.type,
      vhost: this.vhost,
      app: this.app,
      stream: this.stream,
      ...extra,
    });
    this.answered = true;
  }

  /** @param {string} sdp The SDP answer. */
  accept(sdp) {
    this.#answer("accept", { sdp });
  }

  /** @param {string} reason Shown to the caller. */
  reject(reason) {
    this.#answer("reject", { reason });
  }
}

/**
 * One signaling connection. Events (all `CustomEvent`s; the payload is `event.detail`):
 * - `call`: an `IncomingCall` into our room;
 * - `candidate`: a `CandidateMessage` (protocol form; see `toBrowserCandidate`);
 * - `bye`: a `ByeMessage`;
 * - `reject`: a `SignalingError` for a reject that answers no pending request (e.g. a candidate for an ended call);
 * - `disconnected`: `{code, reason}` of the websocket close; pending requests fail with code `disconnected`;
 * - `reconnected`: `{roomId, error}`: connected again, the room (if one was held) registered again, or `error` if that
 *   failed;
 * - `ice-servers`: a `Registration`: fresh TURN credentials, fetched on its own at 80 % of the old ones' lifetime
 *   (SPEC.md §4.6); `iceServers` returns them from now on, so every later call uses them. A server that rejects or
 *   ignores the request (ZLMediaKit) is not asked again, and the register accept's servers stay in use;
 * - `closed`: the client stopped (after `close()`, or a drop with reconnection off).
 */
export class SignalingClient extends EventTarget {
  /** @type {WebSocket|null} */ #ws = null;
  /** @type {Map<string, {method: string, resolve: (m: any) => void, reject: (e: SignalingError) => void, timer: any}>} */
  #pending = new Map();
  /** @type {string|null} */ #room = null;
  /** @type {RTCIceServer[]} */ #iceServers = [];
  #closed = false;
  #attempt = 0;
  /** @type {any} */ #retryTimer = null;
  /** @type {any} */ #refreshTimer = null;
  /** False once the server rejected or ignored an `ice_servers` request. */
  #refreshSupported = true;

  /**
   * @param {string} url `ws://host:port/signaling` or `wss://…`.
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const u = new URL(url);
    if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`signaling URL must be ws: or wss:, got ${url}`);
    this.url = u.toString();
    this.requestTimeoutMs = options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    /** @type {Required<ReconnectOptions>|null} */
    this.reconnect =
      options.reconnect === false ? null : { initialMs: 200, maxMs: 10_000, ...(options.reconnect ?? {}) };
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  }

  /** The room this session holds, or null. */
  get roomId() {
    return this.#room;
  }

  /** The ICE servers of the last registration, as `RTCIceServer`s. */
  get iceServers() {
    return this.#iceServers;
  }

  get connected() {
    return this.#ws !== null && this.#ws.readyState === 1;
  }

  /**
   * Opens the websocket. The first attempt must succeed; later drops are reconnected (unless turned off).
   * @returns {Promise<void>}
   */
  connect() {
    if (this.#closed) return Promise.reject(new SignalingError("closed", "client closed"));
    return this.#open();
  }

  /** @returns {Promise<void>} */
  #open() {
    return new Promise((resolve, reject) => {
      let opened = false;
      let ws;
      try {
        ws = new this.WebSocketImpl(this.url);
      } catch (e) {
        reject(new SignalingError("disconnected", `cannot connect to ${this.url}: ${e}`));
        return;
      }
      this.#ws = ws;
      ws.onopen = () => {
        opened = true;
        this.#attempt = 0;
        resolve();
      };
      ws.onmessage = (ev) => this.#onMessage(ev.data);
      ws.onclose = (ev) => {
        if (this.#ws === ws) this.#ws = null;
        if (!opened) {
          reject(new SignalingError("disconnected", `cannot connect to ${this.url} (close code ${ev.code})`));
          return;
        }
        this.#onDrop(ev.code, ev.reason);
      };
      // An error is always followed by a close, which does the work.
      ws.onerror = () => {};
    });
  }

  /** @param {number} code @param {string} reason */
  #onDrop(code, reason) {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new SignalingError("disconnected", "connection to the signaling server lost", { method: p.method, transactionId: id }));
    }
    this.#pending.clear();
    if (this.#closed) return;
    this.#emit("disconnected", { code, reason });
    if (!this.reconnect) {
      this.#closed = true;
      this.#room = null;
      this.#emit("closed", {});
      return;
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    const { initialMs, maxMs } = /** @type {Required<ReconnectOptions>} */ (this.reconnect);
    const base = Math.min(maxMs, initialMs * 2 ** this.#attempt);
    const delay = base * (0.8 + 0.4 * Math.random());
    this.#attempt++;
    this.#retryTimer = setTimeout(async () => {
      this.#retryTimer = null;
      if (this.#closed) return;
      try {
        await this.#open();
      } catch {
        if (!this.#closed) this.#scheduleReconnect();
        return;
      }
      const room = this.#room;
      let error = null;
      if (room !== null) {
        try {
          await this.#register(room);
        } catch (e) {
          error = e;
          // The room is lost (e.g. taken over meanwhile); the session stays open without one.
          this.#room = null;
        }
      }
      if (!this.#closed) this.#emit("reconnected", { roomId: error ? null : room, error });
    }, delay);
  }

  /** @param {string} type @param {any} detail */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** @param {any} data */
  #onMessage(data) {
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) return;
    const { class: cls, method } = msg;
    if (cls === "accept" || cls === "reject") {
      const p = this.#pending.get(msg.transaction_id);
      if (p && p.method === method) {
        this.#pending.delete(msg.transaction_id);
        clearTimeout(p.timer);
        if (cls === "accept") p.resolve(msg);
        else p.reject(rejectError(msg));
      } else if (cls === "reject") {
        this.#emit("reject", rejectError(msg));
      }
      return;
    }
    if (cls === "request" && method === "call") {
      this.#emit("call", new IncomingCall(this, msg));
    } else if (cls === "indication" && method === "candidate") {
      this.#emit("candidate", {
        guestId: msg.guest_id,
        roomId: msg.room_id,
        candidate: typeof msg.candidate === "string" ? toProtocolCandidate(msg.candidate) : "",
        ufrag: msg.ufrag ?? "",
        pwd: msg.pwd ?? "",
      });
    } else if (cls === "indication" && method === "bye") {
      this.#emit("bye", { guestId: msg.guest_id, roomId: msg.room_id, reason: msg.reason ?? null });
    }
  }

  /**
   * Sends one message as compact JSON. Throws `SignalingError("disconnected")` when the socket is not open.
   * @param {Record<string, any>} msg
   */
  send(msg) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) {
      throw new SignalingError(this.#closed ? "closed" : "disconnected", "not connected to the signaling server", {
        method: msg.method,
        transactionId: msg.transaction_id,
      });
    }
    ws.send(JSON.stringify(msg));
  }

  /**
   * Sends a request now (synchronously) and resolves with its accept; rejects with a `SignalingError`.
   * @param {Record<string, any>} msg
   * @returns {Promise<Record<string, any>>}
   */
  #request(msg) {
    return new Promise((resolve, reject) => {
      const id = msg.transaction_id;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new SignalingError("timeout", `no answer to ${msg.method} within ${this.requestTimeoutMs} ms`, {
            method: msg.method,
            transactionId: id,
          }),
        );
      }, this.requestTimeoutMs);
      // Pending before it is sent, so that no answer can overtake the bookkeeping.
      this.#pending.set(id, { method: msg.method, resolve, reject, timer });
      try {
        this.send(msg);
      } catch (e) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(e);
      }
    });
  }

  /**
   * Registers `roomId`, or lets the server assign a room when it is absent or empty.
   * @param {string} [roomId]
   * @returns {Promise<Registration>}
   */
  register(roomId) {
    return this.#register(roomId || null);
  }

  /** @param {string|null} roomId */
  async #register(roomId) {
    /** @type {Record<string, any>} */
    const msg = { class: "request", method: "register", transaction_id: randomId(32) };
    if (roomId) msg.room_id = roomId;
    const accept = await this.#request(msg);
    const room = typeof accept.room_id === "string" && accept.room_id !== "" ? accept.room_id : roomId ?? "";
    this.#room = room;
    return this.#serversArrived(accept, room);
  }

  /**
   * Fresh credentials for the room held, without giving it up (SPEC.md §4.6). The client does this on its own before
   * they expire; call it to refresh now.
   * @returns {Promise<Registration>}
   */
  async refreshIceServers() {
    const room = this.#room;
    if (room === null) throw new SignalingError("not_registered", "no room is held", { method: "ice_servers" });
    const accept = await this.#request({ class: "request", method: "ice_servers", transaction_id: randomId(32) });
    return this.#serversArrived(accept, room);
  }

  /**
   * Keeps an accept's servers and schedules the next refresh by their expiry.
   * @param {any} accept @param {string} room
   * @returns {Registration}
   */
  #serversArrived(accept, room) {
    this.#iceServers = toRTCIceServers(accept.ice_servers);
    const expire = typeof accept.ice_servers_expire === "number" ? accept.ice_servers_expire : null;
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (expire !== null && this.#refreshSupported) {
      const delay = Math.max(MIN_REFRESH_DELAY_MS, (expire * 1000 - Date.now()) * REFRESH_AT);
      this.#refreshTimer = setTimeout(() => this.#autoRefresh(), delay);
    }
    return { roomId: room, iceServers: this.#iceServers, rawIceServers: accept.ice_servers ?? [], expire };
  }

  async #autoRefresh() {
    this.#refreshTimer = null;
    if (this.#closed || this.#room === null || !this.connected) return; // a reconnect's register brings fresh ones
    try {
      this.#emit("ice-servers", await this.refreshIceServers());
    } catch (e) {
      const err = /** @type {SignalingError} */ (e);
      // Rejected or never answered: the server lacks the extension. A drop is not its fault: the re-register refreshes.
      if (err.code !== "disconnected" && err.code !== "closed") this.#refreshSupported = false;
    }
  }

  /**
   * Gives up the room held.
   * @returns {Promise<void>}
   */
  async unregister() {
    const room = this.#room;
    if (room === null) throw new SignalingError("not_registered", "no room is held", { method: "unregister" });
    await this.#request({ class: "request", method: "unregister", transaction_id: randomId(32), room_id: room });
    if (this.#room === room) {
      this.#room = null;
      clearTimeout(this.#refreshTimer);
      this.#refreshTimer = null;
    }
  }

  /**
   * Calls a room and resolves with the callee's SDP answer. The request is on the wire when this returns, so the
   * caller may start trickling candidates at once. On timeout the call is ended with a bye.
   * @param {CallOptions} call
   * @returns {Promise<string>}
   */
  call(call) {
    const msg = {
      class: "request",
      method: "call",
      transaction_id: randomId(32),
      guest_id: call.guestId,
      room_id: call.roomId,
      type: call.type ?? "play",
      vhost: call.vhost ?? DEFAULT_VHOST,
      app: call.app ?? DEFAULT_APP,
      stream: call.stream ?? call.roomId,
      sdp: call.sdp,
    };
    return this.#request(msg).then(
      (accept) => (typeof accept.sdp === "string" ? accept.sdp : ""),
      (e) => {
        if (e.code === "timeout") {
          try {
            this.bye(call.guestId, call.roomId, "call timeout");
          } catch {
            // Not connected: the server ends the call itself.
          }
        }
        throw e;
      },
    );
  }

  /**
   * Trickles one candidate (browser or protocol form; sent without the prefix).
   * @param {CandidateMessage} c
   */
  candidate(c) {
    this.send({
      class: "indication",
      method: "candidate",
      transaction_id: randomId(32),
      guest_id: c.guestId,
      room_id: c.roomId,
      candidate: toProtocolCandidate(c.candidate),
      ufrag: c.ufrag,
      pwd: c.pwd,
    });
  }

  /**
   * Ends a call. `roomId` is always the callee's room.
   * @param {string} guestId
   * @param {string} roomId
   * @param {string} [reason]
   */
  bye(guestId, roomId, reason) {
    /** @type {Record<string, any>} */
    const msg = { class: "indication", method: "bye", transaction_id: randomId(32), guest_id: guestId, room_id: roomId };
    if (reason) msg.reason = reason;
    this.send(msg);
  }

  /** Closes the connection for good (no bye is sent: the server sends them for us). */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    const ws = this.#ws;
    this.#ws = null;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new SignalingError("closed", "client closed", { method: p.method, transactionId: id }));
    }
    this.#pending.clear();
    this.#room = null;
    if (ws && ws.readyState <= 1) ws.close(1000);
    this.#emit("closed", {});
  }
}

/** @param {Record<string, any>} msg @returns {SignalingError} */
function rejectError(msg) {
  const code = typeof msg.code === "string" && msg.code !== "" ? msg.code : "rejected";
  const reason = typeof msg.reason === "string" && msg.reason !== "" ? msg.reason : "rejected";
  return new SignalingError(code, reason, { method: msg.method, transactionId: msg.transaction_id, message: msg });
}

/**
 * Glue between one call's signaling and its peer connection: local candidates are held until the call (or its
 * accept) is on the wire; remote candidates are held until the remote description is set.
 */
class CallLink {
  /** @type {string[]} */ #localQueue = [];
  /** @type {string[]} */ #remoteQueue = [];
  #sending = false;
  #closed = false;

  /**
   * @param {SignalingClient} client
   * @param {RTCPeerConnection} pc
   * @param {string} guestId
   * @param {string} roomId The callee's room.
   */
  constructor(client, pc, guestId, roomId) {
    this.client = client;
    this.pc = pc;
    this.guestId = guestId;
    this.roomId = roomId;
    pc.addEventListener("icecandidate", (ev) => {
      // A null or empty candidate marks the end of gathering; the protocol has no message for it.
      if (!ev.candidate || !ev.candidate.candidate) return;
      if (this.#sending) this.#sendLocal(ev.candidate.candidate);
      else this.#localQueue.push(ev.candidate.candidate);
    });
  }

  /** The call (or its accept) is on the wire: trickle from now on. */
  startSending() {
    this.#sending = true;
    for (const c of this.#localQueue.splice(0)) this.#sendLocal(c);
  }

  /** @param {string} candidate */
  #sendLocal(candidate) {
    if (this.#closed) return;
    const { ufrag, pwd } = iceCredentials(this.pc.localDescription?.sdp ?? "");
    try {
      this.client.candidate({ guestId: this.guestId, roomId: this.roomId, candidate, ufrag, pwd });
    } catch {
      // Signaling is down: ICE goes on with the candidates already exchanged.
    }
  }

  /** @param {string} candidate Protocol form. */
  addRemote(candidate) {
    if (this.#closed || !candidate) return;
    if (this.pc.remoteDescription) this.#applyRemote(candidate);
    else this.#remoteQueue.push(candidate);
  }

  /** The remote description is set: apply what was held. */
  remoteReady() {
    for (const c of this.#remoteQueue.splice(0)) this.#applyRemote(c);
  }

  /** @param {string} candidate */
  #applyRemote(candidate) {
    const mid = firstMid(this.pc.remoteDescription?.sdp ?? "");
    this.pc
      .addIceCandidate({ candidate: toBrowserCandidate(candidate), sdpMid: mid, sdpMLineIndex: 0 })
      .catch((e) => console.warn("switchboard: remote candidate not applied", candidate, e));
  }

  close() {
    this.#closed = true;
  }
}

/**
 * @param {RTCIceServer[]} iceServers
 * @param {boolean} relayOnly
 * @param {RTCConfiguration} [extra]
 * @returns {RTCConfiguration}
 */
function rtcConfiguration(iceServers, relayOnly, extra) {
  return {
    ...extra,
    iceServers: [...iceServers, ...(extra?.iceServers ?? [])],
    iceTransportPolicy: relayOnly ? "relay" : "all",
    bundlePolicy: "max-bundle",
    rtcpMuxPolicy: "require",
  };
}

/**
 * @param {{url?: string, client?: SignalingClient}} options
 * @returns {Promise<{client: SignalingClient, owned: boolean}>}
 */
async function clientFor(options) {
  if (options.client) return { client: options.client, owned: false };
  const client = new SignalingClient(options.url ?? defaultSignalingUrl());
  await client.connect();
  return { client, owned: true };
}

/**
 * @typedef {object} PublishOptions
 * @property {string} [url] Signaling URL; default `defaultSignalingUrl()`.
 * @property {SignalingClient} [client] A connected client holding no room (it must not be shared with another role).
 * @property {boolean} [relayOnly] Relay through TURN only (`iceTransportPolicy: "relay"`).
 * @property {RTCConfiguration} [rtcConfig] Extra peer connection settings (extra `iceServers` are appended).
 */

/**
 * A room that serves a MediaStream to every `play` caller, one RTCPeerConnection per caller. Events:
 * `viewers` (`{count}`), `disconnected`, `reconnected` (`{roomId, error}`), `closed`.
 */
export class Publication extends EventTarget {
  /** Every call from its offer on (so candidates trickled before our answer are kept); `accepted` once answered. */
  /** @type {Map<string, {pc: RTCPeerConnection, link: CallLink, accepted: boolean}>} */
  #calls = new Map();
  #closed = false;
  /** Aborted on close: removes our listeners from the client. */
  #listening = new AbortController();

  /**
   * @param {SignalingClient} client
   * @param {boolean} ownsClient
   * @param {string} roomId
   * @param {MediaStream} stream
   * @param {PublishOptions} options
   */
  constructor(client, ownsClient, roomId, stream, options) {
    super();
    this.client = client;
    this.ownsClient = ownsClient;
    this.roomId = roomId;
    this.stream = stream;
    this.options = options;
    const signal = this.#listening.signal;
    client.addEventListener("call", (ev) => this.#onCall(/** @type {CustomEvent} */ (ev).detail), { signal });
    client.addEventListener(
      "candidate",
      (ev) => {
        const c = /** @type {CustomEvent<CandidateMessage>} */ (ev).detail;
        if (c.roomId === this.roomId) this.#calls.get(c.guestId)?.link.addRemote(c.candidate);
      },
      { signal },
    );
    client.addEventListener(
      "bye",
      (ev) => {
        const b = /** @type {CustomEvent<ByeMessage>} */ (ev).detail;
        if (b.roomId === this.roomId) this.#end(b.guestId, null);
      },
      { signal },
    );
    for (const type of ["disconnected", "reconnected"]) {
      const forward = (/** @type {Event} */ ev) => this.dispatchEvent(new CustomEvent(type, { detail: /** @type {CustomEvent} */ (ev).detail }));
      client.addEventListener(type, forward, { signal });
    }
    client.addEventListener("closed", () => this.close(), { signal });
  }

  /** Callers whose call was accepted and has not ended. */
  get viewers() {
    let n = 0;
    for (const c of this.#calls.values()) if (c.accepted) n++;
    return n;
  }

  /** The peer connections of accepted calls, by guest id. @returns {Map<string, RTCPeerConnection>} */
  get peerConnections() {
    return new Map([...this.#calls].filter(([, c]) => c.accepted).map(([g, c]) => [g, c.pc]));
  }

  #changed() {
    this.dispatchEvent(new CustomEvent("viewers", { detail: { count: this.viewers } }));
  }

  /** @param {IncomingCall} call */
  async #onCall(call) {
    if (this.#closed) return;
    if (call.roomId !== this.roomId) return;
    if (call.type !== "play") {
      call.reject(`this room only serves play calls, not ${call.type}`);
      return;
    }
    if (this.#calls.has(call.guestId)) {
      call.reject(`guest_id ${call.guestId} already has a call`);
      return;
    }
    const pc = new RTCPeerConnection(rtcConfiguration(this.client.iceServers, !!this.options.relayOnly, this.options.rtcConfig));
    const link = new CallLink(this.client, pc, call.guestId, this.roomId);
    const entry = { pc, link, accepted: false };
    this.#calls.set(call.guestId, entry);
    try {
      await pc.setRemoteDescription({ type: "offer", sdp: call.sdp });
      link.remoteReady();
      let attached = 0;
      const used = new Set();
      for (const track of this.stream.getTracks()) {
        const t = pc
          .getTransceivers()
          .find((t) => !used.has(t) && t.mid !== null && t.receiver.track.kind === track.kind);
        if (!t) continue;
        used.add(t);
        t.direction = "sendonly";
        await t.sender.replaceTrack(track);
        t.sender.setStreams?.(this.stream);
        attached++;
      }
      if (attached === 0) throw new Error("the offer receives none of the published tracks");
      await pc.setLocalDescription(await pc.createAnswer());
      if (this.#calls.get(call.guestId) !== entry) return; // ended meanwhile (a bye, or close())
      call.accept(/** @type {RTCSessionDescription} */ (pc.localDescription).sdp);
    } catch (e) {
      link.close();
      pc.close();
      if (this.#calls.get(call.guestId) !== entry) return;
      this.#calls.delete(call.guestId);
      if (!call.answered) {
        try {
          call.reject(`cannot answer: ${e instanceof Error ? e.message : e}`);
        } catch {
          // Signaling is down; the server ends the call.
        }
      }
      return;
    }
    entry.accepted = true;
    link.startSending();
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") this.#end(call.guestId, "ice failed");
    });
    this.#changed();
  }

  /**
   * Ends one call; `byeReason` non-null also tells the caller.
   * @param {string} guestId
   * @param {string|null} byeReason
   */
  #end(guestId, byeReason) {
    const c = this.#calls.get(guestId);
    if (!c) return;
    this.#calls.delete(guestId);
    c.link.close();
    c.pc.close();
    if (!c.accepted) return;
    if (byeReason !== null) {
      try {
        this.client.bye(guestId, this.roomId, byeReason);
      } catch {
        // Not connected.
      }
    }
    this.#changed();
  }

  /** Hangs up every viewer, gives up the room and (if it was created here) closes the signaling client. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#listening.abort();
    for (const guestId of [...this.#calls.keys()]) this.#end(guestId, "publisher left");
    if (this.ownsClient) {
      this.client.close();
    } else {
      await this.client.unregister().catch(() => {});
    }
    this.dispatchEvent(new CustomEvent("closed", { detail: {} }));
  }
}

/**
 * Registers `roomId` and serves `stream` to every caller that plays it.
 * Rejects with a `SignalingError` (e.g. code `room_conflict` when the room is held by another session).
 * @param {string} roomId
 * @param {MediaStream} stream
 * @param {PublishOptions} [options]
 * @returns {Promise<Publication>}
 */
export async function publish(roomId, stream, options = {}) {
  if (!roomId) throw new TypeError("publish needs a room id");
  const { client, owned } = await clientFor(options);
  try {
    const reg = await client.register(roomId);
    return new Publication(client, owned, reg.roomId, stream, options);
  } catch (e) {
    if (owned) client.close();
    throw e;
  }
}

/**
 * @typedef {object} PlayOptions
 * @property {string} [url] Signaling URL; default `defaultSignalingUrl()`.
 * @property {SignalingClient} [client] A connected client holding no room (it must not be shared with another role).
 * @property {boolean} [relayOnly] Relay through TURN only (`iceTransportPolicy: "relay"`).
 * @property {string} [vhost] Default `__defaultVhost__`.
 * @property {string} [app] Default `live`.
 * @property {string} [stream] Default: the room id.
 * @property {boolean} [audio] Also receive audio (default true).
 * @property {RTCConfiguration} [rtcConfig] Extra peer connection settings (extra `iceServers` are appended).
 */

/**
 * @typedef {object} PlayStats
 * @property {number} timestamp
 * @property {string} connectionState
 * @property {number} framesDecoded Inbound video frames decoded so far.
 * @property {number|null} framesPerSecond
 * @property {number|null} frameWidth
 * @property {number|null} frameHeight
 * @property {number} bytesReceived Audio and video payload bytes so far.
 * @property {number|null} bitrateKbps Since the previous `stats()` call.
 * @property {number|null} rttMs Of the selected candidate pair.
 * @property {string|null} localCandidateType host, srflx, prflx or relay.
 * @property {string|null} remoteCandidateType
 * @property {number} packetsLost
 */

/**
 * Reads a peer connection's getStats into a `PlayStats` summary.
 * @param {RTCPeerConnection} pc
 * @param {{timestamp: number, bytesReceived: number}|null} [previous] The last summary, for the bitrate.
 * @returns {Promise<PlayStats>}
 */
export async function readStats(pc, previous = null) {
  const report = await pc.getStats();
  /** @type {any[]} */
  const all = [];
  report.forEach((s) => all.push(s));
  const byId = new Map(all.map((s) => [s.id, s]));
  let framesDecoded = 0;
  let framesPerSecond = null;
  let frameWidth = null;
  let frameHeight = null;
  let bytesReceived = 0;
  let packetsLost = 0;
  for (const s of all) {
    if (s.type !== "inbound-rtp") continue;
    bytesReceived += s.bytesReceived ?? 0;
    packetsLost += s.packetsLost ?? 0;
    if (s.kind === "video") {
      framesDecoded += s.framesDecoded ?? 0;
      framesPerSecond = s.framesPerSecond ?? framesPerSecond;
      frameWidth = s.frameWidth ?? frameWidth;
      frameHeight = s.frameHeight ?? frameHeight;
    }
  }
  let pair = null;
  for (const s of all) {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) ?? pair;
  }
  if (!pair) pair = all.find((s) => s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) ?? null;
  const local = pair ? byId.get(pair.localCandidateId) : null;
  const remote = pair ? byId.get(pair.remoteCandidateId) : null;
  const timestamp = performance.now();
  let bitrateKbps = null;
  if (previous && timestamp > previous.timestamp) {
    bitrateKbps = ((bytesReceived - previous.bytesReceived) * 8) / (timestamp - previous.timestamp);
  }
  return {
    timestamp,
    connectionState: pc.connectionState,
    framesDecoded,
    framesPerSecond,
    frameWidth,
    frameHeight,
    bytesReceived,
    bitrateKbps,
    rttMs: pair && typeof pair.currentRoundTripTime === "number" ? pair.currentRoundTripTime * 1000 : null,
    localCandidateType: local?.candidateType ?? null,
    remoteCandidateType: remote?.candidateType ?? null,
    packetsLost,
  };
}

/**
 * A playing call. `stream` is the remote MediaStream (attach it to a <video>). Events: `ended` (`{reason, by}`, with
 * `by` one of `remote` (a bye; `reason` is its reason), `local` (`close()`), `network` (ICE failed)),
 * `disconnected`, `reconnected`.
 */
export class Playback extends EventTarget {
  /** @type {PlayStats|null} */ #last = null;
  #ended = false;
  /** Aborted when the playback ends: removes our listeners from the client. */
  #listening = new AbortController();

  /**
   * @param {SignalingClient} client
   * @param {boolean} ownsClient
   * @param {RTCPeerConnection} pc
   * @param {CallLink} link
   * @param {MediaStream} stream
   * @param {string} roomId
   * @param {string} guestId
   * @param {() => void} detach Removes the listeners play() set up on the client.
   */
  constructor(client, ownsClient, pc, link, stream, roomId, guestId, detach) {
    super();
    this.detach = detach;
    this.client = client;
    this.ownsClient = ownsClient;
    this.pc = pc;
    this.link = link;
    this.stream = stream;
    /** The room played. */
    this.roomId = roomId;
    this.guestId = guestId;
    const signal = this.#listening.signal;
    client.addEventListener(
      "bye",
      (ev) => {
        const b = /** @type {CustomEvent<ByeMessage>} */ (ev).detail;
        if (b.guestId === this.guestId && b.roomId === this.roomId) this.#finish(b.reason ?? "bye", "remote", false);
      },
      { signal },
    );
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") this.#finish("connection failed", "network", true);
    });
    for (const type of ["disconnected", "reconnected"]) {
      const forward = (/** @type {Event} */ ev) => this.dispatchEvent(new CustomEvent(type, { detail: /** @type {CustomEvent} */ (ev).detail }));
      client.addEventListener(type, forward, { signal });
    }
  }

  get ended() {
    return this.#ended;
  }

  /**
   * Current stats; the bitrate is measured since the previous call.
   * @returns {Promise<PlayStats>}
   */
  async stats() {
    const s = await readStats(this.pc, this.#last);
    this.#last = s;
    return s;
  }

  /**
   * @param {string} reason
   * @param {"remote"|"local"|"network"} by
   * @param {boolean} sayBye
   */
  #finish(reason, by, sayBye) {
    if (this.#ended) return;
    this.#ended = true;
    this.#listening.abort();
    this.detach();
    this.link.close();
    if (sayBye) {
      try {
        this.client.bye(this.guestId, this.roomId, reason);
      } catch {
        // Not connected: the server ends the call when our session goes.
      }
    }
    this.pc.close();
    if (this.ownsClient) this.client.close();
    this.dispatchEvent(new CustomEvent("ended", { detail: { reason, by } }));
  }

  /** Hangs up. */
  close() {
    this.#finish("player left", "local", true);
  }
}

/**
 * Plays a room: registers a room of our own (`ringing_<16 random>`, as ZLMediaKit's player does), calls the room with
 * a recvonly offer, and resolves once the answer is applied. Rejects with a `SignalingError` (e.g. code
 * `room_not_found`, or `rejected` with the callee's reason).
 * @param {string} roomId
 * @param {PlayOptions} [options]
 * @returns {Promise<Playback>}
 */
export async function play(roomId, options = {}) {
  if (!roomId) throw new TypeError("play needs a room id");
  const { client, owned } = await clientFor(options);
  /** @type {RTCPeerConnection|null} */
  let pc = null;
  let detach = () => {};
  try {
    const reg = await client.register(`ringing_${randomId(16)}`);
    const guestId = `${reg.roomId}_${randomId(16)}`;
    pc = new RTCPeerConnection(rtcConfiguration(reg.iceServers, !!options.relayOnly, options.rtcConfig));
    pc.addTransceiver("video", { direction: "recvonly" });
    if (options.audio !== false) pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.addEventListener("track", (ev) => stream.addTrack(ev.track));
    const link = new CallLink(client, pc, guestId, roomId);
    // Candidates may come before the answer (CallLink holds them until the answer is applied).
    const onCandidate = (/** @type {Event} */ ev) => {
      const c = /** @type {CustomEvent<CandidateMessage>} */ (ev).detail;
      if (c.guestId === guestId && c.roomId === roomId) link.addRemote(c.candidate);
    };
    client.addEventListener("candidate", onCandidate);
    detach = () => client.removeEventListener("candidate", onCandidate);
    // A bye for our guest id before the answer (the callee hung up, or the server ended the call) fails the call at
    // once instead of after the request timeout.
    /** @type {(e: SignalingError) => void} */
    let failEarly = () => {};
    /** @type {Promise<never>} */
    const early = new Promise((_, reject) => (failEarly = reject));
    early.catch(() => {});
    const onEarlyBye = (/** @type {Event} */ ev) => {
      const b = /** @type {CustomEvent<ByeMessage>} */ (ev).detail;
      if (b.guestId === guestId) failEarly(new SignalingError("rejected", b.reason ?? "call ended", { method: "call" }));
    };
    client.addEventListener("bye", onEarlyBye);
    let answer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const answered = client.call({
        roomId,
        guestId,
        type: "play",
        vhost: options.vhost,
        app: options.app,
        stream: options.stream,
        sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
      });
      link.startSending();
      answer = await Promise.race([answered, early]);
    } finally {
      client.removeEventListener("bye", onEarlyBye);
    }
    // From here on the playback watches for byes (and reports one through `ended`).
    const playback = new Playback(client, owned, pc, link, stream, roomId, guestId, detach);
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: browserAnswer(answer) });
      link.remoteReady();
    } catch (e) {
      // Ended meanwhile (the pc is closed): the playback reports it.
      if (!playback.ended) throw e;
    }
    return playback;
  } catch (e) {
    detach();
    pc?.close();
    if (owned) client.close();
    else await client.unregister().catch(() => {});
    if (e instanceof SignalingError) throw e;
    throw new SignalingError("webrtc", e instanceof Error ? e.message : String(e));
  }
}
