// demo.js — the logic of the switchboard demo page (index.html): publish a camera/microphone into a room and play a
// room, through the signaling server that served the page (ws:// or wss:// as the page, path /signaling), using the
// SDK in switchboard.js. Errors are shown on the page with their reject code.
//
// For automated tests the page also exposes its state: `#play-stats` carries `data-frames-decoded`,
// `data-local-type` and `data-remote-type`; `#viewer-badge` carries `data-count`; `window.switchboardDemo` holds the
// current publication and playback.

import { defaultSignalingUrl, play, publish, randomId, SignalingError } from "./switchboard.js";

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

const signalingUrl = defaultSignalingUrl();
const params = new URLSearchParams(location.search);

/** @type {{publication: import("./switchboard.js").Publication|null, playback: import("./switchboard.js").Playback|null}} */
const state = { publication: null, playback: null };
// @ts-ignore: debugging and test hook.
window.switchboardDemo = state;

/** @type {MediaStream|null} */
let localStream = null;
/** @type {any} */
let statsTimer = null;

$("server-url").textContent = signalingUrl;
$("publish-room").value = params.get("room") ?? `demo-${randomId(6).toLowerCase()}`;
$("play-room").value = params.get("room") ?? "";
if (params.get("relay") === "1") $("relay-only").checked = true;

const relayOnly = () => /** @type {boolean} */ ($("relay-only").checked);

/**
 * A human sentence for an error, with its code.
 * @param {any} err
 * @param {string} room
 * @returns {{text: string, code: string|null}}
 */
function describe(err, room) {
  if (err instanceof SignalingError) {
    const texts = {
      room_not_found: `Room “${room}” not found: nobody is publishing it.`,
      room_conflict: `Room “${room}” is already taken by another publisher.`,
      disconnected: "Disconnected from the signaling server.",
      closed: "The signaling connection is closed.",
      timeout: "The signaling server did not answer in time.",
      rejected: `The call was refused: ${err.reason}.`,
      unauthorized: "Not authorized for this room.",
      rate_limited: "Too many requests; slow down.",
      unavailable: "The signaling cluster is unavailable right now; try again shortly.",
    };
    return { text: texts[/** @type {keyof texts} */ (err.code)] ?? `${err.reason}.`, code: err.code };
  }
  if (err && err.name === "NotAllowedError") return { text: "Camera/microphone access was denied.", code: null };
  if (err && (err.name === "NotFoundError" || err.name === "OverconstrainedError")) {
    return { text: "The selected camera or microphone is not available.", code: null };
  }
  if (err && err.name === "NotReadableError") return { text: "The camera or microphone is in use elsewhere.", code: null };
  return { text: String(err && err.message ? err.message : err), code: null };
}

/**
 * Shows (or, with `null`, hides) a section's message.
 * @param {"publish"|"play"} section
 * @param {{text: string, code?: string|null}|null} msg
 * @param {"error"|"warn"} [kind]
 */
function showMessage(section, msg, kind = "error") {
  const el = $(`${section}-message`);
  if (!msg) {
    el.hidden = true;
    el.textContent = "";
    delete el.dataset.code;
    return;
  }
  el.dataset.kind = kind;
  el.textContent = msg.text;
  if (msg.code) {
    el.dataset.code = msg.code;
    el.append(" ");
    const code = document.createElement("code");
    code.textContent = msg.code;
    el.append(code);
  } else {
    delete el.dataset.code;
  }
  el.hidden = false;
}

/** @param {"publish"|"play"} section @param {string} text */
function setStatus(section, text) {
  $(`${section}-status`).textContent = text;
}

// ---- devices ----------------------------------------------------------------------------------------------------

async function refreshDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, selectId, noun] of [
    ["videoinput", "camera", "Camera"],
    ["audioinput", "microphone", "Microphone"],
  ]) {
    const select = $(selectId);
    const previous = select.value;
    select.replaceChildren();
    const list = devices.filter((d) => d.kind === kind);
    list.forEach((d, i) => {
      const option = document.createElement("option");
      option.value = d.deviceId;
      option.textContent = d.label || `${noun} ${i + 1}`;
      select.append(option);
    });
    const none = document.createElement("option");
    none.value = "none";
    none.textContent = list.length ? `No ${noun.toLowerCase()}` : `No ${noun.toLowerCase()} found`;
    select.append(none);
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }
}

