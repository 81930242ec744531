"""The GStreamer side of the SRT and RTSP-server outputs (`gstreamer.py` is the parent side).

Run by the system Python, which has PyGObject (Debian's python3-gi); it imports nothing from
edge_semvc, so it runs outside the project's virtual environment:

    python3 gst_child.py check srt|rtsp    one JSON line: {"missing": null} or what is missing
    python3 gst_child.py run CONFIG_JSON   serve until standard input ends

Standard input carries the encoded access units, each as a header (`HEADER`: length, flags,
pts and dts in nanoseconds of the encoder's clock) and the Annex-B bytes. Standard output
carries JSON lines, one event each: `ready`, `error` (then exit 1), `client_joined`/
`client_left` (address, transport), `peer_lost` (reason)/`peer_back` (SRT caller), `idr` (a
receiver needs a key frame now) and `stats` (bytes_sent, packets, dropped), once a second and
at the end. No secret is ever written: the RTSP credentials are read from the environment
variables the config names.

Latency and timestamps: each packet goes out as soon as it arrives. Its timestamps are the
encoder's, moved onto the pipeline's running time (`Target.running_times`) so that RTP and
MPEG-TS timestamps keep the camera's cadence whatever the jitter between the encoder and this
process, yet are never ahead of the clock, which the RTSP server's sinks sync to. Nothing
holds a packet for the next one either: h264parse takes whole access units, and the MPEG-TS
of each access unit reaches srtsink at once (`SrtSender.on_ts`; mpegtsmux's own alignment
would keep a frame's last TS packets until the next frame). At most `MAX_QUEUED` bytes wait
in a stream's queues: more means the network does not keep up, so packets are dropped and
that stream resumes at the next key frame (one is asked for, once per gap).
"""
import json
import os
import re
import struct
import sys
import threading
import time

HEADER = struct.Struct("<IBqq")  # payload length, flags, pts and dts (ns, the encoder's clock)
KEYFRAME = 1
MAX_QUEUED = 1 << 20  # bytes waiting in a stream's queues before packets are dropped
MAX_LAG_NS = 1_000_000_000  # a packet stamped this far behind the clock re-anchors the stamps
STATS_INTERVAL_MS = 1000
BACKOFF_S = (0.5, 1, 2, 4, 8)  # between SRT connection attempts (caller)
EOS_WAIT_S = 2  # at the end: for the SRT pipeline to send what it holds

CAPS = {"h264": "video/x-h264,stream-format=byte-stream,alignment=au",
        "hevc": "video/x-h265,stream-format=byte-stream,alignment=au"}
PARSE = {"h264": "h264parse", "hevc": "h265parse"}
PAY = {"h264": "rtph264pay", "hevc": "rtph265pay"}

