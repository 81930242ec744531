"""The GStreamer side of the SRT and RTSP-server outputs (`gstreamer.py` is the parent side):
what both share (the packets in, the feed into each appsrc, the events out) and the entry;
`gst_rtsp.py` (`RtspServer`) and `gst_srt.py` (`SrtSender`) beside it are the two outputs.

Run by path by the system Python, which has PyGObject (Debian's python3-gi); it imports nothing
from edge_semvc, so it runs outside the project's virtual environment, and finds its two
output modules beside it (the script's folder comes first on sys.path):

    python3 gst_child.py check srt|rtsp    one JSON line: {"missing": null} or what is missing
    python3 gst_child.py run CONFIG_JSON   serve until standard input ends

Standard input carries packets, each as a header (`HEADER`: length, flags, pts and dts in
nanoseconds of the encoder's clock) and its bytes: for RTSP the encoded access units (Annex-B),
for SRT the MPEG-TS the parent muxed of each access unit or passed-through packet (with the
input's audio and data streams, as the UDP output's). Standard output carries JSON lines, one
event each: `ready`, `error` (then exit 1), `client_joined`/`client_left` (address,
transport), `peer_lost` (reason)/`peer_back` (SRT caller), `idr` (a receiver needs a key frame
now) and `stats` (bytes_sent, packets, dropped), once a second and at the end. No secret is
ever written: the RTSP credentials are read from the environment variables the config names.

Latency and timestamps: each packet goes out as soon as it arrives. Its timestamps are the
encoder's, moved onto the pipeline's running time (`Target.running_times`) so that RTP
timestamps keep the camera's cadence whatever the jitter between the encoder and this
process, yet are not ahead of the clock, which the RTSP server's sinks sync to, but in a
burst (the frames an encoder held, handed out at once as its input ends or is lost): those
keep the encoder's spacing, and the sinks send them at their times (MPEG-TS carries the
encoder's own). Nothing holds a packet for the next one either: h264parse takes
whole access units, and each packet's MPEG-TS reaches srtsink as one buffer. At most
`MAX_QUEUED` bytes wait in a stream's queues: more means the network does not keep up, so
packets are dropped and that stream resumes at the next key frame (one is asked for, once per
gap).
"""
import json
import struct
import sys
import threading

HEADER = struct.Struct("<IBqq")  # payload length, flags, pts and dts (ns, the encoder's clock)
KEYFRAME = 1
STREAM_SHIFT = 1  # flags >> this: the packet's stream (0 the video, 1... the carried tracks)
MAX_QUEUED = 1 << 20  # bytes waiting in a stream's queues before packets are dropped
MAX_LAG_NS = 1_000_000_000  # a packet stamped this far behind the clock re-anchors the stamps
MAX_AHEAD_NS = 4_000_000_000  # a burst's packets are stamped ahead of the clock up to this
STATS_INTERVAL_MS = 1000

CAPS = {"h264": "video/x-h264,stream-format=byte-stream,alignment=au",
        "hevc": "video/x-h265,stream-format=byte-stream,alignment=au"}
PARSE = {"h264": "h264parse", "hevc": "h265parse"}
# per codec: the NAL types of the parameter sets (H.264: SPS, PPS; HEVC: VPS, SPS, PPS) and of
# the slices
PARAMETER_SETS = {"h264": (7, 8), "hevc": (32, 33, 34)}
SLICES = {"h264": range(1, 6), "hevc": range(0, 32)}
# The RTSP server's audio: FFmpeg's codec name -> (appsrc caps without rate and channels; its
# payloader). AAC as RFC 3640 (mpeg4-generic), what FFmpeg, VLC and GStreamer's rtspsrc take;
# G.711 (what IP cameras send) as PCMU / PCMA.
RTSP_AUDIO = {"aac": ("audio/mpeg,mpegversion=4", "rtpmp4gpay"),
              "pcm_mulaw": ("audio/x-mulaw", "rtppcmupay"),
              "pcm_alaw": ("audio/x-alaw", "rtppcmapay"),
              "opus": ("audio/x-opus,channel-mapping-family=0", "rtpopuspay")}  # RFC 7587

