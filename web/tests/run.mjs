// run.mjs — the browser test suite of switchboard's SDK and demo page. It starts `switchboard serve` on loopback,
// drives Debian's Chromium with playwright-core through the demo page that the server itself serves, and checks real
// media: the player's decoded video frame count (getStats, inbound-rtp video) must keep rising.
//
// Run it inside a private network namespace, so WebRTC sees loopback only (crates/cli/tests/browser.rs does this, and
// `cargo test --workspace` runs that):
//
//   unshare -n sh -c 'ip link set lo up && exec node web/tests/run.mjs --switchboard target/debug/switchboard'
//
// Options: --switchboard PATH (required), --chromium PATH (/usr/bin/chromium), --artifacts DIR
// (<repo>/target/browser-artifacts), --only NAME[,NAME…]. Every wait has a deadline; nothing sleeps and hopes.
// SB_TEST_LOG sets the servers' SWITCHBOARD_LOG filter (default "info"), e.g. "info,switchboard_server::turn=debug".
//
// With --zlm PATH (a ZLMediaKit MediaServer) --host ADDR, it runs the ZLMediaKit cases instead: the demo page against
// a real ZLMediaKit room keeper, puller and signaling server. MediaServer never uses `lo` for ICE, so those run in a
// namespace that also holds a veth pair with ADDR on it (crates/cli/tests/browser.rs makes it).

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { eachLine, freePort, startZlm } from "./zlm.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");

// ---- options ----------------------------------------------------------------------------------------------------

function parseArgs(argv) {
  const opts = {
    switchboard: null,
    chromium: "/usr/bin/chromium",
    artifacts: path.join(repo, "target/browser-artifacts"),
    only: null,
    zlm: null,
    host: "127.0.0.1",
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case "--switchboard":
        opts.switchboard = value();
        break;
      case "--chromium":
        opts.chromium = value();
        break;
      case "--artifacts":
        opts.artifacts = value();
        break;
      case "--only":
        opts.only = value().split(",").filter(Boolean);
        break;
      case "--zlm":
        opts.zlm = value();
        break;
      case "--host":
        opts.host = value();
        break;
      default:
        fail(`unknown argument ${argv[i]}`);
    }
  }
  if (!opts.switchboard) fail("--switchboard PATH is required (the switchboard binary)");
  return opts;
}

function fail(message) {
  console.error(`browser tests: ${message}`);
  process.exit(2);
}

const opts = parseArgs(process.argv.slice(2));
if (!existsSync(opts.switchboard)) fail(`switchboard binary not found at ${opts.switchboard}`);
if (!existsSync(opts.chromium)) {
  fail(`Chromium not found at ${opts.chromium}: install Debian's package (apt-get install -y chromium); CI's .ci/run does`);
}
// Outside a private network namespace WebRTC would gather (and probe) every interface of the machine.
// (/proc/self/net/dev lists this process's namespace; /sys/class/net would show the host's unless sysfs is remounted.)
const interfaces = readFileSync("/proc/self/net/dev", "utf8")
  .split("\n")
  .slice(2)
  .map((l) => l.split(":")[0].trim())
  .filter(Boolean);
// The ZLMediaKit cases add the veth pair t0/t1 (no other interface exists in such a namespace either).
const allowed = opts.zlm ? ["lo", "t0", "t1"] : ["lo"];
if (opts.zlm && !existsSync(opts.zlm)) fail(`MediaServer not found at ${opts.zlm}`);
if (interfaces.some((i) => !allowed.includes(i))) {
  fail(
    `not inside a private network namespace (interfaces: ${interfaces.join(", ")}); run: ` +
      `unshare -n sh -c 'ip link set lo up && exec node ${path.relative(process.cwd(), fileURLToPath(import.meta.url))} …'`,
  );
}
mkdirSync(opts.artifacts, { recursive: true });

/** The whole suite's budget; the Rust wrapper has a larger one. */
const SUITE_DEADLINE_MS = 170_000;
const CASE_DEADLINE_MS = 60_000;
const suiteStart = Date.now();
const suiteTimer = setTimeout(() => {
  console.error(`browser tests: the suite exceeded ${SUITE_DEADLINE_MS / 1000} s; giving up`);
  cleanup().finally(() => process.exit(1));
}, SUITE_DEADLINE_MS);

// ---- logs -------------------------------------------------------------------------------------------------------

/** Everything the server and pages said, printed when a case fails. */
let log = [];
const note = (line) => log.push(`${((Date.now() - suiteStart) / 1000).toFixed(1).padStart(6)}s ${line}`);

// ---- child processes --------------------------------------------------------------------------------------------

/** Processes started by the current case (besides the server), stopped after it. */
let caseProcs = [];