/** @param {string} value @returns {MediaTrackConstraints|boolean} */
function deviceConstraint(value) {
  if (value === "none") return false;
  return value ? { deviceId: { exact: value } } : true;
}

// ---- publish ----------------------------------------------------------------------------------------------------

function setViewers(/** @type {number} */ n) {
  $("viewer-count").textContent = String(n);
  $("viewer-word").textContent = n === 1 ? "viewer" : "viewers";
  const badge = $("viewer-badge");
  badge.dataset.count = String(n);
  badge.classList.toggle("live", state.publication !== null);
}

function publishingUi(/** @type {boolean} */ on) {
  const button = $("publish-button");
  button.textContent = on ? "Stop" : "Publish";
  button.classList.toggle("stop", on);
  for (const id of ["publish-room", "camera", "microphone"]) $(id).disabled = on;
}

function stopLocal() {
  localStream?.getTracks().forEach((t) => t.stop());
  localStream = null;
  $("local-video").srcObject = null;
  $("local-video").parentElement.classList.remove("active");
}

async function startPublishing() {
  const room = $("publish-room").value.trim();
  if (!room) return;
  showMessage("publish", null);
  if (!navigator.mediaDevices?.getUserMedia) {
    showMessage("publish", { text: "Publishing needs a secure page (https:// or localhost)." });
    return;
  }
  const video = deviceConstraint($("camera").value);
  const audio = deviceConstraint($("microphone").value);
  if (!video && !audio) {
    showMessage("publish", { text: "Pick a camera or a microphone." });
    return;
  }
  setStatus("publish", "Opening camera…");
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ video, audio });
    $("local-video").srcObject = localStream;
    $("local-video").parentElement.classList.add("active");
    refreshDevices().catch(() => {});
    setStatus("publish", `Registering room “${room}”…`);
    const publication = await publish(room, localStream, { url: signalingUrl, relayOnly: relayOnly() });
    state.publication = publication;
    publishingUi(true);
    setViewers(0);
    setStatus("publish", `Publishing room “${room}”${relayOnly() ? " (relay only)" : ""}.`);
    publication.addEventListener("viewers", (ev) => setViewers(/** @type {CustomEvent} */ (ev).detail.count));
    publication.addEventListener("disconnected", () => {
      showMessage("publish", { text: "Disconnected from the signaling server; reconnecting…", code: "disconnected" }, "warn");
    });
    publication.addEventListener("reconnected", (ev) => {
      const { error } = /** @type {CustomEvent} */ (ev).detail;
      if (error) {
        showMessage("publish", describe(error, room));
        setStatus("publish", `Reconnected, but room “${room}” could not be registered again.`);
      } else {
        showMessage("publish", null);
        setStatus("publish", `Publishing room “${room}” (reconnected).`);
      }
    });
    publication.addEventListener("closed", () => {
      if (state.publication === publication) stopPublishing();
    });
  } catch (e) {
    stopLocal();
    setStatus("publish", "Not publishing.");
    showMessage("publish", describe(e, room));
  }
}

function stopPublishing() {
  const publication = state.publication;
  state.publication = null;
  publication?.close();
  stopLocal();
  publishingUi(false);
  setViewers(0);
  setStatus("publish", "Not publishing.");
}

$("publish-form").addEventListener("submit", async (/** @type {Event} */ ev) => {
  ev.preventDefault();
  const button = $("publish-button");
  if (button.disabled) return;
  button.disabled = true;
  try {
    if (state.publication) stopPublishing();
    else await startPublishing();
  } finally {
    button.disabled = false;
  }
});

// ---- play -------------------------------------------------------------------------------------------------------

/** @param {number|null} kbps */
function formatBitrate(kbps) {
  if (kbps === null || !Number.isFinite(kbps)) return "–";
  return kbps >= 1000 ? `${(kbps / 1000).toFixed(2)} Mbit/s` : `${Math.round(kbps)} kbit/s`;
}

function clearStats() {
  for (const id of ["stat-bitrate", "stat-rtt", "stat-path", "stat-frames", "stat-resolution", "stat-lost"]) $(id).textContent = "–";
  const dl = $("play-stats");
  dl.dataset.framesDecoded = "0";
  delete dl.dataset.localType;
  delete dl.dataset.remoteType;
}