# per output kind: (GObject-introspection namespace or element, Debian package that brings it)
NEEDS = {
    "srt": [("Gst", "gir1.2-gstreamer-1.0"), ("appsrc", "gstreamer1.0-plugins-base"),
            ("srtsink", "gstreamer1.0-plugins-bad")],
    "rtsp": [("Gst", "gir1.2-gstreamer-1.0"), ("GstRtspServer", "gir1.2-gst-rtsp-server-1.0"),
             ("appsrc", "gstreamer1.0-plugins-base"),
             ("h264parse", "gstreamer1.0-plugins-bad"), ("h265parse", "gstreamer1.0-plugins-bad"),
             ("rtph264pay", "gstreamer1.0-plugins-good"),
             ("rtph265pay", "gstreamer1.0-plugins-good"),
             ("rtpmp4gpay", "gstreamer1.0-plugins-good"),
             ("rtppcmupay", "gstreamer1.0-plugins-good"),
             ("rtppcmapay", "gstreamer1.0-plugins-good"),
             ("rtpopuspay", "gstreamer1.0-plugins-good")],
}

_out_lock = threading.Lock()


def emit(event, **fields):
    line = json.dumps({"event": event, **fields})
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def missing(kind):
    """What the output `kind` needs and this Python lacks, naming the Debian package; None
    when everything is there."""
    try:
        import gi
    except ImportError:
        return "PyGObject (gi) for %s (Debian package python3-gi)" % sys.executable
    Gst = None
    for name, package in NEEDS[kind]:
        if name[0].isupper():
            try:
                gi.require_version(name, "1.0")
                __import__("gi.repository." + name)
            except (ValueError, ImportError):
                return "the %s typelib (Debian package %s)" % (name, package)
            if name == "Gst":
                from gi.repository import Gst
                Gst.init(None)
        elif Gst.ElementFactory.find(name) is None:
            return "the GStreamer element %s (Debian package %s)" % (name, package)
    return None


def read_packets(stream, on_packet):
    """Calls on_packet(data, keyframe, pts_ns, dts_ns, stream) for each packet until standard
    input ends."""
    while True:
        head = stream.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        length, flags, pts_ns, dts_ns = HEADER.unpack(head)
        data = stream.read(length)
        if len(data) < length:
            return
        on_packet(data, bool(flags & KEYFRAME), pts_ns, dts_ns, flags >> STREAM_SHIFT)


class Target:
    """One appsrc the packets go to (and one per carried track), and where its stream
    stands."""

    def __init__(self, src, receivers, queues, tracks):
        self.src = src
        self.tracks = tracks  # the appsrcs of streams 1... (the carried tracks)
        self.track_pts = [-1] * len(tracks)  # the last running time given to each
        self.receivers = receivers  # how many receivers its packets reach now
        self.queues = queues  # the appsrcs where its bytes wait for the network
        self.need_key = True  # drop packets until a key frame
        self.waiting = False  # prepared on parameter sets: nothing goes until resync (PLAY)
        self.primed = False  # a waiting media got its parameter sets
        self.asked = False  # an IDR was asked for and has not come yet
        self.start_ns = None  # the encoder's time of the key frame it (re)started at
        self.offset = None  # running time - the encoder's time (ns)
        self.last_dts = -1  # the last running time given
        self.last_dts_ns = self.last_now = None  # the encoder's time and the arrival of the
        # last packet

    def running_times(self, now, pts_ns, dts_ns):
        """(pts, dts) on the running time: the encoder's timestamps plus the smallest delay
        seen so far from a packet's time to its arrival here, so the camera's cadence survives
        the jitter on the way. Re-anchored at `now` when a packet comes sooner than any before
        (no time is ahead of the clock: the RTSP server's sinks would hold the packet until
        it) or more than MAX_LAG_NS late (a stall, a camera clock slower than this one); never
        going back. But a burst, a packet that came within half its step from the one before,
        keeps the encoder's spacing, ahead of the clock (up to MAX_AHEAD_NS), and the sinks
        send it at its time: the frames an encoder held, handed out at once as its input ends
        or is lost, went out at one time, re-anchored at each, some with the same presentation
        time. Before the clock runs (`now` 0) everything stays at the start."""
        dts = None if self.offset is None else dts_ns + self.offset
        if dts is None or dts < now - MAX_LAG_NS:
            dts = now
        elif dts > now:
            step = dts_ns - self.last_dts_ns
            burst = now and 0 < step <= MAX_LAG_NS and now - self.last_now < step // 2
            dts = dts if burst and dts - now <= MAX_AHEAD_NS else now
        dts = max(dts, self.last_dts + 1)
        self.offset, self.last_dts = dts - dts_ns, dts
        self.last_dts_ns, self.last_now = dts_ns, now
        return pts_ns + self.offset, dts

    def track_time(self, track, pts_ns):
        """A carried track's packet on the video's running time (the same offset: the streams
        stay in sync), never going back; None for one from before the key frame the stream
        (re)started at (the audio of the frames before it: it arrives after it, and would all
        be stamped at the start)."""
        if pts_ns < self.start_ns:
            return None
        pts = max(pts_ns + self.offset, self.track_pts[track] + 1)
        self.track_pts[track] = pts
        return pts


