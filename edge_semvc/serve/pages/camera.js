// One camera's page: the live picture (fragmented MP4 from /api/cameras/NAME/live.mp4 into
// Media Source Extensions), the QP map and labelled regions drawn on a canvas above it (from the
// `overlay` server-sent events, matched to the picture by presentation time), and its figures
// (`stats` events). `window.edgeSemvc` is what tests and the latency benchmark read.
"use strict";
const name = decodeURIComponent(location.pathname.split("/").pop());
const api = "/api/cameras/" + encodeURIComponent(name);
const video = document.getElementById("video");
const canvas = document.getElementById("overlay");
const showQp = document.getElementById("show-qp");
const showLabels = document.getElementById("show-labels");
const freeze = document.getElementById("freeze");  // hold the picture (and its overlay)
freeze.addEventListener("change", () => (freeze.checked ? video.pause() : video.play()));
const LIVE_EDGE_S = 0.5;  // further behind the newest frame than this: jump to it
const CATCH_UP_S = 0.05;  // further behind than this: play 10 % faster until back (each frame
//                           comes the moment it is encoded: BENCHMARKS, "The web page's live picture")
const PALETTE = ["#ffd400", "#ff00c8", "#00ff6a", "#ff8c00", "#a070ff", "#00e0e0"];
document.getElementById("name").textContent = name;
document.title = "edge-semvc " + name;

const state = { overlays: [], lags: [], streams: 0, drawn: null, shown: 0, frameS: 0, lastShown: null };
window.edgeSemvc = {
  frames: () => (video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : 0),
  shown: () => state.shown,  // frames presented (requestVideoFrameCallback)
  // seconds from the pipeline handing a frame to the encoder to the browser showing it (the
  // last 300 frames shown; both clocks are the wall clock: same machine, or NTP-synchronised)
  lags: () => state.lags.slice(),
  overlay: () => state.drawn,
  streams: () => state.streams,
  // the Media Source buffer ahead of the picture shown, seconds
  buffered: () => (video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : null),
};

// why the picture box is empty: the live picture's refusal ("http.live is off", "the camera is
// not running") and the camera's state with its error (from the stats); empty while it plays
const why = { live: "", camera: "" };
function showWhy() {
  document.getElementById("why").textContent = [why.live, why.camera].filter(Boolean).join(". ");
}

// --- the live picture ------------------------------------------------------------------------
async function play() {
  let response;
  try {
    response = await fetch(api + "/live.mp4", { cache: "no-store" });
  } catch (e) { why.live = "the service does not answer"; showWhy(); return retry(); }
  if (!response.ok) {
    why.live = (await response.text().catch(() => "")).trim() || "no live picture (" + response.status + ")";
    showWhy();
    return retry();
  }
  why.live = "";
  showWhy();
  const mime = response.headers.get("Content-Type");
  if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
    document.getElementById("name").textContent = name + " (this browser cannot play " + mime + ")";
    return;
  }
  const source = new MediaSource();
  video.src = URL.createObjectURL(source);
  await new Promise((ok) => source.addEventListener("sourceopen", ok, { once: true }));
  const buffer = source.addSourceBuffer(mime);
  buffer.mode = "segments";
  state.streams += 1;
  const pending = [];
  let reader = null;
  const feed = () => {
    if (buffer.updating || !pending.length) return;
    try {
      buffer.appendBuffer(pending.shift());
    } catch (e) {  // full (a GOP longer than the browser's buffer: nothing it may evict) or
      pending.length = 0;  // broken: start again, the server begins it at a fresh IDR
      reader.cancel().catch(() => {});
    }
  };
  // What was played stays buffered until the browser evicts it (MSE's own garbage collection,
  // from the front, a whole GOP at a time): removing a time range would also remove every frame
  // after it up to the next keyframe, which with a long GOP froze the picture until one came.
  buffer.addEventListener("updateend", () => {
    const ranges = buffer.buffered;
    if (ranges.length && !freeze.checked) {
      // the newest frame starts one frame interval before the buffer's end
      const ahead = ranges.end(ranges.length - 1) - state.frameS - video.currentTime;
      if (ahead > LIVE_EDGE_S) video.currentTime += ahead - 0.05;
      video.playbackRate = ahead > CATCH_UP_S ? 1.1 : 1.0;  // drift back to the newest frame
    }
    if (video.paused && !freeze.checked) video.play().catch(() => {});
    feed();
  });
  reader = response.body.getReader();
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (e) { break; }
    if (chunk.done) break;
    pending.push(chunk.value);
    feed();
  }
  retry();  // the run ended (a new one brings a new stream) or the connection broke
}
function retry() { setTimeout(play, 1000); }

// --- overlay and figures ---------------------------------------------------------------------
function listen() {
  const events = new EventSource(api + "/events");
  events.addEventListener("overlay", (e) => {
    const o = JSON.parse(e.data);
    state.overlays.push(o);
    if (state.overlays.length > 100) state.overlays.shift();
    showClasses(o.classes);
  });
  events.addEventListener("stats", (e) => showFigures(JSON.parse(e.data)));
  events.addEventListener("removed", () => { why.camera = "camera removed from the configuration"; showWhy(); });
  // EventSource retries a broken connection by itself but gives up for good on an answer that
  // is not 200 (503: the live readers at their cap; 404: a camera a reload removed for now)
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) setTimeout(listen, 1000);
  });
}
listen();