# per output kind: (GObject-introspection namespace or element, Debian package that brings it)
NEEDS = {
    "srt": [("Gst", "gir1.2-gstreamer-1.0"), ("appsrc", "gstreamer1.0-plugins-base"),
            ("h264parse", "gstreamer1.0-plugins-bad"), ("h265parse", "gstreamer1.0-plugins-bad"),
            ("mpegtsmux", "gstreamer1.0-plugins-bad"), ("srtsink", "gstreamer1.0-plugins-bad")],
    "rtsp": [("Gst", "gir1.2-gstreamer-1.0"), ("GstRtspServer", "gir1.2-gst-rtsp-server-1.0"),
             ("appsrc", "gstreamer1.0-plugins-base"),
             ("h264parse", "gstreamer1.0-plugins-bad"), ("h265parse", "gstreamer1.0-plugins-bad"),
             ("rtph264pay", "gstreamer1.0-plugins-good"),
             ("rtph265pay", "gstreamer1.0-plugins-good")],
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
    """Calls on_packet(data, keyframe, pts_ns, dts_ns) for each packet until standard input
    ends."""
    while True:
        head = stream.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        length, flags, pts_ns, dts_ns = HEADER.unpack(head)
        data = stream.read(length)
        if len(data) < length:
            return
        on_packet(data, bool(flags & KEYFRAME), pts_ns, dts_ns)


class Target:
    """One appsrc the packets go to, and where its stream stands."""

    def __init__(self, src, receivers, queues):
        self.src = src
        self.receivers = receivers  # how many receivers its packets reach now
        self.queues = queues  # the appsrcs where its bytes wait for the network
        self.need_key = True  # drop packets until a key frame
        self.asked = False  # an IDR was asked for and has not come yet
        self.offset = None  # running time - the encoder's time (ns)
        self.last_dts = -1  # the last running time given

    def running_times(self, now, pts_ns, dts_ns):
        """(pts, dts) on the running time: the encoder's timestamps plus the smallest delay
        seen so far from a packet's time to its arrival here, so the camera's cadence survives
        the jitter on the way, and no time is ever ahead of the clock (the RTSP server's sinks
        would hold a packet until its time). Re-anchored at `now` when a packet comes sooner
        than any before, or more than MAX_LAG_NS late (a stall, a camera clock slower than
        this one); never going back."""
        dts = None if self.offset is None else dts_ns + self.offset
        if dts is None or dts > now or dts < now - MAX_LAG_NS:
            dts = now
        dts = max(dts, self.last_dts + 1)
        self.offset, self.last_dts = dts - dts_ns, dts
        return pts_ns + self.offset, dts


class Feed:
    """The packets into each appsrc (an RTSP client's media, the SRT pipeline): timestamps, the
    queue bound, each starting or resuming at a key frame, and the counters of what reached
    receivers."""

    def __init__(self, Gst):
        self.Gst = Gst
        self.targets = {}  # appsrc -> Target
        self.bytes_sent = self.packets = self.dropped = 0
        self.lock = threading.Lock()

    def attach(self, src, receivers=1, queues=None):
        with self.lock:
            self.targets[src] = Target(src, receivers, queues or [src])
        self.resync(src)

    def detach(self, src):
        with self.lock:
            self.targets.pop(src, None)

    def resync(self, src):
        """Packets go to `src` from the next key frame on (one is asked for)."""
        with self.lock:
            target = self.targets.get(src)
            if target is not None:
                target.need_key = target.asked = True
        emit("idr")

    def set_receivers(self, src, receivers):
        with self.lock:
            if src in self.targets:
                self.targets[src].receivers = receivers

    def push(self, data, keyframe, pts_ns, dts_ns):
        with self.lock:
            targets = [t for t in self.targets.values() if self.admit(t, keyframe)]
        sent = 0
        for target in targets:
            if self.push_to(target, data, keyframe, pts_ns, dts_ns):
                sent += target.receivers
        if sent:
            with self.lock:
                self.packets += 1
                self.bytes_sent += len(data) * sent

    def admit(self, target, keyframe):
        """Whether the packet goes to `target` (under the lock)."""
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
        target.need_key = target.asked = False
        return True

    def push_to(self, target, data, keyframe, pts_ns, dts_ns):
        """Into the target's appsrc, with the encoder's timestamps on the running time."""
        Gst, src = self.Gst, target.src
        buf = Gst.Buffer.new_wrapped(data)
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


class RtspServer:
    """A GstRtspServer; each client gets its own media (appsrc ! parse ! pay), fed with the
    same packets, so that each starts at an IDR of its own: joining a shared media starts a
    client mid-frame, and its first pictures are broken."""

    def __init__(self, Gst, config, feed):
        from gi.repository import GstRtsp, GstRtspServer

        self.Gst, self.GstRtsp, self.feed = Gst, GstRtsp, feed
        self.clients = {}  # RTSPClient -> {"address", "transport", "playing"}
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(config["host"])
        self.server.set_service(str(config["port"]))
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch("( %s ! %s name=pay0 pt=96 )"
                           % (appsrc_desc(config["codec"]), PAY[config["codec"]]))
        factory.set_shared(False)
        factory.set_latency(0)
        factory.connect("media-configure", self.on_media_configure)
        if config.get("user_env"):
            self.require_credentials(GstRtspServer, factory, config)
        self.server.get_mount_points().add_factory(config["path"], factory)
        self.server.connect("client-connected", self.on_client_connected)

    def require_credentials(self, GstRtspServer, factory, config):
        """Digest authentication (the password never crosses the network in clear) with the
        user and password read from the environment variables the config names."""
        auth = GstRtspServer.RTSPAuth()
        auth.set_supported_methods(self.GstRtsp.RTSPAuthMethod.DIGEST)
        token = GstRtspServer.RTSPToken.new()
        token.set_string("media.factory.role", "viewer")
        auth.add_digest(os.environ[config["user_env"]], os.environ[config["password_env"]],
                        token)
        self.server.set_auth(auth)
        factory.add_role_from_structure(self.Gst.Structure.new_from_string(
            "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))

    def start(self):
        if self.server.attach(None) == 0:
            return "cannot listen on %s:%s (address in use or not this machine's)" % (
                self.server.get_address(), self.server.get_service())
        return None

    def on_media_configure(self, factory, media):
        src = media.get_element().get_by_name_recurse_up("src")
        self.feed.attach(src)
        media.connect("unprepared", lambda m: self.feed.detach(src))

    def on_client_connected(self, server, client):
        conn = client.get_connection()
        address = address_of(conn.get_read_socket().get_remote_address())
        self.clients[client] = {"address": address, "transport": None, "playing": False}
        client.connect("setup-request", self.on_setup)
        client.connect("pre-play-request", self.on_pre_play)
        client.connect("play-request", self.on_play)
        client.connect("closed", self.on_closed)

    def on_setup(self, client, ctx):
        _, value = ctx.request.get_header(self.GstRtsp.RTSPHeaderField.TRANSPORT, 0)
        value = (value or "").lower()
        self.clients[client]["transport"] = (
            "tcp" if "/tcp" in value else "udp-multicast" if "multicast" in value else "udp")

    def on_pre_play(self, client, ctx):
        """Before the client's transports start: its media restarts at the next IDR, which
        comes at once (the media ran since DESCRIBE: the client would start mid-stream)."""
        if ctx.media is not None:
            self.feed.resync(ctx.media.get_element().get_by_name_recurse_up("src"))
        return self.GstRtsp.RTSPStatusCode.OK

    def on_play(self, client, ctx):
        info = self.clients[client]
        if not info["playing"]:
            info["playing"] = True
            emit("client_joined", address=info["address"], transport=info["transport"])

    def on_closed(self, client):
        info = self.clients.pop(client, None)
        if info and info["playing"]:
            emit("client_left", address=info["address"], transport=info["transport"])


class SrtSender:
    """appsrc ! parse ! mpegtsmux ! appsink, then appsrc ! srtsink: each access unit's MPEG-TS
    goes to srtsink whole, as one buffer (`on_ts`), which srtsink sends in payloads of 7 TS
    packets. mpegtsmux's alignment=7 would keep a frame's last TS packets until the next frame
    comes (a frame's worth of delay), and no alignment would give each TS packet an SRT packet
    of its own (44 bytes of headers for 188). A caller reconnects with back-off when its peer
    goes (srtsink's own reconnect covers a short break; a failed attempt ends the pipeline,
    which is then rebuilt); a listener counts its callers."""

    def __init__(self, Gst, GLib, config, feed):
        self.Gst, self.GLib, self.config, self.feed = Gst, GLib, config, feed
        self.listener = config["mode"] == "listener"
        self.pipeline = self.src = self.out = None
        self.connected = False
        self.attempt = 0
        self.callers = 0

    def uri(self):
        c = self.config
        host = c["host"] if not self.listener or c["host"] != "0.0.0.0" else ""
        return "srt://%s:%d?mode=%s" % (host, c["port"], c["mode"])

    def start(self):
        Gst = self.Gst
        # two chains: neither sink may wait for a preroll (async=false), or each would wait
        # for the other's first buffer
        desc = ("%s ! mpegtsmux alignment=0 ! appsink name=ts sync=false async=false "
                "emit-signals=true buffer-list=true  appsrc name=out is-live=true format=time "
                "max-bytes=0 caps=video/mpegts,systemstream=true,packetsize=188 ! srtsink "
                "name=sink uri=\"%s\" latency=%d sync=false async=false "
                "wait-for-connection=false"
                % (appsrc_desc(self.config["codec"]), self.uri(), self.config["latency"]))
        self.pipeline = Gst.parse_launch(desc)
        self.out = self.pipeline.get_by_name("out")
        ts = self.pipeline.get_by_name("ts")
        ts.connect("new-sample", self.on_ts)
        ts.connect("eos", lambda _: self.out.emit("end-of-stream"))
        sink = self.pipeline.get_by_name("sink")
        if self.listener:
            sink.connect("caller-added", self.on_caller, "client_joined")
            sink.connect("caller-removed", self.on_caller, "client_left")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            error = self.pop_error() or "cannot start %s" % self.uri()
            self.stop()
            return error
        self.src = self.pipeline.get_by_name("src")
        self.feed.attach(self.src, receivers=self.callers if self.listener else 0,
                         queues=[self.src, self.out])
        if not self.listener:
            self.GLib.timeout_add(200, self.poll_connection, self.pipeline)
        return None

    def on_ts(self, appsink):
        """One access unit's TS packets (a buffer list) into srtsink's appsrc as one buffer."""
        sample = appsink.emit("pull-sample")
        if sample is None:  # stopping
            return self.Gst.FlowReturn.FLUSHING
        packets = sample.get_buffer_list()
        if packets is None:
            whole = sample.get_buffer()
        else:
            parts = (packets.get(i) for i in range(packets.length()))
            whole = self.Gst.Buffer.new_wrapped(b"".join(p.extract_dup(0, p.get_size())
                                                         for p in parts))
        return self.out.emit("push-buffer", whole)

    def pop_error(self):
        msg = self.pipeline.get_bus().pop_filtered(self.Gst.MessageType.ERROR)
        return msg.parse_error()[0].message if msg else None

    def stop(self, drain=False):
        """Ends the pipeline; `drain`: what it holds goes out first (at most about
        2 x EOS_WAIT_S): through the pipeline, then out of SRT's send buffer, which closing
        the socket would discard (SRT paces a burst out over time)."""
        if self.pipeline is not None:
            self.feed.detach(self.src)
            bus = self.pipeline.get_bus()
            bus.remove_signal_watch()
            if drain and self.src.emit("end-of-stream") == self.Gst.FlowReturn.OK:
                bus.timed_pop_filtered(int(EOS_WAIT_S * self.Gst.SECOND),
                                       self.Gst.MessageType.EOS | self.Gst.MessageType.ERROR)
                sent, deadline = -1, time.monotonic() + EOS_WAIT_S
                while time.monotonic() < deadline and sent != (sent := self.bytes_sent()):
                    time.sleep(0.1)
            self.pipeline.set_state(self.Gst.State.NULL)
            self.pipeline = None

    def bytes_sent(self):
        """What SRT sent so far, to every peer (a caller's statistics, or each of a
        listener's callers')."""
        stats = self.pipeline.get_by_name("sink").get_property("stats")
        text = stats.to_string() if stats is not None else ""
        return sum(int(n) for n in re.findall(r"\bbytes-sent=\(guint64\)(\d+)", text))

    def on_caller(self, sink, socket_id, address, event):
        self.callers = max(0, self.callers + (1 if event == "client_joined" else -1))
        self.feed.set_receivers(self.src, self.callers)
        emit(event, address=address_of(address), transport="srt")
        if event == "client_joined":  # it decodes from the next IDR (the parameter sets
            emit("idr")                # come with it), without a gap for the others

    def poll_connection(self, pipeline):
        """Caller: connected once srtsink's statistics describe a socket (every 200 ms)."""
        if pipeline is not self.pipeline:
            return False
        stats = pipeline.get_by_name("sink").get_property("stats")
        connected = stats is not None and stats.has_field("packets-sent")
        if connected and not self.connected:
            self.set_connected(True, None)
        return True

    def set_connected(self, connected, reason):
        self.connected = connected
        self.feed.set_receivers(self.src, int(connected))
        if connected:
            self.attempt = 0
            emit("peer_back")
            emit("idr")  # a new peer decodes from it (after a reconnect, it came mid-stream)
        else:
            emit("peer_lost", reason=reason)

    def on_message(self, bus, msg):
        Gst = self.Gst
        if msg.type == Gst.MessageType.WARNING and not self.listener:
            # srtsink reconnects by itself after a broken connection: the peer is gone meanwhile
            if self.connected:
                self.set_connected(False, "SRT peer gone: " + msg.parse_warning()[0].message)
        elif msg.type == Gst.MessageType.ERROR:
            reason = msg.parse_error()[0].message
            if self.listener:
                emit("error", message="%s: %s" % (self.uri(), reason))
                os._exit(1)
            if self.connected or self.attempt == 0:
                self.set_connected(False, reason if self.connected else "no SRT listener at "
                                   "%s:%d answered (%s)" % (self.config["host"],
                                                            self.config["port"], reason))
            self.stop()
            delay = BACKOFF_S[min(self.attempt, len(BACKOFF_S) - 1)]
            self.attempt += 1
            self.GLib.timeout_add(int(delay * 1000), self.retry)

    def retry(self):
        error = self.start()
        if error:  # cannot even build the pipeline: the parent restarts the child
            emit("error", message=error)
            os._exit(1)
        return False


def run(config):
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gio, GLib, Gst  # noqa: F401  (Gio: socket addresses' methods)

    Gst.init(None)
    loop = GLib.MainLoop()
    feed = Feed(Gst)
    if config["kind"] == "rtsp":
        gi.require_version("GstRtspServer", "1.0")
        gi.require_version("GstRtsp", "1.0")
        output = RtspServer(Gst, config, feed)
    else:
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
    if isinstance(output, SrtSender):
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
    sys.exit(main(sys.argv))