def parameter_sets(data, codec):
    """The parameter sets (Annex-B, start codes kept) before the first slice of an access
    unit; b"" when it has none."""
    kept, i = [], data.find(b"\x00\x00\x01")
    while 0 <= i < len(data) - 3:
        header = data[i + 3]
        kind = (header >> 1) & 0x3F if codec == "hevc" else header & 0x1F
        if kind in SLICES[codec]:
            break  # the parameter sets come before it
        end = data.find(b"\x00\x00\x01", i + 3)
        end = len(data) if end < 0 else end - (data[end - 1] == 0)  # a 4-byte start code
        if kind in PARAMETER_SETS[codec]:
            kept.append(b"\x00" + data[i:end])
        i = data.find(b"\x00\x00\x01", end)
    return b"".join(kept)


class Feed:
    """The packets into each appsrc (an RTSP client's media, the SRT pipeline): timestamps, the
    queue bound, each starting or resuming at a key frame, and the counters of what reached
    receivers. With `codec` (the RTSP server: Annex-B access units in), the last key frame's
    parameter sets are kept, for a new client's media to prepare its SDP on."""

    def __init__(self, Gst, codec=None):
        self.Gst = Gst
        self.codec = codec
        self.headers = b""  # the parameter sets of the last key frame (with `codec`)
        self.targets = {}  # appsrc -> Target
        self.bytes_sent = self.packets = self.dropped = 0
        self.lock = threading.Lock()

    def attach(self, src, receivers=1, queues=None, tracks=()):
        with self.lock:
            self.targets[src] = Target(src, receivers, queues or [src, *tracks], list(tracks))
        self.resync(src)

    def prepare(self, src, tracks=()):
        """A new RTSP client's media (DESCRIBE): it is given what its SDP needs without asking
        the encoder for a key frame, the last key frame's parameter sets (or, before the first,
        the first's) into the video's appsrc and a gap event into each track's (the server
        prepares a media once each stream has a buffer or gap), at running time 0, no picture
        nor sound: they reach the client first when it plays, and its RTP-Info is theirs.
        Nothing else goes until `resync` (PLAY), which asks for its one key frame."""
        target = Target(src, 1, [src, *tracks], list(tracks))
        target.waiting = True
        with self.lock:
            self.targets[src] = target
            headers = self.headers
            target.primed = bool(headers)
        if headers:
            self.prime(target, headers)

    def prime(self, target, headers):
        self.push_at_start(target.src, headers)
        for track in target.tracks:
            track.send_event(self.Gst.Event.new_gap(0, self.Gst.CLOCK_TIME_NONE))

    def push_at_start(self, src, data):
        buf = self.Gst.Buffer.new_wrapped(data)
        buf.pts = buf.dts = 0
        src.emit("push-buffer", buf)

    def detach(self, src):
        with self.lock:
            self.targets.pop(src, None)

    def resync(self, src):
        """Packets go to `src` from the next key frame on (one is asked for)."""
        with self.lock:
            target = self.targets.get(src)
            if target is not None:
                target.need_key = target.asked = True
                target.waiting = False
        emit("idr")

    def set_receivers(self, src, receivers):
        with self.lock:
            if src in self.targets:
                self.targets[src].receivers = receivers

    def push(self, data, keyframe, pts_ns, dts_ns, stream=0):
        headers = keyframe and not stream and self.codec and parameter_sets(data, self.codec)
        with self.lock:
            unprimed = []
            if headers:
                self.headers = headers
                unprimed = [t for t in self.targets.values() if t.waiting and not t.primed]
                for target in unprimed:  # prepared before the first key frame
                    target.primed = True
            targets = [t for t in self.targets.values()
                       if self.admit(t, keyframe, stream, pts_ns)]
        for target in unprimed:
            self.prime(target, headers)
        sent = 0
        for target in targets:
            if self.push_to(target, data, keyframe, pts_ns, dts_ns, stream):
                sent += target.receivers
        if sent:
            with self.lock:
                self.packets += 1
                self.bytes_sent += len(data) * sent

    def admit(self, target, keyframe, stream, pts_ns):
        """Whether the packet goes to `target` (under the lock). A carried track's packets go
        where the video does (from its key frame on), when the target has that track. None goes
        to a media waiting for its client to play."""
        if target.waiting:
            return False
        if stream:
            return stream <= len(target.tracks) and not target.need_key
        if sum(q.get_property("current-level-bytes") for q in target.queues) > MAX_QUEUED:
            self.dropped += 1  # the network does not keep up
            target.need_key = True
            target.asked = target.asked and not keyframe  # the one asked for is lost
            return False
        if target.need_key and not keyframe:
            if not target.asked:  # once per gap, when there is room for it
                target.asked = True
                emit("idr")
            return False
        if target.need_key:
            target.start_ns = pts_ns
        target.need_key = target.asked = False
        return True

    def push_to(self, target, data, keyframe, pts_ns, dts_ns, stream=0):
        """Into the target's appsrc (or its track's), with the encoder's timestamps on the
        running time."""
        Gst = self.Gst
        buf = Gst.Buffer.new_wrapped(data)
        if stream:
            src = target.tracks[stream - 1]
            pts = target.track_time(stream - 1, pts_ns)
            if pts is None:
                return False
            buf.pts = buf.dts = pts
            return src.emit("push-buffer", buf) == Gst.FlowReturn.OK
        src = target.src
        # The running time once PLAYING. Before, 0 (the stamps then stay at the start, behind
        # any running time): while a pipeline goes to PLAYING an element may have its clock but
        # not yet its base time, and a stamp from that clock would be hours ahead, which the
        # RTSP server's sink would wait for (a client's stream held for hours).
        clock = src.get_clock() if src.current_state == Gst.State.PLAYING else None
        now = clock.get_time() - src.get_base_time() if clock is not None else 0
        buf.pts, buf.dts = target.running_times(now, pts_ns, dts_ns)
        if not keyframe:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        return src.emit("push-buffer", buf) == Gst.FlowReturn.OK

    def stats(self):
        with self.lock:
            emit("stats", bytes_sent=self.bytes_sent, packets=self.packets,
                 dropped=self.dropped)
        return True