/** @param {import("./switchboard.js").Playback} playback */
async function updateStats(playback) {
  const s = await playback.stats();
  if (state.playback !== playback) return;
  $("stat-bitrate").textContent = formatBitrate(s.bitrateKbps);
  $("stat-rtt").textContent = s.rttMs === null ? "–" : `${s.rttMs.toFixed(s.rttMs < 10 ? 1 : 0)} ms`;
  $("stat-path").textContent = s.localCandidateType ? `${s.localCandidateType} → ${s.remoteCandidateType ?? "?"}` : "–";
  $("stat-frames").textContent = String(s.framesDecoded);
  $("stat-resolution").textContent = s.frameWidth
    ? `${s.frameWidth}×${s.frameHeight}${s.framesPerSecond ? ` @ ${Math.round(s.framesPerSecond)} fps` : ""}`
    : "–";
  $("stat-lost").textContent = String(s.packetsLost);
  const dl = $("play-stats");
  dl.dataset.framesDecoded = String(s.framesDecoded);
  if (s.localCandidateType) dl.dataset.localType = s.localCandidateType;
  if (s.remoteCandidateType) dl.dataset.remoteType = s.remoteCandidateType;
  $("play-state").textContent = s.connectionState;
  $("play-state").classList.toggle("live", s.connectionState === "connected");
}

function playingUi(/** @type {boolean} */ on) {
  const button = $("play-button");
  button.textContent = on ? "Stop" : "Play";
  button.classList.toggle("stop", on);
  $("play-room").disabled = on;
}

function endPlayback() {
  clearInterval(statsTimer);
  statsTimer = null;
  state.playback = null;
  $("remote-video").srcObject = null;
  $("remote-video").parentElement.classList.remove("active");
  playingUi(false);
  $("play-state").textContent = "idle";
  $("play-state").classList.remove("live");
}

async function startPlaying() {
  const room = $("play-room").value.trim();
  if (!room) return;
  showMessage("play", null);
  clearStats();
  setStatus("play", `Calling room “${room}”…`);
  $("play-state").textContent = "calling";
  try {
    const playback = await play(room, { url: signalingUrl, relayOnly: relayOnly() });
    state.playback = playback;
    playingUi(true);
    const video = $("remote-video");
    video.srcObject = playback.stream;
    video.parentElement.classList.add("active");
    video.play().catch(() => {});
    setStatus("play", `Playing room “${room}”${relayOnly() ? " (relay only)" : ""}.`);
    playback.addEventListener("ended", (ev) => {
      const { reason, by } = /** @type {CustomEvent} */ (ev).detail;
      if (state.playback !== playback) return;
      endPlayback();
      if (by === "remote") {
        setStatus("play", "Call ended.");
        showMessage("play", { text: `The publisher hung up (${reason}).`, code: "bye" }, "warn");
      } else if (by === "network") {
        setStatus("play", "Call ended.");
        showMessage("play", { text: "The media connection failed (ICE).", code: "ice_failed" });
      } else {
        setStatus("play", "Not playing.");
      }
    });
    playback.addEventListener("disconnected", () => {
      showMessage("play", { text: "Disconnected from the signaling server; media goes on, reconnecting…", code: "disconnected" }, "warn");
    });
    playback.addEventListener("reconnected", () => showMessage("play", null));
    if (playback.ended) return;
    statsTimer = setInterval(() => updateStats(playback).catch(() => {}), 1000);
    updateStats(playback).catch(() => {});
  } catch (e) {
    endPlayback();
    setStatus("play", "Not playing.");
    showMessage("play", describe(e, room));
  }
}

$("play-form").addEventListener("submit", async (/** @type {Event} */ ev) => {
  ev.preventDefault();
  const button = $("play-button");
  if (button.disabled) return;
  button.disabled = true;
  try {
    if (state.playback) {
      state.playback.close();
      endPlayback();
      setStatus("play", "Not playing.");
    } else {
      await startPlaying();
    }
  } finally {
    button.disabled = false;
  }
});

// ---- page lifecycle ---------------------------------------------------------------------------------------------

navigator.mediaDevices?.addEventListener?.("devicechange", () => refreshDevices().catch(() => {}));
refreshDevices().catch(() => {});

// Leaving the page hangs up at once; the server also says bye for us when the socket goes.
window.addEventListener("pagehide", () => {
  state.playback?.close();
  state.publication?.close();
});
