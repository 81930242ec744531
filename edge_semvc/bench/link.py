"""Live transmission measured end to end on loopback: what a receiver gets over RTP (or the
built-in RTSP server, MPEG-TS over UDP or SRT), while the encoder follows a link whose rate
changes.

    python -m edge_semvc.bench.link latency CLIP [--output rtp|rtsp|udp|srt] [--seconds 20]
    python -m edge_semvc.bench.link story CLIP... [--profile 2M:10,300k:10,1M:10]

`latency`: glass to glass, from the moment the camera (a clip paced at its frame rate) makes a
frame available to the moment a real receiver (FFmpeg through PyAV, low-delay flags, or
GStreamer) has decoded it, per frame, p50/p95 (the first second, the receiver's start-up, left
out). Which frame a decoded picture is, the picture itself says: its number is burnt into its
top-left corner (`burn_stamp`, 18 flat blocks), so a receiver that holds each picture until the
next one arrives shows that whole frame period, whatever its timestamps count from.

`story`: the bitrate profile applied live (`encoder.bitrate` changed between frames as the
service does on an MQTT message), the semantic encode against plain x264 under the same profile
(CBR, zerolatency), each received by a real RTP receiver into a file, then judged per phase on
the *received* video: ROI-PSNR (ROI = persons and vehicles an independent detector, YOLOX, finds
on the original frames), whole-frame PSNR and person/vehicle detection F1 (YOLOX on the received
frames against YOLOX on the originals). The clip loops until the profile ends.
"""
from __future__ import annotations

import argparse
import copy
import json
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..config import Config, load_config
from ..frame import Frame
from ..options import parse_bitrate
from ..pipeline import Live, run_encode
from ..sinks import open_output
from ..sinks.base import StreamInfo
from ..sinks.rtp import sdp_text
from ..sources import open_source
from ..sources.paced import PacedSource, Pacing
from .detector import FIXTURE, GROUPS, YoloxDetector, box_mask
from .metrics import f1_data_note, f1_score, match_counts, psnr, roi_data_note

# the receiver's start-up (probing, first IDR) is not the link's latency, and the RTP
# timestamps of the encoder's first frames may be bunched (the RTSP server stamps none ahead
# of its clock, and the first frames come late)
WARM_UP_S = 1.0
MIN_ROI_PIXELS = 28 * 256  # ROI-PSNR over less than 28 macroblocks a frame: too little data


def parse_profile(text: str) -> list[tuple[int, float]]:
    """'2M:10,300k:10,1M:10' -> [(bits/s, seconds), ...]."""
    phases = []
    for part in text.split(","):
        rate, _, seconds = part.partition(":")
        phases.append((parse_bitrate(rate), float(seconds)))
        if phases[-1][1] <= 0:
            raise argparse.ArgumentTypeError(f"phase {part!r}: seconds must be > 0")
    return phases


class RtpReceiver(threading.Thread):
    """A real receiver: FFmpeg reading the SDP, frames decoded as they arrive (`latency`) or
    packets copied into a file (`story`). Ends when nothing arrived for `idle_s`."""

    OPTIONS = {"protocol_whitelist": "file,udp,rtp,tcp,rtsp",
               "flags": "low_delay", "reorder_queue_size": "0", "max_delay": "0",
               "buffer_size": str(64 << 20), "fifo_size": str(1 << 20),
               "overrun_nonfatal": "1", "probesize": "32"}

    def __init__(self, url: str, fmt: str | None, record: Path | None = None,
                 idle_s: float = 10.0):
        super().__init__(daemon=True)
        self.url, self.fmt, self.record, self.idle_s = url, fmt, record, idle_s
        self.decoded: list[tuple[int | None, float]] = []  # (stamp, perf_counter at decode)
        self.packets = 0
        self.error: Exception | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        options = dict(self.OPTIONS)
        if self.fmt is None:  # RTSP: interleaved over TCP, no probing delay beyond need
            options.update(rtsp_transport="tcp")
        try:
            with av.open(self.url, format=self.fmt, options=options,
                         timeout=(60, self.idle_s)) as c:
                self.ready.set()
                stream = c.streams.video[0]
                if self.record is not None:
                    self._copy(c, stream)
                    return
                # a decoder of our own: frame threads (the default) hold frames back
                codec = av.CodecContext.create(stream.codec_context.name, "r")
                codec.thread_type, codec.thread_count = "SLICE", 2
                for packet in c.demux(stream):
                    for f in codec.decode(packet):  # zerolatency: no reordering
                        t = time.perf_counter()
                        y = np.frombuffer(f.planes[0], np.uint8).reshape(
                            -1, f.planes[0].line_size)
                        self.decoded.append((read_stamp(y), t))
        except (av.error.ExitError, av.error.FFmpegError, OSError) as e:
            self.error = e  # the read timeout ends it: the sender stopped
        finally:
            self.ready.set()

    def _copy(self, c, stream) -> None:
        with av.open(str(self.record), "w", format="mpegts") as out:
            dst = out.add_mux_stream(stream.codec_context.name, rate=stream.average_rate)
            dst.time_base = stream.time_base
            for packet in c.demux(stream):
                if packet.size:
                    packet.stream = dst
                    out.mux(packet)
                    self.packets += 1