def appsrc_desc(codec):
    return ("appsrc name=src is-live=true format=time max-bytes=0 "
            "caps=%s ! %s" % (CAPS[codec], PARSE[codec]))


def address_of(inet):
    """'HOST:PORT' of a Gio.InetSocketAddress."""
    return "%s:%d" % (inet.get_address().to_string(), inet.get_port())


def run(config):
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gio, GLib, Gst  # noqa: F401  (Gio: socket addresses' methods)

    Gst.init(None)
    loop = GLib.MainLoop()
    rtsp = config["kind"] == "rtsp"
    feed = Feed(Gst, config["codec"] if rtsp else None)
    # the outputs are imported here, in the child: the parent imports this module (HEADER)
    # from its package, where they are not found by these names
    if rtsp:
        gi.require_version("GstRtspServer", "1.0")
        gi.require_version("GstRtsp", "1.0")
        from gst_rtsp import RtspServer

        output = RtspServer(Gst, config, feed)
    else:
        from gst_srt import SrtSender

        output = SrtSender(Gst, GLib, config, feed)
    error = output.start()
    if error:
        emit("error", message=error)
        return 1
    GLib.timeout_add(STATS_INTERVAL_MS, feed.stats)

    def read():
        read_packets(sys.stdin.buffer, feed.push)
        GLib.idle_add(loop.quit)

    threading.Thread(target=read, name="packets", daemon=True).start()
    emit("ready")
    loop.run()
    if not rtsp:  # the SRT sender: what it holds goes out
        output.stop(drain=True)
    feed.stats()
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "check" and argv[2] in NEEDS:
        print(json.dumps({"missing": missing(argv[2])}))
        return 0
    if len(argv) == 3 and argv[1] == "run":
        return run(json.loads(argv[2]))
    sys.stderr.write("usage: gst_child.py check srt|rtsp | run CONFIG_JSON\n")
    return 2


if __name__ == "__main__":
    # through the module gst_child, the one gst_rtsp and gst_srt import: one emit() and one
    # lock on standard output for all (this script as __main__ would be a second copy); its
    # folder put first by hand, as Python leaves it out under PYTHONSAFEPATH
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gst_child

    sys.exit(gst_child.main(sys.argv))