/**
 * Starts `opts.switchboard` with `args`, noting each stderr line; resolves with the process once a stderr line
 * matches `ready` (its match is returned too), or rejects after `ms`.
 * @param {string} label
 * @param {string[]} args
 * @param {RegExp} ready
 * @param {number} ms
 */
function spawnLogged(label, args, ready, ms) {
  const child = spawn(opts.switchboard, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SWITCHBOARD_LOG: process.env.SB_TEST_LOG ?? "info" } });
  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      settled = true;
      reject(new Error(`${label} logged nothing matching ${ready} within ${ms / 1000} s`));
    }, ms);
    for (const stream of [child.stdout, child.stderr]) {
      eachLine(stream, (line) => {
        note(`[${label}] ${line}`);
        const m = settled ? null : ready.exec(line);
        if (m) {
          settled = true;
          clearTimeout(timer);
          resolve({ child, match: m });
        }
      });
    }
    child.on("exit", (code, signal) => {
      note(`[${label}] exited code=${code} signal=${signal}`);
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        reject(new Error(`${label} exited (code ${code}, signal ${signal}) before it was ready`));
      }
    });
  });
}

/** SIGTERM, then SIGKILL after 10 s; resolves on exit. */
async function stopProc(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

async function stopCaseProcs() {
  const procs = caseProcs;
  caseProcs = [];
  await Promise.all(procs.map(stopProc));
}

// ---- the server -------------------------------------------------------------------------------------------------

/** @type {{child: import("node:child_process").ChildProcess, addr: string, turnAddr: string|null, tlsAddr: string|null, turnsAddr: string|null, spki: string|null}|null} */
let server = null;

/**
 * Starts `switchboard serve` on loopback and resolves once it logged its signaling address.
 * @param {{listen?: string, turnListen?: string, tls?: boolean, turns?: boolean}} [at] Fixed addresses (a restart on
 *   the same ports); default port 0. `tls`: also serve https/wss with a generated self-signed certificate
 *   (`--dev-tls`); `turns`: and TURN over TLS with it.
 */
async function startServer(at = {}) {
  const args = [
    "serve",
    "--listen", at.listen ?? `${opts.host}:0`,
    "--turn-listen", at.turnListen ?? `${opts.host}:0`,
    "--external-ip", opts.host,
    // Relayed test calls reach peers on this host, which the default peer policy denies (loopback, 10/8).
    "--turn-allow-peer", opts.host === "127.0.0.1" ? "127.0.0.0/8" : `${opts.host}/32`,
    ...(at.tls || at.turns ? ["--dev-tls", "--tls-listen", `${opts.host}:0`] : []),
    ...(at.turns ? ["--turn-tls-listen", `${opts.host}:0`] : []),
  ];
  // The listeners log in this order: signaling ("signaling listening addr=…"), wss (with TLS), then TURN.
  let addr = null;
  let tlsAddr = null;
  let turnAddr = null;
  let turnsAddr = null;
  let spki = null;
  const seen = (line) => {
    const field = (re) => re.exec(line)?.[1] ?? null;
    spki ??= field(/spki_sha256=(\S+)/);
    addr ??= field(/signaling listening.*?addr=(\S+)/);
    tlsAddr ??= field(/wss listening.*?addr=(\S+)/);
    turnAddr ??= field(/turn listening.*?addr=(\S+)/);
    turnsAddr ??= field(/turns listening.*?addr=(\S+)/);
    return addr && turnAddr && (tlsAddr || !(at.tls || at.turns)) && (turnsAddr || !at.turns) ? [line] : null;
  };
  const { child } = await spawnLogged("server", args, { exec: seen }, 15_000);
  return { child, addr, turnAddr, tlsAddr, turnsAddr, spki };
}

/** Graceful shutdown (SIGTERM), then wait for the exit, bounded. */
async function stopServer() {
  const s = server;
  server = null;
  if (s) await stopProc(s.child);
}

// ---- the browser ------------------------------------------------------------------------------------------------

/** @type {import("playwright-core").Browser|null} */
let browser = null;

const CHROMIUM_FLAGS = [
  "--allow-loopback-in-peer-connection",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  "--autoplay-policy=no-user-gesture-required",
  // Several pages play at once; a hidden or background page must keep decoding.
  "--disable-background-timer-throttling",
  "--disable-renderer-backgrounding",
  "--disable-backgrounding-occluded-windows",
];

async function launchBrowser() {
  // playwright-core gives every launch a fresh temporary --user-data-dir (and refuses one in `args`).
  // The ZLMediaKit cases run on a veth address, as a real network would: no loopback candidates there (MediaServer
  // has none either). And getUserMedia needs a secure context: localhost is one, that address is not.
  const args = opts.host === "127.0.0.1"
    ? CHROMIUM_FLAGS
    : [...CHROMIUM_FLAGS.filter((f) => f !== "--allow-loopback-in-peer-connection"),
      `--unsafely-treat-insecure-origin-as-secure=http://${server.addr}`];
  browser = await chromium.launch({ executablePath: opts.chromium, headless: true, args, timeout: 30_000 });
  note(`[browser] ${browser.version()}`);
}

/** Pages opened by the current case, closed after it. */
let openPages = [];

/**
 * Opens the demo page in a fresh browser context (a separate "person").
 * @param {string} label
 * @param {{relay?: boolean, width?: number, height?: number, https?: boolean, onlyTurns?: boolean}} [o] `https`: load
 *   the page from the TLS listener (self-signed, so certificate errors are ignored) and signal over wss. `onlyTurns`:
 *   every peer connection keeps only the `turns:` entries of its ICE servers (kept, with the connections, in
 *   `window.__iceUrls` and `window.__pcs`).
 */
async function openDemo(label, o = {}) {
  const viewport = { width: o.width ?? 1280, height: o.height ?? 800 };
  const context = await browser.newContext({ viewport, ignoreHTTPSErrors: Boolean(o.https) });
  const page = await context.newPage();
  await watchPage(label, page);
  if (o.onlyTurns) {
    await page.addInitScript(() => {
      const Native = window.RTCPeerConnection;
      window.__pcs = [];
      window.__iceUrls = [];
      window.RTCPeerConnection = function (config = {}) {
        const urls = (s) => (Array.isArray(s.urls) ? s.urls : [s.urls]);
        const iceServers = (config.iceServers ?? [])
          .map((s) => ({ ...s, urls: urls(s).filter((u) => u.startsWith("turns:")) }))
          .filter((s) => s.urls.length > 0);
        window.__iceUrls.push(...iceServers.flatMap((s) => s.urls));
        const pc = new Native({ ...config, iceServers });
        window.__pcs.push(pc);
        return pc;
      };
      window.RTCPeerConnection.prototype = Native.prototype;
    });
  }
  const entry = { label, page, context, response: null };
  openPages.push(entry);
  entry.response = await page.goto(o.https ? `https://${server.tlsAddr}/` : `http://${server.addr}/`);
  const scheme = o.https ? "wss://" : "ws://";
  await page.waitForFunction((s) => document.getElementById("server-url")?.textContent?.startsWith(s), scheme);
  if (o.relay) await page.check("#relay-only");
  return entry;
}

/**
 * Content-Security-Policy violations seen by any page of the current case. The runner fails a case that leaves any:
 * the demo page and SDK must satisfy the policy the server sends (only `content-security-policy` provokes some, and
 * takes them out once it has checked them).
 * @type {string[]}
 */
let cspViolations = [];

/** Logs what `page` says and collects its CSP violations (Chromium's console report and the DOM event both). */
function watchPage(label, page) {
  page.setDefaultTimeout(15_000);
  page.on("console", (m) => {
    const text = m.text();
    note(`[${label} console.${m.type()}] ${text}`);
    if (text.includes("Content Security Policy") || text.startsWith("csp-violation:")) cspViolations.push(`[${label}] ${text}`);
  });
  page.on("pageerror", (e) => note(`[${label} pageerror] ${e.message}`));
  page.on("crash", () => note(`[${label}] page crashed`));
  return page.addInitScript(() =>
    document.addEventListener("securitypolicyviolation", (e) =>
      console.error(`csp-violation: ${e.effectiveDirective} refused ${e.blockedURI || "inline code"} (${e.sourceFile}:${e.lineNumber})`),
    ),
  );
}

async function closePages() {
  const pages = openPages;
  openPages = [];
  await Promise.all(pages.map((p) => p.context.close().catch(() => {})));
}

/** A room id unique to this run. */
const room = (name) => `${name}-${Math.random().toString(36).slice(2, 8)}`;

/** Text of a section's on-screen message, or null when hidden. */
async function message(page, section) {
  return page.evaluate((s) => {
    const el = document.getElementById(`${s}-message`);
    return el && !el.hidden ? { text: el.textContent, code: el.dataset.code ?? null } : null;
  }, section);
}

/** Publishes `roomId` from the demo page; resolves once the room is registered. */
async function publishFrom(p, roomId) {
  await p.page.fill("#publish-room", roomId);
  await p.page.click("#publish-button");
  await p.page.waitForFunction(
    () => document.getElementById("viewer-badge").classList.contains("live") || !document.getElementById("publish-message").hidden,
  );
  const m = await message(p.page, "publish");
  if (m) throw new Error(`${p.label}: publish failed on screen: ${m.text}`);
  note(`[${p.label}] publishing ${roomId}`);
}

/** Plays `roomId` from the demo page; resolves once the call is answered. */
async function playFrom(p, roomId) {
  await p.page.fill("#play-room", roomId);
  await p.page.click("#play-button");
  await p.page.waitForFunction(
    () => document.getElementById("play-button").textContent === "Stop" || !document.getElementById("play-message").hidden,
  );
  const m = await message(p.page, "play");
  if (m) throw new Error(`${p.label}: play failed on screen: ${m.text}`);
  note(`[${p.label}] playing ${roomId}`);
}

const frames = (p) => p.page.evaluate(() => Number(document.getElementById("play-stats").dataset.framesDecoded ?? 0));

/**
 * The player's framesDecoded (getStats inbound-rtp video, shown by the page every second) must be positive and then
 * rise twice more by at least `step` frames: media flows and keeps flowing.
 */
async function expectFramesRising(p, step = 15) {
  await p.page.waitForFunction(() => Number(document.getElementById("play-stats").dataset.framesDecoded) > 0, null, {
    timeout: 20_000,
    polling: 200,
  });
  for (let i = 0; i < 2; i++) {
    const before = await frames(p);
    await p.page.waitForFunction(
      (min) => Number(document.getElementById("play-stats").dataset.framesDecoded) >= min,
      before + step,
      { timeout: 10_000, polling: 200 },
    );
  }
  const after = await frames(p);
  note(`[${p.label}] framesDecoded rising: ${after}`);
  return after;
}

async function candidateTypes(p) {
  await p.page.waitForFunction(() => document.getElementById("play-stats").dataset.localType, null, { polling: 200 });
  return p.page.evaluate(() => {
    const d = document.getElementById("play-stats").dataset;
    return { local: d.localType, remote: d.remoteType };
  });
}

/** Relay-only publish and play whose only ICE server is `turns:`; both selected pairs are relayed over TLS. */
async function turnsCall() {
  const r = room("turns");
  const pub = await openDemo("publisher", { relay: true, onlyTurns: true });
  await publishFrom(pub, r);
  const viewer = await openDemo("viewer", { relay: true, onlyTurns: true });
  await playFrom(viewer, r);
  await expectFramesRising(viewer);
  const want = `turns:${server.turnsAddr}?transport=tcp`;
  for (const p of [pub, viewer]) {
    const seen = await p.page.evaluate(() => window.__iceUrls);
    assert(seen.length > 0 && seen.every((u) => u === want), `[${p.label}] the only ICE server is ${want}, got ${JSON.stringify(seen)}`);
    const relay = await p.page.evaluate(async () => {
      for (const pc of window.__pcs) {
        const stats = await pc.getStats();
        for (const s of stats.values()) {
          if (s.type !== "candidate-pair" || s.state !== "succeeded" || !s.nominated) continue;
          const local = stats.get(s.localCandidateId);
          if (local) return { type: local.candidateType, protocol: local.relayProtocol };
        }
      }
      return null;
    });
    assert(relay?.type === "relay" && relay.protocol === "tls", `[${p.label}] the selected pair is relayed over TLS, got ${JSON.stringify(relay)}`);
  }
}

async function waitViewers(p, n) {
  await p.page.waitForFunction((n) => document.getElementById("viewer-badge").dataset.count === String(n), n, { polling: 200 });
}

function assert(cond, text) {
  if (!cond) throw new Error(`assertion failed: ${text}`);
}

/** A 3-second 320x240 30 fps baseline H.264 clip (Annex-B) made with ffmpeg, once per run; its path. */
let clipPath = null;
function h264Clip() {
  if (clipPath) return clipPath;
  const dir = mkdtempSync(path.join(tmpdir(), "switchboard-browser-"));
  const out = path.join(dir, "testsrc.h264");
  const args = ["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "3",
    "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", "30", "-bsf:v", "h264_mp4toannexb", "-f", "h264", out];
  const r = spawnSync("ffmpeg", args, { encoding: "utf8", timeout: 60_000 });
  if (r.error) throw new Error(`ffmpeg is needed for the test clip (Debian: apt-get install -y ffmpeg): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`ffmpeg failed: ${r.stderr}`);
  clipPath = out;
  return out;
}

// ---- the cases ----------------------------------------------------------------------------------------------------

const cases = [
  {
    name: "publish-and-play",
    about: "(a) a browser publishes in one page and plays in another; frames decoded rise; screenshots",
    async run() {
      const r = room("cam");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const viewer = await openDemo("viewer");
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      await waitViewers(pub, 1);
      // Screenshots: the publisher page also plays its own room, so both sections are live.
      await playFrom(pub, r);
      await expectFramesRising(pub);
      await waitViewers(pub, 2);
      await pub.page.screenshot({ path: path.join(opts.artifacts, "demo.png"), fullPage: true });
      await pub.page.setViewportSize({ width: 375, height: 812 });
      const overflow = await pub.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      await pub.page.screenshot({ path: path.join(opts.artifacts, "demo-375.png"), fullPage: true });
      assert(overflow <= 0, `at 375 px the page is ${overflow} px wider than the viewport`);
    },
  },
  {
    name: "content-security-policy",
    about: "the page comes with a CSP, frame and referrer protection; inline script and framing are refused",
    async run() {
      const p = await openDemo("page");
      const h = p.response.headers();
      for (const directive of ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"]) {
        assert(h["content-security-policy"]?.includes(directive), `CSP has ${directive}: ${h["content-security-policy"]}`);
      }
      assert(h["x-frame-options"] === "DENY", `X-Frame-Options: ${h["x-frame-options"]}`);
      assert(h["referrer-policy"] === "no-referrer", `Referrer-Policy: ${h["referrer-policy"]}`);
      assert(cspViolations.length === 0, `the page itself violates its CSP: ${cspViolations.join("; ")}`);
      // Injected inline script does not run, and is reported.
      const ran = await p.page.evaluate(() => {
        const s = document.createElement("script");
        s.textContent = "window.injectedRan = true";
        document.head.append(s);
        // @ts-ignore: set by the injected script if it ran.
        return window.injectedRan === true;
      });
      assert(!ran, "an injected inline script ran");
      await waitFor("the inline script's violation report", 5_000, async () => cspViolations.some((v) => v.includes("script-src")));
      // Another page cannot frame it.
      const framerContext = await browser.newContext();
      openPages.push({ label: "framer", page: await framerContext.newPage(), context: framerContext });
      const framer = openPages[openPages.length - 1].page;
      await watchPage("framer", framer);
      await framer.setContent(`<iframe id="f" src="http://${server.addr}/"></iframe>`);
      await waitFor("the framing violation report", 10_000, async () => cspViolations.some((v) => v.includes("frame-ancestors")));
      const framed = framer.frames().find((f) => f !== framer.mainFrame());
      const inside = await framed?.evaluate(() => Boolean(document.getElementById("publish"))).catch(() => false);
      assert(!inside, `the framed page rendered (${framed?.url()})`);
      cspViolations = [];
    },
  },
  {
    name: "relay-only",
    about: "(b) both pages relay only, through the built-in TURN; frames rise and the selected pair is relay",
    async run() {
      const r = room("relay");
      const pub = await openDemo("publisher", { relay: true });
      await publishFrom(pub, r);
      const viewer = await openDemo("viewer", { relay: true });
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      const types = await candidateTypes(viewer);
      assert(types.local === "relay" && types.remote === "relay", `selected pair is relay → relay, got ${JSON.stringify(types)}`);
      const path = await viewer.page.textContent("#stat-path");
      assert(path === "relay → relay", `the page shows the relay path, got ${path}`);
    },
  },
  {
    name: "turns-relay-only",
    about: "relay only, the pages' only ICE server the built-in server's turns: (TURN over TLS); frames rise over a TLS relay",
    async run() {
      await stopServer();
      server = await startServer({ turns: true });
      assert(server.spki, "the server logs its development certificate's spki_sha256");
      // Chromium checks a turns: server's certificate as it checks a web server's: this browser trusts exactly this one.
      const suiteBrowser = browser;
      browser = await chromium.launch({
        executablePath: opts.chromium,
        headless: true,
        args: [...CHROMIUM_FLAGS, `--ignore-certificate-errors-spki-list=${server.spki}`],
        timeout: 30_000,
      });
      try {
        await turnsCall();
      } finally {
        await closePages();
        await browser.close();
        browser = suiteBrowser;
        await stopServer();
      }
    },
  },
  {
    name: "publisher-hangs-up",
    about: "(c) the publisher closes its page; the player page shows the hang-up message",
    async run() {
      const r = room("hangup");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const viewer = await openDemo("viewer");
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      await pub.page.close();
      await viewer.page.waitForFunction(() => {
        const el = document.getElementById("play-message");
        return !el.hidden && /hung up/.test(el.textContent);
      }, null, { timeout: 10_000, polling: 200 });
      const m = await message(viewer.page, "play");
      note(`[viewer] message: ${m.text}`);
      assert(/peer unregister|publisher left/.test(m.text), `the reason is shown: ${m.text}`);
      assert((await viewer.page.textContent("#play-button")) === "Play", "the play button is back");
    },
  },
  {
    name: "two-viewers",
    about: "(d) two viewers of one publisher; both rise, the publisher shows 2 viewers",
    async run() {
      const r = room("two");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const v1 = await openDemo("viewer1");
      const v2 = await openDemo("viewer2");
      await Promise.all([playFrom(v1, r), playFrom(v2, r)]);
      await Promise.all([expectFramesRising(v1), expectFramesRising(v2)]);
      await waitViewers(pub, 2);
      assert((await pub.page.textContent("#viewer-badge")).replace(/\s+/g, " ").trim() === "2 viewers", "the badge reads 2 viewers");
      // One viewer leaves: the count follows.
      await v1.page.click("#play-button");
      await waitViewers(pub, 1);
    },
  },
  {
    name: "errors-on-screen",
    about: "room not found and room conflict are shown with their reject code",
    async run() {
      const r = room("taken");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const other = await openDemo("other");
      await other.page.fill("#play-room", room("nobody"));
      await other.page.click("#play-button");
      await other.page.waitForFunction(() => document.getElementById("play-message").dataset.code === "room_not_found");
      await other.page.fill("#publish-room", r);
      await other.page.click("#publish-button");
      await other.page.waitForFunction(() => document.getElementById("publish-message").dataset.code === "room_conflict");
      const m = await message(other.page, "publish");
      assert(m.text.includes("already taken") && m.text.includes("room_conflict"), `conflict message: ${m.text}`);
      await other.page.screenshot({ path: path.join(opts.artifacts, "errors.png"), fullPage: true });
    },
  },
  {
    name: "peer-serve",
    about: "(e) the browser plays a `switchboard peer serve` room (H.264 from a file, webrtc-rs)",
    async run() {
      const clip = h264Clip();
      const r = room("keeper");
      const keeper = await spawnLogged(
        "peer serve",
        ["peer", "serve", "--server", `ws://${server.addr}/signaling`, "--room", r, "--media", clip, "--bind", "127.0.0.1:0",
          "--record-dir", path.dirname(clip)],
        /room keeper ready/,
        15_000,
      );
      caseProcs.push(keeper.child);
      const viewer = await openDemo("viewer");
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
    },
  },
  {
    name: "peer-play",
    about: "`switchboard peer play` plays a room the page publishes (its offer says a=setup:passive, so Chromium must take the DTLS client role)",
    async run() {
      const r = room("cam");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const player = await spawnLogged(
        "peer play",
        ["peer", "play", "--server", `ws://${server.addr}/signaling`, "--room", r, "--bind", "127.0.0.1:0", "--duration", "5s",
          "--min-frames", "30"],
        /^summary: .*frames=(\d+)/,
        40_000,
      );
      caseProcs.push(player.child);
      const frames = Number(player.match[1]);
      assert(frames >= 30, `peer play received ${frames} frames`);
      const code = await new Promise((resolve) => {
        if (player.child.exitCode !== null) resolve(player.child.exitCode);
        else player.child.on("exit", (c) => resolve(c));
      });
      assert(code === 0, `peer play exited with ${code}`);
      await waitViewers(pub, 0);
    },
  },
  {
    name: "https-wss",
    about: "the page served over https (--dev-tls) signals over wss; publish and play work there too",
    async run() {
      await stopServer();
      server = await startServer({ tls: true });
      const r = room("tls");
      const pub = await openDemo("publisher", { https: true });
      await publishFrom(pub, r);
      const viewer = await openDemo("viewer", { https: true });
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      await closePages();
      await stopServer();
    },
  },
  {
    name: "signaling-restart",
    about: "graceful restart: media keeps flowing, pages show the drop, the SDK reconnects and re-registers",
    async run() {
      const r = room("restart");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const viewer = await openDemo("viewer");
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      const { addr, turnAddr } = server;
      await stopServer();
      await pub.page.waitForFunction(() => document.getElementById("publish-message").dataset.code === "disconnected");
      await viewer.page.waitForFunction(() => document.getElementById("play-message").dataset.code === "disconnected");
      // Peer-to-peer media survives the signaling restart (SPEC.md §6: graceful shutdown sends no bye).
      await expectFramesRising(viewer);
      server = await startServer({ listen: addr, turnListen: turnAddr ?? "127.0.0.1:0" });
      await pub.page.waitForFunction(() => /reconnected/.test(document.getElementById("publish-status").textContent), null, {
        timeout: 20_000,
        polling: 200,
      });
      assert((await message(pub.page, "publish")) === null, "the disconnected message is gone");
      // The room was registered again: a new viewer can play it.
      const late = await openDemo("late-viewer");
      await playFrom(late, r);
      await expectFramesRising(late);
    },
  },
];

