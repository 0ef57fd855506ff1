// zlm.mjs — a real ZLMediaKit MediaServer for the browser suite's interop cases (run.mjs --zlm PATH).
//
// Invariants: every MediaServer runs in a scratch directory of its own, on the given host (a veth address: it never
// uses `lo` for ICE), with its HTTP API on a free port; it is stopped (SIGTERM, then SIGKILL) and its directory removed
// by `stop()`. Every API call has a deadline. Its output goes to the `note` callback, so a failing case shows it.
// The Rust twin of this harness is crates/cli/tests/zlm/mod.rs; the config keys are those of ../shared/zlm/README.md.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

const SECRET = "zlmsecret";

/**
 * Calls `fn` with each complete line `stream` yields.
 * @param {import("node:stream").Readable} stream @param {(line: string) => void} fn
 */
export function eachLine(stream, fn) {
  let buffered = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      fn(line);
    }
  });
}

/** A TCP port free on `host` right now (the namespace is the test's own, so it stays free). */
export function freePort(host) {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, host, () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (s.address());
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts MediaServer as `name` and resolves once its HTTP API answers.
 * @param {{bin: string, host: string, name: string, ports: [number, number], rtc?: string[], note: (line: string) => void}} o
 *   `rtc`: extra `[rtc]` lines, e.g. `signalingPort=…`.
 */
export async function startZlm(o) {
  const dir = mkdtempSync(path.join(tmpdir(), `switchboard-zlm-${o.name}-`));
  const apiPort = await freePort(o.host);
  const config = [
    "[api]", "apiDebug=1", `secret=${SECRET}`,
    "[general]", `mediaServerId=${o.name}`, `listen_ip=${o.host}`,
    "[hook]", "enable=0",
    "[http]", `port=${apiPort}`, "sslport=0",
    "[rtsp]", "port=0", "sslport=0",
    "[rtmp]", "port=0", "sslport=0",
    "[rtp_proxy]", "port=0",
    "[shell]", "port=0",
    "[onvif]", "port=0",
    "[srt]", "port=0",
    "[protocol]", "enable_hls=0", "enable_mp4=0",
    "[rtc]", "signalingPort=0", "signalingSslPort=0", "icePort=0", "iceTcpPort=0", "enableTurn=1", `externIP=${o.host}`,
    "port=0", "tcpPort=0", `port_range=${o.ports[0]}-${o.ports[1]}`, ...(o.rtc ?? []),
  ].join("\n");
  writeFileSync(path.join(dir, "config.ini"), config + "\n");
  const child = spawn(o.bin, ["-c", "config.ini", "-l", "0", "--log-dir", "./log/", "-t", "2"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  // MediaServer colours its log; the escapes only make a failure report harder to read.
  for (const stream of [child.stdout, child.stderr]) eachLine(stream, (line) => o.note(`[zlm ${o.name}] ${line.replace(/\x1b\[[0-9;]*m/g, "")}`));
  child.on("exit", (code, signal) => o.note(`[zlm ${o.name}] exited code=${code} signal=${signal}`));
  const api = `http://${o.host}:${apiPort}`;

  /** `GET /index/api/{method}` with `query`; the parsed JSON. */
  const call = async (/** @type {string} */ method, /** @type {Record<string, string|number>} */ query = {}) => {
    const q = new URLSearchParams({ secret: SECRET, ...Object.fromEntries(Object.entries(query).map(([k, v]) => [k, String(v)])) });
    const res = await fetch(`${api}/index/api/${method}?${q}`, { signal: AbortSignal.timeout(25_000) });
    if (!res.ok) throw new Error(`zlm ${o.name} ${method}: HTTP ${res.status}`);
    return /** @type {any} */ (await res.json());
  };
  /** Like `call`, and throws unless `code` is 0. */
  const ok = async (/** @type {string} */ method, /** @type {Record<string, string|number>} */ query = {}) => {
    const v = await call(method, query);
    if (v.code !== 0) throw new Error(`zlm ${o.name} ${method} failed: ${JSON.stringify(v)}`);
    return v;
  };

  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await call("getServerConfig");
      break;
    } catch (e) {
      if (child.exitCode !== null || Date.now() > deadline) {
        throw new Error(`zlm ${o.name}: its HTTP API never answered (${e}); exit code ${child.exitCode}`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  return {
    child,
    call,
    ok,
    /**
     * Serves `live/{stream}` from a looped 20 s H.264 MP4 made with ffmpeg: baseline profile, as a camera sends (no
     * B-frames: WebRTC's H.264 decoders in browsers expect none, and stall after the first keyframe otherwise).
     */
    async loadClip(/** @type {string} */ stream) {
      const file = path.join(dir, `${stream}.mp4`);
      const args = ["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "20",
        "-c:v", "libx264", "-profile:v", "baseline", "-bf", "0", "-g", "25", "-pix_fmt", "yuv420p", file];
      const r = spawnSync("ffmpeg", args, { encoding: "utf8", timeout: 60_000 });
      if (r.status !== 0) throw new Error(`ffmpeg failed: ${r.error ?? r.stderr}`);
      await ok("loadMP4File", { vhost: "__defaultVhost__", app: "live", stream, file_path: file, file_repeat: 1 });
    },
    /** The video track of `live/{stream}` (codec name and frame count), or null while it is not online. */
    async video(/** @type {string} */ stream) {
      const v = await call("getMediaList", { app: "live", stream });
      const track = v.data?.[0]?.tracks?.find((/** @type {any} */ t) => t.codec_type === 0);
      return typeof track?.frames === "number" ? { codec: String(track.codec_id_name), frames: track.frames } : null;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
