"""A link that loses packets, measured end to end on loopback: what a viewer sees after a
lost packet, and for how long, with each way of putting the picture right again.

    python -m edge_semvc.bench.loss CLIP... [--loss 1%] [--burst 2] [--seed 1] [--seconds 60]
        [--bitrate 1M] [--settings gop idr1s refresh1s ...] [--no-map] [--realtime]
    python -m edge_semvc.bench.loss CLIP... --transport udp
    python -m edge_semvc.bench.loss CLIP... --transport srt [--srt-latency MS] [--rtt 80]
    python -m edge_semvc.bench.loss CLIP... --transport srt --loss 0 \
        --capacity 2.5M@0,800k@15,1.5M@30 [--queue-ms 250] --settings default follow

RTP (the default): the camera (the clip looped, CBR, zerolatency) sends RTP to a relay, which
hands every packet to one real receiver (FFmpeg from an SDP, copying what it gets into a
file) and the packets a seeded loss model keeps to a second one; the relay checks the RTP
sequence numbers, so a loss it did not make fails the run rather than skew it. UDP
(`--transport udp`): the same with MPEG-TS datagrams (7 TS packets each), FFmpeg receiving on
the ports, the relay checking each stream's continuity counter. SRT: the
camera (paced in real time) sends MPEG-TS over SRT through a proxy that loses packets going
forward and holds every packet half `--rtt` each way, to GStreamer's srtsrc recording it; the
clean reference is the run's own MPEG-TS file; `--capacity` narrows the proxy's link (rates
from times in seconds) with a buffer of `--queue-ms`, and what overflows it is lost too (the
bit rate following the link: `--settings default follow`). Both recordings are decoded as a
player would (a frame that never arrived leaves the one before it on screen), so the damage a
loss does is exact: a frame is damaged where the lossy picture differs from the clean one, and
a damage event lasts until they agree again. `--seconds` are judged after a first second of start-up
in which nothing is lost, and a second more is sent and not judged (closing the link).

The loss model is a Gilbert-Elliott chain (a radio's fades come in bursts): `--loss` the
long-run share of packets lost, `--burst` the mean run of packets lost together (1:
independent losses). It draws per packet, so the same seed loses the same packets of the
same stream, whatever the machine's speed.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from itertools import islice
from pathlib import Path

import av
import numpy as np

from ..config import Config, load_config
from ..options import parse_bitrate
from ..pipeline import run_encode
from ..sinks import open_output
from ..sinks.gst_outputs import SRT_LATENCY_MS
from ..sinks.rtp import sdp_text
from ..sources import open_source
from .detector import FIXTURE, YoloxDetector, box_mask
from .link import MIN_ROI_PIXELS, WARM_UP_S, RtpReceiver, _mean, _paced, _stream_info, _wait_bound
from .lossy_link import BurstLoss, Link, LossError, LossyRelay, SrtProxy, parse_capacity, port_pair
from .metrics import psnr, roi_data_note

# How the picture is put right after a loss: `encoder.*` keys; a keyint in seconds (`1s`,
# frames of the clip's rate). *default*: the product's (an IDR every `encoder.lossy_keyint_s`
# on these outputs); *gop*: x264's own GOP of 250 frames, the default before c6f59e9.
SETTINGS = {
    "default": {},
    "gop": {"encoder.keyint": "250"},
    "idr1s": {"encoder.keyint": "1s"},
    "refresh1s": {"encoder.intra_refresh": "true", "encoder.keyint": "1s"},
    # every slice in one RTP packet (the output's payload is 1188 bytes): a lost packet
    # takes its own macroblocks, not the rest of a frame's slice
    "refresh1s-slices": {"encoder.intra_refresh": "true", "encoder.keyint": "1s",
                         "encoder.params.slice-max-size": "1100"},
    "refresh0.5s-slices": {"encoder.intra_refresh": "true", "encoder.keyint": "0.5s",
                           "encoder.params.slice-max-size": "1100"},
}
REPAIRS = tuple(SETTINGS)  # the default --settings: each way of putting the picture right
# against a link that narrows (`--capacity`): the rate following an SRT link, with IDRs or
# with intra refresh (no IDR bursts), every encoder.lossy_keyint_s
SETTINGS |= {
    "follow": {"encoder.follow_link.enabled": "true"},
    "refresh": {"encoder.intra_refresh": "true"},
    "refresh-follow": {"encoder.intra_refresh": "true", "encoder.follow_link.enabled": "true"},
}


NO_LINK = Link()  # a link with nothing in the way but the loss

# a receiver's recording ends once nothing came for this long (the sender closed the link)
RECEIVER_IDLE_S = 3.0


def _span(seconds: float, fps: float) -> tuple[int, int, int]:
    """(frames sent, first frame judged, frames judged): `seconds` judged after a first
    second of start-up (nothing lost, the receivers settle), and a second more sent and not
    judged, so that closing the link loses nothing judged."""
    first, count = round(WARM_UP_S * fps), round(seconds * fps)
    return count + 2 * first, first, count


def send(clip: str, cfg: Config, semantic: bool, loss: BurstLoss, seconds: float,
         workdir: Path, realtime: bool = True, transport: str = "rtp") -> dict:
    """The clip over the relay into a clean and a lossy recording; what went where.
    `transport`: rtp (FFmpeg receivers from an SDP) or udp (MPEG-TS, FFmpeg on the port)."""
    src = _paced(clip, 0.0, realtime)  # as many frames as _span says
    total, first, count = _span(seconds, float(src.fps))
    info = _stream_info(src)
    kinds = ("clean", "lossy")
    ports = {kind: port_pair() for kind in kinds}
    files = {kind: workdir / f"{kind}.ts" for kind in kinds}
    receivers = []
    for kind in kinds:
        url, fmt = f"udp://127.0.0.1:{ports[kind]}", "mpegts"
        if transport == "rtp":
            url, fmt = str(workdir / f"{kind}.sdp"), "sdp"
            Path(url).write_text(sdp_text(info, "127.0.0.1", ports[kind]))
        receivers.append(RtpReceiver(url, fmt, record=files[kind], idle_s=RECEIVER_IDLE_S))
        receivers[-1].start()
    for port in ports.values():
        _wait_bound(port)  # FFmpeg binds as it opens its input
    relay = LossyRelay(loss, ports["clean"], ports["lossy"], spare_frames=max(1, first),
                       payload="rtp" if transport == "rtp" else "mpegts")
    relay.start()
    try:
        stats = run_encode(src, [open_output(f"{transport}://127.0.0.1:{relay.port}")], cfg,
                           semantic=semantic, max_frames=total)
    finally:
        for rx in receivers:
            rx.join(RECEIVER_IDLE_S + 30)
        relay.stop()
    if relay.gaps:
        raise LossError(f"{relay.gaps} packets were lost on the way to the relay (loopback "
                        "overflow?): the run measures more loss than its model made")
    return {"files": files, "fps": float(src.fps), "frames_sent": stats["frames"],
            "judged": (first, count), "packets": relay.packets, "lost": relay.lost,
            "frames_hit": relay.hit, "bytes": relay.bytes, "dropped_at_camera": src.dropped}


def send_srt(clip: str, cfg: Config, semantic: bool, loss: BurstLoss, seconds: float,
             workdir: Path, latency_ms: int | None, link: Link = NO_LINK) -> dict:
    """The clip as a camera (real time: SRT paces by its clock) over SRT through the proxy to
    GStreamer's srtsrc recording it; the clean reference is the same run's own MPEG-TS file.
    `latency_ms` None: the SRT output's own (the receiver asks for SRT's 120 ms; the larger
    wins)."""
    import subprocess

    from ..sinks.gstreamer import gst_python

    src = _paced(clip, 0.0, True)
    total, first, count = _span(seconds, float(src.fps))
    files = {"clean": workdir / "clean.ts", "lossy": workdir / "lossy.ts"}
    files["lossy"].unlink(missing_ok=True)
    rx_port = port_pair()
    rx = subprocess.Popen([gst_python(), str(Path(__file__).with_name("gst_record.py")),
                           f"srt://127.0.0.1:{rx_port}?mode=listener&latency="
                           f"{SRT_LATENCY_MS if latency_ms is None else latency_ms}",
                           str(files["lossy"])], stderr=subprocess.PIPE, text=True)
    _wait_bound(rx_port)
    spare = round(WARM_UP_S * cfg.encoder.bitrate / 8 / 1316)  # SRT's payload: 7 TS packets
    proxy = SrtProxy(loss, rx_port, spare, link.rtt_ms / 2e3, link.capacity,
                     link.queue_ms / 1e3)
    proxy.start()
    rates = _RateLog()  # the follower's changes, seconds from the start
    try:
        asked = "" if latency_ms is None else f"?latency={latency_ms}"
        stats = run_encode(src, [open_output(f"srt://127.0.0.1:{proxy.port}{asked}"),
                                 open_output(str(files["clean"]))], cfg, semantic=semantic,
                           max_frames=total)
    finally:
        rates.close()
        try:
            rx.wait(10)  # the caller went: end of stream
        except subprocess.TimeoutExpired:
            rx.terminate()
            rx.wait(10)
        proxy.stop()
    why = rx.stderr.read().strip()
    if not files["lossy"].exists() or rx.returncode not in (0, -15):
        raise LossError(f"the SRT receiver ended with {rx.returncode} and "
                        f"{'a' if files['lossy'].exists() else 'no'} recording: {why}")
    srt = next(o for o in stats["outputs"] if o["uri"].startswith("srt://"))
    if srt.get("dropped"):
        raise LossError(f"the SRT output dropped {srt['dropped']} packets before the link: "
                        "the run would measure the sender, not the loss")
    return {"files": files, "fps": float(src.fps), "frames_sent": stats["frames"],
            "judged": (first, count), "packets": proxy.packets, "lost": proxy.lost,
            "frames_hit": [], "bytes": proxy.bytes, "dropped_at_camera": src.dropped,
            "srt_latency_ms": srt["latency_ms"], "overflowed": proxy.overflowed,
            "encoded_kbps": stats["bitrate_kbps"], "follow": stats.get("follow_link"),
            "phases": [at for at, _ in link.capacity], "rates": rates.changes}


class _RateLog(logging.Handler):
    """The follower's rate changes (its log lines: `follow.py`) as [seconds from now, kbit/s]."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.start, self.changes = time.time(), []
        self.logger = logging.getLogger("edge_semvc.follow")
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.changes.append([round(record.created - self.start, 1), record.args[-1]])

    def close(self) -> None:
        self.logger.removeHandler(self)
        super().close()