class GstReceiver(threading.Thread):
    """GStreamer's RTSP client decoding (`bench/gst_receiver.py` in the system Python):
    rtspsrc with no jitter buffer latency, avdec_h264, a time per decoded frame."""

    def __init__(self, url: str, protocols: str = "tcp"):
        super().__init__(daemon=True)
        self.url, self.protocols = url, protocols
        self.decoded: list[tuple[int | None, float]] = []  # (stamp, monotonic at decode)
        self.error: str | None = None

    def run(self) -> None:
        import os
        import subprocess

        python = os.environ.get("EDGE_SEMVC_GST_PYTHON", "/usr/bin/python3")
        proc = subprocess.Popen([python, str(Path(__file__).with_name("gst_receiver.py")),
                                 self.url, self.protocols], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.proc = proc
        for line in proc.stdout:
            stamp, t = line.split()
            self.decoded.append((None if stamp == "-" else int(stamp), float(t)))
        self.error = proc.stderr.read().strip() or None

    def join(self, timeout: float | None = None) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.terminate()  # the server went away with the run; end the client
        super().join(timeout)


def _paced(clip: str, seconds: float, realtime: bool = True, cls=PacedSource) -> PacedSource:
    """The clip as a live camera, looped for `seconds`."""
    return cls(open_source(clip), Pacing(realtime=realtime, seconds=seconds, history=1),
               reopen=lambda: open_source(clip))


# --- which frame a decoded picture is: its number burnt into the picture ----------------------
# 2 marker blocks (white, black) then 16 bits, each a 16x16 luma block on the top row, white 1,
# black 0: flat blocks keep their level through any QP, and a receiver that only shows
# pictures (whatever its timestamps count from, holding frames or not) reads them back.
STAMP_BITS, STAMP_BLOCK = 16, 16
STAMP_WIDTH = (STAMP_BITS + 2) * STAMP_BLOCK


def burn_stamp(frame: Frame) -> None:
    """Writes frame.index (mod 2^16) into the frame's top-left corner, in place."""
    bits = [1, 0] + [(frame.index >> b) & 1 for b in range(STAMP_BITS)]
    for i, bit in enumerate(bits):
        x = i * STAMP_BLOCK
        frame.y[:STAMP_BLOCK, x:x + STAMP_BLOCK] = 235 if bit else 16
        h = STAMP_BLOCK // 2
        frame.u[:h, x // 2:x // 2 + h] = frame.v[:h, x // 2:x // 2 + h] = 128


def read_stamp(y: np.ndarray) -> int | None:
    """The number `burn_stamp` wrote, from a decoded luma plane; None where the markers are
    not there."""
    q = STAMP_BLOCK // 4  # the inner half of each block
    level = [int(y[q:3 * q, i * STAMP_BLOCK + q:i * STAMP_BLOCK + 3 * q].mean() > 128)
             for i in range(STAMP_BITS + 2)]
    if level[:2] != [1, 0]:
        return None
    return sum(bit << b for b, bit in enumerate(level[2:]))


class _StampedSource(PacedSource):
    def frames(self):
        for frame in super().frames():
            burn_stamp(frame)
            yield frame


def _stream_info(src) -> StreamInfo:
    return StreamInfo(src.width, src.height, Fraction(src.fps), Fraction(src.time_base), "h264",
                      b"", False)


# --- glass to glass ---------------------------------------------------------------------------

def latency(clip: str, output: str, seconds: float, cfg: Config, semantic: bool,
            workdir: Path, receiver: str = "ffmpeg") -> dict:
    src = _paced(clip, seconds, cls=_StampedSource)
    if src.width < STAMP_WIDTH:
        raise ValueError(f"{clip}: {src.width} pixels wide; the frame number needs "
                         f"{STAMP_WIDTH}")
    port = _free_port()
    if output == "rtp":
        sdp = workdir / "latency.sdp"
        sdp.write_text(sdp_text(_stream_info(src), "127.0.0.1", port))
        uri, rx = f"rtp://127.0.0.1:{port}", RtpReceiver(str(sdp), "sdp")
        rx.start()
        _wait_bound(port)
    elif output == "udp":
        uri, rx = f"udp://127.0.0.1:{port}", RtpReceiver(f"udp://127.0.0.1:{port}", "mpegts")
        rx.start()
        _wait_bound(port)
    elif output == "srt":  # the output calls GStreamer's srtsrc; no SRT receive latency
        uri = f"srt://127.0.0.1:{port}?latency=0"
        rx = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener&latency=0")
        rx.start()
        _wait_bound(port)
    else:
        uri = f"rtsp://@:{port}/live"
        rx = (GstReceiver(f"rtsp://127.0.0.1:{port}/live") if receiver == "gstreamer" else
              RtpReceiver(f"rtsp://127.0.0.1:{port}/live", None))
    captured: dict[int, float] = {}  # frame number (mod 2^16) -> when the camera made it

    def on_frame(frame: Frame, labels, qp) -> None:
        t = src.capture_times.pop(frame.index, None)
        if t is not None:
            captured[frame.index % (1 << STAMP_BITS)] = t

    if output == "rtsp":  # the server listens once the run opened it: the client then joins
        threading.Thread(target=_join_when_listening, args=(port, rx), daemon=True).start()
    stats = run_encode(src, [open_output(uri)], cfg, semantic=semantic, on_frame=on_frame)
    ended = time.perf_counter()
    rx.join(30)
    if not rx.decoded:
        raise RuntimeError(f"the receiver decoded nothing: {rx.error}")
    # a receiver that holds a picture lets its last one out only when its input ends: not timed
    read = [(n, t) for n, t in rx.decoded[int(WARM_UP_S * float(src.fps)):]
            if n is not None and t < ended]
    lat = [(t - captured[n]) * 1e3 for n, t in read if n in captured]
    return {"clip": Path(clip).name, "output": output, "receiver": receiver,
            "semantic": semantic, "size": f"{src.width}x{src.height}", "fps": float(src.fps),
            "frames_sent": stats["frames"], "frames_decoded": len(rx.decoded),
            "frames_unread": len(rx.decoded) - sum(n is not None for n, _ in rx.decoded),
            "frames_timed": len(lat), "dropped_at_camera": src.dropped,
            "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "max": _pct(lat, 100)}}


def _join_when_listening(port: int, rx: RtpReceiver) -> None:
    import socket

    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    rx.start()


# --- the link story ---------------------------------------------------------------------------

def story(clip: str, phases: list[tuple[int, float]], cfg: Config, semantic: bool,
          detector: YoloxDetector, eval_every: int, workdir: Path, log) -> dict:
    seconds = sum(s for _, s in phases)
    src = _paced(clip, seconds)
    fps = float(src.fps)
    bounds = np.cumsum([round(s * fps) for _, s in phases])
    port = _free_port()
    sdp, received = workdir / "story.sdp", workdir / f"{Path(clip).stem}-{semantic}.ts"
    sdp.write_text(sdp_text(_stream_info(src), "127.0.0.1", port))
    rx = RtpReceiver(str(sdp), "sdp", record=received)
    rx.start()
    _wait_bound(port)
    run_cfg = copy.deepcopy(cfg)
    run_cfg.encoder.rc, run_cfg.encoder.bitrate = "cbr", phases[0][0]
    frames_seen = [0]

    def updates() -> Config | None:  # polled before each frame: the phase's rate at its start
        n = frames_seen[0]
        frames_seen[0] += 1
        hit = [i for i, b in enumerate(bounds[:-1]) if b == n]
        if not hit:
            return None
        run_cfg.encoder.bitrate = phases[hit[0] + 1][0]
        return copy.deepcopy(run_cfg)

    sent = run_encode(src, [open_output(f"rtp://127.0.0.1:{port}")], run_cfg, semantic=semantic,
                      live=Live(updates=updates))
    rx.join(60)
    log(f"{Path(clip).name} {'semantic' if semantic else 'x264'}: {sent['frames']} frames "
        f"sent, {rx.packets} received")
    return _judge(received, clip, bounds, phases, detector, eval_every, fps) | {
        "frames_sent": sent["frames"], "frames_received": rx.packets,
        "dropped_at_camera": src.dropped}


def _judge(received: Path, clip: str, bounds, phases, detector: YoloxDetector,
           eval_every: int, fps: float) -> dict:
    """Per phase: bit rate on the wire, PSNR, ROI-PSNR, F1 of the received video."""
    originals = [f for f in open_source(clip).frames()]
    truth: dict[int, dict] = {}
    per = [{"kbps_target": r / 1e3, "bytes": 0, "psnr": [], "roi": [], "roi_px": [],
            "counts": {g: np.zeros(3, int) for g in GROUPS}} for r, _ in phases]
    with av.open(str(received)) as c:
        stream = c.streams.video[0]
        start = None
        for packet in c.demux(stream):
            if packet.pts is None:
                continue
            start = packet.pts if start is None else start
            i = round(float((packet.pts - start) * stream.time_base) * fps)
            phase = per[min(int(np.searchsorted(bounds, i, side="right")), len(per) - 1)]
            phase["bytes"] += packet.size
            for f in packet.decode():
                j = round(float((f.pts - start) * stream.time_base) * fps)
                k = min(int(np.searchsorted(bounds, j, side="right")), len(per) - 1)
                orig = originals[j % len(originals)]
                got = Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height, f.pts,
                                      1, j)
                per[k]["psnr"].append(psnr(orig.y, got.y))
                if j % eval_every:
                    continue
                key = j % len(originals)
                if key not in truth:
                    truth[key] = detector.detect(orig)
                mask = box_mask(truth[key], orig.width, orig.height)
                per[k]["roi_px"].append(int(mask.sum()))
                if mask.any():
                    per[k]["roi"].append(psnr(orig.y, got.y, mask))
                found = detector.detect(got)
                for g in GROUPS:
                    per[k]["counts"][g] += match_counts(truth[key][g], found[g])
    out = []
    for (rate, seconds), p in zip(phases, per):
        roi_px = float(np.mean(p["roi_px"])) if p["roi_px"] else 0.0
        note = roi_data_note(roi_px / 256, float(np.mean([x > 0 for x in p["roi_px"]]) if
                                                  p["roi_px"] else 0.0),
                             MIN_ROI_PIXELS / 256, 0.5)
        phase = {"target_kbps": rate / 1e3, "seconds": seconds,
                 "kbps": round(p["bytes"] * 8 / seconds / 1e3, 1),
                 "psnr": _mean(p["psnr"]), "psnr_roi": None if note else _mean(p["roi"]),
                 "roi_note": note, **_f1_figures("f1", sum(p["counts"].values()))}
        for g, c in p["counts"].items():
            phase.update(_f1_figures(f"f1_{g}", c))
        out.append(phase)
    return {"phases": out}


def _f1_figures(key: str, counts) -> dict:
    """`key`: the F1 of (tp, fp, fn) `counts`, None with `key`_note where the reference holds
    too few objects."""
    note = f1_data_note(int(counts[0] + counts[2]))
    return {key: None if note else round(f1_score(*counts), 4), f"{key}_note": note}


def _f1_pair(a: dict, b: dict, key: str) -> str:
    if a[key] is None or b[key] is None:
        return "too little data"
    return f"{a[key]:.3f} / {b[key]:.3f}"


def story_table(result: dict) -> str:
    """The link story as BENCHMARKS.md shows it: per clip and phase, x264 then semantic."""
    rows = ["| clip | phase (target) | kbit/s on the wire x264 / semantic | PSNR dB | ROI-PSNR dB "
            "| F1 person | F1 vehicle |", "|---|---|---|---|---|---|---|"]
    for clip, runs in result["clips"].items():
        plain, sem = runs["x264"]["phases"], runs["semantic"]["phases"]
        for i, (a, b) in enumerate(zip(plain, sem)):
            ra, rb = a["psnr_roi"], b["psnr_roi"]
            roi = b["roi_note"] or a["roi_note"] or f"{ra:.2f} / {rb:.2f} ({rb - ra:+.2f})"
            phase = f"{i + 1} ({a['target_kbps']:g}k, {a['seconds']:g} s)"
            rows.append(
                f"| {clip if i == 0 else '″'} | {phase} "
                f"| {a['kbps']:.0f} / {b['kbps']:.0f} | {a['psnr']:.2f} / {b['psnr']:.2f} "
                f"({b['psnr'] - a['psnr']:+.2f}) | {roi} | {_f1_pair(a, b, 'f1_person')} "
                f"| {_f1_pair(a, b, 'f1_vehicle')} |")
    return "\n".join(rows)


# --- plumbing ---------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to `port` on this machine (a receiver listens there)."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(x.split()[1].rsplit(":", 1)[1], 16) == port for x in lines):
            return True
    return False


def _wait_bound(port: int, timeout: float = 30.0) -> None:
    """Until a receiver has bound UDP `port`."""
    deadline = time.monotonic() + timeout
    while not udp_bound(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no receiver bound UDP port {port}")
        time.sleep(0.02)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 3) if finite else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.link", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency", help="glass to glass over RTP, the RTSP server, UDP or SRT")
    lat.add_argument("clip")
    lat.add_argument("--output", choices=["rtp", "rtsp", "udp", "srt"], default="rtp")
    lat.add_argument("--seconds", type=float, default=20.0)
    lat.add_argument("--receiver", choices=["ffmpeg", "gstreamer"], default="ffmpeg",
                     help="the RTSP client: FFmpeg through PyAV, or GStreamer's rtspsrc "
                     "(SRT: always GStreamer's srtsrc; UDP: always FFmpeg)")
    lat.add_argument("--no-map", action="store_true", help="plain x264")
    st = sub.add_parser("story", help="a bitrate profile applied live, semantic vs x264")
    st.add_argument("clips", nargs="*", help="clips (or --table to print a finished run's)")
    st.add_argument("--table", action="store_true",
                    help="print the table of OUT/story.json (a finished run) and exit")
    st.add_argument("--profile", type=parse_profile, default=parse_profile("2M:10,300k:10,1M:10"))
    st.add_argument("--roi-model", default=str(FIXTURE))
    st.add_argument("--eval-every", type=int, default=3, help="detect on every Nth frame")
    for s in (lat, st):
        s.add_argument("--config", help="YAML configuration")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        s.add_argument("--out", default="bench-out/link", help="folder for files and JSON")
    args = p.parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.what == "story" and args.table:
        print(story_table(json.loads((work / "story.json").read_text())))
        return 0
    cfg = load_config(args.config, ["encoder.tune=zerolatency", *args.set])
    from ..tools.models import prepare_config
    prepare_config(cfg, cfg.cache_dir(), log=lambda *_: None)
    if args.what == "latency":
        if cfg.encoder.rate_control() == "crf" and not cfg.encoder.bitrate:
            cfg.encoder.rc, cfg.encoder.bitrate = "cbr", 2_000_000
        result = latency(args.clip, args.output, args.seconds, cfg, not args.no_map, work,
                         args.receiver)
    else:
        detector = YoloxDetector(args.roi_model)
        result = {"profile": [[r, s] for r, s in args.profile], "clips": {}}
        for clip in args.clips:
            result["clips"][Path(clip).name] = {
                kind: story(clip, args.profile, cfg, kind == "semantic", detector,
                            args.eval_every, work, print)
                for kind in ("x264", "semantic")}
    text = json.dumps(result, indent=2)
    (work / f"{args.what}.json").write_text(text + "\n")
    print(text if args.what == "latency" else story_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