// which outline colour is which class (label l is classes[l]; 0 is the background)
function showClasses(classes) {
  const legend = document.getElementById("classes");
  if (legend.dataset.classes === classes.join()) return;
  legend.dataset.classes = classes.join();
  legend.replaceChildren(...classes.slice(1).flatMap((c, i) => {
    const swatch = document.createElement("span");
    swatch.style.background = PALETTE[i % PALETTE.length];
    return [swatch, " " + c + " "];
  }));
}

function showFigures(s) {
  why.camera = s.state === "running" ? "" : "camera " + s.state + (s.error ? ": " + s.error : "");
  showWhy();
  const lat = s.latency_ms && s.latency_ms.end_to_end ? s.latency_ms.end_to_end : {};
  const lag = median(state.lags);
  const rows = [
    ["state", s.state], ["frames per second", s.fps],
    ["bitrate / target (kbit/s)", s.bitrate_kbps + " / " + (s.target_kbps ?? "-")],
    ["dropped frames", s.dropped_frames],
    ["capture to encoded p50 / p95 (ms)", (lat.p50 ?? "-") + " / " + (lat.p95 ?? "-")],
    ["encoder to screen (ms)", lag === null ? "-" : Math.round(lag * 1000)],
    ["label coverage", Object.entries(s.label_coverage || {}).filter(([c]) => c !== "background")
      .map(([c, v]) => c + " " + (100 * v).toFixed(1) + " %").join(", ") || "-"],
    ["label age (frames)", Object.entries(s.label_staleness_frames || {})
      .map(([m, v]) => m + " " + v).join(", ") || "-"],
    ["mean QP offset, regions / background", (s.mean_offset_roi ?? "-") + " / " + (s.mean_offset_background ?? "-")],
    ["stream clients", (s.outputs || []).filter((o) => o.clients !== undefined).map((o) => o.uri + ": " + (o.clients ?? "-")).join(", ") || "-"],
  ];
  document.getElementById("figures").replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    for (const text of [k, v]) {
      const td = document.createElement("td");
      td.textContent = String(v === undefined ? "-" : text);
      tr.appendChild(td);
    }
    return tr;
  }));
}

function median(values) {
  if (!values.length) return null;
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// the overlay of the frame on screen: the newest whose time is not after the picture's
function current() {
  const t = video.currentTime;
  let best = null;
  for (const o of state.overlays) if (o.t <= t + 0.001 && (!best || o.t > best.t)) best = o;
  return best || state.overlays[0] || null;
}

function draw() {
  requestAnimationFrame(draw);
  const o = current();
  const g = canvas.getContext("2d");
  if (!o || !video.videoWidth) { g.clearRect(0, 0, canvas.width, canvas.height); return; }
  if (canvas.width !== video.videoWidth) canvas.width = video.videoWidth;
  if (canvas.height !== video.videoHeight) canvas.height = video.videoHeight;
  g.clearRect(0, 0, canvas.width, canvas.height);
  const cw = 16, ch = 16;  // one macroblock
  if (showQp.checked) {
    for (let y = 0; y < o.h; y++) for (let x = 0; x < o.w; x++) {
      const q = o.qp[y * o.w + x];
      if (!q) continue;
      const a = 0.25 + Math.min(1, Math.abs(q) / 6) * 0.4;
      g.fillStyle = q < 0 ? `rgba(0,200,255,${a})` : `rgba(255,80,48,${a})`;
      g.fillRect(x * cw, y * ch, cw, ch);
    }
  }
  if (showLabels.checked && o.labels.length) {
    g.lineWidth = 2;
    for (let y = 0; y < o.h; y++) for (let x = 0; x < o.w; x++) {
      const l = o.labels[y * o.w + x];
      if (!l) continue;
      g.strokeStyle = PALETTE[(l - 1) % PALETTE.length];
      const edge = (dx, dy) => {
        const nx = x + dx, ny = y + dy;
        return nx < 0 || ny < 0 || nx >= o.w || ny >= o.h || o.labels[ny * o.w + nx] !== l;
      };
      g.beginPath();
      if (edge(0, -1)) { g.moveTo(x * cw, y * ch); g.lineTo((x + 1) * cw, y * ch); }
      if (edge(0, 1)) { g.moveTo(x * cw, (y + 1) * ch); g.lineTo((x + 1) * cw, (y + 1) * ch); }
      if (edge(-1, 0)) { g.moveTo(x * cw, y * ch); g.lineTo(x * cw, (y + 1) * ch); }
      if (edge(1, 0)) { g.moveTo((x + 1) * cw, y * ch); g.lineTo((x + 1) * cw, (y + 1) * ch); }
      g.stroke();
    }
  }
  state.drawn = { t: o.t, qp: showQp.checked, labels: showLabels.checked, map: o };
}

// per frame shown: its wall-clock time from the overlay of the nearest frame (media time and
// wall time advance together), compared with when it is displayed
function shown(now, frame) {
  state.shown += 1;
  const step = state.lastShown === null ? 0 : frame.mediaTime - state.lastShown;
  if (step > 0 && step < 1) state.frameS = step;  // the frame interval (a jump is no interval)
  state.lastShown = frame.mediaTime;
  let near = null;
  for (const o of state.overlays) {
    if (!near || Math.abs(o.t - frame.mediaTime) < Math.abs(near.t - frame.mediaTime)) near = o;
  }
  if (near && Math.abs(near.t - frame.mediaTime) < 0.5) {
    const handed = near.wall + (frame.mediaTime - near.t);
    state.lags.push((performance.timeOrigin + frame.expectedDisplayTime) / 1000 - handed);
    if (state.lags.length > 300) state.lags.shift();
  }
  video.requestVideoFrameCallback(shown);
}
if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(shown);

play();
requestAnimationFrame(draw);