def first_pts(path: Path) -> int | None:
    """The timestamp of a recording's first picture."""
    with av.open(str(path)) as c:
        for packet in c.demux(c.streams.video[0]):
            for f in packet.decode():
                if f.pts is not None:
                    return f.pts
    return None


def _decoded(path: Path, fps: float, start: int | None):
    """(frame number, luma plane) of each picture a recording decodes to, numbered by its
    timestamp from `start` (the clean recording's first: both receivers see the same
    timestamps), else from its own first."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue  # what a player does: skip it and show what it has
            for f in frames:
                if f.pts is None:
                    continue  # nowhere to show it
                start = f.pts if start is None else start
                yield (round(float((f.pts - start) * stream.time_base) * fps),
                       f.to_ndarray(format="yuv420p")[:f.height])  # its luma as coded


def frames_shown(path: Path, fps: float, count: int, start: int | None = None):
    """For each sent frame 0..count-1, the luma plane a player shows: the last picture decoded
    at or before it (None before the first); frames numbered from `start` (see `_decoded`)."""
    i, last = 0, None
    for j, y in _decoded(path, fps, start):
        if j < i:
            continue  # a timestamp already passed: the player has moved on
        while i < min(j, count):
            yield last
            i += 1
        if i < count:
            yield y
            i += 1
        last = y
    while i < count:
        yield last
        i += 1


def judge(sent: dict, clip: str, detector: YoloxDetector | None, eval_every: int) -> dict:
    """What the viewer behind the lossy link saw against the one behind the clean link."""
    fps, total = sent["fps"], sent["frames_sent"]
    first, count = sent["judged"]
    originals = list(open_source(clip).frames())
    area, psnr_clean, psnr_lossy, roi_clean, roi_lossy, roi_px = ([] for _ in range(6))
    truth: dict[int, np.ndarray] = {}
    start = first_pts(sent["files"]["clean"])
    shown = zip(*(frames_shown(sent["files"][k], fps, total, start) for k in ("clean", "lossy")))
    for i, (a, b) in enumerate(islice(shown, first, first + count), start=first):
        if a is None:
            raise LossError(f"the clean receiver lacks frame {i} of {total}: the loopback lost "
                            "what the relay passed, so the lossy figures cannot be trusted")
        key = i % len(originals)
        orig = originals[key].y
        b = np.zeros_like(a) if b is None else b
        area.append(_blocks_differing(a, b))
        psnr_clean.append(psnr(orig, a))
        psnr_lossy.append(psnr(orig, b))
        if detector is None or i % eval_every:
            continue
        if key not in truth:
            f = originals[key]
            truth[key] = box_mask(detector.detect(f), f.width, f.height)
        mask = truth[key]
        roi_px.append(int(mask.sum()))
        if mask.any():
            roi_clean.append(psnr(orig, a, mask))
            roi_lossy.append(psnr(orig, b, mask))
    damaged = [x > 0 for x in area]
    events = _runs(damaged)
    phases = [{"from_s": at, "damaged_pct": round(100.0 * float(np.mean(damaged[a:b])), 1),
               "psnr_clean": _mean(psnr_clean[a:b]), "psnr_lossy": _mean(psnr_lossy[a:b])}
              for at, a, b in _phase_spans(sent.get("phases", ()), fps, first, count)]
    note = ("no ROI detector" if detector is None else roi_data_note(
        float(np.mean(roi_px)) / 256 if roi_px else 0.0,
        float(np.mean([p > 0 for p in roi_px])) if roi_px else 0.0, MIN_ROI_PIXELS / 256, 0.5))
    return {"frames": count, "kbps": round(sent["bytes"] * 8 * fps / total / 1e3, 1),
            "packets": sent["packets"], "lost": sent["lost"], "frames_hit": len(sent["frames_hit"]),
            "loss_pct": round(100.0 * sent["lost"] / max(sent["packets"], 1), 2),
            "damaged_pct": round(100.0 * sum(damaged) / count, 1), "events": len(events),
            "damaged_area_pct": round(100.0 * float(np.mean([x for x in area if x])), 1)
            if any(damaged) else 0.0,
            "longest_s": round(max(events, default=0) / fps, 2),
            "mean_event_s": round(float(np.mean(events)) / fps, 2) if events else 0.0,
            "psnr_clean": _mean(psnr_clean), "psnr_lossy": _mean(psnr_lossy),
            "roi_clean": None if note else _mean(roi_clean),
            "roi_lossy": None if note else _mean(roi_lossy), "roi_note": note,
            "dropped_at_camera": sent["dropped_at_camera"],
            **{k: sent[k] for k in ("srt_latency_ms", "overflowed", "encoded_kbps", "follow",
                                    "rates") if k in sent},
            **({"phases": phases} if phases else {})}


def _phase_spans(starts, fps: float, first: int, count: int):
    """(from_s, a, b) per phase of the link: the judged frames [a, b) (indices into the judged
    ones) sent from `from_s` seconds after the first frame until the next phase."""
    edges = [round(at * fps) - first for at in starts] + [count]
    for at, a, b in zip(starts, edges, edges[1:]):
        if min(b, count) > max(a, 0):
            yield at, max(a, 0), min(b, count)


def _blocks_differing(a: np.ndarray, b: np.ndarray) -> float:
    """The share of 16x16 luma blocks (the last row and column partial) in which two
    pictures differ."""
    h, w = a.shape
    diff = np.zeros((-(-h // 16) * 16, -(-w // 16) * 16), bool)
    diff[:h, :w] = a != b
    return float(diff.reshape(diff.shape[0] // 16, 16, -1, 16).any(axis=(1, 3)).mean())


def _runs(flags: list[bool]) -> list[int]:
    """The lengths of the runs of True."""
    runs, n = [], 0
    for flag in [*flags, False]:
        if flag:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def setting_config(path: str | None, sets: list[str], name: str, fps: float) -> Config:
    """The configuration at `path` with `sets`, then the keys of SETTINGS[name] (a keyint in
    seconds, `1s`, as frames of `fps`; one without the `s` in frames), its models prepared."""
    from ..tools.models import prepare_config
    keys = [f"{k}={round(float(v[:-1]) * fps) if k == 'encoder.keyint' and v.endswith('s') else v}"
            for k, v in SETTINGS[name].items()]
    cfg = load_config(path, [*sets, *keys])
    prepare_config(cfg, cfg.cache_dir(), log=lambda *_: None)
    return cfg


def table(result: dict) -> str:
    rows = ["| clip | setting | kbit/s | packets lost | frames hit | frames damaged (area) | "
            "events: longest / mean, s | PSNR dB: clean / lossy | ROI-PSNR dB: clean / lossy |",
            "|---|---|---|---|---|---|---|---|---|"]
    for clip, by_setting in result["clips"].items():
        for name, r in by_setting.items():
            roi = r["roi_note"] or f"{r['roi_clean']} / {r['roi_lossy']}"
            rows.append(f"| {clip} | {name} | {r['kbps']} | {r['lost']} of {r['packets']} "
                        f"({r['loss_pct']} %) | {r['frames_hit']} | {r['damaged_pct']} % "
                        f"({r['damaged_area_pct']} %) | {r['events']}: {r['longest_s']} / "
                        f"{r['mean_event_s']} | {r['psnr_clean']} / {r['psnr_lossy']} | {roi} |")
    return "\n".join(rows)


def _share(text: str) -> float:
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.loss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="*", help="clips (or --table to print a finished run's)")
    p.add_argument("--table", action="store_true", help="print OUT/loss.json's table and exit")
    p.add_argument("--loss", type=_share, default=0.01, help="share of packets lost (1%%)")
    p.add_argument("--burst", type=float, default=2.0, help="mean packets lost in a row")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of video sent")
    p.add_argument("--realtime", action="store_true",
                   help="pace the clip as a camera (default: as fast as it encodes; the labels "
                   "then follow a file encode's budget)")
    p.add_argument("--bitrate", default="1M", help="CBR target")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(REPAIRS))
    p.add_argument("--no-map", action="store_true", help="plain x264")
    p.add_argument("--transport", choices=["rtp", "udp", "srt"], default="rtp",
                   help="RTP or MPEG-TS over UDP to two FFmpeg receivers, or SRT (MPEG-TS) to "
                        "GStreamer's srtsrc")
    p.add_argument("--srt-latency", type=int,
                   help="SRT's latency, ms (default: the SRT output's, 120 plus a frame interval)")
    p.add_argument("--rtt", type=float, default=0.0,
                   help="the link's round trip, ms (SRT only: RTP resends nothing)")
    p.add_argument("--capacity", type=parse_capacity, default=(),
                   help="SRT only: the link's capacity, RATE@SECONDS,... (2.5M@0,800k@15)")
    p.add_argument("--queue-ms", type=float, default=250.0,
                   help="SRT only: the narrow link's buffer, ms of waiting")
    p.add_argument("--roi-model", default=str(FIXTURE))
    p.add_argument("--eval-every", type=int, default=3, help="ROI on every Nth frame")
    p.add_argument("--config", help="YAML configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="bench-out/loss", help="folder for files and JSON")
    args = p.parse_args(argv)
    if args.capacity and args.transport != "srt":
        p.error("--capacity: SRT only (--transport srt): nothing else tells the sender")
    if args.rtt and args.transport != "srt":
        p.error(f"--rtt {args.rtt:g}: a round trip matters to SRT only (--transport srt); "
                f"{args.transport.upper()} resends nothing, so a delay changes nothing it loses")
    if args.rtt < 0 or (args.srt_latency or 0) < 0:
        p.error(f"--rtt {args.rtt:g} / --srt-latency {args.srt_latency}: not negative")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.table:
        print(table(json.loads((work / "loss.json").read_text())))
        return 0
    sets = ["encoder.tune=zerolatency", "encoder.rc=cbr",
            f"encoder.bitrate={parse_bitrate(args.bitrate)}", *args.set]
    detector = YoloxDetector(args.roi_model)
    result = {"loss": args.loss, "burst": args.burst, "seed": args.seed, "bitrate": sets[2],
              "seconds": args.seconds, "realtime": args.realtime or args.transport == "srt",
              "map": not args.no_map, "transport": args.transport, "clips": {}}
    if args.transport == "srt":
        result.update(srt_latency_ms=args.srt_latency, rtt_ms=args.rtt,
                      capacity=args.capacity, queue_ms=args.queue_ms)
    for clip in args.clips:
        fps = float(open_source(clip).fps)
        result["clips"][Path(clip).name] = by_setting = {}
        for name in args.settings:
            cfg = setting_config(args.config, sets, name, fps)
            model = BurstLoss(args.loss, args.burst, args.seed)
            if args.transport == "srt":
                sent = send_srt(clip, cfg, not args.no_map, model, args.seconds, work,
                                args.srt_latency, Link(args.rtt, args.capacity, args.queue_ms))
            else:
                sent = send(clip, cfg, not args.no_map, model, args.seconds, work,
                            realtime=args.realtime, transport=args.transport)
            by_setting[name] = judge(sent, clip, detector, args.eval_every)
            print(f"{Path(clip).name} {name}: {by_setting[name]}", flush=True)
    (work / "loss.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