// ---- the ZLMediaKit cases (--zlm) ------------------------------------------------------------------------------

/** MediaServers started by the current case, stopped after it. */
let caseZlms = [];

/**
 * Starts a MediaServer for the current case.
 * @param {string} name @param {[number, number]} ports Its WebRTC UDP port range. @param {string[]} [rtc] `[rtc]` lines.
 */
async function zlm(name, ports, rtc = []) {
  const z = await startZlm({ bin: /** @type {string} */ (opts.zlm), host: opts.host, name, ports, rtc, note });
  caseZlms.push(z);
  return z;
}

async function stopZlms() {
  const all = caseZlms;
  caseZlms = [];
  await Promise.all(all.map((z) => z.stop()));
}

const serverPort = () => Number(server.addr.split(":").pop());

/**
 * Polls `probe` until it returns something truthy (returned), or throws at the deadline with the last error.
 * @template T @param {string} what @param {number} ms @param {() => Promise<T>} probe @returns {Promise<T>}
 */
async function waitFor(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms / 1000} s${last ? ` (last error: ${last})` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The guests ZLMediaKit's keeper lists for `roomId` (one per call in progress). */
async function keeperGuests(keeper, roomId) {
  const v = await keeper.ok("listWebrtcRoomKeepers");
  return (v.data ?? []).filter((/** @type {any} */ r) => r.room_id === roomId).flatMap((/** @type {any} */ r) => r.guests ?? []);
}

/** Registers `roomId` on `host:port` from ZLMediaKit's keeper, serving `live/{roomId}` (the stream a caller names). */
async function keeperRoom(keeper, host, port, roomId) {
  await keeper.loadClip(roomId);
  await keeper.ok("addWebrtcRoomKeeper", { server_host: host, server_port: port, room_id: roomId, ssl: 0 });
}

/** Plays `roomId` in `p`'s page with the SDK alone, against the signaling server at `url`. */
async function sdkPlay(p, url, roomId, relayOnly = false) {
  await p.page.evaluate(
    async ({ url, roomId, relayOnly }) => {
      const sdk = await import("/switchboard.js");
      // @ts-ignore: test hook.
      window.sdkPlayback = await sdk.play(roomId, { url, relayOnly });
    },
    { url, roomId, relayOnly },
  );
  note(`[${p.label}] SDK playing ${roomId} via ${url}${relayOnly ? " (relay only)" : ""}`);
  const stats = () => p.page.evaluate(async () => /** @type {any} */ (window).sdkPlayback.stats());
  const first = await waitFor(`${p.label}: decoded frames`, 20_000, async () => ((await stats()).framesDecoded > 0 ? await stats() : null));
  const last = await waitFor(`${p.label}: frames keep rising`, 10_000, async () => {
    const s = await stats();
    return s.framesDecoded >= first.framesDecoded + 15 ? s : null;
  });
  note(`[${p.label}] framesDecoded ${last.framesDecoded}, path ${last.localCandidateType} → ${last.remoteCandidateType}`);
  return last;
}

const zlmCases = [
  {
    name: "zlm-keeper-to-demo-page",
    about: "the demo page plays a ZLMediaKit keeper's room through switchboard; the path indicator says host, then relay",
    async run() {
      const keeper = await zlm("keeper", [42000, 42999]);
      const r = room("zlmcam");
      await keeperRoom(keeper, opts.host, serverPort(), r);
      const viewer = await openDemo("viewer");
      await playFrom(viewer, r);
      await expectFramesRising(viewer);
      const direct = await viewer.page.textContent("#stat-path");
      assert(direct === "host → host", `the page shows the direct path, got ${direct}`);
      const relayed = await openDemo("relay-viewer", { relay: true });
      await playFrom(relayed, r);
      await expectFramesRising(relayed);
      const via = await relayed.page.textContent("#stat-path");
      assert(via?.startsWith("relay → "), `the page shows the relayed path, got ${via}`);
      await waitFor("two guests on the keeper", 10_000, async () => (await keeperGuests(keeper, r)).length === 2);
      // Stop on one page: its bye reaches the keeper, which drops that guest.
      await viewer.page.click("#play-button");
      await waitFor("the keeper drops the stopped viewer", 10_000, async () => (await keeperGuests(keeper, r)).length === 1);
      await viewer.page.screenshot({ path: path.join(opts.artifacts, "zlm-keeper.png"), fullPage: true });
    },
  },
  {
    name: "demo-page-publish-to-zlm-puller",
    about: "the demo page publishes; ZLMediaKit's P2P puller pulls that room through switchboard, frames growing",
    async run() {
      const r = room("browsercam");
      const pub = await openDemo("publisher");
      await publishFrom(pub, r);
      const puller = await zlm("puller", [43000, 43999]);
      const url = `webrtc://${opts.host}:${serverPort()}/live/${r}?signaling_protocols=1&peer_room_id=${r}`;
      const v = await puller.call("addStreamProxy", { vhost: "__defaultVhost__", app: "live", stream: r, url, retry_count: 0, timeout_sec: 20 });
      assert(v.code === 0, `the pull failed: ${JSON.stringify(v)}`);
      const first = await waitFor("the puller's video", 20_000, async () => {
        const t = await puller.video(r);
        return t && t.frames >= 10 ? t : null;
      });
      const later = await waitFor("the puller's frames keep growing", 10_000, async () => {
        const t = await puller.video(r);
        return t && t.frames > first.frames ? t : null;
      });
      note(`[puller] live/${r}: ${later.codec}, ${later.frames} frames`);
      await waitViewers(pub, 1);
      await puller.ok("delStreamProxy", { key: `__defaultVhost__/live/${r}` });
      await waitViewers(pub, 0);
    },
  },
  {
    name: "sdk-on-zlm-signaling",
    about: "the SDK against a ZLMediaKit signaling server: browser to browser, over its TURN, and a ZLMediaKit keeper",
    async run() {
      const [signaling, ice] = [await freePort(opts.host), await freePort(opts.host)];
      const z = await zlm("signaling", [44000, 44999], [`signalingPort=${signaling}`, `icePort=${ice}`, `iceTcpPort=${ice}`]);
      const url = `ws://${opts.host}:${signaling}/signaling`;
      const r = room("onzlm");
      const pub = await openDemo("publisher");
      await pub.page.evaluate(
        async ({ url, r }) => {
          const sdk = await import("/switchboard.js");
          const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
          // @ts-ignore: test hook.
          window.sdkPublication = await sdk.publish(r, media, { url });
        },
        { url, r },
      );
      const viewer = await openDemo("viewer");
      const direct = await sdkPlay(viewer, url, r);
      assert(direct.localCandidateType === "host", `direct path, got ${direct.localCandidateType}`);
      const relayed = await openDemo("relay-viewer");
      const via = await sdkPlay(relayed, url, r, true);
      assert(via.localCandidateType === "relay", `relayed through ZLMediaKit's TURN, got ${via.localCandidateType}`);
      // A ZLMediaKit keeper on ZLMediaKit's own signaling, played by the SDK.
      const k = room("zlmkeeper");
      await keeperRoom(z, opts.host, signaling, k);
      await sdkPlay(await openDemo("keeper-viewer"), url, k);
    },
  },
].map((c) => ({ ...c, zlm: true }));
cases.push(...zlmCases);

// ---- runner -----------------------------------------------------------------------------------------------------

async function cleanup() {
  clearTimeout(suiteTimer);
  await closePages().catch(() => {});
  await stopCaseProcs().catch(() => {});
  await stopZlms().catch(() => {});
  if (clipPath) rmSync(path.dirname(clipPath), { recursive: true, force: true });
  await browser?.close().catch(() => {});
  await stopServer().catch(() => {});
}

async function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} exceeded ${ms / 1000} s`)), ms)));
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

async function main() {
  // With --zlm only the ZLMediaKit cases run (their network is not loopback alone), without it only the others.
  const suite = cases.filter((c) => Boolean(c.zlm) === Boolean(opts.zlm));
  const selected = opts.only ? suite.filter((c) => opts.only.includes(c.name)) : suite;
  if (opts.only && selected.length !== opts.only.length) fail(`unknown case in --only; cases: ${suite.map((c) => c.name).join(", ")}`);
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  try {
    server = await startServer();
    await launchBrowser();
  } catch (e) {
    console.log(log.join("\n"));
    console.error(`browser tests: setup failed: ${e.stack ?? e}`);
    await cleanup();
    process.exit(1);
  }
  console.log(`browser tests: ${browser.version()}, switchboard at ${server.addr}, artifacts in ${opts.artifacts}`);
  for (const [i, c] of selected.entries()) {
    const n = i + 1;
    if (c.skip) {
      skipped++;
      console.log(`ok ${n} - ${c.name} # SKIP ${c.skip}`);
      continue;
    }
    log = [];
    cspViolations = [];
    const start = Date.now();
    try {
      if (!server) server = await startServer();
      await withDeadline(c.run(), CASE_DEADLINE_MS, c.name);
      assert(cspViolations.length === 0, `Content-Security-Policy violations:\n  ${cspViolations.join("\n  ")}`);
      passed++;
      console.log(`ok ${n} - ${c.name} (${((Date.now() - start) / 1000).toFixed(1)} s): ${c.about}`);
    } catch (e) {
      failed++;
      console.log(`not ok ${n} - ${c.name} (${((Date.now() - start) / 1000).toFixed(1)} s): ${c.about}`);
      console.log(`  error: ${(e.stack ?? String(e)).split("\n").join("\n  ")}`);
      for (const p of openPages) {
        const file = path.join(opts.artifacts, `failed-${c.name}-${p.label}.png`);
        if (!p.page.isClosed()) await p.page.screenshot({ path: file, fullPage: true }).catch(() => {});
      }
      console.log(`  log:\n    ${log.join("\n    ")}`);
    }
    await closePages();
    await stopCaseProcs();
    await stopZlms();
  }
  await cleanup();
  const total = ((Date.now() - suiteStart) / 1000).toFixed(1);
  console.log(`browser tests finished in ${total} s`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(failed ? 1 : 0);
}

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    cleanup().finally(() => process.exit(130));
  });
}

main();
